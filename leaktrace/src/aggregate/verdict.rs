//! The verdict on each group, with the reason in words.
//!
//! The rules (also in the README):
//! 1. The runtime's own goroutines are `ok`.
//! 2. Running or runnable: `ok`. A goroutine spinning on a CPU is a CPU
//!    problem, not a leak.
//! 3. Waiting on something that can never happen (a nil channel, `select {}`):
//!    `leak`, whatever the count.
//! 4. Waiting, and the number of old tasks (alive at least `--older`) from
//!    the group's creation site and function grew over the window by at
//!    least `min_growth` and 10 %, in at least three separate steps: `leak`.
//!    Short-lived tasks never get old, so a busy, healthy server does not
//!    trip this however high its count; a pool started all at once ages in
//!    a single step, so it does not either.
//! 5. Waiting, flat, but at least `suspect_count` members blocked longer than
//!    `--older`: `suspect` (leaked before we attached, or sized by load: watch
//!    longer, or compare with load).
//! 6. Anything else: `ok` (e.g. a fixed pool idling on its jobs channel).
use serde::Serialize;

use super::{
    groups::Group,
    trend::{MIN_RISES, Movement},
};
use crate::runtime::TaskState;

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
    /// What the runtime calls a task in reports: "goroutine" or "task".
    pub noun: &'static str,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            older_s: 1.0,
            suspect_count: 100,
            min_growth: 3,
            noun: "goroutine",
        }
    }
}

pub fn judge(g: &Group, m: &Movement, rules: &Rules) -> (Verdict, String) {
    let older = human_secs(rules.older_s);
    let noun = rules.noun;
    if g.system {
        return (Verdict::Ok, format!("the runtime's own {noun}"));
    }
    let reason = match &g.key.state {
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
    let at = g
        .key
        .blocked_at
        .as_ref()
        .map(|f| format!(" at {}", f.function))
        .unwrap_or_default();
    if g.never_ends && g.key.state.is_waiting() {
        return (
            Verdict::Leak,
            format!("blocked in `{reason}`{at}: nothing can ever wake it"),
        );
    }
    let grew = m.aged_last.saturating_sub(m.aged_first);
    let needed = rules
        .min_growth
        .max((m.aged_first as f64 * 0.10).ceil() as u32);
    if m.ticks > MIN_RISES && m.aged_rises >= MIN_RISES && m.aged_slope > 0.0 && grew >= needed {
        let verdict = if g.key.state.is_waiting() {
            Verdict::Leak
        } else {
            Verdict::Suspect
        };
        return (
            verdict,
            format!(
                "grows {:+.1}/s: {} more {noun}s older than {older} stuck in `{reason}`{at} over {}, and none finish",
                m.aged_slope,
                grew,
                human_secs(m.window_s)
            ),
        );
    }
    if u64::from(g.aged) >= rules.suspect_count {
        return (
            Verdict::Suspect,
            format!(
                "{} blocked ≥ {older} in `{reason}`{at}, flat over {}: leaked before attach, or sized \
                 by load; watch longer or compare with load",
                g.aged,
                human_secs(m.window_s)
            ),
        );
    }
    if m.growth_per_s > 0.0 && g.aged == 0 {
        return (
            Verdict::Ok,
            format!("members are younger than {older}: short-lived work, not stuck"),
        );
    }
    (
        Verdict::Ok,
        format!("flat at {} over {}", g.count, human_secs(m.window_s)),
    )
}

pub fn human_secs(s: f64) -> String {
    if s < 1.0 {
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
    use super::*;
    use crate::{aggregate::groups::GroupKey, symbols::Frame};

    fn group(state: TaskState, count: u64, aged: u32, never_ends: bool) -> Group {
        Group {
            key: GroupKey {
                created_by: Frame::default(),
                start: Frame::default(),
                state,
                blocked_at: None,
            },
            count,
            never_ends,
            system: false,
            blocked_s: None,
            blocked_at_least: false,
            min_at_least: false,
            max_at_least: false,
            aged,
            old: aged,
            stack: vec![],
            unstable: 0,
            sample_ids: vec![],
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
        }
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
                &group(waiting("chan receive (nil chan)"), 1, 0, true),
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
}
