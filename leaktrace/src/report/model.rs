//! One report. Field names are a contract other tools parse: keep them.
use serde::Serialize;

use crate::{aggregate::verdict::Verdict, symbols::Frame};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(rename = "final")]
    pub is_final: bool,
    pub elapsed_s: f64,
    pub target: TargetInfo,
    pub events: EventTotals,
    /// The program's own live goroutines (what `runtime.NumGoroutine()` counts).
    pub live: u64,
    /// The runtime's own goroutines (GC workers, finalizer…), not in `live`.
    pub system: u64,
    /// The span the growth figures cover.
    pub window_s: f64,
    pub groups: Vec<GroupReport>,
    /// Groups left out by `--top` / `--older`.
    pub groups_omitted: usize,
    /// Anything the reader should know about how this report was made.
    pub notes: Vec<String>,
    /// The process's OS threads; absent when thread tracking is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<ThreadsReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub exe: String,
    pub runtime: &'static str,
    pub runtime_version: String,
    pub symbols: &'static str,
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct EventTotals {
    pub spawn: u64,
    pub exit: u64,
    pub park: u64,
    /// Records the probes could not deliver (ring buffer full).
    pub lost: u64,
    /// Tasks found finished in memory without an exit event, and removed.
    pub corrected: u64,
    /// tokio, detailed mode: polls and wakes seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake: Option<u64>,
    /// tokio: tasks the runtime cancelled (`raw::shutdown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    pub count: u64,
    pub state: String,
    pub created_by: Frame,
    pub start: Frame,
    pub blocked_at: Option<Frame>,
    pub blocked_s: Option<BlockedSpan>,
    pub growth_per_s: f64,
    pub verdict: Verdict,
    pub why: String,
    pub stack: Vec<Frame>,
    pub sample_ids: Vec<u64>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct BlockedSpan {
    pub min: f64,
    pub max: f64,
    /// True when some members were already blocked when leaktrace attached,
    /// so their durations are lower bounds ("≥").
    pub at_least: bool,
    /// Whether `min` / `max` themselves are such lower bounds.
    pub min_at_least: bool,
    pub max_at_least: bool,
}

/// The process's OS threads (when thread tracking is on).
#[derive(Clone, Debug, Serialize)]
pub struct ThreadsReport {
    /// Threads alive now (what /proc/PID/task lists).
    pub live: u64,
    /// Threads created and exited since attach.
    pub created: u64,
    pub exited: u64,
    /// Thread events the probes could not deliver (ring buffer full).
    pub lost: u64,
    pub groups: Vec<ThreadGroupReport>,
}

/// Threads with one name pattern (digits folded to `#`) and one creator.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadGroupReport {
    pub name: String,
    /// The program's function that spawned them, else the spawning thread's
    /// name, `(main thread)` or `(before attach)`.
    pub created_by: String,
    /// That function as a frame, when known.
    pub site: Option<Frame>,
    pub count: u64,
    /// Age of the oldest member.
    pub oldest_s: f64,
    pub growth_per_s: f64,
    pub verdict: ThreadVerdict,
    pub why: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadVerdict {
    /// More members at each of several samples, none exiting.
    Growing,
    Ok,
}
