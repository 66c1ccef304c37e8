//! From task views to a [`Report`]: trends are sampled at every refresh,
//! groups are judged and shaped for output at every report.
use std::{collections::HashMap, time::Instant};

use super::model::{BlockedSpan, EventTotals, GroupReport, Report, TargetInfo, ThreadsReport};
use crate::{
    aggregate::{
        groups::{Group, GroupKey, group},
        trend::Trends,
        verdict::{Rules, Verdict, judge},
    },
    runtime::TaskView,
    symbols::Frame,
    target::clock::monotonic_ns,
};

/// What the user chose about what a report shows.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Groups shown at most (the rest are counted as omitted).
    pub top: usize,
    /// Show the runtime's own tasks too.
    pub system: bool,
}

/// Trends, verdicts and report contents for one traced process.
pub struct ReportBuilder {
    shape: Shape,
    target: TargetInfo,
    rules: Rules,
    trends: Trends<SiteKey>,
    started: Instant,
    /// Said in every report from now on.
    pub notes: Vec<String>,
    /// The latest thread sample, when threads are tracked.
    pub threads: Option<ThreadsReport>,
}

/// Samples kept per trend (one per refresh, at most every 500 ms).
const TREND_TICKS: usize = 600;

impl ReportBuilder {
    pub fn new(shape: Shape, target: TargetInfo, rules: Rules, notes: Vec<String>) -> Self {
        Self {
            shape,
            target,
            rules,
            trends: Trends::new(TREND_TICKS),
            started: Instant::now(),
            notes,
            threads: None,
        }
    }

    fn older_ns(&self) -> u64 {
        (self.rules.older_s * 1e9) as u64
    }

    /// One sample for the trends, per creation site and function: members
    /// move between running and waiting (a pool at work), so following one
    /// state's group would see a fixed pool "grow" each time its workers
    /// come back to wait.
    pub fn record(&mut self, views: &[TaskView]) {
        let now = monotonic_ns();
        let mut sites: HashMap<SiteKey, (u32, u32)> = HashMap::new();
        for g in group(views, now, self.older_ns()) {
            let e = sites.entry(site_of(&g.key)).or_default();
            e.0 = e.0.saturating_add(g.count.min(u32::MAX as u64) as u32);
            e.1 = e.1.saturating_add(g.old);
        }
        self.trends.record(
            now,
            sites.into_iter().map(|(k, (total, old))| (k, total, old)),
        );
    }

    pub fn build(&self, is_final: bool, events: EventTotals, views: &[TaskView]) -> Report {
        let live = views.iter().filter(|v| !v.system).count() as u64;
        let system = views.len() as u64 - live;
        let shown = views.iter().filter(|v| self.shape.system || !v.system);
        let groups = group(shown, monotonic_ns(), self.older_ns());
        let mut window_s: f64 = 0.0;
        let mut reports: Vec<GroupReport> = Vec::new();
        let mut omitted = 0;
        for g in groups {
            let m = self.trends.movement(&site_of(&g.key));
            window_s = window_s.max(m.window_s);
            let (verdict, why) = judge(&g, &m, &self.rules);
            // --older: a blocked group none of whose members has been old
            // that long is noise unless it is a verdict.
            let young = g.key.state.is_waiting() && g.aged == 0 && verdict == Verdict::Ok;
            if young || reports.len() >= self.shape.top {
                omitted += 1;
                continue;
            }
            reports.push(group_report(g, m.growth_per_s, verdict, why));
        }
        Report {
            is_final,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            target: self.target.clone(),
            events,
            live,
            system,
            window_s,
            groups: reports,
            groups_omitted: omitted,
            notes: self.notes.clone(),
            threads: self.threads.clone(),
        }
    }
}

/// What a trend follows: where tasks are created and what they run.
type SiteKey = (Frame, Frame);

fn site_of(k: &GroupKey) -> SiteKey {
    (k.created_by.clone(), k.start.clone())
}

fn group_report(g: Group, growth_per_s: f64, verdict: Verdict, why: String) -> GroupReport {
    GroupReport {
        count: g.count,
        state: g.key.state.label().to_string(),
        created_by: g.key.created_by,
        start: g.key.start,
        blocked_at: g.key.blocked_at,
        blocked_s: g.blocked_s.map(|(min, max)| BlockedSpan {
            min,
            max,
            at_least: g.blocked_at_least,
            min_at_least: g.min_at_least,
            max_at_least: g.max_at_least,
        }),
        growth_per_s,
        verdict,
        why,
        stack: g.stack,
        sample_ids: g.sample_ids,
    }
}
