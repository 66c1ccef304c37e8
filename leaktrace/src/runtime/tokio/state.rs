//! The tokio task state word (`Header.state`, at +0 of every task).
//!
//! The bits have not changed from tokio 1.0 to 1.54
//! (`tokio/src/runtime/task/state.rs`); the reference count lives above
//! them, one unit per `1 << 6`.
use std::fmt;

use crate::runtime::TaskState;

pub const RUNNING: u64 = 1 << 0;
pub const COMPLETE: u64 = 1 << 1;
pub const NOTIFIED: u64 = 1 << 2;
pub const JOIN_INTEREST: u64 = 1 << 3;
pub const JOIN_WAKER: u64 = 1 << 4;
pub const CANCELLED: u64 = 1 << 5;
pub use leaktrace_common::tokio::task_header::{MAX_PLAUSIBLE_REFS, REF_SHIFT};

/// What the task is doing, as tokio-console derives it from the same word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Activity {
    /// Being polled on some worker right now.
    Running,
    /// Woken and queued (NOTIFIED), not yet polled.
    Scheduled,
    /// Waiting for a wake-up.
    Idle,
    /// Finished; the cell lives on only while a JoinHandle or waker holds it.
    Complete,
}

impl Activity {
    pub fn label(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Scheduled => "scheduled",
            Self::Idle => "idle",
            Self::Complete => "complete",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateWord(pub u64);

impl StateWord {
    pub fn refs(self) -> u64 {
        self.0 >> REF_SHIFT
    }

    pub fn is_running(self) -> bool {
        self.0 & RUNNING != 0
    }

    pub fn is_complete(self) -> bool {
        self.0 & COMPLETE != 0
    }

    pub fn is_notified(self) -> bool {
        self.0 & NOTIFIED != 0
    }

    /// A JoinHandle still exists.
    pub fn has_join_interest(self) -> bool {
        self.0 & JOIN_INTEREST != 0
    }

    pub fn has_join_waker(self) -> bool {
        self.0 & JOIN_WAKER != 0
    }

    pub fn is_cancelled(self) -> bool {
        self.0 & CANCELLED != 0
    }

    /// Whether this word can belong to a task that has not completed: at
    /// least the OwnedTasks (or blocking pool) reference, few references in
    /// all, and no bits above the refcount that tokio never sets.
    pub fn is_plausible_live(self) -> bool {
        let refs = self.refs();
        // A scheduled or running task is also referenced by its run-queue
        // entry (the `Notified`), besides the owner list.
        let min_refs = if self.is_notified() || self.is_running() {
            2
        } else {
            1
        };
        !self.is_complete() && (min_refs..MAX_PLAUSIBLE_REFS).contains(&refs)
    }

    pub fn activity(self) -> Activity {
        if self.is_complete() {
            Activity::Complete
        } else if self.is_running() {
            Activity::Running
        } else if self.is_notified() {
            Activity::Scheduled
        } else {
            Activity::Idle
        }
    }

    /// For an idle task: how many wakers and abort handles still point at it
    /// (everything but the owner list's reference and the JoinHandle's).
    /// `None` when not idle (running/scheduled tasks hold transient
    /// references) or when the count does not add up.
    pub fn outstanding_wakers(self) -> Option<u64> {
        if self.activity() != Activity::Idle {
            return None;
        }
        self.refs()
            .checked_sub(1)?
            .checked_sub(u64::from(self.has_join_interest()))
    }

    /// Idle with nothing left that could wake it: the task can never run
    /// again (e.g. `std::future::pending()`, or a future that dropped its
    /// waker). Needs no probe, only this word.
    pub fn lost_waker(self) -> bool {
        self.outstanding_wakers() == Some(0)
    }

    /// The runtime-neutral view. An idle task's "wait reason" says whether
    /// anything can still wake it, which is all the state word knows.
    pub fn task_state(self) -> TaskState {
        match self.activity() {
            Activity::Running => TaskState::Running,
            Activity::Scheduled => TaskState::Runnable,
            Activity::Idle if self.lost_waker() => TaskState::Waiting("idle, no waker".into()),
            Activity::Idle => TaskState::Waiting("idle".into()),
            Activity::Complete => TaskState::Waiting("complete".into()),
        }
    }
}

impl fmt::Debug for StateWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for StateWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x}({} refs={}",
            self.0,
            self.activity().label(),
            self.refs()
        )?;
        for (bit, name) in [
            (JOIN_INTEREST, "join"),
            (JOIN_WAKER, "join_waker"),
            (CANCELLED, "cancelled"),
        ] {
            if self.0 & bit != 0 {
                write!(f, " {name}")?;
            }
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_words_seen_in_the_lab() {
        // A oneshot waiter with its JoinHandle dropped: list + oneshot waker.
        let s = StateWord(0x80);
        assert_eq!(s.activity(), Activity::Idle);
        assert_eq!(s.outstanding_wakers(), Some(1));
        assert!(!s.lost_waker());
        // `pending()`: only the list holds it.
        assert!(StateWord(0x40).lost_waker());
        // ... also with a JoinHandle alive.
        assert!(StateWord(0x88).lost_waker());
        assert_eq!(StateWord(0xc8).outstanding_wakers(), Some(1));
        // First poll, JoinHandle dropped / awaited.
        assert_eq!(StateWord(0x84).activity(), Activity::Scheduled);
        assert_eq!(StateWord(0xdc).activity(), Activity::Scheduled);
        // Worker launcher (blocking task) while it runs the worker loop.
        assert_eq!(StateWord(0x81).activity(), Activity::Running);
        assert_eq!(StateWord(0x81).outstanding_wakers(), None);
        assert_eq!(StateWord(0x4a).activity(), Activity::Complete);
    }

    #[test]
    fn rejects_freed_cells() {
        // glibc tcache safe-linked pointers and zeroed memory.
        assert!(!StateWord(0x5a95e3fc).is_plausible_live());
        assert!(!StateWord(0x7f12_3456_7000 >> 12).is_plausible_live());
        assert!(!StateWord(0).is_plausible_live());
        assert!(!StateWord(0x4a).is_plausible_live());
        assert!(StateWord(0x80).is_plausible_live());
        // Inconsistent counts never claim a lost waker.
        assert_eq!(StateWord(0x08).outstanding_wakers(), None);
        assert!(!StateWord(0x08).lost_waker());
    }

    #[test]
    fn maps_to_the_neutral_state() {
        assert_eq!(StateWord(0x81).task_state(), TaskState::Running);
        assert_eq!(StateWord(0x84).task_state(), TaskState::Runnable);
        assert_eq!(
            StateWord(0x40).task_state(),
            TaskState::Waiting("idle, no waker".into())
        );
        assert_eq!(StateWord(0x80).task_state().label(), "idle");
        assert_eq!(format!("{}", StateWord(0xc8)), "0xc8(idle refs=3 join)");
    }
}
