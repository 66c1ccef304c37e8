//! The seam between runtime-specific knowledge and the rest of leaktrace.
//!
//! A runtime module (only `go` today) turns its probe records into
//! [`TaskEvent`]s and, when asked at report time, reads each live task from
//! the target's memory into a [`TaskView`]. Everything downstream (the live
//! table, grouping, trends, verdicts, reports) only sees these types.
pub mod go;
pub mod tokio;

use crate::symbols::Frame;

/// A lifecycle event of one task, in the order the probes saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The task's control block address (Go: the `runtime.g`). Unique among
    /// live tasks; reused only after the task's Exit.
    pub key: u64,
    /// Runtime id (goid); 0 when not known yet.
    pub id: u64,
    pub kind: TaskEventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskEventKind {
    Spawn {
        /// Return address of the spawning call (Go: gopc).
        created_pc: u64,
        /// Entry of the task's function (Go: startpc).
        start_pc: u64,
        parent_id: u64,
    },
    Park {
        /// Runtime-specific wait reason code.
        reason: u8,
    },
    Exit,
}

/// What a task is doing when looked at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    Running,
    Runnable,
    Syscall,
    /// Blocked, with the wait reason as the runtime prints it.
    Waiting(String),
}

impl TaskState {
    pub fn label(&self) -> &str {
        match self {
            Self::Running => "running",
            Self::Runnable => "runnable",
            Self::Syscall => "syscall",
            Self::Waiting(reason) => reason,
        }
    }

    pub fn is_waiting(&self) -> bool {
        matches!(self, Self::Waiting(_))
    }
}

/// One live task as read from the target at report time.
#[derive(Clone, Debug)]
pub struct TaskView {
    pub key: u64,
    pub id: u64,
    pub state: TaskState,
    /// The wait can never end (Go: nil channel, `select {}`).
    pub never_ends: bool,
    /// The runtime's own bookkeeping task (Go: `isSystemGoroutine`); not
    /// counted as the program's, like `runtime.NumGoroutine()`.
    pub system: bool,
    /// Where the task was created (the `go` statement).
    pub created_by: Frame,
    /// The task's own function, compiler wrappers unwrapped.
    pub start: Frame,
    /// Innermost first. Empty when not blocked or not readable. Shared by
    /// every task parked at the same place.
    pub stack: std::sync::Arc<[Frame]>,
    /// First frame of the program's own code in `stack` (not the runtime's
    /// or the standard library's): where it is stuck.
    pub blocked_at: Option<Frame>,
    /// When the current block began, if known.
    pub blocked_since: Option<Since>,
    /// When the task was created (a lower bound for tasks that existed
    /// before attach).
    pub alive_since: Since,
    /// Set when the stack could not be read consistently (the runtime moved
    /// it while we read, repeatedly).
    pub stack_unstable: bool,
}

/// A point in time (CLOCK_MONOTONIC ns) that is either exact or only an
/// upper bound on the start (so durations derived from it are lower bounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// Seen by a probe.
    Exact(u64),
    /// Known to have started no later than this.
    AtMost(u64),
}

impl Since {
    pub fn ns(self) -> u64 {
        match self {
            Self::Exact(t) | Self::AtMost(t) => t,
        }
    }
    pub fn is_lower_bound(self) -> bool {
        matches!(self, Self::AtMost(_))
    }
}

/// CLOCK_MONOTONIC now, the clock `bpf_ktime_get_ns` and Go's `nanotime` use.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `clock` now, in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; the callers pass clocks Linux always has.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
