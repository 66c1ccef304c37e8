//! What every runtime hands the rest of leaktrace about one task: its view
//! at a refresh. Aggregation and reports see only these types.
use std::sync::Arc;

use crate::symbols::Frame;

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

/// One live task as read from the target at a refresh.
#[derive(Clone, Debug)]
pub struct TaskView {
    pub key: u64,
    pub id: u64,
    pub state: TaskState,
    /// The wait can never end (Go: nil channel, `select {}`; tokio: no waker).
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
    pub stack: Arc<[Frame]>,
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
