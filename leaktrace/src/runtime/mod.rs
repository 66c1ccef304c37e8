//! The seam: what a runtime (Go, tokio) must provide so that one session
//! loop can trace it without knowing which it is.
//!
//! A runtime inspects its binary, says where its probes go, attaches them,
//! applies their ring records to its own live table, reads its live tasks
//! from the target's memory at each refresh, and hands back neutral
//! [`TaskView`]s and [`TaskCounts`]. Everything downstream (grouping,
//! trends, verdicts, reports) only sees those. Adding a runtime means one
//! new folder here and one line in [`open`].
pub mod go;
pub mod none;
mod task;
pub mod tokio;

use std::path::Path;

use anyhow::{Result, bail};

pub use task::{
    ChanDir, ChanState, ChanTimer, ChanWait, ChanWaits, LifetimeStats, Lifetimes, Place, Since,
    Stranded, StrandedMark, TaskState, TaskView, no_chan_waits, no_frames,
};

use crate::{
    probes::{AttachPoint, Global, Probes},
    symbols::{Frame, debuginfo},
};

/// Which runtime, with the words reports use for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeKind {
    /// As JSON names it: `go`, `rust-tokio`.
    pub name: &'static str,
    /// One task, several tasks: `goroutine`/`goroutines`, `task`/`tasks`.
    pub task: &'static str,
    pub tasks: &'static str,
    /// What a task does at its end: `exited`, `completed`.
    pub ended: &'static str,
    /// What names a group's origin: `created by` (a `go` statement),
    /// `future` (a tokio task is known by its future's type).
    pub origin: &'static str,
    /// What member ids are: `goroutines`, `task ids`.
    pub ids: &'static str,
    /// When `origin` names the task's own function (tokio's future type),
    /// the words for its creation site after it: `spawned by`.
    pub spawned: Option<&'static str>,
}

impl serde::Serialize for RuntimeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// What the binary is, for the report's header.
#[derive(Clone, Debug)]
pub struct Description {
    /// e.g. `go1.22.10`, `tokio 1.47.1, 1.95.0 (…)`.
    pub version: String,
    /// Where names come from: `dwarf`, `symtab`, `pclntab`, `none`.
    pub symbols: &'static str,
}

/// One probe a runtime plans: which program of the probes object, at which
/// point of the binary, for which event.
#[derive(Clone, Debug)]
pub struct PlannedProbe {
    /// The program in the probes object, e.g. `go_park`, `tokio_task`.
    pub program: &'static str,
    /// What it reports: `spawn`, `park`, `exit`, `complete`, …
    pub event: &'static str,
    pub point: AttachPoint,
    /// The function holding the point and its entry, when the runtime knows
    /// it better than `.symtab` (Go's pclntab survives stripping).
    pub function: Option<(String, u64)>,
}

/// What attaching told us.
#[derive(Clone, Debug, Default)]
pub struct Attached {
    /// Said once at attach and kept in every report.
    pub warnings: Vec<String>,
    /// Extra words for the attach line, e.g. `450 task types`.
    pub detail: Option<String>,
}

/// The tasks at the moment the program exited.
#[derive(Clone, Debug)]
pub struct AtExit {
    pub views: Vec<TaskView>,
    /// How they were read, for the report's notes.
    pub note: String,
    /// The program crashed (a fatal panic or runtime error, a fatal
    /// signal) rather than returning or calling exit: whatever was blocked
    /// was ended by the crash, which a test may cause on purpose.
    pub crashed: bool,
}

/// A runtime-specific event counter (parks, polls, wakes, cancellations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The JSON key under `events`.
    pub name: &'static str,
    /// The text report's word for it (plural).
    pub label: &'static str,
    pub value: u64,
    pub shown: Shown,
}

/// Where the text report prints a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// On the header line, after the spawn and exit counts.
    Headline,
    /// On a line of its own under the header.
    Detail,
    /// Only in JSON.
    JsonOnly,
}

/// Event totals since attach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub spawn: u64,
    pub exit: u64,
    /// Tasks a memory read found finished without an exit event.
    pub corrected: u64,
    pub extra: Vec<Counter>,
}

/// One probe as the overhead budget (`crate::budget`) sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetProbe {
    /// As reports name it: `spawn`, `park`, `poll`…
    pub name: &'static str,
    /// Its counters in the probes' `PROBE_STATS` map
    /// (`leaktrace_common::stats::slot`).
    pub slot: u32,
    /// The shedding step that detaches it (1 is shed first); 0: never shed.
    pub shed_at: u8,
    /// What becomes approximate while it is shed, for the reports.
    pub when_shed: &'static str,
}

/// A probe the runtime has but did not arm, by the user's choice (it takes
/// `--detailed`): every report's `overhead` says so, and what is
/// approximate without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NotArmed {
    pub name: &'static str,
    /// The flag that arms it.
    pub armed_by: &'static str,
    pub approximate: &'static str,
}

/// How the user asked to trace.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Probe every poll and wake too (tokio), every park (Go), at a cost
    /// per poll or park.
    pub detailed: bool,
    /// Where a stripped program's separate debug info may be.
    pub debuginfo: debuginfo::Search,
    /// The host agent's budget (`--all`): Go's exit-walk ring takes this
    /// many bytes instead of its default (a smaller ring costs the exiting
    /// program a few ms of waiting for the reader, not goroutines).
    pub exit_ring_bytes: Option<u32>,
}

/// A runtime, as one session drives it: attach → snapshot → (apply,
/// refresh)* → detach (by dropping the [`Probes`]).
pub trait Runtime: Send {
    fn kind(&self) -> RuntimeKind;
    fn describe(&self) -> Description;
    /// Globals the probes object needs before it is loaded.
    fn probe_globals(&self) -> Vec<Global>;
    /// Where the probes go in this binary (also what `--explain-probes`
    /// lists, so benchmarks measure exactly these points).
    fn plan(&self) -> Result<Vec<PlannedProbe>>;
    /// Attach the planned probes for `pid` (by file offset, so before a
    /// `-c` child runs).
    fn attach(&mut self, probes: &mut Probes, exe: &Path, pid: u32) -> Result<Attached>;
    /// Size of one ring record.
    fn record_size(&self) -> usize;
    /// One ring record, in ring order.
    fn apply(&mut self, record: &[u8]);
    /// Read the tasks that existed before attach (a running process only).
    /// Returns a note for the report.
    fn snapshot(&mut self, pid: u32) -> Result<Option<String>>;
    /// Read every live task from memory into `views` (replacing what it
    /// held, reusing its memory: a million views are not made twice).
    /// `Ok(false)`, `views` untouched: the program is not running the
    /// binary yet (`-c` before exec).
    fn refresh(&mut self, probes: &mut Probes, pid: u32, views: &mut Vec<TaskView>)
    -> Result<bool>;
    fn counts(&self) -> TaskCounts;
    /// How long finished tasks lived, per creation site (`created_by` as in
    /// the views), since attach.
    fn lifetimes(&self) -> Vec<(Frame, Lifetimes)> {
        Vec::new()
    }
    /// Notes that arose since the last call (said once).
    fn take_notes(&mut self) -> Vec<String>;
    /// The probes the overhead budget counts, and which it may shed.
    fn budget_probes(&self) -> Vec<BudgetProbe> {
        Vec::new()
    }
    /// Probes left unarmed by choice (see [`NotArmed`]).
    fn not_armed(&self) -> Vec<NotArmed> {
        Vec::new()
    }
    /// Shedding step `step` of the overhead budget: detach the probes with
    /// `0 < shed_at <= step`, (re)attach the others, and follow what the
    /// detached ones saw by reading memory instead.
    fn shed(&mut self, _probes: &mut Probes, _step: u8) -> Result<()> {
        Ok(())
    }
    /// Hits per second the shed probes would have, as the memory reads
    /// observe them (by [`BudgetProbe::name`]); the budget estimates the
    /// rest.
    fn memory_rates(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
    /// After the process exited: its tasks as they were at the moment of
    /// exit, when the runtime could capture them (Go: the exit probe's walk
    /// of `allgs`). `None`: only the last refresh is known.
    fn at_exit(&mut self) -> Option<AtExit> {
        None
    }
}

/// The runtime of the program at `path`: Go or tokio, or an error that says
/// what it is not and why.
pub fn open(path: &Path, options: Options) -> Result<Box<dyn Runtime>> {
    match go::GoRuntime::open(path, &options.debuginfo) {
        Ok(rt) => Ok(Box::new(
            rt.with_exit_ring(options.exit_ring_bytes)
                .with_detailed(options.detailed),
        )),
        Err(not_go @ go::binary::InspectError::NotGo { .. }) => {
            match tokio::TokioRuntime::open(path, options) {
                Ok(rt) => Ok(Box::new(rt)),
                Err(tokio::binary::TokioError::NotTokio(why)) => bail!(
                    "{not_go}; and not a tokio program either ({why}). leaktrace traces Go \
                     programs and Rust programs using tokio ≥ 1.23"
                ),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
