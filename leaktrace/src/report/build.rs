//! From task views to a [`Report`]: trends are sampled at every refresh,
//! groups are judged and shaped for output at every report.
use std::{collections::HashMap, time::Instant};

use super::model::{
    BlockedSpan, Deadlock, EventTotals, GroupReport, Report, SessionGrowth, TargetInfo,
    ThreadsReport,
};
use crate::{
    aggregate::{
        cause::{POOL_NEVER_CLOSED, classify, pools},
        channels::{ChannelSummary, summarize},
        deadlocks,
        groups::{Group, GroupKey, group},
        trend::Trends,
        verdict::{Evidence, Rules, Verdict, global_deadlock, human_secs, judge, judge_at_exit},
    },
    runtime::{Lifetimes, TaskView},
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
    /// The recent window growth is measured over (`--window`).
    pub window_ns: u64,
    /// All blocked this long is a deadlock (`--hang`).
    pub hang_s: f64,
}

/// Which tasks reports leave out, as goleak's options do.
#[derive(Clone, Debug, Default)]
pub struct Ignore {
    /// `--ignore-top`: tasks whose top frame (the first outside package
    /// runtime) is one of these functions.
    pub top: Vec<String>,
    /// `--ignore-current`: tasks that existed when leaktrace attached.
    pub current: bool,
}

impl Ignore {
    fn keeps(&self, v: &TaskView) -> bool {
        if self.current && v.alive_since.before_attach() {
            return false;
        }
        if self.top.is_empty() {
            return true;
        }
        let top = v
            .place
            .stack
            .iter()
            .find(|f| !f.function.starts_with("runtime."))
            .map_or(&*v.place.start.function, |f| &*f.function);
        !self.top.iter().any(|t| t == top)
    }
}

/// When a report describes the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    /// While it runs: verdicts from trends and evidence.
    Live,
    /// The moment it exited: still blocked = leak; after a crash, suspect.
    AtExit { crashed: bool },
}

/// Trends, verdicts and report contents for one traced process.
pub struct ReportBuilder {
    shape: Shape,
    target: TargetInfo,
    rules: Rules,
    /// Per creation site and function, any state.
    sites: Trends<SiteKey>,
    /// Per group without its wait state: what a group's figures quote.
    groups: Trends<GroupTrendKey>,
    /// The process's open sockets (one series).
    sockets: Trends<()>,
    has_sockets: bool,
    started: Instant,
    /// Said in every report from now on.
    pub notes: Vec<String>,
    /// The latest thread sample, when threads are tracked.
    pub threads: Option<ThreadsReport>,
    pub ignore: Ignore,
    /// Every function seen on the stack of a goroutine blocked accepting
    /// connections, this session: a report taken while the accept loop is
    /// between two accepts (running, or its stack moving while read) must
    /// still know its connections for what they are. CI once saw a server's
    /// 32 keep-alive connections called a leak at 2 s for want of this.
    accept_loops: std::collections::HashSet<String>,
}

/// Functions remembered as accept loops at most (their stacks' functions;
/// a program has a handful of listeners).
const MAX_ACCEPT_LOOP_FNS: usize = 4096;

/// Samples kept per trend at most (one per refresh, at most every 100 ms).
const TREND_TICKS: usize = 6000;

impl ReportBuilder {
    pub fn new(shape: Shape, target: TargetInfo, rules: Rules, notes: Vec<String>) -> Self {
        Self {
            shape,
            target,
            rules,
            sites: Trends::new(shape.window_ns, TREND_TICKS),
            groups: Trends::new(shape.window_ns, TREND_TICKS),
            sockets: Trends::new(shape.window_ns, TREND_TICKS),
            has_sockets: false,
            started: Instant::now(),
            notes,
            threads: None,
            ignore: Ignore::default(),
            accept_loops: std::collections::HashSet::new(),
        }
    }

    fn older_ns(&self) -> u64 {
        (self.rules.older_s * 1e9) as u64
    }

    /// One sample for the trends, per creation site and function: members
    /// move between running and waiting (a pool at work), so following one
    /// state's group would see a fixed pool "grow" each time its workers
    /// come back to wait.
    ///
    /// `sockets`: the process's open sockets now, when known.
    pub fn record(&mut self, views: &[TaskView], sockets: Option<u32>) {
        let now = monotonic_ns();
        let mut sites: HashMap<SiteKey, (u32, u32)> = HashMap::new();
        let mut groups: HashMap<GroupTrendKey, (u32, u32)> = HashMap::new();
        let all = group(views, now, self.older_ns());
        if self.accept_loops.len() < MAX_ACCEPT_LOOP_FNS {
            self.accept_loops.extend(accept_loops(&all));
        }
        for g in all {
            let count = g.count.min(u32::MAX as u64) as u32;
            let e = sites.entry(site_of(&g.key)).or_default();
            e.0 = e.0.saturating_add(count);
            e.1 = e.1.saturating_add(g.old);
            let e = groups.entry(group_trend_of(&g.key)).or_default();
            e.0 = e.0.saturating_add(count);
            e.1 = e.1.saturating_add(g.aged);
        }
        self.sites.record(
            now,
            sites.into_iter().map(|(k, (total, old))| (k, total, old)),
        );
        self.groups.record(
            now,
            groups
                .into_iter()
                .map(|(k, (total, aged))| (k, total, aged)),
        );
        if let Some(n) = sockets {
            self.has_sockets = true;
            self.sockets.record(now, [((), n, n)]);
        }
    }

    /// `lifetimes`: how long finished tasks lived, per creation site.
    pub fn build(
        &self,
        is_final: bool,
        moment: Moment,
        events: EventTotals,
        views: &[TaskView],
        lifetimes: &HashMap<Frame, Lifetimes>,
    ) -> Report {
        let system = views.iter().filter(|v| v.system()).count() as u64;
        let blocking = views
            .iter()
            .filter(|v| !v.system() && v.place.blocking)
            .count() as u64;
        let live = views.len() as u64 - system - blocking;
        let now = monotonic_ns();
        let kept = views.iter().filter(|v| self.ignore.keeps(v));
        let all = group(kept.clone(), now, self.older_ns());
        let deadlock = (moment == Moment::Live)
            .then(|| global_deadlock(&all, self.shape.hang_s))
            .flatten()
            .map(|blocked_s| Deadlock {
                participants: all
                    .iter()
                    .filter(|g| !g.system && g.key.state.is_waiting())
                    .map(|g| g.count)
                    .sum(),
                blocked_s,
            });
        let partial_deadlocks = if moment == Moment::Live {
            deadlocks::partial(views.iter().filter(|v| self.ignore.keeps(v)), now)
        } else {
            Vec::new()
        };
        let mut accepting = accept_loops(&all);
        accepting.extend(self.accept_loops.iter().cloned());
        let shown = kept.filter(|v| self.shape.system || !v.system());
        let mut channels = summarize(shown.clone());
        let mut window_s: f64 = 0.0;
        let mut judged: Vec<(Group, (f64, SessionGrowth), Verdict, String)> =
            group(shown, now, self.older_ns())
                .into_iter()
                .map(|g| {
                    if let Moment::AtExit { crashed } = moment {
                        let (verdict, why) = judge_at_exit(&g, &self.rules, crashed);
                        return (g, (0.0, SessionGrowth::default()), verdict, why);
                    }
                    if let Some(d) = deadlock
                        && !g.system
                        && g.key.state.is_waiting()
                    {
                        let why = format!(
                            "deadlock: every {} of the program has been blocked for ≥ {} (none \
                             running, none waiting on I/O or a timer): nothing can wake them",
                            self.rules.noun,
                            human_secs(d.blocked_s)
                        );
                        return (g, (0.0, SessionGrowth::default()), Verdict::Leak, why);
                    }
                    let evidence = Evidence {
                        group: self.groups.movement(&group_trend_of(&g.key)),
                        site: self.sites.movement(&site_of(&g.key)),
                        siblings: lifetimes.get(&g.key.created_by).copied(),
                        sockets: self.has_sockets.then(|| self.sockets.movement(&())),
                        accepted: accepting.contains(&*g.key.created_by.function),
                    };
                    window_s = window_s.max(evidence.site.window_s);
                    let (verdict, why) = judge(&g, &evidence, &self.rules);
                    let s = evidence.group.session;
                    let session = SessionGrowth {
                        span_s: s.span_s,
                        first: s.aged_first,
                        last: s.aged_last,
                        growing_s: s.growing_s,
                        flat_s: s.flat_s,
                    };
                    (g, (evidence.group.growth_per_s, session), verdict, why)
                })
                .collect();
        // Verdicts first (leak, suspect, ok), by count within each: `--top`
        // must never hide a leak behind large healthy groups.
        judged.sort_by_key(|(_, _, verdict, _)| match verdict {
            Verdict::Leak => 0,
            Verdict::Suspect => 1,
            Verdict::Ok => 2,
        });
        // A pool's workers and the drainer waiting for them are one finding.
        let in_pool: Vec<GroupKey> = {
            let groups: Vec<Group> = judged.iter().map(|(g, ..)| g.clone()).collect();
            pools(&groups)
                .into_iter()
                .map(|i| groups[i].key.clone())
                .collect()
        };
        let mut reports: Vec<GroupReport> = Vec::new();
        let mut omitted = Vec::new();
        for (g, growth_per_s, verdict, why) in judged {
            // --older: a blocked group none of whose members has been old
            // that long is noise unless it is a verdict.
            let young = g.key.state.is_waiting() && g.aged == 0 && verdict == Verdict::Ok;
            let shown = !young && reports.len() < self.shape.top;
            let pooled = in_pool.contains(&g.key);
            let channels = channels.remove(&g.key);
            let trend = self.groups.totals(&group_trend_of(&g.key));
            let mut report = group_report(g, growth_per_s, verdict, why, channels);
            report.trend = trend;
            if pooled && verdict != Verdict::Ok {
                report.cause = Some(POOL_NEVER_CLOSED.name);
                report.fix = Some(POOL_NEVER_CLOSED.fix);
            }
            if shown {
                reports.push(report);
            } else {
                omitted.push(report);
            }
        }
        Report {
            is_final,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            target: self.target.clone(),
            events,
            live,
            // The session knows when its data was read (`session/trace.rs`).
            data_age_s: None,
            system,
            blocking,
            window_s,
            groups: reports,
            groups_omitted: omitted.len(),
            omitted,
            at_exit: matches!(moment, Moment::AtExit { .. }),
            deadlock,
            partial_deadlocks,
            notes: self.notes.clone(),
            threads: self.threads.clone(),
            // Set by the session, which holds the budget.
            overhead: None,
        }
    }
}

/// Functions on the stacks of goroutines blocked accepting connections: a
/// group created by one of them is a server's per-connection goroutines.
fn accept_loops(groups: &[Group]) -> std::collections::HashSet<String> {
    groups
        .iter()
        .filter(|g| {
            g.stack.iter().any(|f| {
                f.function.contains("(*netFD).accept")
                    || f.function.contains("(*TCPListener).accept")
            })
        })
        .flat_map(|g| g.stack.iter().map(|f| f.function.to_string()))
        .collect()
}

/// What a trend follows: where tasks are created and what they run.
type SiteKey = (Frame, Frame);

fn site_of(k: &GroupKey) -> SiteKey {
    (k.created_by.clone(), k.start.clone())
}

/// A group without its wait state: members of one site (and, for a spawn
/// helper, one caller of it) blocked at one frame.
type GroupTrendKey = (Frame, Option<Frame>, Frame, Option<Frame>);

fn group_trend_of(k: &GroupKey) -> GroupTrendKey {
    (
        k.created_by.clone(),
        k.via.clone(),
        k.start.clone(),
        k.blocked_at.clone(),
    )
}

fn group_report(
    g: Group,
    (growth_per_s, session): (f64, SessionGrowth),
    verdict: Verdict,
    why: String,
    channels: Option<ChannelSummary>,
) -> GroupReport {
    let cause = (verdict != Verdict::Ok)
        .then(|| classify(&g, channels.as_ref()))
        .flatten();
    GroupReport {
        cause: cause.map(|c| c.name),
        fix: cause.map(|c| c.fix),
        channels,
        kind: g.blocking.then_some("blocking"),
        main: g.main,
        count: g.count,
        state: g.key.state.label().to_string(),
        created_by: g.key.created_by,
        created_via: g.key.via,
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
        session,
        verdict,
        why,
        stranded: g.stranded,
        deadlocked: g.deadlocked,
        stack: g.stack,
        sample_ids: g.sample_ids,
        trend: Vec::new(),
    }
}
