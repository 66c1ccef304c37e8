//! One report. Field names are a contract other tools parse: keep them.
use serde::Serialize;

pub use crate::aggregate::deadlocks::{PartialDeadlock, Participant};
pub use crate::budget::Overhead;
pub use crate::threads::view::{ThreadGroupReport, ThreadVerdict, ThreadsReport};
use crate::{
    aggregate::{channels::ChannelSummary, verdict::Verdict},
    runtime::{Counter, RuntimeKind, TaskCounts},
    symbols::Frame,
};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(rename = "final")]
    pub is_final: bool,
    pub elapsed_s: f64,
    pub target: TargetInfo,
    pub events: EventTotals,
    /// The program's own live goroutines (what `runtime.NumGoroutine()` counts).
    pub live: u64,
    /// How old the data is: seconds since the memory read the groups come
    /// from (`live` adds the probes' spawns and exits since); at exit, since
    /// the exit. `None` until a memory read succeeded (probe events only).
    pub data_age_s: Option<f64>,
    /// The runtime's own goroutines (GC workers, finalizer…), not in `live`.
    pub system: u64,
    /// tokio: the program's blocking-pool tasks (`spawn_blocking`), not in
    /// `live` (0 for Go).
    pub blocking: u64,
    /// The span the growth figures cover.
    pub window_s: f64,
    pub groups: Vec<GroupReport>,
    /// Groups left out by `--top` / `--older`.
    pub groups_omitted: usize,
    /// Those groups themselves, not in JSON: the exports (pprof, folded,
    /// metrics) describe every task, so their counts add up to `live`.
    #[serde(skip)]
    pub omitted: Vec<GroupReport>,
    /// True when this report is the state at the moment the program exited
    /// (verdicts then have goleak's meaning: still blocked = leak).
    pub at_exit: bool,
    /// Set when every goroutine of the program has been blocked on the
    /// program itself for at least `--hang`: nothing can run again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadlock: Option<Deadlock>,
    /// Sets of goroutines blocked on each other's channels that nothing else
    /// in the program can reach, found while the rest of it runs (at most
    /// ten, largest first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partial_deadlocks: Vec<PartialDeadlock>,
    /// Anything the reader should know about how this report was made.
    pub notes: Vec<String>,
    /// The process's OS threads; absent when thread tracking is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<ThreadsReport>,
    /// Which probes are armed and what they are estimated to cost the
    /// target (`--max-overhead`, README §Overhead budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Overhead>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Deadlock {
    /// The program's goroutines, all blocked.
    pub participants: u64,
    /// How long the most recently blocked one has been (so all of them at
    /// least that long).
    pub blocked_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub exe: String,
    /// With `-f`: the process's command line (several are traced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Serialized as its name (`go`, `rust-tokio`).
    pub runtime: RuntimeKind,
    pub runtime_version: String,
    pub symbols: &'static str,
    pub warnings: Vec<String>,
}

/// Event totals since attach: the runtime's task counts and the probes'
/// losses. JSON: `spawn`, `exit`, then the runtime's own counters (`park`
/// for Go; `poll`, `wake`, `shutdown` for tokio), then `lost`, `corrected`.
#[derive(Clone, Debug, Default)]
pub struct EventTotals {
    pub spawn: u64,
    pub exit: u64,
    /// Records the probes could not deliver (ring buffer full).
    pub lost: u64,
    /// Tasks found finished in memory without an exit event, and removed.
    pub corrected: u64,
    /// The runtime's own counters.
    pub extra: Vec<Counter>,
}

impl EventTotals {
    pub fn new(counts: TaskCounts, lost: u64) -> Self {
        Self {
            spawn: counts.spawn,
            exit: counts.exit,
            lost,
            corrected: counts.corrected,
            extra: counts.extra,
        }
    }
}

impl Serialize for EventTotals {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4 + self.extra.len()))?;
        m.serialize_entry("spawn", &self.spawn)?;
        m.serialize_entry("exit", &self.exit)?;
        for c in &self.extra {
            m.serialize_entry(c.name, &c.value)?;
        }
        m.serialize_entry("lost", &self.lost)?;
        m.serialize_entry("corrected", &self.corrected)?;
        m.end()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    pub count: u64,
    /// `blocking` for tokio blocking-pool tasks (`spawn_blocking`); absent
    /// for async tasks and goroutines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The program's main task is in this group: created by the runtime
    /// itself, not by a `go` statement or a spawn.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub main: bool,
    pub state: String,
    pub created_by: Frame,
    /// When `created_by` is a spawn helper: the caller these came through.
    pub created_via: Option<Frame>,
    pub start: Frame,
    pub blocked_at: Option<Frame>,
    pub blocked_s: Option<BlockedSpan>,
    /// Over the recent window (`--window`), members per second.
    pub growth_per_s: f64,
    /// Over the whole session: the group's old members when first seen and
    /// now, and when they last grew.
    pub session: SessionGrowth,
    pub verdict: Verdict,
    pub why: String,
    /// For `leak` and `suspect`: the catalogue's name for why (README
    /// §Causes), and the fix in one sentence; null when not recognised.
    pub cause: Option<&'static str>,
    pub fix: Option<&'static str>,
    /// For members blocked in channel operations: the channels they wait
    /// on and who else is blocked on them; null when none are.
    pub channels: Option<ChannelSummary>,
    /// Members a walk of the target's memory proved can never wake (what
    /// they wait on is unreachable), and of those, members of a partial
    /// deadlock.
    pub stranded: u32,
    pub deadlocked: u32,
    pub stack: Vec<Frame>,
    pub sample_ids: Vec<u64>,
    /// The group's size (any state) at each sample over the recent window,
    /// oldest first: the text report's trend mark on a terminal.
    #[serde(skip)]
    pub trend: Vec<u32>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SessionGrowth {
    pub span_s: f64,
    pub first: u32,
    pub last: u32,
    /// From the first sample to the last rise, and since the last rise.
    pub growing_s: f64,
    pub flat_s: f64,
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
