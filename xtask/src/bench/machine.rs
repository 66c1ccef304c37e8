//! The "Machine and method" section, and the host facts it and the
//! file's header need (load average, commit, tool versions): the figures
//! only mean something next to the machine and the load they came from.
use std::{path::Path, process::Command};

use anyhow::Result;

use super::{Markdown, Plan, Tools, report::num_after};
use crate::util;

pub(super) fn machine_section(
    md: &mut Markdown,
    plan: &Plan,
    t: &Tools,
    did: &[String],
    load: &str,
) -> Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| num_after(&m, "MemTotal:"))
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let size_mb = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| format!("{:.1} MB", m.len() as f64 / 1e6))
            .unwrap_or_else(|_| "?".into())
    };
    md.h2("Machine and method");
    md.table(
        &["what", "value"],
        &[
            vec![
                "kernel (`uname -r`)".into(),
                command_out("uname", &["-r"]).unwrap_or_default(),
            ],
            vec![
                "CPUs (`nproc`)".into(),
                command_out("nproc", &[]).unwrap_or_default(),
            ],
            vec!["CPU model".into(), cpu],
            vec!["memory".into(), mem],
            vec!["load average at start (1, 5, 15 min)".into(), load.into()],
            vec![
                "Go toolchain (targets)".into(),
                format!(
                    "{} (`{}`)",
                    command_out(&t.go.display().to_string(), &["version"]).unwrap_or_default(),
                    t.go.display()
                ),
            ],
            vec![
                "leaktrace".into(),
                format!("`{}` at {}", t.leaktrace.display(), git_describe()),
            ],
            vec![
                "candidate leaktrace builds".into(),
                if t.candidates.is_empty() {
                    "none (--candidate)".into()
                } else {
                    t.candidates
                        .iter()
                        .map(|(n, p)| format!("{n}: `{}`", p.display()))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ],
            vec![
                "bpftrace".into(),
                command_out("bpftrace", &["--version"]).unwrap_or_else(|| "–".into()),
            ],
            vec![
                "wrk".into(),
                command_out("wrk", &["--version"])
                    .map(|s| s.split(" Copyright").next().unwrap_or("").to_string())
                    .unwrap_or_else(|| "–".into()),
            ],
            vec!["tools".into(), did.join("; ")],
            vec![
                "runs per figure".into(),
                format!(
                    "{} (median reported, min–max in parentheses){}",
                    plan.runs,
                    if plan.quick { "; --quick" } else { "" }
                ),
            ],
            vec![
                "large binary".into(),
                format!("`{}`, {}", t.big.display(), size_mb(&t.big)),
            ],
        ],
    );
    md.line(
        "Method: every configuration of a section runs once per round, rounds repeat (A, B, C, \
         A, B, C, …), so background load spreads over all of them; each figure is the median \
         over rounds, set against its baseline from the same rounds. The targets are the Go \
         programs in tests/fixtures/go/bench (and chan_send), built with the toolchain above. \
         leaktrace runs in its default mode (no flags but `--format json --output FILE`, plus \
         `--pid` or `-c`); every ratio is traced ÷ untraced (> 1 = slower) unless stated.",
    );
    Ok(())
}

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The workspace's commit, `-dirty` with uncommitted changes.
pub(super) fn git_describe() -> String {
    let root = util::workspace_root().display().to_string();
    command_out("git", &["-C", &root, "describe", "--always", "--dirty"]).unwrap_or_default()
}

pub(super) fn command_out(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let s = if s.is_empty() {
        String::from_utf8_lossy(&o.stderr).trim().to_string()
    } else {
        s
    };
    Some(s.lines().next().unwrap_or("").to_string())
}
