//! `--all`: the host agent. Every Go and tokio process on the host
//! (optionally only a cgroup's, or those of some executables) is traced on
//! its own, as `-f` traces a command's programs: the ones running at start
//! (found in /proc) and each new one as it starts (the exec watch in
//! `execs.rs`, here over the whole host, filtered in the kernel by cgroup).
//!
//! Nothing is held: a process leaktrace did not start is never stopped, so
//! a new program runs for the few milliseconds the attach takes, and the
//! snapshot at attach reads the goroutines or tasks it made meanwhile. A
//! trace ends with its process (its probes detach with it) and the process
//! leaves `/metrics`; an exec ends the old program's trace and the new one
//! is looked at like any other.
//!
//! The budget: at most `--max-processes` traces at once (the rest wait for
//! a slot, named on stderr and `/metrics`, traced when one frees); at most
//! [`CLASSIFY_AT_ONCE`] executables read at once, off the event loop; a
//! program found to be neither Go nor tokio is remembered by its file, so
//! a shell's thousand execs are read once.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::unix::fs::MetadataExt as _,
    path::Path,
    rc::Rc,
};

use anyhow::Result;
use tokio::task::JoinSet;

use super::{
    execs::{FollowProbes, Unfit, Watch, traceable},
    exit_code,
    stops::{End, Signals},
    trace::{Ctx, Outcome, Target},
    traces::Traces,
};
use crate::{
    report::{
        agent_metrics::{AgentStatus, SkipReason},
        output::OutputFailed,
    },
    runtime::Runtime,
    target::{
        host::{HostFilter, running},
        process::Process,
    },
};

/// Executables read (ELF, symbols) at once: each may take a core for a
/// moment, and the agent must stay small beside the services it watches.
const CLASSIFY_AT_ONCE: usize = 2;

/// Files known to be neither Go nor tokio, at most; then forgotten at once
/// (read again as met).
const NOT_TRACEABLE_MAX: usize = 4096;

type Classified = (
    u32,
    Option<FileKey>,
    Result<(Box<dyn Runtime>, Process), Unfit>,
);

pub(super) async fn run(ctx: Rc<Ctx>, mut signals: Signals, filter: HostFilter) -> Result<i32> {
    limit_malloc_arenas();
    // Watching before the scan: a process that starts during it is seen
    // by one or the other (or both; it is traced once).
    let mut execs = FollowProbes::attach(Watch::Host(filter.cgroup.clone()))?;
    let options = super::runtime_options(&ctx.args);
    let max = ctx.args.max_processes();
    let latest = ctx.exports.latest.clone();
    let mut status = AgentStatus {
        max_processes: max,
        ..AgentStatus::default()
    };
    let mut pending: VecDeque<u32> = admitted(&filter, running(filter.cgroup.as_ref())?);
    let mut queued: HashSet<u32> = pending.iter().copied().collect();
    let mut classifying: JoinSet<Classified> = JoinSet::new();
    // Pids being classified; true once they exec'd meanwhile (the answer
    // is about the old program then, and the exec queued them again).
    let mut in_flight: HashMap<u32, bool> = HashMap::new();
    let mut not_traceable: HashSet<FileKey> = HashSet::new();
    let mut traces = Traces::default();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut ending: Option<End> = None;
    let mut output_failed = None;
    crate::say!(
        "leaktrace: tracing every Go and tokio process{} (at most {max} at once); Ctrl-C for the \
         final reports.",
        describe(&filter)
    );
    loop {
        while ending.is_none() && classifying.len() < CLASSIFY_AT_ONCE {
            let Some(pid) = pending.pop_front() else {
                break;
            };
            queued.remove(&pid);
            if traces.traces(pid) {
                continue;
            }
            let key = FileKey::of(pid);
            if key.as_ref().is_some_and(|k| not_traceable.contains(k)) {
                *status.skipped.entry(SkipReason::NotGoOrTokio).or_default() += 1;
                continue;
            }
            let options = options.clone();
            in_flight.insert(pid, false);
            classifying.spawn_blocking(move || (pid, key, traceable(pid, options)));
        }
        status.traced = traces.len();
        status
            .waiting
            .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        latest.set_agent(status.clone());
        if ending.is_some() && traces.is_empty() {
            break;
        }
        tokio::select! {
            evs = execs.next() => {
                for ev in evs? {
                    if ending.is_some() {
                        continue;
                    }
                    // The same process running a new program: its old
                    // trace ends (its probes watch the old file). The
                    // kernel filtered it by cgroup already.
                    traces.stop(ev.pid, End::Exec);
                    status.waiting.remove(&ev.pid);
                    if let Some(stale) = in_flight.get_mut(&ev.pid) {
                        *stale = true;
                    }
                    if filter.admits(ev.pid).is_ok() && queued.insert(ev.pid) {
                        pending.push_back(ev.pid);
                    }
                }
            }
            Some(done) = classifying.join_next(), if ending.is_none() => {
                let Ok((pid, key, found)) = done else { continue };
                let stale = in_flight.remove(&pid).unwrap_or(false);
                match found {
                    Ok(_) if stale || traces.traces(pid) => {}
                    Err(_) if stale => {}
                    Ok((_, proc)) if traces.len() >= max => {
                        // Never dropped silently: said, counted, and traced
                        // when a slot frees.
                        if status.waiting.insert(pid, proc.exe_display.clone()).is_none() {
                            *status.skipped.entry(SkipReason::MaxProcesses).or_default() += 1;
                            crate::say!(
                                "note: pid {pid} ({}) is not traced: --max-processes {max} are; \
                                 it will be when one ends",
                                proc.exe_display
                            );
                        }
                    }
                    Ok((rt, proc)) => {
                        status.waiting.remove(&pid);
                        traces.start(ctx.clone(), rt, Target::Pid(proc));
                    }
                    Err(Unfit::Gone) => {}
                    Err(Unfit::NotPermitted) => {
                        *status.skipped.entry(SkipReason::NotPermitted).or_default() += 1;
                    }
                    Err(Unfit::NotGoOrTokio) => {
                        *status.skipped.entry(SkipReason::NotGoOrTokio).or_default() += 1;
                        if let Some(key) = key {
                            if not_traceable.len() >= NOT_TRACEABLE_MAX {
                                not_traceable.clear();
                            }
                            not_traceable.insert(key);
                        }
                    }
                }
            }
            done = traces.next() => {
                let (pid, result) = done?;
                // Its series leave /metrics, unless a new program of the
                // same process is traced already.
                if !traces.traces(pid) {
                    latest.forget(pid);
                }
                match result {
                    Ok(o) => outcomes.push(o),
                    Err(e) if e.downcast_ref::<OutputFailed>().is_some() => {
                        traces.output_gone(e, &mut output_failed, &mut ending);
                    }
                    Err(e) => {
                        *status.skipped.entry(SkipReason::Failed).or_default() += 1;
                        crate::say!("leaktrace: pid {pid}: {e:#}");
                    }
                }
                // A slot is free: the processes waiting for one are looked
                // at again (in the order they were found).
                if ending.is_none() {
                    for &pid in status.waiting.keys() {
                        if queued.insert(pid) {
                            pending.push_back(pid);
                        }
                    }
                }
            }
            end = signals.next(), if ending.is_none() => {
                ending = Some(end);
                traces.stop_all(end);
                pending.clear();
            }
        }
    }
    execs.finish();
    if let Some(e) = output_failed {
        return Err(e);
    }
    Ok(exit_code(&ctx.args, 0, &outcomes))
}

/// glibc gives each thread that allocates its own heap (arena), up to 8
/// per core, and keeps what they freed: the attaches, snapshots and reads
/// of many traces run on blocking threads. With 10 traces two arenas took
/// the agent's heap from 159 to 131 MiB at the same CPU (one arena: no
/// less); contention is not a concern at these rates.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The pids the filter admits, in order.
fn admitted(filter: &HostFilter, pids: Vec<u32>) -> VecDeque<u32> {
    pids.into_iter()
        .filter(|&pid| filter.admits(pid).is_ok())
        .collect()
}

/// ` in cgroup /x whose executable is a or b`, for the first line.
fn describe(filter: &HostFilter) -> String {
    let mut s = String::new();
    if let Some(cg) = &filter.cgroup {
        s.push_str(&format!(" in cgroup {}", cg.path));
    }
    if !filter.exes.is_empty() {
        s.push_str(&format!(" named {}", filter.exes.join(" or ")));
    }
    s
}

/// An executable file as it is now (device, inode, size, change time): a
/// file replaced or rewritten is another key.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    ctime_ns: i128,
}

impl FileKey {
    fn of(pid: u32) -> Option<Self> {
        let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}
