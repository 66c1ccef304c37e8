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
