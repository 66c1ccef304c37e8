//! `--folded`: folded stacks, the input of flamegraph.pl and inferno — one
//! line per stack, `root;…;leaf COUNT`, weighted by the number of tasks,
//! with the group's state (`chan send`, `idle`) as the leaf so the graph
//! shows where tasks wait. Every group is there, so the counts add up to
//! `live` (plus tokio's `blocking` tasks, and the runtime's own with
//! `--system`).
use std::{collections::BTreeMap, fmt::Write};

use super::{
    labels::{all_groups, frames},
    model::Report,
};

/// The folded stacks of these reports (one per traced process). With
/// several processes, each stack starts at a frame naming its process.
pub fn folded(reports: &[&Report]) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for report in reports {
        let process = (reports.len() > 1).then(|| {
            frame(&format!(
                "{} (pid {})",
                report.target.exe, report.target.pid
            ))
        });
        for g in all_groups(report) {
            let mut stack: Vec<String> = process.iter().cloned().collect();
            stack.extend(frames(g).iter().rev().map(|f| frame(&f.function)));
            stack.push(frame(&g.state));
            *lines.entry(stack.join(";")).or_default() += g.count;
        }
    }
    let mut out = String::new();
    for (stack, count) in lines {
        let _ = writeln!(out, "{stack} {count}");
    }
    out
}

/// A frame as the format allows: `;` separates frames and a line ends the
/// stack, so neither may appear in one (Rust types can hold `[u8; 4]`).
fn frame(name: &str) -> String {
    name.replace(';', ",").replace(['\n', '\r'], " ")
}
