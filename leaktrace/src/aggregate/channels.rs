//! The other side of a group's channels: for the members blocked in a
//! channel operation, which channels they wait on, in what state, and who
//! else is blocked on them, in a few words ("1 channel, unbuffered: 37
//! senders blocked, no goroutine blocked on the other side").
//!
//! Only what was read is said. "No goroutine blocked on the other side" is
//! a fact about this instant, not a proof that nobody will ever send: a
//! goroutine that is running, or not started yet, may still.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::groups::{GroupIndex, GroupKey};
use crate::runtime::{ChanDir, ChanState, ChanTimer, TaskView};

/// Shapes listed per group at most; the rest are counted.
const MAX_SHAPES: usize = 4;

/// What a group's channel waiters wait on. JSON: the group's `channels`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChannelSummary {
    /// Members waiting in a channel operation whose channels were read.
    pub members: u64,
    /// Members whose channels could not be read consistently (they moved
    /// while being read).
    pub unread: u64,
    /// Members waiting on a nil channel (which nothing can ever make ready).
    pub nil: u64,
    /// Channels the members wait on, each counted once.
    pub distinct: u64,
    /// Cases per member, when every member's select has as many (1 for a
    /// plain send or receive).
    pub cases: Option<u64>,
    /// The channels by shape, most numerous first.
    pub shapes: Vec<ChannelShape>,
    /// Channels in shapes not listed.
    pub other_channels: u64,
    /// The same in words.
    pub summary: String,
}

/// Channels that look alike: what the members do on them, their buffer,
/// and who is blocked on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelShape {
    pub channels: u64,
    /// What the members do on these channels: `send`, `receive`, or
    /// `unknown` (a select case whose direction could not be read).
    pub op: &'static str,
    /// As one case of a select.
    pub select: bool,
    /// Buffer capacity (0: unbuffered) and values buffered.
    pub cap: u64,
    pub len: u64,
    pub closed: bool,
    /// `timer` (`time.After`, `time.NewTimer`, pending), `ticker`
    /// (`time.NewTicker`, `time.Tick`), `stopped timer`, `unknown` (cannot
    /// tell), or null (not a timer's).
    pub timer: Option<&'static str>,
    /// Goroutines blocked sending / receiving on each such channel (all
    /// live goroutines, not only this group's).
    pub senders: u32,
    pub receivers: u32,
    /// False when some goroutine waits on such a channel in a select case
    /// whose direction could not be read: the counts are then lower bounds.
    pub complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ShapeKey {
    dir: ChanDir,
    select: bool,
    cap: u64,
    len: u64,
    closed: bool,
    timer: ChanTimer,
    senders: u32,
    receivers: u32,
    complete: bool,
}

/// Per group, what its channel waiters wait on; groups without any have
/// no entry.
pub fn summarize<'v>(
    views: impl IntoIterator<Item = &'v TaskView>,
) -> HashMap<GroupKey, ChannelSummary> {
    #[derive(Default)]
    struct Acc {
        members: u64,
        unread: u64,
        nil: u64,
        cases: Option<Option<u64>>,
        /// channel → (what the members do on it, select, its state).
        chans: HashMap<u64, (ChanDir, bool, ChanState)>,
    }
    fn acc_of<'a, 'v>(
        acc: &'a mut Vec<Acc>,
        index: &mut GroupIndex<'v>,
        v: &'v TaskView,
    ) -> &'a mut Acc {
        let i = index.of(v);
        if i == acc.len() {
            acc.push(Acc::default());
        }
        &mut acc[i]
    }
    let mut acc: Vec<Acc> = Vec::new();
    let mut index = GroupIndex::default();
    for v in views {
        let crate::runtime::TaskState::Waiting(reason) = v.state() else {
            continue;
        };
        if v.waits_on.is_empty() {
            if is_channel_wait(reason) {
                acc_of(&mut acc, &mut index, v).unread += 1;
            }
            continue;
        }
        let a = acc_of(&mut acc, &mut index, v);
        if v.waits_on.iter().all(|w| w.chan == 0) {
            a.nil += 1;
            continue;
        }
        let n = v.waits_on.len() as u64;
        a.cases = Some(match a.cases {
            None => Some(n),
            Some(c) => c.filter(|&c| c == n),
        });
        let mut read = false;
        for w in v.waits_on.iter() {
            let Some(state) = w.state else { continue };
            read = true;
            let e = a.chans.entry(w.chan).or_insert((w.dir, w.select, state));
            if e.0 != w.dir {
                // Members send and receive on it: say neither.
                e.0 = ChanDir::Unknown;
            }
        }
        if read {
            a.members += 1;
        } else {
            a.unread += 1;
        }
    }
    index
        .keys
        .into_iter()
        .zip(acc)
        .map(|(key, a)| {
            let mut shapes: BTreeMap<ShapeKey, u64> = BTreeMap::new();
            for (dir, select, s) in a.chans.values() {
                *shapes
                    .entry(ShapeKey {
                        dir: *dir,
                        select: *select,
                        cap: s.cap,
                        len: s.len,
                        closed: s.closed,
                        timer: s.timer,
                        senders: s.senders,
                        receivers: s.receivers,
                        complete: s.counts_complete,
                    })
                    .or_default() += 1;
            }
            let mut shapes: Vec<(ShapeKey, u64)> = shapes.into_iter().collect();
            shapes.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
            let other_channels = shapes.iter().skip(MAX_SHAPES).map(|s| s.1).sum();
            let shapes: Vec<ChannelShape> = shapes
                .into_iter()
                .take(MAX_SHAPES)
                .map(|(k, n)| ChannelShape {
                    channels: n,
                    op: k.dir.label(),
                    select: k.select,
                    cap: k.cap,
                    len: k.len,
                    closed: k.closed,
                    timer: k.timer.label(),
                    senders: k.senders,
                    receivers: k.receivers,
                    complete: k.complete,
                })
                .collect();
            let mut s = ChannelSummary {
                members: a.members,
                unread: a.unread,
                nil: a.nil,
                distinct: a.chans.len() as u64,
                cases: a.cases.flatten(),
                shapes,
                other_channels,
                summary: String::new(),
            };
            s.summary = words(&s);
            (key, s)
        })
        .collect()
}

fn is_channel_wait(reason: &str) -> bool {
    (reason.starts_with("chan ") || reason.starts_with("select")) && reason != "select (no cases)"
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "unbuffered", "buffered, 3 of 10 used", "closed", with the timer.
fn kind(s: &ChannelShape, many: bool) -> String {
    let noun = match (s.timer, many) {
        (Some("timer"), false) => "timer channel",
        (Some("timer"), true) => "timer channels",
        (Some("ticker"), false) => "ticker channel",
        (Some("ticker"), true) => "ticker channels",
        (Some("stopped timer"), false) => "channel of a stopped timer",
        (Some("stopped timer"), true) => "channels of stopped timers",
        (_, false) => "channel",
        (_, true) => "channels",
    };
    let buffer = if s.closed {
        "closed".to_string()
    } else if s.cap == 0 {
        "unbuffered".to_string()
    } else if s.len == 0 {
        format!("buffer of {} empty", s.cap)
    } else if s.len >= s.cap {
        format!("buffer of {} full", s.cap)
    } else {
        format!("buffer {} of {} used", s.len, s.cap)
    };
    format!("{noun}, {buffer}")
}

/// Who is blocked on a channel of this shape, from the members' side.
fn sides(s: &ChannelShape) -> String {
    let ge = if s.complete { "" } else { "≥" };
    let senders = format!("{ge}{}", plural(s.senders as u64, "sender", "senders"));
    let receivers = format!(
        "{ge}{}",
        plural(s.receivers as u64, "receiver", "receivers")
    );
    let nobody = "no goroutine blocked on the other side";
    match s.op {
        "send" if s.receivers == 0 => format!("{senders} blocked, {nobody}"),
        "send" => format!("{senders} and {receivers} blocked"),
        "receive" => match s.timer {
            Some("timer") => format!("{receivers} blocked, a pending timer will send"),
            Some("ticker") => format!("{receivers} blocked, a running ticker sends"),
            Some("stopped timer") => {
                format!("{receivers} blocked, its timer is stopped or fired: it will not send")
            }
            Some("unknown") if s.senders == 0 && !s.closed => format!(
                "{receivers} blocked, {nobody}, but a timer may feed it (leaktrace cannot tell)"
            ),
            _ if s.senders == 0 && !s.closed => format!("{receivers} blocked, {nobody}"),
            _ => format!("{receivers} and {senders} blocked"),
        },
        _ => format!("{senders} and {receivers} blocked"),
    }
}

/// The summary in words.
pub fn words(s: &ChannelSummary) -> String {
    let mut parts: Vec<String> = Vec::new();
    if s.nil > 0 {
        parts.push(format!(
            "{} on a nil channel, which is never ready",
            plural(s.nil, "goroutine", "goroutines")
        ));
    }
    let select = s.shapes.iter().any(|x| x.select);
    let mut shapes: Vec<String> = Vec::new();
    for x in &s.shapes {
        if x.channels == 1 {
            shapes.push(format!("1 {}: {}", kind(x, false), sides(x)));
        } else {
            shapes.push(format!(
                "{} {}, each with {}",
                x.channels,
                kind(x, true),
                sides(x)
            ));
        }
    }
    if s.other_channels > 0 {
        shapes.push(format!(
            "{} more",
            plural(s.other_channels, "channel", "channels")
        ));
    }
    if !shapes.is_empty() {
        let head = match (select, s.cases) {
            (true, Some(n)) => format!("select over {} each: ", plural(n, "channel", "channels")),
            (true, None) => "select: ".to_string(),
            _ => String::new(),
        };
        parts.push(format!("{head}{}", shapes.join("; ")));
    }
    if s.unread > 0 {
        parts.push(format!(
            "{} not read (moved while read)",
            plural(s.unread, "member's channels", "members' channels")
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        runtime::{ChanWait, Place, Since, TaskState},
        symbols::Frame,
    };

    fn frame(f: &str) -> Frame {
        Frame {
            function: f.into(),
            file: "main.go".into(),
            line: 1,
        }
    }

    fn view(id: u64, reason: &str, waits: Vec<ChanWait>) -> TaskView {
        TaskView {
            key: id,
            id,
            place: Arc::new(Place {
                state: TaskState::Waiting(reason.into()),
                never_ends: false,
                system: false,
                blocking: false,
                via: None,
                created_by: frame("main.f"),
                start: frame("main.g"),
                stack: Arc::from([]),
                blocked_at: Some(frame("main.g")),
                main: false,
                stack_unstable: false,
            }),
            blocked_since: Some(Since::Exact(0)),
            alive_since: Since::Exact(0),
            waits_on: waits.into(),
            stranded: Default::default(),
        }
    }

    fn state(cap: u64, senders: u32, receivers: u32, timer: ChanTimer) -> ChanState {
        ChanState {
            cap,
            len: 0,
            closed: false,
            elem_size: 8,
            timer,
            receivers,
            senders,
            counts_complete: true,
        }
    }

    fn wait(chan: u64, dir: ChanDir, select: bool, st: ChanState) -> ChanWait {
        ChanWait {
            chan,
            dir,
            select,
            state: Some(st),
        }
    }

    fn one(views: &[TaskView]) -> ChannelSummary {
        let mut m = summarize(views);
        assert_eq!(m.len(), 1);
        m.drain().next().unwrap().1
    }

    #[test]
    fn one_channel_many_senders() {
        let st = state(0, 37, 0, ChanTimer::No);
        let views: Vec<_> = (0..37)
            .map(|i| view(i, "chan send", vec![wait(0x100, ChanDir::Send, false, st)]))
            .collect();
        let s = one(&views);
        assert_eq!((s.members, s.distinct, s.cases), (37, 1, Some(1)));
        assert_eq!(
            s.summary,
            "1 channel, unbuffered: 37 senders blocked, no goroutine blocked on the other side"
        );
    }

    #[test]
    fn one_channel_each() {
        let st = state(0, 1, 0, ChanTimer::No);
        let views: Vec<_> = (0..37)
            .map(|i| {
                view(
                    i,
                    "chan send",
                    vec![wait(0x100 + i * 8, ChanDir::Send, false, st)],
                )
            })
            .collect();
        assert_eq!(
            one(&views).summary,
            "37 channels, unbuffered, each with 1 sender blocked, no goroutine blocked on the other side"
        );
    }

    #[test]
    fn select_with_timer_and_ticker_and_nil() {
        let views: Vec<_> = (0..3)
            .map(|i| {
                view(
                    i,
                    "select",
                    vec![
                        wait(
                            0x100 + i * 8,
                            ChanDir::Recv,
                            true,
                            state(0, 0, 1, ChanTimer::No),
                        ),
                        wait(
                            0x900 + i * 8,
                            ChanDir::Recv,
                            true,
                            state(1, 0, 1, ChanTimer::Timer),
                        ),
                    ],
                )
            })
            .collect();
        let s = one(&views);
        assert_eq!((s.distinct, s.cases, s.shapes.len()), (6, Some(2), 2));
        assert_eq!(
            s.summary,
            "select over 2 channels each: 3 channels, unbuffered, each with 1 receiver blocked, \
             no goroutine blocked on the other side; 3 timer channels, buffer of 1 empty, each \
             with 1 receiver blocked, a pending timer will send"
        );
        let t = view(
            9,
            "chan receive",
            vec![wait(
                0x500,
                ChanDir::Recv,
                false,
                state(1, 0, 1, ChanTimer::Ticker),
            )],
        );
        assert_eq!(
            one(&[t]).summary,
            "1 ticker channel, buffer of 1 empty: 1 receiver blocked, a running ticker sends"
        );
        let n = view(
            9,
            "chan receive (nil chan)",
            vec![ChanWait {
                chan: 0,
                dir: ChanDir::Recv,
                select: false,
                state: None,
            }],
        );
        let s = one(&[n]);
        assert_eq!((s.nil, s.distinct), (1, 0));
        assert_eq!(
            s.summary,
            "1 goroutine on a nil channel, which is never ready"
        );
        let unread = view(9, "chan send", vec![]);
        assert_eq!(one(&[unread]).unread, 1);
        assert!(summarize(&[view(9, "sync.Mutex.Lock", vec![])]).is_empty());
    }
}
