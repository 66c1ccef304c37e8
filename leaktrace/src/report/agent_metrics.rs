//! `/metrics` for the host agent (`--all`): its own budget and what it
//! traces, beside the per-process series of `metrics.rs`.
//!
//! `leaktrace_agent_cpu_seconds_total` and `leaktrace_agent_resident_bytes`
//! (leaktrace's own CPU and memory), `leaktrace_agent_processes_traced` and
//! `leaktrace_agent_processes_max` (`--max-processes`),
//! `leaktrace_agent_processes_skipped_total{reason}`, and one
//! `leaktrace_agent_process_waiting{pid,exe}` per Go or tokio process left
//! untraced because the cap was reached (the first [`WAITING_SERIES`]; the
//! count of all of them in `leaktrace_agent_processes_waiting`).
use std::collections::BTreeMap;

use super::metrics::Exposition;
use crate::target::usage::Usage;

/// Waiting processes named one series each, at most.
pub const WAITING_SERIES: usize = 50;

/// Why the agent does not trace a process it looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// Go or tokio, but `--max-processes` are traced already: it waits
    /// for a slot.
    MaxProcesses,
    /// Neither Go nor tokio (or a Go toolchain program).
    NotGoOrTokio,
    /// Not this user's to trace.
    NotPermitted,
    /// Attaching or tracing failed (the reason is on stderr).
    Failed,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::MaxProcesses => "max_processes",
            Self::NotGoOrTokio => "not_go_or_tokio",
            Self::NotPermitted => "not_permitted",
            Self::Failed => "failed",
        }
    }
}

/// What the agent is doing, kept up to date by its loop.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    pub max_processes: usize,
    pub traced: usize,
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Go or tokio processes waiting for a slot: pid → executable.
    pub waiting: BTreeMap<u32, String>,
}

pub fn agent_metrics(status: &AgentStatus, usage: Usage) -> String {
    let mut m = Exposition::default();
    m.add(
        "leaktrace_agent_cpu_seconds_total",
        "counter",
        "CPU time (user + system) leaktrace itself has used since it started.",
        &[],
        usage.cpu_s,
    );
    m.add(
        "leaktrace_agent_resident_bytes",
        "gauge",
        "leaktrace's own resident memory.",
        &[],
        usage.resident_bytes as f64,
    );
    m.add(
        "leaktrace_agent_processes_traced",
        "gauge",
        "Processes traced now.",
        &[],
        status.traced as f64,
    );
    m.add(
        "leaktrace_agent_processes_max",
        "gauge",
        "The most processes traced at once (--max-processes).",
        &[],
        status.max_processes as f64,
    );
    for (reason, n) in &status.skipped {
        m.add(
            "leaktrace_agent_processes_skipped_total",
            "counter",
            "Processes looked at and not traced, by reason: max_processes (a Go or tokio process found while --max-processes were traced; it is traced when a slot frees), not_go_or_tokio, not_permitted, failed.",
            &[("reason", reason.label().to_string())],
            *n as f64,
        );
    }
    m.add(
        "leaktrace_agent_processes_waiting",
        "gauge",
        "Go or tokio processes not traced now because --max-processes are.",
        &[],
        status.waiting.len() as f64,
    );
    for (pid, exe) in status.waiting.iter().take(WAITING_SERIES) {
        m.add(
            "leaktrace_agent_process_waiting",
            "gauge",
            "A Go or tokio process waiting for a slot (--max-processes); the first 50.",
            &[("pid", pid.to_string()), ("exe", exe.clone())],
            1.0,
        );
    }
    m.render()
}
