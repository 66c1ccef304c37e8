//! The OS threads of the traced process, grouped by name and creator, with
//! the same growth trends as task groups.
//!
//! A thread leak looks like a task leak one level down: a thread per
//! request that never ends, a pool that is re-created instead of reused.
//! Short-lived threads and fixed pools are fine; a group that only grows
//! (more members at each of several samples, none exiting) is not.
//!
//! Threads alive at attach come from /proc (their start time too, from
//! `stat`; who created them is unknown); every later change comes from the
//! thread probes as a [`ThreadChange`].
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::view::{ThreadGroupReport, ThreadVerdict, ThreadsReport};
use crate::{
    aggregate::{
        trend::{MIN_RISES, Movement, Trends},
        verdict::human_secs,
    },
    symbols::Frame,
    target::procfs::start_ticks,
};

/// Samples a trend keeps: one per refresh (at most every 500 ms, so about
/// half a minute), against the task groups' 600.
const WINDOW_TICKS: usize = 60;
/// Thread trends are bounded by samples, not time; this only forgets groups
/// gone for ten minutes.
const THREAD_WINDOW_NS: u64 = 600 * 1_000_000_000;

/// Who made a thread, as the probes saw it.
#[derive(Clone, Debug)]
pub struct Creator {
    pub tid: u32,
    /// The creating thread's name at that moment.
    pub thread: Arc<str>,
    /// The program's own frame that asked for the thread, when the creating
    /// stack could be unwound to it.
    pub site: Option<Frame>,
}

/// One thing the probes saw.
#[derive(Clone, Debug)]
pub enum ThreadChange {
    New {
        ts_ns: u64,
        tid: u32,
        creator: Creator,
    },
    Rename {
        tid: u32,
        name: Arc<str>,
    },
    Exit {
        ts_ns: u64,
        tid: u32,
        name: Arc<str>,
    },
}

/// How a group's threads came to be.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum CreatedBy {
    /// The program's own function that spawned them.
    Site(Frame),
    /// Only the name of the thread that spawned them is known.
    Thread(Arc<str>),
    /// The process's first thread.
    MainThread,
    /// Already running when leaktrace attached (or found in /proc after
    /// lost events).
    BeforeAttach,
}

impl CreatedBy {
    fn describe(&self) -> String {
        match self {
            Self::Site(f) => {
                let file = f.file.rsplit('/').next().unwrap_or(&f.file);
                if file.is_empty() {
                    f.function.to_string()
                } else {
                    format!("{} ({file}:{})", f.function, f.line)
                }
            }
            Self::Thread(name) => format!("thread `{name}`"),
            Self::MainThread => "(main thread)".into(),
            Self::BeforeAttach => "(before attach)".into(),
        }
    }
}

/// Threads are grouped by name pattern and creator.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ThreadGroupKey {
    /// The kernel name with digit runs folded to `#`, so `conn-17` and
    /// `conn-18` are one group.
    pub name: Arc<str>,
    /// Creator, its thread name folded likewise (only ever in the key: what
    /// is printed is the names as the program set them).
    pub created_by: CreatedBy,
}

#[derive(Clone, Debug)]
struct Thread {
    name: Arc<str>,
    created_by: CreatedBy,
    /// CLOCK_MONOTONIC ns.
    born_ns: u64,
    /// Known from /proc rather than from a NEW event: a NEW for it may
    /// still be on its way (it is then refined, not duplicated).
    from_proc: bool,
}

impl Thread {
    fn key(&self) -> ThreadGroupKey {
        let created_by = match &self.created_by {
            CreatedBy::Thread(name) => CreatedBy::Thread(fold_digits(name).into()),
            other => other.clone(),
        };
        ThreadGroupKey {
            name: fold_digits(&self.name).into(),
            created_by,
        }
    }
}

pub struct ThreadTable {
    pid: u32,
    threads: HashMap<u32, Thread>,
    trends: Trends<ThreadGroupKey>,
    /// Last exit (ns) per group: a group whose members exit is not one
    /// that only grows.
    last_exit: HashMap<ThreadGroupKey, u64>,
    created: u64,
    exited: u64,
    lost: u64,
}

impl ThreadTable {
    /// Every thread of `pid` alive now. Call after the probes are attached,
    /// so no thread falls in between: one seen both here and in a NEW
    /// event is refined by the event, one that exited meanwhile is removed
    /// by its EXIT.
    pub fn seed(pid: u32) -> std::io::Result<Self> {
        let mut table = Self::empty(pid);
        let clock = Clocks::now();
        for tid in list_tids(pid)? {
            table.add_from_proc(tid, &clock);
        }
        Ok(table)
    }

    fn empty(pid: u32) -> Self {
        Self {
            pid,
            threads: HashMap::new(),
            trends: Trends::new(THREAD_WINDOW_NS, WINDOW_TICKS),
            last_exit: HashMap::new(),
            created: 0,
            exited: 0,
            lost: 0,
        }
    }

    fn add_from_proc(&mut self, tid: u32, clock: &Clocks) {
        let dir = format!("/proc/{}/task/{tid}", self.pid);
        let Ok(comm) = std::fs::read_to_string(format!("{dir}/comm")) else {
            return; // exited while we listed
        };
        let born_ns = std::fs::read_to_string(format!("{dir}/stat"))
            .ok()
            .and_then(|s| start_ticks(&s))
            .map(|ticks| clock.monotonic_from_ticks(ticks))
            .unwrap_or(clock.monotonic_ns);
        let created_by = if tid == self.pid {
            CreatedBy::MainThread
        } else {
            CreatedBy::BeforeAttach
        };
        self.threads.insert(
            tid,
            Thread {
                name: comm.trim_end_matches('\n').into(),
                created_by,
                born_ns,
                from_proc: true,
            },
        );
    }

    pub fn apply(&mut self, change: ThreadChange) {
        match change {
            ThreadChange::New {
                ts_ns,
                tid,
                creator,
            } => {
                let created_by = match creator.site {
                    Some(site) => CreatedBy::Site(site),
                    None => CreatedBy::Thread(creator.thread.clone()),
                };
                match self.threads.get_mut(&tid) {
                    // Listed in /proc after the event was sent: keep the
                    // name /proc gave (it may already be the renamed one).
                    Some(t) if t.from_proc => {
                        t.created_by = created_by;
                        t.born_ns = ts_ns;
                        t.from_proc = false;
                    }
                    // A new thread starts with a copy of its creator's name;
                    // a live entry here means its EXIT was lost and the tid
                    // was reused.
                    _ => {
                        self.threads.insert(
                            tid,
                            Thread {
                                name: creator.thread,
                                created_by,
                                born_ns: ts_ns,
                                from_proc: false,
                            },
                        );
                    }
                }
                self.created += 1;
            }
            ThreadChange::Rename { tid, name } => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.name = name;
                }
            }
            ThreadChange::Exit { ts_ns, tid, .. } => {
                if let Some(t) = self.threads.remove(&tid) {
                    self.last_exit.insert(t.key(), ts_ns);
                    self.exited += 1;
                }
            }
        }
    }

    pub fn set_lost(&mut self, lost: u64) {
        self.lost = lost;
    }

    /// Make the table agree with /proc/PID/task again after lost events:
    /// drop threads that are gone, add ones never announced.
    pub fn reconcile(&mut self) {
        let Ok(tids) = list_tids(self.pid) else {
            return;
        };
        let alive: HashSet<u32> = tids.iter().copied().collect();
        self.threads.retain(|tid, _| alive.contains(tid));
        let clock = Clocks::now();
        for tid in tids {
            if !self.threads.contains_key(&tid) {
                self.add_from_proc(tid, &clock);
            }
        }
    }

    /// Live threads now.
    pub fn live(&self) -> usize {
        self.threads.len()
    }

    /// Threads created and exited since attach.
    pub fn created(&self) -> u64 {
        self.created
    }

    pub fn exited(&self) -> u64 {
        self.exited
    }

    /// The current name of a live thread.
    pub fn name_of(&self, tid: u32) -> Option<&str> {
        self.threads.get(&tid).map(|t| &*t.name)
    }

    /// Take one sample (each call is one point of every group's trend) and
    /// report. `now_ns` is CLOCK_MONOTONIC, the probes' clock.
    pub fn report(&mut self, now_ns: u64) -> ThreadsReport {
        struct Acc {
            count: u32,
            oldest_ns: u64,
            names: Vec<Arc<str>>,
            creators: Vec<String>,
        }
        let mut groups: HashMap<ThreadGroupKey, Acc> = HashMap::new();
        for t in self.threads.values() {
            let acc = groups.entry(t.key()).or_insert(Acc {
                count: 0,
                oldest_ns: t.born_ns,
                names: Vec::new(),
                creators: Vec::new(),
            });
            acc.count += 1;
            acc.oldest_ns = acc.oldest_ns.min(t.born_ns);
            acc.names.push(t.name.clone());
            acc.creators.push(t.created_by.describe());
        }
        // Threads have no "blocked" state to age in: the whole group is
        // what must not keep growing, so it is also the "aged" series.
        self.trends.record(
            now_ns,
            groups.iter().map(|(k, a)| (k.clone(), a.count, a.count)),
        );
        let mut out: Vec<ThreadGroupReport> = groups
            .into_iter()
            .map(|(key, mut acc)| {
                let m = self.trends.movement(&key);
                let names = distinct(&mut acc.names);
                let creators = distinct(&mut acc.creators);
                let window_start = now_ns.saturating_sub((m.window_s * 1e9) as u64);
                let exited_recently = self
                    .last_exit
                    .get(&key)
                    .is_some_and(|&at| at >= window_start);
                let (verdict, why) = judge(acc.count, &m, exited_recently);
                ThreadGroupReport {
                    name: compact(&names),
                    pattern: key.name.to_string(),
                    names: names.into_iter().take(MAX_NAMES).collect(),
                    created_by: compact(&creators),
                    site: match &key.created_by {
                        CreatedBy::Site(f) => Some(f.clone()),
                        _ => None,
                    },
                    count: u64::from(acc.count),
                    oldest_s: now_ns.saturating_sub(acc.oldest_ns) as f64 / 1e9,
                    growth_per_s: m.growth_per_s,
                    verdict,
                    why,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.created_by.cmp(&b.created_by))
        });
        ThreadsReport {
            live: self.threads.len() as u64,
            created: self.created,
            exited: self.exited,
            lost: self.lost,
            groups: out,
        }
    }
}

fn judge(count: u32, m: &Movement, exited_recently: bool) -> (ThreadVerdict, String) {
    let over = human_secs(m.window_s);
    if m.ticks <= MIN_RISES {
        return (
            ThreadVerdict::Ok,
            format!("{count} now; too few samples ({}) for a trend", m.ticks),
        );
    }
    if exited_recently {
        return (
            ThreadVerdict::Ok,
            "members exit too: short-lived or recycled threads, not only growth".into(),
        );
    }
    let grew = m.aged_last.saturating_sub(m.aged_first);
    if m.aged_rises >= MIN_RISES && grew > 0 && m.growth_per_s > 0.0 {
        return (
            ThreadVerdict::Growing,
            format!(
                "only grows: {} → {} over {over} in {} steps, none exited ({:+.1}/s)",
                m.aged_first, m.aged_last, m.aged_rises, m.growth_per_s
            ),
        );
    }
    (
        ThreadVerdict::Ok,
        format!("{count}, not only growing over {over}"),
    )
}

/// Names listed per group in JSON, at most (a pool of 1000 numbered
/// threads is one group, not 1000 names).
const MAX_NAMES: usize = 32;

/// The distinct values, in natural order (`conn-2` before `conn-10`).
fn distinct<T: AsRef<str>>(values: &mut [T]) -> Vec<String> {
    values.sort_by_cached_key(|v| natural_key(v.as_ref()));
    let mut out: Vec<String> = Vec::new();
    for v in values.iter() {
        if out.last().map(String::as_str) != Some(v.as_ref()) {
            out.push(v.as_ref().to_string());
        }
    }
    out
}

/// Digit runs compare as numbers.
fn natural_key(s: &str) -> Vec<(String, u128)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = u128::from(c as u8 - b'0');
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(u128::from(d));
                chars.next();
            }
            key.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    key.push((text, 0));
    key
}

/// One line for several names: `a`, `a, b`, or `first … last`.
fn compact(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a}, {b}"),
        [first, .., last] => format!("{first} … {last}"),
    }
}

/// `worker-12` → `worker-#`: numbered threads of one kind are one group.
pub fn fold_digits(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_digits = false;
    for c in name.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

fn list_tids(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The probes stamp CLOCK_MONOTONIC; /proc's start times count from boot
/// including suspend (CLOCK_BOOTTIME). Read both at once to convert.
struct Clocks {
    monotonic_ns: u64,
    boottime_ns: u64,
    ticks_per_s: u64,
}

impl Clocks {
    fn now() -> Self {
        let read = crate::target::clock::clock_ns;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            monotonic_ns: read(libc::CLOCK_MONOTONIC),
            boottime_ns: read(libc::CLOCK_BOOTTIME),
            ticks_per_s: u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100),
        }
    }

    fn monotonic_from_ticks(&self, ticks: u64) -> u64 {
        let boot_ns = ticks.saturating_mul(1_000_000_000) / self.ticks_per_s;
        let suspended = self.boottime_ns.saturating_sub(self.monotonic_ns);
        boot_ns.saturating_sub(suspended).min(self.monotonic_ns)
    }
}

#[cfg(test)]
mod tests;
