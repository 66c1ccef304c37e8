//! The slow parts of a trace — attaching, reading the tasks that existed
//! before attach, reading every live task at a refresh — run on a blocking
//! thread, so the session's one runtime thread keeps handling signals and
//! stops: a Ctrl-C during a 20 s attach or a read of a million goroutines is
//! acted on at once. Work cut short goes on on its thread and, when done,
//! drops what it holds (its probes detach), or leaktrace's exit ends it (the
//! kernel detaches a dead process's probes).
use anyhow::Result;
use tokio::{sync::watch, time::Instant};

use super::stops::End;
use crate::{
    budget::{Budget, Overhead},
    probes::Probes,
    runtime::{Lifetimes, Runtime, TaskCounts, TaskView},
    symbols::Frame,
    target::process::open_sockets,
};

/// A runtime and its probes: what slow work takes to its thread.
pub(super) struct Work {
    pub rt: Box<dyn Runtime>,
    pub probes: Probes,
    /// `--max-overhead`: checked at each read, before it.
    pub budget: Budget,
}

/// Run `f` on a blocking thread; `Err(end)` as soon as `stop` says to end
/// with an end that [cuts work](End::cuts_work) (then `f`'s result is
/// dropped when it comes).
pub(super) async fn off_thread<T: Send + 'static>(
    stop: &mut watch::Receiver<Option<End>>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, End> {
    let mut task = tokio::task::spawn_blocking(f);
    loop {
        if let Some(end) = *stop.borrow_and_update()
            && end.cuts_work()
        {
            return Err(end);
        }
        tokio::select! {
            done = &mut task => {
                return Ok(done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
            }
            changed = stop.changed() => {
                if changed.is_err() {
                    return Err(End::Interrupted);
                }
            }
        }
    }
}

/// One read of every live task (the slow half of a refresh).
pub(super) struct Read {
    /// When it started, and the event totals then: events are applied on
    /// the session's thread, never during a read, so the views are the table
    /// as of these counts.
    pub started: (Instant, TaskCounts),
    /// `Ok(false)`: the program does not run the binary yet.
    pub result: Result<bool>,
    /// The session's list, refilled when `result` is `Ok(true)`, untouched
    /// otherwise.
    pub views: Vec<TaskView>,
    pub notes: Vec<String>,
    pub sockets: Option<u32>,
}

/// Event totals and lifetimes, kept from the last time the runtime was at
/// hand, for a report made while it is away (a read cut short).
#[derive(Clone, Debug, Default)]
pub(super) struct Totals {
    pub counts: TaskCounts,
    pub lifetimes: Vec<(Frame, Lifetimes)>,
    pub lost: u64,
    pub overhead: Option<Overhead>,
}

impl Work {
    /// Close the budget's window if it is due, shedding or re-arming as it
    /// says.
    pub(super) fn check_budget(&mut self) {
        if let Err(e) = self.budget.check(self.rt.as_mut(), &mut self.probes) {
            log::debug!("overhead budget: {e:#}");
        }
    }

    /// When the budget's window closes (between refreshes too: the first
    /// windows are shorter than a refresh).
    pub(super) fn budget_due(&self) -> Instant {
        Instant::from_std(self.budget.due())
    }

    /// Refill `views` (the session's one list: a million views are not
    /// held twice) with every live task.
    pub(super) fn read(&mut self, pid: u32, mut views: Vec<TaskView>) -> Read {
        // First: shedding the spawn probe makes this read walk allgs.
        self.check_budget();
        let started = (Instant::now(), self.rt.counts());
        let result = self.rt.refresh(&mut self.probes, pid, &mut views);
        Read {
            started,
            result,
            views,
            notes: self.rt.take_notes(),
            sockets: open_sockets(pid),
        }
    }

    pub(super) fn totals(&self) -> Totals {
        Totals {
            counts: self.rt.counts(),
            lifetimes: self.rt.lifetimes(),
            lost: self.probes.lost(),
            overhead: Some(self.budget.report()),
        }
    }

    pub(super) fn apply(&mut self, batch: &crate::probes::ring::RecordBatch) {
        for record in batch.records() {
            self.rt.apply(record);
        }
    }
}
