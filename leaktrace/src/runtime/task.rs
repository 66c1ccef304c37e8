//! What every runtime hands the rest of leaktrace about one task: its view
//! at a refresh. Aggregation and reports see only these types.
use std::{num::NonZeroU64, sync::Arc};

use crate::symbols::Frame;

/// What a task is doing when looked at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    Running,
    Runnable,
    Syscall,
    /// Blocked, with the wait reason as the runtime prints it.
    Waiting(String),
}

impl TaskState {
    pub fn label(&self) -> &str {
        match self {
            Self::Running => "running",
            Self::Runnable => "runnable",
            Self::Syscall => "syscall",
            Self::Waiting(reason) => reason,
        }
    }

    pub fn is_waiting(&self) -> bool {
        matches!(self, Self::Waiting(_))
    }
}

/// What every task at one place shares: where it was created, what it
/// runs, what it waits for and where. A refresh of a million tasks parked
/// at a few places makes a few of these, and each view points to one, so a
/// view stays small and grouping compares pointers before contents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    pub state: TaskState,
    /// The wait can never end (Go: nil channel, `select {}`; tokio: no waker).
    pub never_ends: bool,
    /// The runtime's own bookkeeping task (Go: `isSystemGoroutine`); not
    /// counted as the program's, like `runtime.NumGoroutine()`.
    pub system: bool,
    /// A tokio blocking-pool task (`spawn_blocking`): the program's, but a
    /// thread's closure rather than an async task, so reported apart and not
    /// in `live` (`num_alive_tasks()` does not count it either).
    pub blocking: bool,
    /// Where the task was created (the `go` statement).
    pub created_by: Frame,
    /// When `created_by` is a spawn helper (one `go` statement that starts
    /// goroutines for many callers): the caller the task came through, the
    /// first of the program's own frames above the helper. None for plain
    /// creation sites, for tasks created before attach, and for tokio.
    pub via: Option<Frame>,
    /// The task's own function, compiler wrappers unwrapped.
    pub start: Frame,
    /// The program's main task (Go: goroutine 1, started by the runtime
    /// without a `go` statement): a place of its own.
    pub main: bool,
    /// The stack could not be read consistently (the runtime moved it
    /// while we read, repeatedly); `stack` is then empty. Here rather than
    /// in each view: a word less per task.
    pub stack_unstable: bool,
    /// Innermost first. Empty when not blocked or not readable.
    pub stack: Arc<[Frame]>,
    /// First frame of the program's own code in `stack` (not the runtime's
    /// or the standard library's): where it is stuck.
    pub blocked_at: Option<Frame>,
}

/// One live task as read from the target at a refresh.
#[derive(Clone, Debug)]
pub struct TaskView {
    pub key: u64,
    pub id: u64,
    /// Shared by every task at the same place (see [`Place`]).
    pub place: Arc<Place>,
    /// When the current block began, if known.
    pub blocked_since: Option<Since>,
    /// When the task was created (a lower bound for tasks that existed
    /// before attach).
    pub alive_since: Since,
    /// The channels a task blocked on a channel operation (Go: chan send,
    /// chan receive, select) waits on, one per operation (a select has
    /// several). Empty when it waits on none, or they could not be read.
    pub waits_on: ChanWaits,
    /// Proven never to wake by a walk of the target's memory (Go: nothing
    /// that can still run reaches the channels it waits on). None (the
    /// default): not proven, or not looked at.
    pub stranded: StrandedMark,
}

// One view per live task, a million of them: every word here is 8 MB.
const _: () = assert!(size_of::<TaskView>() <= 56);
const _: () = assert!(size_of::<Option<Since>>() == 8);

/// What a heap walk proved about a blocked task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stranded {
    /// Nothing that can still run reaches what it waits on.
    Unreachable,
    /// Stranded, and waiting for other stranded tasks that hold what it
    /// waits on while they wait for it: a deadlock among them, named by one
    /// member's key.
    Deadlock(u64),
}

/// An `Option<Stranded>` in one word (an enum with a payload takes two):
/// 0 none, `u64::MAX` unreachable, any other value the key naming the
/// deadlock (keys are addresses or ids, never 0 or `u64::MAX`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StrandedMark(u64);

impl StrandedMark {
    pub fn get(self) -> Option<Stranded> {
        match self.0 {
            0 => None,
            u64::MAX => Some(Stranded::Unreachable),
            key => Some(Stranded::Deadlock(key)),
        }
    }
}

impl From<Option<Stranded>> for StrandedMark {
    fn from(s: Option<Stranded>) -> Self {
        Self(match s {
            None => 0,
            Some(Stranded::Deadlock(key)) if key != 0 => key,
            Some(_) => u64::MAX,
        })
    }
}

impl TaskView {
    pub fn state(&self) -> &TaskState {
        &self.place.state
    }
    pub fn system(&self) -> bool {
        self.place.system
    }
    pub fn main(&self) -> bool {
        self.place.main
    }
    pub fn stack_unstable(&self) -> bool {
        self.place.stack_unstable
    }
}

/// One empty channel list, shared: most views wait on no channel, and an
/// empty `Arc<[_]>` of their own would cost an allocation each.
pub fn no_chan_waits() -> ChanWaits {
    static EMPTY: std::sync::OnceLock<ChanWaits> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| ChanWaits::from([])).clone()
}

/// The channel operations one task waits in, shared by the tasks that wait
/// in the same (one list per channel and direction, built once a refresh).
/// A thin pointer: a slice's `Arc` is two words, 8 bytes more per view
/// (a million views: 8 MB).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChanWaits(Arc<Box<[ChanWait]>>);

impl std::ops::Deref for ChanWaits {
    type Target = [ChanWait];
    fn deref(&self) -> &[ChanWait] {
        &self.0
    }
}

impl ChanWaits {
    /// The same shared list (not only equal contents).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl Default for ChanWaits {
    fn default() -> Self {
        no_chan_waits()
    }
}

impl FromIterator<ChanWait> for ChanWaits {
    fn from_iter<I: IntoIterator<Item = ChanWait>>(iter: I) -> Self {
        Self(Arc::new(iter.into_iter().collect()))
    }
}

impl From<Vec<ChanWait>> for ChanWaits {
    fn from(v: Vec<ChanWait>) -> Self {
        Self(Arc::new(v.into_boxed_slice()))
    }
}

impl<const N: usize> From<[ChanWait; N]> for ChanWaits {
    fn from(a: [ChanWait; N]) -> Self {
        Self(Arc::new(Box::new(a)))
    }
}

/// One empty stack, shared, for the same reason.
pub fn no_frames() -> Arc<[Frame]> {
    static EMPTY: std::sync::OnceLock<Arc<[Frame]>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from([])).clone()
}

/// One channel operation a blocked task waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChanWait {
    /// The channel's address in the target; 0 for a nil channel.
    pub chan: u64,
    pub dir: ChanDir,
    /// One case of a select (the task waits on all of them at once).
    pub select: bool,
    /// The channel as read at this refresh; `None` for a nil channel or
    /// when it could not be read consistently.
    pub state: Option<ChanState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChanDir {
    Send,
    Recv,
    /// A select case whose direction could not be established.
    Unknown,
}

impl ChanDir {
    pub fn label(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Recv => "receive",
            Self::Unknown => "unknown",
        }
    }
}

/// A channel's state, as far as leaktrace can read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChanState {
    /// Buffer capacity (0: unbuffered) and values buffered now.
    pub cap: u64,
    pub len: u64,
    pub closed: bool,
    /// Size of one element, in bytes.
    pub elem_size: u16,
    pub timer: ChanTimer,
    /// Live tasks blocked receiving / sending on it now, select cases
    /// included.
    pub receivers: u32,
    pub senders: u32,
    /// The direction of every task waiting on it is known; otherwise some
    /// (select cases whose direction could not be read) are in neither
    /// count.
    pub counts_complete: bool,
}

/// Whether a channel is fed by a runtime timer (Go's `time` package).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChanTimer {
    /// Not the channel of a pending timer, as far as can be seen.
    No,
    /// A one-shot timer's (`time.After`, `time.NewTimer`), still pending.
    Timer,
    /// A ticker's (`time.Tick`, `time.NewTicker`), still running.
    Ticker,
    /// A timer's or ticker's that was stopped (or already fired): nothing
    /// will send on it any more.
    Stopped,
    /// Could be a timer's; leaktrace cannot tell (e.g. before Go 1.23 in a
    /// binary without `.symtab`, the timers cannot be found).
    Unknown,
}

impl ChanTimer {
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::No => None,
            Self::Timer => Some("timer"),
            Self::Ticker => Some("ticker"),
            Self::Stopped => Some("stopped timer"),
            Self::Unknown => Some("unknown"),
        }
    }
}

/// A point in time (CLOCK_MONOTONIC ns) that is either exact or only an
/// upper bound on the start (so durations derived from it are lower bounds).
///
/// One word, never zero: a view carries two of these (one optional), so an
/// enum's 16 bytes, 16 more for the `Option`, would be 32 bytes per view. The top bit is always set (the niche that makes
/// `Option<Since>` one word too), the next says "at most", the third
/// "found after attach" (see [`Since::Found`]); times are clamped to 2⁶¹ ns
/// (73 years of uptime).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Since(NonZeroU64);

const SINCE_SET: u64 = 1 << 63;
const SINCE_AT_MOST: u64 = 1 << 62;
const SINCE_FOUND: u64 = 1 << 61;
const SINCE_NS: u64 = SINCE_FOUND - 1;

// Named like the enum variants they stand for, so that building one reads
// the same as matching on `is_lower_bound`.
#[allow(non_snake_case)]
impl Since {
    /// Seen by a probe.
    pub fn Exact(ns: u64) -> Self {
        Self::pack(ns, 0)
    }
    /// Known to have started no later than this: for tasks there when
    /// leaktrace attached, any age.
    pub fn AtMost(ns: u64) -> Self {
        Self::pack(ns, SINCE_AT_MOST)
    }
    /// First seen after attach by a read of memory, not by a probe (the
    /// spawn probe shed by the overhead budget, or missing): started no
    /// later than this, and after the previous read, so its age is known to
    /// a refresh. Unlike [`Since::AtMost`] it is no reason to count the
    /// task as old: with the spawn probe shed on a busy server, every
    /// short-lived goroutine is found this way, and counting them as old
    /// made a growing "old" group of 5 ms handlers (a false `leak`).
    pub fn Found(ns: u64) -> Self {
        Self::pack(ns, SINCE_AT_MOST | SINCE_FOUND)
    }
    fn pack(ns: u64, flag: u64) -> Self {
        Self(NonZeroU64::new(SINCE_SET | flag | ns.min(SINCE_NS)).expect("top bit set"))
    }
    pub fn ns(self) -> u64 {
        self.0.get() & SINCE_NS
    }
    pub fn is_lower_bound(self) -> bool {
        self.0.get() & SINCE_AT_MOST != 0
    }
    /// Only a bound, and the task was there when leaktrace attached: its
    /// true age is unknown and may be anything.
    pub fn before_attach(self) -> bool {
        self.is_lower_bound() && self.0.get() & SINCE_FOUND == 0
    }
    /// The time when exact, None when only a bound.
    pub fn exact(self) -> Option<u64> {
        (!self.is_lower_bound()).then_some(self.ns())
    }
}

impl std::fmt::Debug for Since {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.before_attach() {
            "AtMost"
        } else if self.is_lower_bound() {
            "Found"
        } else {
            "Exact"
        };
        f.debug_tuple(name).field(&self.ns()).finish()
    }
}

/// How long the finished tasks of one creation site lived: what its
/// blocked members are compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lifetimes {
    pub finished: u64,
    /// 99th percentile and longest lifetime, in seconds.
    pub p99_s: f64,
    pub max_s: f64,
}

/// A bounded record of lifetimes: counts in buckets of √2 from 1 µs to
/// about 4 days, so a percentile costs 64 words per site, whatever the
/// number of tasks.
#[derive(Clone, Debug)]
pub struct LifetimeStats {
    buckets: [u64; BUCKETS],
    finished: u64,
    max_ns: u64,
}

const BUCKETS: usize = 80;

impl Default for LifetimeStats {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            finished: 0,
            max_ns: 0,
        }
    }
}

impl LifetimeStats {
    fn bucket(ns: u64) -> usize {
        let us = (ns / 1000).max(1) as f64;
        ((us.log2() * 2.0) as usize).min(BUCKETS - 1)
    }

    /// Upper edge of a bucket, in seconds.
    fn upper_s(b: usize) -> f64 {
        2f64.powf((b + 1) as f64 / 2.0) / 1e6
    }

    pub fn record(&mut self, lifetime_ns: u64) {
        self.buckets[Self::bucket(lifetime_ns)] += 1;
        self.finished += 1;
        self.max_ns = self.max_ns.max(lifetime_ns);
    }

    pub fn merge(&mut self, other: &LifetimeStats) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.finished += other.finished;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn summary(&self) -> Lifetimes {
        let want = (self.finished as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        let mut p99_s = 0.0;
        for (b, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want && n > 0 {
                p99_s = Self::upper_s(b);
                break;
            }
        }
        let max_s = self.max_ns as f64 / 1e9;
        Lifetimes {
            finished: self.finished,
            p99_s: p99_s.min(max_s.max(1e-6)),
            max_s,
        }
    }
}
