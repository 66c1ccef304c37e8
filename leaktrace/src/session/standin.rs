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

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use super::*;
    use crate::{
        aggregate::verdict::Rules,
        report::{
            build::{Moment, ReportBuilder, Shape},
            model::{EventTotals, TargetInfo},
        },
        runtime::{Place, Since, TaskState, TaskView, go::GO},
        symbols::Frame,
        target::clock::monotonic_ns,
    };

    fn counts(spawn: u64, exit: u64) -> TaskCounts {
        TaskCounts {
            spawn,
            exit,
            ..TaskCounts::default()
        }
    }

    fn builder() -> ReportBuilder {
        let target = TargetInfo {
            pid: 7,
            exe: "/srv/app".into(),
            cmdline: None,
            runtime: GO,
            runtime_version: "go1.27.3".into(),
            symbols: "dwarf",
            warnings: Vec::new(),
        };
        let shape = Shape {
            top: 20,
            system: false,
            window_ns: 10_000_000_000,
            hang_s: 60.0,
        };
        ReportBuilder::new(shape, target, Rules::default(), Vec::new())
    }

    /// `n` goroutines blocked sending for 5 s.
    fn blocked(n: u64) -> Vec<TaskView> {
        let frame = |function: &str| Frame {
            function: Arc::from(function),
            file: Arc::from("/src/app/main.go"),
            line: 10,
        };
        let place = Arc::new(Place {
            state: TaskState::Waiting("chan send".into()),
            never_ends: false,
            system: false,
            blocking: false,
            created_by: frame("main.main"),
            via: None,
            start: frame("main.send"),
            stack: Arc::from([frame("runtime.gopark"), frame("main.send")]),
            blocked_at: Some(frame("main.send")),
            main: false,
            stack_unstable: false,
        });
        let then = monotonic_ns() - 5_000_000_000;
        (0..n)
            .map(|i| TaskView {
                key: 0x1000 + i * 0x100,
                id: 10 + i,
                place: place.clone(),
                blocked_since: Some(Since::Exact(then)),
                alive_since: Since::Exact(then),
                waits_on: Default::default(),
                stranded: Default::default(),
            })
            .collect()
    }

    #[test]
    fn a_cut_read_reports_the_kept_groups_with_the_session_now() {
        let mut b = builder();
        let read = Instant::now();
        let views = blocked(40);
        let kept = b.build(
            false,
            Moment::Live,
            EventTotals::new(counts(100, 0), 0),
            &views,
            &HashMap::new(),
        );
        assert_eq!((kept.live, kept.groups.len()), (40, 1));
        let s = StandIn::new(kept, read, counts(100, 0));
        assert!(s.fresh_for(read), "made from this read");
        b.notes.push("stopped during a read".into());
        // Since the kept read: 7 spawned, 3 exited; the views are gone.
        let now = b.build(
            true,
            Moment::Live,
            EventTotals::new(counts(107, 3), 2),
            &[],
            &HashMap::new(),
        );
        let r = s.report(Now {
            is_final: true,
            counts: counts(107, 3),
            report: now,
        });
        assert!(r.is_final);
        assert_eq!(r.live, 44, "40 read, moved on by the events since");
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.groups[0].count, 40, "the kept read's groups");
        assert_eq!((r.events.spawn, r.events.exit, r.events.lost), (107, 3, 2));
        assert_eq!(r.notes, vec!["stopped during a read".to_string()]);
        assert!(r.data_age_s.is_some_and(|a| a >= 0.0));
    }
}
