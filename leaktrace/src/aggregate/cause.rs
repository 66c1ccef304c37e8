//! Why a group is stuck, named from a catalogue (README §Causes), with the
//! fix in one sentence. Recognised from the wait reason, the blocked stack
//! and, for channel waits, the channels read (timers and tickers); anything
//! not recognised has no cause rather than a guess.
use super::{channels::ChannelSummary, groups::Group};
use crate::runtime::TaskState;

/// One entry of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cause {
    pub name: &'static str,
    pub fix: &'static str,
}

macro_rules! causes {
    ($($id:ident = $name:literal : $fix:literal;)*) => {
        $(pub const $id: Cause = Cause { name: $name, fix: $fix };)*
        /// Every cause, in README order.
        pub const CATALOGUE: &[Cause] = &[$($id),*];
    };
}

causes! {
    NIL_CHANNEL = "nil-channel":
        "the channel is nil (never made, or a disabled feature's): make it, or do not send to or receive from it";
    SELECT_NO_WAY_OUT = "select-no-way-out":
        "`select {}` (or a select whose every channel is nil) never returns: add a way out (ctx.Done(), a quit channel) or do not start the goroutine";
    SEND_WITHOUT_RECEIVER = "send-without-receiver":
        "nobody receives any more: select on ctx.Done() beside the send, or give the channel room (a buffer of 1) so the sender can finish when the receiver is gone";
    RECEIVE_WITHOUT_SENDER = "receive-without-sender":
        "nothing will send or close: close the channel when the producer is done (a `range` needs a close), or select on ctx.Done() beside the receive";
    WAITGROUP_MISSING_DONE = "waitgroup-missing-done":
        "a wg.Add has no matching wg.Done on some path: `defer wg.Done()` first thing in each goroutine, and Add before the `go` statement";
    MUTEX_NEVER_UNLOCKED = "mutex-never-unlocked":
        "a Lock whose Unlock is skipped (early return, panic): `defer mu.Unlock()` right after Lock";
    COND_NEVER_SIGNALLED = "cond-never-signalled":
        "nobody calls Signal/Broadcast after changing the condition: signal on every change, and wait in a loop that also checks for shutdown";
    HTTP_CLIENT_NO_TIMEOUT = "http-client-no-timeout":
        "an HTTP connection waits on a server that does not answer, or a response body is never closed: set http.Client.Timeout (or a context deadline) and always close resp.Body";
    IO_WITHOUT_DEADLINE = "io-without-deadline":
        "a read or write on a connection with no deadline waits for a peer that is gone: SetReadDeadline/SetDeadline, or close the connection when its context ends";
    ERRGROUP_WITHOUT_CONTEXT = "errgroup-without-context":
        "errgroup goroutines block after a sibling failed: use errgroup.WithContext and select on ctx.Done() in every send and receive";
    TIMER_IN_SELECT = "timer-in-select":
        "a select loop waits on time.After and a channel nobody closes: close the channel (or select on ctx.Done()) so the loop can end, and use one time.Timer instead of time.After per iteration";
    TICKER_NEVER_STOPPED = "ticker-never-stopped":
        "a goroutine loops on a time.Ticker and nothing ends it: return on ctx.Done() or a quit channel, and `defer ticker.Stop()`";
    POOL_NEVER_CLOSED = "pool-never-closed":
        "workers range over a jobs channel that is never closed, so the Wait for them never returns: close the jobs channel when the last job is sent";
    NO_WAKER = "no-waker":
        "the task awaits something that can never wake it (its waker was dropped, or the future never registers one): abort the task, or fix the future so the other side wakes it or is dropped with it";
    CHANNEL_NEVER_CLOSED = "channel-never-closed":
        "the task awaits recv() on a channel whose senders stay alive: drop every Sender (clones too) when done, so recv() returns None";
}

fn any_frame(g: &Group, pred: impl Fn(&str) -> bool) -> bool {
    g.stack.iter().any(|f| pred(&f.function))
        || g.key.blocked_at.as_ref().is_some_and(|f| pred(&f.function))
}

/// From the channels a group's members wait on: a running ticker received
/// from (alone or in a select), or a select over a pending one-shot timer
/// and a channel with no goroutine blocked on its other side. `Some(None)`:
/// the channels say the reason's usual cause would be a guess (a receive
/// on what may be a timer's channel).
fn from_channels(reason: &str, ch: &ChannelSummary) -> Option<Option<Cause>> {
    let receives = |s: &&super::channels::ChannelShape| s.op == "receive";
    if ch
        .shapes
        .iter()
        .filter(receives)
        .any(|s| s.timer == Some("ticker"))
    {
        return Some(Some(TICKER_NEVER_STOPPED));
    }
    if reason.starts_with("chan receive") && ch.shapes.iter().any(|s| s.timer == Some("unknown")) {
        return Some(None);
    }
    let timer = ch
        .shapes
        .iter()
        .filter(receives)
        .any(|s| s.select && s.timer == Some("timer"));
    let stuck_other = ch.shapes.iter().any(|s| {
        s.select
            && s.timer.is_none()
            && !s.closed
            && match s.op {
                "receive" => s.senders == 0 && s.len == 0,
                "send" => s.receivers == 0 && s.len >= s.cap,
                _ => false,
            }
    });
    (reason.starts_with("select") && timer && stuck_other).then_some(Some(TIMER_IN_SELECT))
}

/// The receiver type of a method (`pkg.(*Pool).worker` → `pkg.(*Pool)`).
fn receiver(function: &str) -> Option<&str> {
    let end = function.find(").")?;
    function[..end].contains(".(").then(|| &function[..=end])
}

/// Worker pools whose jobs channel is never closed: workers receiving (at
/// least two, in one place) and a drainer waiting on a WaitGroup for them,
/// tied by a method of one type (`(*Pool).worker` and `(*Pool).Drain`) or by
/// the drainer's function having started the workers. Returns the indices
/// of every group in such a finding: they are reported as one cause.
pub fn pools(groups: &[Group]) -> Vec<usize> {
    let waits = |g: &Group| {
        matches!(&g.key.state, TaskState::Waiting(r) if r == "sync.WaitGroup.Wait"
            || (r == "semacquire" && g.stack.iter().any(|f| f.function.starts_with("sync.(*WaitGroup).Wait"))))
    };
    let receives = |g: &Group| {
        g.count >= 2 && matches!(&g.key.state, TaskState::Waiting(r) if r == "chan receive")
    };
    let mut found = Vec::new();
    for (w, worker) in groups.iter().enumerate().filter(|(_, g)| receives(g)) {
        let Some(at) = worker.key.blocked_at.as_ref() else {
            continue;
        };
        for (d, drainer) in groups.iter().enumerate().filter(|(_, g)| waits(g)) {
            let Some(drain_at) = drainer.key.blocked_at.as_ref() else {
                continue;
            };
            let same_type = receiver(&at.function).is_some()
                && receiver(&at.function) == receiver(&drain_at.function);
            let started_them = worker.key.created_by.function == drain_at.function;
            if same_type || started_them {
                found.extend([w, d]);
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// The cause of a blocked group, when the catalogue recognises it.
/// `channels`: what its members wait on, when they wait on channels.
pub fn classify(g: &Group, channels: Option<&ChannelSummary>) -> Option<Cause> {
    let TaskState::Waiting(reason) = &g.key.state else {
        return None;
    };
    let reason = reason.as_str();
    // Most specific first: where the stack names the culprit. The caller
    // waits for the response in persistConn.roundTrip; its connection's
    // readLoop and writeLoop wait with it.
    if any_frame(g, |f| {
        f.starts_with("net/http.(*persistConn).readLoop")
            || f.starts_with("net/http.(*persistConn).writeLoop")
            || f.starts_with("net/http.(*persistConn).roundTrip")
    }) {
        return Some(HTTP_CLIENT_NO_TIMEOUT);
    }
    let errgroup = |f: &str| f.contains("golang.org/x/sync/errgroup.(*Group)");
    if (g.key.created_by.function.contains("errgroup.(*Group).Go") || any_frame(g, errgroup))
        && matches!(reason, "chan send" | "chan receive" | "select")
    {
        return Some(ERRGROUP_WITHOUT_CONTEXT);
    }
    if let Some(cause) = channels.and_then(|ch| from_channels(reason, ch)) {
        return cause;
    }
    Some(match reason {
        "chan send (nil chan)" | "chan receive (nil chan)" => NIL_CHANNEL,
        "select (no cases)" => SELECT_NO_WAY_OUT,
        "chan send" => SEND_WITHOUT_RECEIVER,
        "chan receive" => RECEIVE_WITHOUT_SENDER,
        "sync.WaitGroup.Wait" => WAITGROUP_MISSING_DONE,
        "sync.Mutex.Lock" | "sync.RWMutex.Lock" | "sync.RWMutex.RLock" => MUTEX_NEVER_UNLOCKED,
        "sync.Cond.Wait" => COND_NEVER_SIGNALLED,
        // Before Go 1.20 these all read "semacquire": the stack tells.
        "semacquire" if any_frame(g, |f| f.starts_with("sync.(*WaitGroup).Wait")) => {
            WAITGROUP_MISSING_DONE
        }
        "semacquire"
            if any_frame(g, |f| {
                f.starts_with("sync.(*Mutex).Lock") || f.starts_with("sync.(*RWMutex).")
            }) =>
        {
            MUTEX_NEVER_UNLOCKED
        }
        "IO wait"
            if any_frame(g, |f| {
                f.starts_with("net.(*conn).Read")
                    || f.starts_with("net.(*conn).Write")
                    || f.starts_with("internal/poll.(*FD).Read")
                    || f.starts_with("internal/poll.(*FD).Write")
            }) =>
        {
            IO_WITHOUT_DEADLINE
        }
        "idle, no waker" => NO_WAKER,
        "idle" if any_frame(g, |f| f.contains("tokio::sync::mpsc") && f.contains("recv")) => {
            CHANNEL_NEVER_CLOSED
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aggregate::groups::GroupKey, symbols::Frame};

    fn group(reason: &str, stack: &[&str], created_by: &str) -> Group {
        let frame = |f: &str| Frame {
            function: f.into(),
            file: "x.go".into(),
            line: 1,
        };
        let key = GroupKey {
            created_by: frame(created_by),
            via: None,
            start: frame("main.worker"),
            state: TaskState::Waiting(reason.into()),
            blocked_at: Some(frame("main.worker")),
        };
        Group {
            count: 3,
            aged: 3,
            old: 3,
            stack: stack.iter().map(|f| frame(f)).collect(),
            ..Group::new(key, false)
        }
    }

    #[test]
    fn wait_reasons_and_stacks_name_causes() {
        let c = |reason: &str, stack: &[&str], by: &str| {
            classify(&group(reason, stack, by), None).map(|c| c.name)
        };
        assert_eq!(
            c("chan send (nil chan)", &[], "main.f"),
            Some("nil-channel")
        );
        assert_eq!(
            c("select (no cases)", &[], "main.f"),
            Some("select-no-way-out")
        );
        assert_eq!(c("chan send", &[], "main.f"), Some("send-without-receiver"));
        assert_eq!(
            c("chan receive", &[], "main.f"),
            Some("receive-without-sender")
        );
        assert_eq!(
            c(
                "semacquire",
                &["sync.runtime_Semacquire", "sync.(*WaitGroup).Wait"],
                "main.f"
            ),
            Some("waitgroup-missing-done")
        );
        assert_eq!(
            c("sync.Mutex.Lock", &[], "main.f"),
            Some("mutex-never-unlocked")
        );
        assert_eq!(
            c(
                "select",
                &["net/http.(*persistConn).readLoop"],
                "net/http.(*Transport).dialConn"
            ),
            Some("http-client-no-timeout")
        );
        // The request itself, waiting for the response (Go's own frames
        // above the caller's).
        assert_eq!(
            c(
                "select",
                &[
                    "runtime.selectgo",
                    "net/http.(*persistConn).roundTrip",
                    "net/http.(*Transport).roundTrip",
                    "net/http.(*Client).Get",
                    "main.(*PriceFeed).refresh"
                ],
                "main.(*PriceFeed).RefreshAsync"
            ),
            Some("http-client-no-timeout")
        );
        assert_eq!(
            c("chan send", &[], "golang.org/x/sync/errgroup.(*Group).Go"),
            Some("errgroup-without-context")
        );
        assert_eq!(
            c(
                "IO wait",
                &["internal/poll.(*FD).Read", "net.(*conn).Read"],
                "main.f"
            ),
            Some("io-without-deadline")
        );
        // An unknown wait has no cause, not a guess.
        assert_eq!(
            c("GC worker (idle)", &[], "runtime.gcBgMarkStartWorkers"),
            None
        );
        assert_eq!(c("IO wait", &["net.(*netFD).accept"], "main.main"), None);
        // Workers of a pool and the drainer waiting for them: one finding.
        let mut workers = group("chan receive", &[], "main.NewPool");
        workers.key.blocked_at = Some(Frame {
            function: "main.(*Pool).worker".into(),
            file: "x.go".into(),
            line: 1,
        });
        let mut drainer = group("sync.WaitGroup.Wait", &[], "main.(*Exporter).Start");
        drainer.key.blocked_at = Some(Frame {
            function: "main.(*Pool).Drain".into(),
            file: "x.go".into(),
            line: 2,
        });
        let lone = group("chan receive", &[], "main.other");
        assert_eq!(
            pools(&[workers.clone(), lone.clone(), drainer.clone()]),
            vec![0, 2]
        );
        assert!(
            pools(&[workers, lone]).is_empty(),
            "no drainer, no pool finding"
        );
        let names: std::collections::HashSet<_> = CATALOGUE.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CATALOGUE.len(), "names are unique");
    }

    #[test]
    fn timers_and_tickers_from_channels() {
        use crate::aggregate::channels::{ChannelShape, words};
        let shape = |op, select, cap, timer, senders, receivers| ChannelShape {
            channels: 20,
            op,
            select,
            cap,
            len: 0,
            closed: false,
            timer,
            senders,
            receivers,
            complete: true,
        };
        let summary = |shapes: Vec<ChannelShape>| {
            let mut s = ChannelSummary {
                members: 20,
                unread: 0,
                nil: 0,
                distinct: 40,
                cases: Some(shapes.len() as u64),
                shapes,
                other_channels: 0,
                summary: String::new(),
            };
            s.summary = words(&s);
            s
        };
        let c = |reason: &str, ch: &ChannelSummary| {
            classify(&group(reason, &[], "main.(*Auth).Login"), Some(ch)).map(|c| c.name)
        };
        let ticker = summary(vec![shape("receive", false, 1, Some("ticker"), 0, 1)]);
        assert_eq!(c("chan receive", &ticker), Some("ticker-never-stopped"));
        let watch = summary(vec![
            shape("receive", true, 0, None, 0, 1),
            shape("receive", true, 1, Some("timer"), 0, 1),
        ]);
        assert_eq!(c("select", &watch), Some("timer-in-select"));
        // A sender is blocked on the other channel: it will be served.
        let served = summary(vec![
            shape("receive", true, 0, None, 1, 1),
            shape("receive", true, 1, Some("timer"), 0, 1),
        ]);
        assert_eq!(c("select", &served), None);
        // A plain receive on an ordinary channel keeps its cause.
        let plain = summary(vec![shape("receive", false, 0, None, 0, 1)]);
        assert_eq!(c("chan receive", &plain), Some("receive-without-sender"));
        // Maybe a timer's channel (stripped, before Go 1.23): no guess.
        let maybe = summary(vec![shape("receive", false, 1, Some("unknown"), 0, 1)]);
        assert_eq!(c("chan receive", &maybe), None);
    }

    /// README §Causes lists the catalogue, in order, with each fix verbatim.
    #[test]
    fn the_readme_table_is_the_catalogue() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("\n## Causes\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a ## Causes section");
        let rows: Vec<(String, String)> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
                (cells[0].trim_matches('`').to_string(), cells[2].to_string())
            })
            .collect();
        let catalogue: Vec<(String, String)> = CATALOGUE
            .iter()
            .map(|c| (c.name.to_string(), c.fix.to_string()))
            .collect();
        assert_eq!(rows, catalogue);
    }
}
