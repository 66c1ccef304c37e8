//! The verdict on each group, with the reason in words. Every `leak` says
//! what a person can check: a trend, the group's age against its finished
//! siblings, or a wait that can never end.
//!
//! The rules (also in the README):
//! 1. The runtime's own tasks are `ok`; so is the program's main goroutine
//!    (it has no `go` statement, and parking it forever is a server's idiom).
//! 2. Running or runnable: `ok`. A goroutine spinning on a CPU is a CPU
//!    problem, not a leak.
//! 3. Waiting on something that can never happen (a nil channel, `select {}`):
//!    `leak`, unless it is a single goroutine whose site does not keep
//!    producing them (`suspect`: fine if it is meant to live as long as the
//!    program).
//! 4. Waiting, and the group's old members (alive at least `--older`) grew
//!    over the recent window (`--window`) by at least `min_growth` and 10 %,
//!    in at least three separate steps, and so did its creation site: `leak`.
//!    Short-lived tasks never get old, so a busy, healthy server does not
//!    trip this however high its count; a pool started all at once ages in a
//!    single step, so it does not either. Growing in step with the process's
//!    open sockets follows load instead (`ok` in I/O wait, else `suspect`).
//! 5. The same growth earlier in the session, now flat, with the members
//!    still blocked: `leak` ("grew by N in the first …, flat for the last …"),
//!    unless the open sockets grew in step over the session (load, as in 4).
//! 6. Waiting far longer than every finished sibling from the same creation
//!    site lived (at least 20 finished, 50× their p99 and 2× the longest):
//!    `leak` — the orphaned-request pattern, found without waiting for growth.
//!    Only for waits that end a piece of work (a send, a lock, a WaitGroup),
//!    not for a receive, a select or a `sync.Cond` wait: that is where loops
//!    and pools idle, and one spawn helper (`s.startGoRoutine(f)`) gives
//!    them the same creation site as short-lived work.
//! 7. Blocked longer than `--stuck` outside an idle pattern (accept, a read
//!    on a connection, a timer, a fixed pool's receive): `suspect`.
//! 8. Flat, but at least `suspect_count` members blocked longer than
//!    `--older`: `suspect`.
//! 9. Anything else: `ok`.
use serde::Serialize;

use super::{
    groups::Group,
    trend::{MIN_RISES, Movement, Session},
};
use crate::runtime::{Lifetimes, TaskState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Leak,
    Suspect,
    Ok,
}

#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub older_s: f64,
    pub suspect_count: u64,
    pub min_growth: u32,
    /// Blocked longer than this outside an idle pattern is `suspect`.
    pub stuck_s: f64,
    /// What the runtime calls a task in reports: "goroutine" or "task".
    pub noun: &'static str,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            older_s: 1.0,
            suspect_count: 100,
            min_growth: 3,
            stuck_s: 600.0,
            noun: "goroutine",
        }
    }
}

/// Finished siblings a site needs before its lifetimes say anything.
pub const MIN_SIBLINGS: u64 = 20;

/// What a group is judged on besides itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Evidence {
    /// The group's own members (creation site, function and blocked frame,
    /// any wait state), so a figure quoted on a group is about that group.
    pub group: Movement,
    /// Every member of the creation site and function, in any state: a
    /// pool's workers move between running and waiting while it stays the
    /// same size, and a site must grow for its groups to be growing.
    pub site: Movement,
    /// How long the site's finished tasks lived.
    pub siblings: Option<Lifetimes>,
    /// The process's open sockets over the same time.
    pub sockets: Option<Movement>,
    /// The group's creation site is a function that is blocked accepting
    /// connections right now: its members are per-connection goroutines of
    /// a server, which live as long as their clients keep them open.
    pub accepted: bool,
}

fn needed(rules: &Rules, first: u32) -> u32 {
    rules.min_growth.max((first as f64 * 0.10).ceil() as u32)
}

/// Steady growth over the recent window.
fn grows(m: &Movement, rules: &Rules) -> bool {
    m.ticks > MIN_RISES
        && m.aged_rises >= MIN_RISES
        && m.aged_slope > 0.0
        && m.aged_last.saturating_sub(m.aged_first) >= needed(rules, m.aged_first)
}

/// Steady growth at some point of the session.
fn grew(s: &Session, rules: &Rules) -> bool {
    s.rises >= MIN_RISES && s.grew() >= needed(rules, s.aged_first)
}

/// Waits for the next piece of work or a signal: where long-lived loops
/// and pools idle.
fn waits_for_work(reason: &str) -> bool {
    matches!(reason, "chan receive" | "select" | "sync.Cond.Wait")
}

/// Waits a healthy program spends most of its time in: a server's accept
/// and its reads on live connections, sleeps and timers.
fn idle_wait(reason: &str, g: &Group) -> bool {
    // A tokio task is `idle` whatever it awaits; only an await point in
    // tokio's sync primitives says it waits on the program itself.
    let tokio_sync = g.stack.iter().any(|f| f.function.contains("tokio::sync::"));
    matches!(reason, "IO wait" | "sleep" | "idle, no waker")
        || (reason == "idle" && !tokio_sync)
        || g.stack.iter().any(|f| {
            let f = &*f.function;
            f.starts_with("time.Sleep")
                || f.starts_with("time.(*Ticker)")
                || f.starts_with("time.Tick")
                || f.contains("(*netFD).accept")
                || f.starts_with("net.(*conn).Read")
        })
}

pub fn judge(g: &Group, e: &Evidence, rules: &Rules) -> (Verdict, String) {
    let (verdict, why) = judge_by_evidence(g, e, rules);
    match stranded_reason(g, rules) {
        Some(proof) if verdict == Verdict::Leak => (Verdict::Leak, format!("{proof}; {why}")),
        Some(proof) => (Verdict::Leak, proof),
        None => (verdict, why),
    }
}

/// What a walk of the target's memory proved, which outweighs any trend:
/// members nothing that can still run reaches are leaked however few and
/// however flat (the main task excepted: parking it for good is an idiom).
fn stranded_reason(g: &Group, rules: &Rules) -> Option<String> {
    if g.stranded == 0 || g.main || g.system || !g.key.state.is_waiting() {
        return None;
    }
    let noun = rules.noun;
    let of = if u64::from(g.stranded) == g.count {
        if g.count == 1 {
            format!("this {noun}")
        } else {
            format!("all {} {noun}s", g.count)
        }
    } else {
        format!("{} of these {} {noun}s", g.stranded, g.count)
    };
    Some(if g.deadlocked > 0 {
        format!(
            "deadlock: {of} wait on channels held only by other blocked {noun}s that wait for \
             them in turn (see DEADLOCK), and nothing else in the program reaches those channels"
        )
    } else {
        format!(
            "{of} wait on channels nothing else in the program can reach (a walk of its memory \
             from every {noun} that can still run and every global variable found no \
             reference): they can never wake"
        )
    })
}

fn judge_by_evidence(g: &Group, e: &Evidence, rules: &Rules) -> (Verdict, String) {
    let older = human_secs(rules.older_s);
    let noun = rules.noun;
    let window = human_secs(e.group.window_s.max(e.site.window_s));
    if g.system {
        return (Verdict::Ok, format!("the runtime's own {noun}"));
    }
    if g.main {
        return (
            Verdict::Ok,
            format!(
                "the program's main {noun} (started by the runtime, no `go` statement): it lives as \
                 long as the program; parking it for good (`select {{}}`, a signal wait, `Serve`) is \
                 an idiom, not a leak"
            ),
        );
    }
    let reason = match &g.key.state {
        // Its state word says running for as long as its closure runs,
        // whether that computes or waits in a call tokio cannot see.
        TaskState::Running if g.blocking => {
            return (
                Verdict::Ok,
                "a spawn_blocking closure, running on a blocking-pool thread (computing, or \
                 waiting in a call tokio does not see; the thread table shows the pool)"
                    .into(),
            );
        }
        TaskState::Running => {
            return (
                Verdict::Ok,
                format!("running, not blocked: a busy {noun} is a CPU problem, not a leak"),
            );
        }
        TaskState::Runnable => {
            return (
                Verdict::Ok,
                "runnable: waiting for a CPU, not blocked".into(),
            );
        }
        TaskState::Syscall => "a system call",
        TaskState::Waiting(r) => r.as_str(),
    };
    let waiting = g.key.state.is_waiting();
    let at = g
        .key
        .blocked_at
        .as_ref()
        .map(|f| format!(" at {}", f.function))
        .unwrap_or_default();
    let site_grows = grows(&e.site, rules) || grew(&e.site.session, rules);
    if g.never_ends && waiting {
        if g.count == 1 && !site_grows && e.group.session.grew() <= 1 {
            return (
                Verdict::Suspect,
                format!(
                    "blocked in `{reason}`{at}: nothing can ever wake it. A single {noun} whose \
                     `go` statement has not run again: a leak if it does, fine if it is meant to \
                     live as long as the program"
                ),
            );
        }
        return (
            Verdict::Leak,
            format!("blocked in `{reason}`{at}: nothing can ever wake it"),
        );
    }
    // Growth the open sockets account for follows connections (load): over
    // the window, and over the session for growth that has left it.
    let in_step = |grew: u32, first: u32, last: u32| -> Option<(u32, u32)> {
        let more = last.saturating_sub(first);
        (grew > 0 && u64::from(more) * 2 >= u64::from(grew)).then_some((more, last))
    };
    let with_sockets = |grew: u32| {
        e.sockets
            .and_then(|s| in_step(grew, s.aged_first, s.aged_last))
    };
    let with_sockets_in_session = |grew: u32| {
        e.sockets
            .and_then(|s| in_step(grew, s.session.aged_first, s.session.aged_last))
    };
    // What growth in step with the sockets means: a server's connections
    // (its accept loop made them) follow its clients; reads on connections
    // the program opened itself that pile up and never finish are calls
    // with no deadline on peers that do not answer (seed scenario 15).
    let (load_verdict, what) = if e.accepted {
        // A server's per-connection goroutines follow its clients.
        let verdict = if reason == "IO wait" {
            Verdict::Ok
        } else {
            Verdict::Suspect
        };
        (
            verdict,
            "connections its accept loop is serving: it follows the clients (load)",
        )
    } else if g.key.blocked_at.is_some() && waiting {
        // The program's own code waiting on connections it opened, piling
        // up with them: calls that never finish (no deadline, no timeout).
        (
            Verdict::Leak,
            "calls this program made on connections it opened pile up with them and none \
             finish: no deadline or timeout on peers that do not answer",
        )
    } else {
        // A library's connection goroutines (an HTTP client's pool).
        (
            Verdict::Suspect,
            "a library's connection goroutines: it follows connections (load)",
        )
    };
    let sockets_flat = |reason: String| -> String {
        match e.sockets {
            Some(s) if s.aged_last <= s.aged_first => {
                format!("{reason}; open sockets stayed at {}", s.aged_last)
            }
            _ => reason,
        }
    };
    if grows(&e.group, rules) && site_grows {
        let m = &e.group;
        let more = m.aged_last.saturating_sub(m.aged_first).min(g.count as u32);
        if let Some((sockets, now)) = with_sockets(more) {
            return (
                load_verdict,
                format!(
                    "grows {:+.1}/s in step with the open sockets: +{more} {noun}s with +{sockets} \
                     sockets ({now} now) over {window}: {what}",
                    m.aged_slope
                ),
            );
        }
        let verdict = if waiting {
            Verdict::Leak
        } else {
            Verdict::Suspect
        };
        return (
            verdict,
            sockets_flat(format!(
                "grows {:+.1}/s: {more} more {noun}s older than {older} stuck in `{reason}`{at} over \
                 {window}, and none finish",
                m.aged_slope
            )),
        );
    }
    let s = e.group.session;
    if waiting && grew(&s, rules) && site_grows && g.aged > 0 {
        let more = s.grew().min(g.count as u32);
        let grew_by = format!(
            "grew by {more} in the first {} of the session, flat for the last {}",
            human_secs(s.growing_s),
            human_secs(s.flat_s)
        );
        if let Some((sockets, now)) = with_sockets_in_session(more) {
            return (
                load_verdict,
                format!(
                    "{grew_by}, in step with the open sockets (+{sockets} over the session, {now} \
                     now): {what}"
                ),
            );
        }
        return (
            Verdict::Leak,
            format!("{grew_by}; they are still blocked in `{reason}`{at}"),
        );
    }
    // Without a block start (tokio without poll probes), the youngest
    // member's age bounds how long they have all been stuck.
    let blocked_min = g
        .blocked_s
        .map(|(min, _)| min)
        .or((g.youngest_s.is_finite() && g.youngest_s > 0.0).then_some(g.youngest_s));
    let ge = if g.min_at_least { "≥" } else { "" };
    if waiting
        && !idle_wait(reason, g)
        && !waits_for_work(reason)
        && let (Some(l), Some(min)) = (e.siblings, blocked_min)
        && l.finished >= MIN_SIBLINGS
        && min >= (l.p99_s * 50.0).max(l.max_s * 2.0).max(rules.older_s)
    {
        let these = if g.count == 1 {
            "this one has".to_string()
        } else {
            format!("these {} have", g.count)
        };
        return (
            Verdict::Leak,
            format!(
                "its {} siblings from the same creation site finished within {} (p99; the longest \
                 lived {}); {these} been blocked for {ge}{} in `{reason}`{at}",
                l.finished,
                human_secs(l.p99_s),
                human_secs(l.max_s),
                human_secs(min)
            ),
        );
    }
    let fixed_pool = g.count >= 2 && e.site.session.grew() == 0 && waits_for_work(reason);
    if waiting
        && !idle_wait(reason, g)
        && !fixed_pool
        && let Some(min) = blocked_min
        && min >= rules.stuck_s
    {
        return (
            Verdict::Suspect,
            format!(
                "blocked for {ge}{} in `{reason}`{at}, longer than --stuck {}, outside an idle \
                 pattern (accept, a read on a connection, a timer, a fixed pool's receive)",
                human_secs(min),
                human_secs(rules.stuck_s)
            ),
        );
    }
    if e.accepted && reason == "IO wait" {
        return (
            Verdict::Ok,
            format!(
                "{} connections its accept loop is serving, waiting for their clients: they live \
                 as long as the clients keep them open",
                g.count
            ),
        );
    }
    if u64::from(g.aged) >= rules.suspect_count {
        let why = if g.before_attach > 0 {
            "leaked before attach, or sized by load"
        } else {
            "sized by load, or leaked before this window"
        };
        return (
            Verdict::Suspect,
            format!(
                "{} blocked ≥ {older} in `{reason}`{at}, flat over {window}: {why}; watch longer or \
                 compare with load",
                g.aged
            ),
        );
    }
    if e.group.growth_per_s > 0.0 && g.aged == 0 {
        return (
            Verdict::Ok,
            format!("members are younger than {older}: short-lived work, not stuck"),
        );
    }
    if s.grew() > 0 && s.span_s > 0.0 {
        return (
            Verdict::Ok,
            format!(
                "{} now; its old members went {} → {} over {} in {} steps: not a steady trend",
                g.count,
                s.aged_first,
                s.aged_last,
                human_secs(s.span_s),
                s.rises
            ),
        );
    }
    (Verdict::Ok, format!("flat at {} over {window}", g.count))
}

/// At the moment the program exited, with goleak's meaning: a goroutine of
/// the program still blocked then is a leak, whatever the count or trend.
/// After a crash (a fatal panic or error, a fatal signal) it is `suspect`:
/// the crash ended it, tests crash subprocesses on purpose, and goleak
/// never judges a crashed process.
pub fn judge_at_exit(g: &Group, rules: &Rules, crashed: bool) -> (Verdict, String) {
    let noun = rules.noun;
    if g.system {
        return (Verdict::Ok, format!("the runtime's own {noun}"));
    }
    if g.main {
        return (
            Verdict::Ok,
            format!("the program's main {noun}: the one that ended the program"),
        );
    }
    let TaskState::Waiting(reason) = &g.key.state else {
        return (
            Verdict::Ok,
            format!(
                "{} when the program exited, not blocked",
                g.key.state.label()
            ),
        );
    };
    let at = g
        .key
        .blocked_at
        .as_ref()
        .map(|f| format!(" at {}", f.function))
        .unwrap_or_default();
    let blocked = g
        .blocked_s
        .map(|(min, _)| {
            let ge = if g.min_at_least { "≥" } else { "" };
            format!(" (blocked for {ge}{})", human_secs(min))
        })
        .unwrap_or_default();
    if crashed {
        return (
            Verdict::Suspect,
            format!(
                "still blocked in `{reason}`{at} when the program crashed{blocked}: the crash ended \
                 it; a leak if the program would otherwise have returned"
            ),
        );
    }
    (
        Verdict::Leak,
        format!("still blocked in `{reason}`{at} when the program exited{blocked}"),
    )
}

/// Every goroutine of the program blocked on the program itself (channels,
/// locks, `select {}`) for at least `hang_s`, none running, none waiting on
/// the outside world (I/O, a system call, a sleep or a timer, which can
/// wake them): nothing can ever run again. The blocked time of the most
/// recently blocked member, or `None`.
pub fn global_deadlock(groups: &[Group], hang_s: f64) -> Option<f64> {
    let program: Vec<&Group> = groups.iter().filter(|g| !g.system).collect();
    let mut since = f64::INFINITY;
    let mut off_main = false;
    for g in &program {
        let TaskState::Waiting(reason) = &g.key.state else {
            // Running, runnable, or in a system call (the signal loop of
            // `signal.Notify` is one, and waits for the outside world).
            if is_signal_loop(g) {
                continue;
            }
            return None;
        };
        if !blocks_on_program(reason) {
            return None;
        }
        since = since.min(g.blocked_s?.0);
        off_main |= !g.main;
    }
    (off_main && since.is_finite() && since >= hang_s).then_some(since)
}

fn is_signal_loop(g: &Group) -> bool {
    g.key.start.function.starts_with("os/signal.loop")
        || g.key.created_by.function.starts_with("os/signal.Notify")
}

/// Waits only another goroutine of the program can end (no timer: a plain
/// `select` may have a `time.After` case, so it does not count).
fn blocks_on_program(reason: &str) -> bool {
    matches!(
        reason,
        "chan send"
            | "chan receive"
            | "chan send (nil chan)"
            | "chan receive (nil chan)"
            | "select (no cases)"
            | "semacquire"
            | "sync.Mutex.Lock"
            | "sync.RWMutex.Lock"
            | "sync.RWMutex.RLock"
            | "sync.WaitGroup.Wait"
            | "sync.Cond.Wait"
    )
}

pub fn human_secs(s: f64) -> String {
    if s < 0.001 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::trend::Session;
    use super::*;
    use crate::{aggregate::groups::GroupKey, symbols::Frame};

    fn group(state: TaskState, count: u64, aged: u32, never_ends: bool) -> Group {
        let key = GroupKey {
            created_by: Frame::default(),
            via: None,
            start: Frame::default(),
            state,
            blocked_at: None,
        };
        Group {
            count,
            never_ends,
            aged,
            old: aged,
            ..Group::new(key, false)
        }
    }

    fn moving(first: u32, last: u32, ticks: usize) -> Movement {
        Movement {
            growth_per_s: (last - first) as f64 / 5.0,
            aged_first: first,
            aged_last: last,
            aged_slope: (last - first) as f64 / 5.0,
            aged_rises: if last > first { ticks - 1 } else { 0 },
            ticks,
            window_s: 5.0,
            session: Session::default(),
        }
    }

    fn judge(g: &Group, m: &Movement, r: &Rules) -> (Verdict, String) {
        let e = Evidence {
            group: *m,
            site: *m,
            ..Evidence::default()
        };
        super::judge(g, &e, r)
    }

    fn waiting(r: &str) -> TaskState {
        TaskState::Waiting(r.into())
    }

    #[test]
    fn the_rules() {
        let r = Rules::default();
        let flat = moving(8, 8, 6);
        assert_eq!(
            judge(
                &group(waiting("chan send"), 80, 80, false),
                &moving(20, 80, 6),
                &r
            )
            .0,
            Verdict::Leak
        );
        assert_eq!(
            judge(&group(waiting("chan receive"), 8, 8, false), &flat, &r).0,
            Verdict::Ok,
            "an idle pool"
        );
        assert_eq!(
            judge(
                &group(waiting("chan receive (nil chan)"), 3, 0, true),
                &flat,
                &r
            )
            .0,
            Verdict::Leak
        );
        assert_eq!(
            judge(
                &group(TaskState::Running, 4, 0, false),
                &moving(0, 9, 6),
                &r
            )
            .0,
            Verdict::Ok
        );
        assert_eq!(
            judge(
                &group(waiting("chan send"), 5000, 5000, false),
                &moving(5000, 5000, 6),
                &r
            )
            .0,
            Verdict::Suspect
        );
        assert_eq!(
            judge(
                &group(waiting("IO wait"), 300, 0, false),
                &moving(0, 0, 6),
                &r
            )
            .0,
            Verdict::Ok
        );
        // A pool that aged all at once is one step, not a trend.
        let mut one_step = moving(0, 8, 6);
        one_step.aged_rises = 1;
        assert_eq!(
            judge(&group(waiting("chan receive"), 8, 8, false), &one_step, &r).0,
            Verdict::Ok
        );
        // Two ticks are not a trend.
        assert_eq!(
            judge(
                &group(waiting("chan send"), 80, 80, false),
                &moving(20, 80, 2),
                &r
            )
            .0,
            Verdict::Ok
        );
        let (_, why) = judge(
            &group(waiting("chan send"), 80, 80, false),
            &moving(20, 80, 6),
            &r,
        );
        assert!(
            why.contains("chan send") && why.contains("+12.0/s"),
            "{why}"
        );
    }

    #[test]
    fn main_goroutine_and_single_forever_waits_are_not_leaks() {
        let r = Rules::default();
        let flat = moving(1, 1, 6);
        let mut main = group(waiting("select (no cases)"), 1, 1, true);
        main.main = true;
        assert_eq!(judge(&main, &flat, &r).0, Verdict::Ok);
        // One `go` statement that parked one goroutine forever: suspect.
        let single = group(waiting("select (no cases)"), 1, 1, true);
        assert_eq!(judge(&single, &flat, &r).0, Verdict::Suspect);
        // Its site producing more of them: a leak.
        assert_eq!(
            judge(
                &group(waiting("select (no cases)"), 12, 12, true),
                &flat,
                &r
            )
            .0,
            Verdict::Leak
        );
    }

    #[test]
    fn a_group_far_older_than_its_finished_siblings_is_a_leak() {
        let r = Rules::default();
        let mut g = group(waiting("chan send"), 37, 37, false);
        g.blocked_s = Some((720.0, 730.0));
        let siblings = Lifetimes {
            finished: 9800,
            p99_s: 0.04,
            max_s: 0.2,
        };
        let e = Evidence {
            group: moving(37, 37, 6),
            site: moving(37, 37, 6),
            siblings: Some(siblings),
            sockets: None,
            accepted: false,
        };
        let (v, why) = super::judge(&g, &e, &r);
        assert_eq!(v, Verdict::Leak, "{why}");
        assert!(
            why.contains("9800 siblings") && why.contains("12m"),
            "{why}"
        );
        // Too few finished siblings to say anything.
        let few = Evidence {
            siblings: Some(Lifetimes {
                finished: 3,
                ..siblings
            }),
            ..e
        };
        assert_ne!(super::judge(&g, &few, &r).0, Verdict::Leak);
        // Siblings that live long too: no claim.
        let slow = Evidence {
            siblings: Some(Lifetimes {
                max_s: 600.0,
                ..siblings
            }),
            ..e
        };
        assert_ne!(super::judge(&g, &slow, &r).0, Verdict::Leak);
    }

    #[test]
    fn a_spawn_helpers_idle_loops_are_not_orphans_of_its_short_lived_work() {
        // One `go` statement (s.startGoRoutine) for everything: 1201
        // short-lived siblings finished, a leak elsewhere makes the site grow.
        let r = Rules::default();
        let e = Evidence {
            group: moving(8, 8, 6),
            site: moving(10, 70, 6),
            siblings: Some(Lifetimes {
                finished: 1201,
                p99_s: 0.0005,
                max_s: 0.001,
            }),
            sockets: None,
            accepted: false,
        };
        let mut pool = group(waiting("chan receive"), 8, 8, false);
        pool.blocked_s = Some((3.0, 3.0));
        let (v, why) = super::judge(&pool, &e, &r);
        assert_eq!(v, Verdict::Ok, "a fixed pool, idle: {why}");
        let mut watcher = group(waiting("select"), 1, 1, false);
        watcher.blocked_s = Some((6.0, 6.0));
        let (v, why) = super::judge(&watcher, &e, &r);
        assert_eq!(v, Verdict::Ok, "a config watcher: {why}");
        let mut cond = group(waiting("sync.Cond.Wait"), 2, 2, false);
        cond.blocked_s = Some((6.0, 6.0));
        assert_eq!(super::judge(&cond, &e, &r).0, Verdict::Ok);
        // A send that old beside those siblings is an orphan all the same.
        let mut send = group(waiting("chan send"), 8, 8, false);
        send.blocked_s = Some((3.0, 3.0));
        assert_eq!(super::judge(&send, &e, &r).0, Verdict::Leak);
    }

    #[test]
    fn growth_quoted_is_the_groups_own_and_sockets_explain_load() {
        let r = Rules::default();
        // The site grew by 400; this group has one member.
        let g = group(waiting("select"), 1, 1, false);
        let e = Evidence {
            group: moving(1, 1, 6),
            site: moving(0, 400, 6),
            ..Evidence::default()
        };
        assert_eq!(super::judge(&g, &e, &r).0, Verdict::Ok);
        // Growing in step with open sockets, in I/O wait, children of an
        // accept loop: a server's connections.
        let g = group(waiting("IO wait"), 200, 200, false);
        let e = Evidence {
            group: moving(0, 200, 6),
            site: moving(0, 200, 6),
            sockets: Some(moving(10, 210, 6)),
            siblings: None,
            accepted: true,
        };
        let (v, why) = super::judge(&g, &e, &r);
        assert_eq!(v, Verdict::Ok, "{why}");
        assert!(why.contains("+200 sockets"), "{why}");
        // The same growth on connections the program opened itself: calls
        // with no deadline on a peer that never answers (seed scenario 15).
        let client = Evidence {
            accepted: false,
            ..e
        };
        let mut lookups = g.clone();
        lookups.key.blocked_at = Some(Frame {
            function: "main.(*StockClient).lookup".into(),
            file: "main.go".into(),
            line: 40,
        });
        let (v, why) = super::judge(&lookups, &client, &r);
        assert_eq!(v, Verdict::Leak, "{why}");
        // A library's own connection goroutines (an HTTP client's pool,
        // blocked in library code only) follow connections: not a leak.
        assert_eq!(super::judge(&g, &client, &r).0, Verdict::Suspect);
        // A flat crowd of a server's idle connections is not suspect.
        let flat = Evidence {
            group: moving(200, 200, 6),
            site: moving(200, 200, 6),
            sockets: Some(moving(210, 210, 6)),
            ..e
        };
        assert_eq!(super::judge(&g, &flat, &r).0, Verdict::Ok);
        // Sockets flat: a leak, and the reason says so.
        let e = Evidence {
            sockets: Some(moving(10, 10, 6)),
            ..e
        };
        let (v, why) = super::judge(&group(waiting("chan send"), 200, 200, false), &e, &r);
        assert_eq!(v, Verdict::Leak);
        assert!(why.contains("open sockets stayed at 10"), "{why}");
    }

    #[test]
    fn connections_that_came_and_stay_are_load_after_the_window_too() {
        // Per-connection readers grew with the sockets for 3s, then flat: a
        // 2s window sees neither grow, the session sees both.
        let r = Rules::default();
        let grown = Session {
            span_s: 9.0,
            aged_first: 0,
            aged_last: 60,
            rises: 25,
            growing_s: 4.0,
            flat_s: 5.0,
        };
        let mut readers = moving(60, 60, 6);
        readers.session = grown;
        let mut sockets = moving(121, 121, 6);
        sockets.session = Session {
            aged_first: 1,
            aged_last: 121,
            ..grown
        };
        let e = Evidence {
            group: readers,
            site: readers,
            siblings: None,
            sockets: Some(sockets),
            accepted: true,
        };
        let (v, why) = super::judge(&group(waiting("IO wait"), 60, 60, false), &e, &r);
        assert_eq!(v, Verdict::Ok, "{why}");
        assert!(
            why.contains("grew by 60") && why.contains("+120 over the session"),
            "{why}"
        );
        let (v, _) = super::judge(&group(waiting("chan send"), 60, 60, false), &e, &r);
        assert_eq!(v, Verdict::Suspect);
        // Sockets flat over the session: the growth was not load.
        let e = Evidence {
            sockets: Some(moving(121, 121, 6)),
            ..e
        };
        let (v, why) = super::judge(&group(waiting("IO wait"), 60, 60, false), &e, &r);
        assert_eq!(v, Verdict::Leak, "{why}");
    }

    #[test]
    fn short_lifetimes_read_as_microseconds() {
        assert_eq!(human_secs(0.0004), "400µs");
        assert_eq!(human_secs(0.04), "40ms");
        assert_eq!(human_secs(90.0), "90s");
    }

    #[test]
    fn a_leak_that_stopped_growing_stays_a_leak() {
        let r = Rules::default();
        let mut m = moving(800, 800, 6);
        m.session = Session {
            span_s: 35.0,
            aged_first: 0,
            aged_last: 800,
            rises: 40,
            growing_s: 20.0,
            flat_s: 15.0,
        };
        let (v, why) = judge(&group(waiting("chan send"), 800, 800, false), &m, &r);
        assert_eq!(v, Verdict::Leak);
        assert!(
            why.contains("grew by 800 in the first 20s") && why.contains("flat for the last 15s"),
            "{why}"
        );
    }

    #[test]
    fn at_exit_still_blocked_is_a_leak_and_deadlocks_need_everyone_blocked() {
        let r = Rules::default();
        assert_eq!(
            judge_at_exit(&group(waiting("chan send"), 25, 0, false), &r, false).0,
            Verdict::Leak
        );
        assert_eq!(
            judge_at_exit(&group(waiting("chan send"), 25, 0, false), &r, true).0,
            Verdict::Suspect,
            "a crash ended it"
        );
        let mut main = group(TaskState::Running, 1, 0, false);
        main.main = true;
        assert_eq!(judge_at_exit(&main, &r, false).0, Verdict::Ok);
        assert_eq!(
            judge_at_exit(&group(TaskState::Runnable, 2, 0, false), &r, false).0,
            Verdict::Ok
        );

        let blocked = |reason: &str, secs: f64, is_main: bool| {
            let mut g = group(waiting(reason), 1, 1, false);
            g.blocked_s = Some((secs, secs));
            g.main = is_main;
            g
        };
        // A hung test: the test goroutine and main both wait on channels.
        let hung = [
            blocked("chan receive", 9.0, true),
            blocked("chan send", 6.0, false),
        ];
        assert_eq!(global_deadlock(&hung, 5.0), Some(6.0));
        assert_eq!(global_deadlock(&hung, 7.0), None, "not blocked long enough");
        // An idle server: its accept loop waits on I/O.
        let idle = [
            blocked("chan receive", 60.0, false),
            blocked("IO wait", 60.0, false),
        ];
        assert_eq!(global_deadlock(&idle, 5.0), None);
        // main waiting for a signal, alone: an idiom, not a deadlock.
        assert_eq!(
            global_deadlock(&[blocked("chan receive", 60.0, true)], 5.0),
            None
        );
        // A select may have a timer case: not counted.
        let timed = [
            blocked("select", 60.0, false),
            blocked("chan receive", 60.0, true),
        ];
        assert_eq!(global_deadlock(&timed, 5.0), None);
    }
}
