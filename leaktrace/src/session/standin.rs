//! What a final report says when a read of the tasks is cut short (Ctrl-C,
//! SIGTERM… during a read of a million goroutines).
//!
//! The session keeps one list of task views, and a read refills it in
//! place: two lists of a million views would be 64 MB more at the peak. So
//! a read cut short takes the list with it, and the final report stands on
//! a report kept from an earlier read instead: the last periodic report, or
//! one built before a read from the list about to be refilled. The groups,
//! verdicts and counts are that read's (its age is the report's
//! `data_age_s`, and a note says so); the event totals, notes, threads and
//! overhead are the session's as they are now.
use std::time::Duration;

use tokio::time::Instant;

use crate::{report::model::Report, runtime::TaskCounts};

/// A report from an earlier read, kept to stand in for a final report whose
/// read was cut short.
pub(super) struct StandIn {
    report: Report,
    /// When the read it was built from started (what its age counts from).
    read: Instant,
    /// The event totals its `live` was moved on to (see `live_since`).
    counts: TaskCounts,
    /// When it was built.
    made: Instant,
}

/// A new stand-in is built from the views before a read when the kept one is
/// older than this and no periodic report came since: building a report
/// of a million views costs ~0.1 s of leaktrace's CPU, so at most 2 % of a
/// core, while a cut read's final report is at most this much older than
/// the last complete read (and says how old).
pub(super) const STAND_IN_EVERY: Duration = Duration::from_secs(5);

/// The parts of a final report that are the session's now, not the read's.
pub(super) struct Now {
    pub is_final: bool,
    pub counts: TaskCounts,
    pub report: Report,
}

impl StandIn {
    /// `report` was built from the read that started at `read`, its `live`
    /// moved on to the event totals `counts`.
    pub(super) fn new(report: Report, read: Instant, counts: TaskCounts) -> Self {
        Self {
            report,
            read,
            counts,
            made: Instant::now(),
        }
    }

    /// Whether it was built from the read that started at `read`, or
    /// recently enough (see [`STAND_IN_EVERY`]).
    pub(super) fn fresh_for(&self, read: Instant) -> bool {
        self.read == read || self.made.elapsed() < STAND_IN_EVERY
    }

    /// How long ago its read started.
    pub(super) fn age(&self) -> Duration {
        self.read.elapsed()
    }

    /// The final report: this one's groups and counts, with the session's
    /// own parts from `now.report` (a report built with no views), `live`
    /// moved on by the events since.
    pub(super) fn report(&self, now: Now) -> Report {
        let Now {
            is_final,
            counts,
            report: mut r,
        } = now;
        let kept = &self.report;
        r.is_final = is_final;
        r.live = super::trace::live_since(kept.live, &self.counts, &counts);
        r.data_age_s = Some(self.age().as_secs_f64());
        r.system = kept.system;
        r.blocking = kept.blocking;
        r.window_s = kept.window_s;
        r.groups = kept.groups.clone();
        r.groups_omitted = kept.groups_omitted;
        r.omitted = kept.omitted.clone();
        r.deadlock = kept.deadlock;
        r.partial_deadlocks = kept.partial_deadlocks.clone();
        r
    }
}
