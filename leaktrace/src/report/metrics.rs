//! `/metrics`: the latest report of each traced process in the Prometheus
//! text exposition format (version 0.0.4).
//!
//! Per group: `leaktrace_tasks` (members), `leaktrace_group_growth_per_second`
//! (over `--window`) and `leaktrace_group_blocked_seconds_max` (the longest
//! blocked member), labelled `pid, exe, runtime, created_by, start, state,
//! verdict, cause`. Per process: live and system tasks, spawned, exited,
//! lost events, probes armed.
//!
//! Cardinality is bounded: per process at most [`GROUP_SERIES`] group
//! series — leaks first, then suspects, then the largest groups, as the
//! text report orders them, so no leak hides behind large healthy groups —
//! and every other group folded into one series whose labels are `other`
//! and whose verdict is the worst among them.
//!
//! Written here rather than with a client library: the exposition is a few
//! lines per series, and label values (Go and Rust function names, paths)
//! must be escaped exactly, which prometheus-client 0.24's text encoder
//! leaves to its caller (it writes label values as given);
//! leaktrace/tests/exports.rs checks the escaping.
use std::{collections::BTreeMap, fmt::Write};

use super::{
    labels::{all_groups, blocked_max_s, created_by, verdict_name},
    model::Report,
};
use crate::aggregate::verdict::Verdict;

/// Group series per process at most; the rest are folded into `other`.
pub const GROUP_SERIES: usize = 50;

/// One traced process: its latest report and what the report does not say.
pub struct Traced<'a> {
    pub report: &'a Report,
    /// Probe attachments in force (uprobe points and tracepoints).
    pub probes_armed: u64,
}

/// The exposition of these processes' latest reports.
pub fn metrics(processes: &[Traced<'_>]) -> String {
    let mut m = Exposition::default();
    for p in processes {
        let r = p.report;
        let process = vec![
            ("pid", r.target.pid.to_string()),
            ("exe", r.target.exe.clone()),
            ("runtime", r.target.runtime.name.to_string()),
        ];
        let gauge = |m: &mut Exposition, name, help, v: f64| {
            m.add(name, "gauge", help, &process, v);
        };
        let counter = |m: &mut Exposition, name, help, v: u64| {
            m.add(name, "counter", help, &process, v as f64);
        };
        gauge(
            &mut m,
            "leaktrace_live_tasks",
            "The program's live goroutines or tasks (what runtime.NumGoroutine() or tokio's num_alive_tasks() counts), as of the latest report.",
            r.live as f64,
        );
        gauge(
            &mut m,
            "leaktrace_system_tasks",
            "The runtime's own goroutines (GC workers and the like), not in leaktrace_live_tasks.",
            r.system as f64,
        );
        gauge(
            &mut m,
            "leaktrace_blocking_tasks",
            "tokio: the program's blocking-pool tasks (spawn_blocking), not in leaktrace_live_tasks.",
            r.blocking as f64,
        );
        counter(
            &mut m,
            "leaktrace_spawned_total",
            "Goroutines or tasks spawned since leaktrace attached.",
            r.events.spawn,
        );
        counter(
            &mut m,
            "leaktrace_exited_total",
            "Goroutines that exited or tasks that completed since leaktrace attached.",
            r.events.exit,
        );
        counter(
            &mut m,
            "leaktrace_lost_events_total",
            "Probe records lost (ring buffer full); counts lag until the next memory refresh corrects them.",
            r.events.lost,
        );
        gauge(
            &mut m,
            "leaktrace_probes_armed",
            "Probe attachments in force in this process.",
            p.probes_armed as f64,
        );
        gauge(
            &mut m,
            "leaktrace_attached_seconds",
            "How long leaktrace had been attached to the process at its latest report.",
            r.elapsed_s,
        );
        for (labels, s) in group_series(r) {
            let labels: Vec<(&str, String)> = process.iter().cloned().chain(labels).collect();
            m.add(
                "leaktrace_tasks",
                "gauge",
                "Live goroutines or tasks per group (creation site, start, state); the top groups per process (leaks, suspects, then the largest), the rest summed in one series labelled other.",
                &labels,
                s.count as f64,
            );
            m.add(
                "leaktrace_group_growth_per_second",
                "gauge",
                "The group's growth over --window, members per second.",
                &labels,
                s.growth_per_s,
            );
            if let Some(b) = s.blocked_max_s {
                m.add(
                    "leaktrace_group_blocked_seconds_max",
                    "gauge",
                    "How long the group's longest-blocked member has been blocked (a lower bound for tasks blocked since before attach).",
                    &labels,
                    b,
                );
            }
        }
    }
    m.render()
}

/// One group series: groups with the same labels summed.
#[derive(Default)]
struct Series {
    count: u64,
    growth_per_s: f64,
    blocked_max_s: Option<f64>,
    rank: (u8, u64),
}

type Labels = Vec<(&'static str, String)>;

fn group_series(r: &Report) -> Vec<(Labels, Series)> {
    let mut by_labels: BTreeMap<Labels, Series> = BTreeMap::new();
    let mut worst: BTreeMap<Labels, Verdict> = BTreeMap::new();
    for g in all_groups(r) {
        let labels = vec![
            ("created_by", created_by(g)),
            ("start", g.start.function.to_string()),
            ("state", g.state.clone()),
            ("verdict", verdict_name(g.verdict).to_string()),
            ("cause", g.cause.unwrap_or_default().to_string()),
        ];
        worst.insert(labels.clone(), g.verdict);
        let s = by_labels.entry(labels).or_default();
        s.count += g.count;
        s.growth_per_s += g.growth_per_s;
        s.blocked_max_s = match (s.blocked_max_s, blocked_max_s(g)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let mut series: Vec<(Labels, Series)> = by_labels
        .into_iter()
        .map(|(labels, mut s)| {
            let v = worst[&labels];
            s.rank = (rank(v), s.count);
            (labels, s)
        })
        .collect();
    // Leaks, then suspects, then by count (largest first).
    series.sort_by(|a, b| {
        a.1.rank
            .0
            .cmp(&b.1.rank.0)
            .then(b.1.rank.1.cmp(&a.1.rank.1))
    });
    if series.len() <= GROUP_SERIES {
        return series;
    }
    let rest = series.split_off(GROUP_SERIES - 1);
    let mut other = Series::default();
    let mut other_verdict = Verdict::Ok;
    for (labels, s) in rest {
        let v = worst[&labels];
        if rank(v) < rank(other_verdict) {
            other_verdict = v;
        }
        other.count += s.count;
        other.growth_per_s += s.growth_per_s;
        other.blocked_max_s = match (other.blocked_max_s, s.blocked_max_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let labels = vec![
        ("created_by", "other".to_string()),
        ("start", "other".to_string()),
        ("state", "other".to_string()),
        ("verdict", verdict_name(other_verdict).to_string()),
        ("cause", String::new()),
    ];
    series.push((labels, other));
    series
}

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Leak => 0,
        Verdict::Suspect => 1,
        Verdict::Ok => 2,
    }
}

/// Metric families in order of first use, each with its samples.
#[derive(Default)]
pub(super) struct Exposition {
    families: Vec<(&'static str, &'static str, &'static str, Vec<String>)>,
}

impl Exposition {
    pub(super) fn add(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, String)],
        value: f64,
    ) {
        let mut line = String::from(name);
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{k}=\"{}\"", escape_label(v));
            }
            line.push('}');
        }
        let _ = write!(line, " {}", number(value));
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.push(line),
            None => self.families.push((name, kind, help, vec![line])),
        }
    }

    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, lines) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}
