//! tokio tasks as the rest of leaktrace sees them.
//!
//! The live table is keyed by task header address and fed from three
//! sources, best first:
//! - probe events ([`TokioTracer::apply`]): spawn, completion, cancellation
//!   and, in detailed mode, every poll and wake;
//! - a re-read of every known header at each refresh (state word, and
//!   whether the task is still what the table thinks), which also catches
//!   completions whose event was lost;
//! - heap scans ([`super::heap_scan`]): once at attach, for tasks that were
//!   alive before, and then only now and again, for tasks no probe can see
//!   (LocalSet tasks are never bound; where neither symbols nor the code
//!   search of `code_points` finds the spawn and completion points, every
//!   refresh is a scan).
//!
//! Reads go through `process_vm_readv`; the target never stops.
use std::{
    collections::{HashMap, HashSet},
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use leaktrace_common::tokio::{TokioEvent, TokioEventKind};
use lru::LruCache;

use super::{
    await_points::AwaitDecoder,
    binary::{RustBinary, TokioError, detect},
    heap_scan::{LiveTask, MAX_CANDIDATES, cell_align, exe_load_bias, parse_task, scan, task_span},
    probe_points::{TokioPlan, plan},
    spawn_sites::SpawnSites,
    state::{Activity, StateWord},
    vtables::short_future_name,
};
use crate::{
    runtime::{LifetimeStats, Lifetimes, Place, Since, TaskView, no_chan_waits},
    symbols::{
        Frame,
        debuginfo::{self, Outcome, Search},
    },
    target::{elf::ElfFile, memory::Memory, process::Process},
};

/// With probes covering spawns and completions, a heap scan only looks for
/// what they cannot see; its cost is kept under 1/20 of a core, and it runs
/// at least this rarely.
const RESCAN_EVERY: Duration = Duration::from_secs(10);
const FIRST_RESCAN: Duration = Duration::from_secs(2);
/// See [`TokioTracer::check_missed`].
const MISSES_BEFORE_SCANNING: u32 = 3;
/// Completed task ids remembered against late polls: a late poll follows
/// its task's completion within a scheduler tick.
const COMPLETED_REMEMBERED: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// How much of an idle task's cell (header, then the future) is compared
/// from one refresh to the next: enough for the state of most async fns.
const IDLE_PEEK: usize = 4096;
/// Bytes compared per refresh in all: with many idle tasks a newly idle
/// one is compared on a shorter prefix (kept while it stays idle, so its
/// fingerprint stays comparable), never shorter than [`IDLE_PEEK_MIN`]
/// (its header, scheduler, id and the start of its future).
const IDLE_BUDGET: usize = 32 << 20;
const IDLE_PEEK_MIN: usize = 128;

/// What the probes of this session see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    pub spawns: bool,
    pub completions: bool,
    pub polls: bool,
    /// Blocking-pool tasks are seen when their closure starts (their one
    /// poll).
    pub blocking_starts: bool,
}

impl Coverage {
    /// Spawns and completions both seen: the table follows the runtime's own
    /// list and heap scans are only a safety net.
    fn follows_lifecycle(self) -> bool {
        self.spawns && self.completions
    }
}

/// Counts of what happened, for the report's `events`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioTotals {
    pub spawn: u64,
    pub complete: u64,
    pub shutdown: u64,
    pub poll: u64,
    pub wake: u64,
    /// Tasks the table had to learn from memory rather than from a probe
    /// after attach (missed by the probes, or invisible to them), plus tasks
    /// found finished without a completion event.
    pub corrected: u64,
}

/// An idle task as the refreshes have seen it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IdleSeen {
    /// The first refresh that found it as it still is.
    since: u64,
    /// A hash of the first `len` bytes of its cell.
    fingerprint: u64,
    len: usize,
}

#[derive(Clone, Debug)]
struct Tracked {
    id: u64,
    vtable: usize,
    alive_since: Since,
    /// Detailed mode: when the last poll began.
    last_poll: Option<u64>,
    /// Set by the last read of the header (spawn events carry none).
    state: Option<StateWord>,
    owner_id: u64,
    /// Where the program spawned it, when its spawn was probed and its
    /// stack unwound to the program's code.
    site: Option<Frame>,
    /// Without poll probes: since when every refresh has found it idle and
    /// unchanged.
    idle_seen: Option<IdleSeen>,
}

impl Tracked {
    fn new(id: u64, vtable: usize, alive_since: Since) -> Self {
        Self {
            id,
            vtable,
            alive_since,
            last_poll: None,
            state: None,
            owner_id: 0,
            site: None,
            idle_seen: None,
        }
    }
}

pub struct TokioTracer {
    pub bin: RustBinary,
    elf: ElfFile,
    path: PathBuf,
    /// Where the program is loaded; found once, it never moves.
    bias: Option<u64>,
    /// Run-time vtable address → index in `bin.vtables`.
    by_vtable: HashMap<u64, usize>,
    tasks: HashMap<u64, Tracked>,
    coverage: Coverage,
    /// CLOCK_MONOTONIC when the probes went live (0 without probes).
    probes_since: u64,
    scans: u64,
    next_scan: Option<Instant>,
    pub totals: TokioTotals,
    /// Task cells rejected as torn or moved during the last scan.
    pub last_unstable: usize,
    /// Highest task id the first scan found, and when that scan ended: a
    /// later task is one the spawn probes should have reported.
    first_scan: Option<(u64, u64)>,
    /// Tasks no spawn probe announced although it should have.
    missed: u32,
    /// Id of the first task a spawn probe announced: older tasks were
    /// spawned before the probes were armed, so not announcing them is no
    /// blind spot.
    first_announced: Option<u64>,
    /// Ids the last two refreshes dropped because memory showed them
    /// finished: their completion event may still be on its way.
    dropped: [HashSet<u64>; 2],
    /// Tasks a rescan found that no spawn event had announced yet: the
    /// event may still be in the ring. Id → when found.
    unannounced: HashMap<u64, u64>,
    /// Ids of tasks whose completion was seen, most recent last: tokio
    /// still calls `raw::poll` on a task notified while it completed (the
    /// poll finds it complete and only drops a reference), and that poll
    /// must not bring the task back (sccache under `--detailed` showed
    /// `corrected` 2 for want of this). Ids are never reused, so a poll of
    /// a listed id is always a finished task's.
    completed: LruCache<u64, ()>,
    /// Said once, in the report's notes.
    pub notes: Vec<String>,
    /// Whether a scan that hit its bound was said.
    scan_capped_said: bool,
    /// Where idle tasks await (full DWARF only).
    awaits: Option<AwaitDecoder>,
    /// Interned await stacks, so equal stacks are shared (grouping relies on it).
    stacks: HashMap<Vec<Frame>, Arc<[Frame]>>,
    /// How long completed tasks seen from their spawn lived, per creation
    /// site as views name it (spawn site, else future type): what idle
    /// siblings are compared with.
    lifetimes: HashMap<Frame, LifetimeStats>,
    /// Spawn sites from the spawn probe's stacks (once attached).
    pub sites: Option<SpawnSites>,
    /// Per vtable (future type), the spawn sites seen.
    vtable_sites: HashMap<usize, HashSet<Frame>>,
    /// Async (bound) vtables by future type as spawn sites name code.
    by_future: HashMap<String, Vec<usize>>,
    /// Per vtable, when one of its tasks last ran for certain: it spawned
    /// a task (the spawn site was its code). Which one is unknown, so every
    /// idle task of the type starts its idle duration again.
    ran_at: HashMap<usize, u64>,
    /// The note about spawn stacks lost was given.
    stacks_lost_said: bool,
    /// The note about sampled spawn stacks was given.
    sampled_said: bool,
    /// Where the names came from when the binary had no DWARF of its own.
    debuginfo: Outcome,
}

impl TokioTracer {
    pub fn open(path: &Path) -> Result<Self, TokioError> {
        Self::open_with(path, &Search::default())
    }

    /// [`TokioTracer::open`], with separate debug info searched as `debug`
    /// says when the binary has no DWARF of its own.
    pub fn open_with(path: &Path, debug: &Search) -> Result<Self, TokioError> {
        let mut elf = ElfFile::open(path)
            .map_err(|e| TokioError::NotTokio(format!("cannot read {}: {e}", path.display())))?;
        // Whether it is tokio at all is known without symbols (the vtables'
        // shape); only then is debug info worth a search or a download.
        let mut bin = detect(&elf)?;
        let found = debuginfo::attach(&mut elf, path, debug).map_err(TokioError::DebugInfo)?;
        if matches!(found, Outcome::Found { .. }) {
            bin = detect(&elf)?;
        }
        let awaits = AwaitDecoder::load(&elf, &bin.vtables);
        let mut tracer = Self::with_binary(path, elf, bin, awaits);
        tracer.debuginfo = found;
        Ok(tracer)
    }

    fn with_binary(
        path: &Path,
        elf: ElfFile,
        bin: RustBinary,
        awaits: Option<AwaitDecoder>,
    ) -> Self {
        let by_future = futures_by_name(&bin.vtables);
        Self {
            bin,
            elf,
            path: path.to_path_buf(),
            bias: None,
            by_vtable: HashMap::new(),
            tasks: HashMap::new(),
            coverage: Coverage::default(),
            probes_since: 0,
            scans: 0,
            next_scan: None,
            totals: TokioTotals::default(),
            last_unstable: 0,
            first_scan: None,
            missed: 0,
            first_announced: None,
            dropped: Default::default(),
            unannounced: HashMap::new(),
            completed: LruCache::new(COMPLETED_REMEMBERED),
            notes: Vec::new(),
            scan_capped_said: false,
            awaits,
            stacks: HashMap::new(),
            lifetimes: HashMap::new(),
            sites: None,
            vtable_sites: HashMap::new(),
            by_future,
            ran_at: HashMap::new(),
            stacks_lost_said: false,
            sampled_said: false,
            debuginfo: Outcome::NotNeeded,
        }
    }

    pub fn version(&self) -> String {
        let tokio = self.bin.tokio_version.map_or_else(
            || "tokio (version unknown)".to_string(),
            |v| format!("tokio {v}"),
        );
        match &self.bin.rustc {
            Some(rustc) => format!("{tokio}, {}", rustc.trim_start_matches("rustc version ")),
            None => tokio,
        }
    }

    pub fn symbol_source(&self) -> &'static str {
        if self.bin.has_dwarf {
            "dwarf"
        } else if self.bin.has_symtab {
            "symtab"
        } else {
            "none"
        }
    }

    /// Where the probes go for this binary.
    pub fn plan(&self, detailed: bool) -> TokioPlan {
        plan(&self.elf, &self.bin.vtables, detailed)
    }

    /// The probes are attached and will report what `plan` covers.
    pub fn probes_attached(&mut self, plan: &TokioPlan, now_ns: u64) {
        self.coverage = Coverage {
            // A poll probe sees every task at its first poll.
            spawns: plan.sees_spawns || plan.polls,
            completions: plan.sees_completions,
            polls: plan.polls,
            blocking_starts: plan.polls || plan.blocking_starts,
        };
        self.probes_since = now_ns;
    }

    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.coverage.follows_lifecycle() {
            w.push(
                "tokio: spawns and completions are not probed in this binary, so tasks are \
                 found by scanning the heap at each refresh: a task's age is known to within \
                 one refresh, and tasks shorter than that are not seen"
                    .to_string(),
            );
        }
        if !self.coverage.polls {
            w.push(
                "tokio: idle durations (≥) are the time since the first refresh that found the \
                 task idle and unchanged (state word and future) and since a task of its type \
                 last spawned one; a poll between refreshes that changed neither and spawned \
                 nothing is not seen (a stateless consumer or accept loop may show ≥ its whole \
                 life). --detailed probes every poll for exact ones"
                    .to_string(),
            );
        }
        if self
            .bin
            .vtables
            .iter()
            .any(|v| v.runs_on_blocking_pool() && v.name.future.is_none())
        {
            w.push(
                "tokio: blocking-pool tasks have no names in this binary, so a multi-thread \
                 runtime's worker launchers (one per worker thread, running as long as the \
                 runtime) cannot be told from the program's spawn_blocking tasks: both count \
                 as `blocking`"
                    .to_string(),
            );
        }
        w.extend(self.bin.naming_warning());
        w.extend(self.debuginfo.note());
        if self.bin.has_symtab && self.awaits.is_none() {
            w.push(
                "tokio: no type information (DWARF) in the binary, so where an idle task is \
                 awaiting is unknown; `debug = true` in the release profile adds it (no \
                 run-time cost, a larger file)"
                    .to_string(),
            );
        }
        w.extend(self.bin.version_note());
        w
    }

    /// Where the program is loaded, found once; `None` until it is mapped
    /// (with `-c` the first refresh may come before `exec`).
    fn locate(&mut self, pid: u32) -> Result<Option<u64>> {
        if self.bias.is_none() {
            let proc = Process::open(pid)?;
            if !proc.runs(&self.path) {
                return Ok(None);
            }
            let b = exe_load_bias(pid, &self.elf).context("finding where the program is loaded")?;
            self.set_bias(b);
            if let Some(sites) = &mut self.sites {
                sites.locate(&self.elf, b);
            }
        }
        Ok(self.bias)
    }

    /// The vtables as the probes must know them: `(run-time address,
    /// id_offset)`. `None` until the program is mapped.
    pub fn arm(&mut self, pid: u32) -> Result<Option<Vec<(u64, u64)>>> {
        let Some(bias) = self.locate(pid)? else {
            return Ok(None);
        };
        Ok(Some(
            self.bin
                .vtables
                .iter()
                .map(|v| (v.va.wrapping_add(bias), v.id_offset))
                .collect(),
        ))
    }

    fn set_bias(&mut self, bias: u64) {
        self.bias = Some(bias);
        self.by_vtable = self
            .bin
            .vtables
            .iter()
            .enumerate()
            .map(|(i, v)| (v.va.wrapping_add(bias), i))
            .collect();
    }

    /// One probe record, in ring order.
    pub fn apply(&mut self, ev: &TokioEvent) {
        let Some(&vtable) = self.by_vtable.get(&ev.vtable) else {
            return;
        };
        let Some(kind) = TokioEventKind::from_raw(ev.kind) else {
            return;
        };
        if self.bin.vtables[vtable].runs_on_blocking_pool() {
            self.apply_blocking(ev, kind, vtable);
            return;
        }
        match kind {
            TokioEventKind::Spawn => {
                self.totals.spawn += 1;
                self.first_announced.get_or_insert(ev.id);
                if self.unannounced.remove(&ev.id).is_some() {
                    self.totals.corrected = self.totals.corrected.saturating_sub(1);
                }
                let mut t = Tracked::new(ev.id, vtable, Since::Exact(ev.ts_ns));
                // bind_inner binds it: counted by num_alive_tasks().
                t.owner_id = u64::MAX;
                t.site = self.sites.as_mut().and_then(|s| s.take(ev.id));
                if let Some(site) = &t.site {
                    self.vtable_sites
                        .entry(vtable)
                        .or_default()
                        .insert(site.clone());
                    self.note_running(&site.function, ev.ts_ns);
                }
                self.tasks.insert(ev.header, t);
            }
            TokioEventKind::Complete => {
                self.totals.complete += 1;
                self.completed.put(ev.id, ());
                if self.tasks.get(&ev.header).is_some_and(|t| t.id == ev.id) {
                    if let Some(t) = self.tasks.remove(&ev.header)
                        && let Some(born) = t.alive_since.exact()
                    {
                        let site = self.created_by(&t);
                        self.lifetimes
                            .entry(site)
                            .or_default()
                            .record(ev.ts_ns.saturating_sub(born));
                    }
                } else if self.dropped.iter_mut().any(|d| d.remove(&ev.id)) {
                    // A refresh read it finished before this event arrived:
                    // not a correction after all.
                    self.totals.corrected = self.totals.corrected.saturating_sub(1);
                } else {
                    self.check_missed(ev.id, ev.ts_ns);
                }
            }
            TokioEventKind::Shutdown => self.totals.shutdown += 1,
            TokioEventKind::Poll => {
                self.totals.poll += 1;
                if self.completed.contains(&ev.id) {
                    return;
                }
                // First poll of a task never seen (or of a reused header):
                // spawned no later than now.
                let fresh = || Tracked::new(ev.id, vtable, Since::Found(ev.ts_ns));
                let t = self.tasks.entry(ev.header).or_insert_with(fresh);
                if t.id != ev.id {
                    *t = fresh();
                }
                t.last_poll = Some(ev.ts_ns);
            }
            TokioEventKind::Wake => self.totals.wake += 1,
        }
    }

    /// Code of `function` ran at `ts_ns` (it spawned a task): if it is an
    /// async fn that tasks run, one of them was being polled then.
    fn note_running(&mut self, function: &str, ts_ns: u64) {
        if let Some(vtables) = self.by_future.get(&short_future_name(function)) {
            for &v in vtables {
                self.ran_at.insert(v, ts_ns);
            }
        }
    }

    /// Blocking-pool tasks: never bound, so no spawn event; their one poll
    /// is their closure starting (it was queued no later), and their
    /// completion comes through `Harness::complete` where that is the
    /// completion probe, else a refresh finds it finished.
    fn apply_blocking(&mut self, ev: &TokioEvent, kind: TokioEventKind, vtable: usize) {
        match kind {
            TokioEventKind::Poll => {
                let fresh = || Tracked::new(ev.id, vtable, Since::Found(ev.ts_ns));
                let t = self.tasks.entry(ev.header).or_insert_with(fresh);
                if t.id != ev.id {
                    *t = fresh();
                }
            }
            TokioEventKind::Complete
                if self.tasks.get(&ev.header).is_some_and(|t| t.id == ev.id) =>
            {
                self.tasks.remove(&ev.header);
            }
            _ => {}
        }
    }

    /// A task we never saw spawn, yet alive after the first scan and newer
    /// than anything it found: the spawn probes do not cover this runtime
    /// (LTO inlined `bind_inner` into the spawn path of one scheduler
    /// flavour, or the tasks are a LocalSet's), and from then on every
    /// refresh is a heap scan. Uncovered spawns repeat with every task, so
    /// it takes [`MISSES_BEFORE_SCANNING`] of them: a single one can be a
    /// race at attach (seen once in a CI run of the 20-run tokio matrix),
    /// not a blind spot. Tasks spawned before the first announced one were
    /// spawned before the probes were armed (ids grow with each spawn) and
    /// never count: a later CI run saw three of those, all completing just
    /// after the first scan.
    fn check_missed(&mut self, id: u64, seen_ns: u64) {
        let Some((max_id, scan_end)) = self.first_scan else {
            return;
        };
        let armed_after = max_id.max(self.first_announced.unwrap_or(0));
        if id <= armed_after || seen_ns <= scan_end || !self.coverage.spawns {
            return;
        }
        self.missed += 1;
        if self.missed < MISSES_BEFORE_SCANNING {
            return;
        }
        self.coverage.spawns = false;
        self.notes.push(
            "the spawn probe (`OwnedTasks::bind_inner`) missed tasks of this runtime (inlined \
             by LTO, or LocalSet tasks): new tasks are found by a heap scan at each refresh \
             instead, so a task's age is known to within one refresh"
                .into(),
        );
    }

    /// Lifetimes of completed tasks per future type, named as views name
    /// their `created_by`.
    pub fn lifetimes(&self) -> Vec<(Frame, Lifetimes)> {
        self.lifetimes
            .iter()
            .map(|(site, stats)| (site.clone(), stats.summary()))
            .collect()
    }

    /// Spawns beyond the first 256 of a future type have their stack read
    /// one in 16 (the probe's sampling): for a type spawned from two or more
    /// sites, the others cannot be told apart. Said once.
    fn note_sampled_sites(&mut self) {
        if self.sampled_said {
            return;
        }
        let unsited = self
            .tasks
            .values()
            .filter(|t| {
                t.site.is_none()
                    && t.owner_id == u64::MAX
                    && self
                        .vtable_sites
                        .get(&t.vtable)
                        .is_some_and(|s| s.len() > 1)
            })
            .count();
        if unsited > 0 {
            self.sampled_said = true;
            self.notes.push(format!(
                "tokio: spawn stacks are read for the first 256 spawns of each future type, then \
                 one in 16 (or were lost): {unsited} tasks of future types spawned from several \
                 sites have no spawn site and are grouped by future type"
            ));
        }
    }

    /// The future type of a task, as a frame.
    fn future(&self, t: &Tracked) -> Frame {
        Frame {
            function: self.bin.vtables[t.vtable].display_name().into(),
            file: "".into(),
            line: 0,
        }
    }

    /// What a task's view names as its creation: where it was spawned.
    /// A task whose spawn was not seen (before attach, its stack lost)
    /// takes the one site its future type has been seen spawned from, as Go
    /// splits a site by caller only once two callers were seen; with two or
    /// more it keeps its future type, as does every task when nothing names
    /// the spawning code.
    fn created_by(&self, t: &Tracked) -> Frame {
        let known = self.vtable_sites.get(&t.vtable);
        match (&t.site, known) {
            (Some(site), _) => site.clone(),
            (None, Some(k)) if k.len() == 1 => k.iter().next().cloned().unwrap_or_default(),
            _ => self.future(t),
        }
    }

    /// Every live task now, read from the target.
    pub fn views(&mut self, pid: u32, now_ns: u64) -> Result<Vec<TaskView>> {
        let Some(bias) = self.locate(pid)? else {
            bail!("process {pid} is not running {} (yet)", self.path.display());
        };
        if let Some(sites) = &self.sites
            && sites.lost() > 0
            && !self.stacks_lost_said
        {
            self.stacks_lost_said = true;
            self.notes.push(
                "tokio: spawns came faster than their stacks could be read (the stack ring was \
                 full): some tasks have no spawn site and are grouped by future type alone"
                    .into(),
            );
        }
        // Events are at most one ring poll (50 ms) late: an unannounced task
        // still unannounced a refresh later was never reported.
        let late: Vec<(u64, u64)> = self
            .unannounced
            .iter()
            .filter(|&(_, &found)| now_ns.saturating_sub(found) > 200_000_000)
            .map(|(&id, &found)| (id, found))
            .collect();
        for (id, found) in late {
            self.unannounced.remove(&id);
            self.check_missed(id, found);
        }
        let scan_due = !self.coverage.follows_lifecycle()
            || self.next_scan.is_none_or(|t| Instant::now() >= t);
        if scan_due {
            let t0 = Instant::now();
            self.merge_scan(pid, bias, now_ns)?;
            let cost = t0.elapsed();
            // The first rescan comes soon: it is what tells whether the
            // spawn probes see this runtime's spawns at all.
            let every = if self.scans == 1 {
                FIRST_RESCAN
            } else {
                RESCAN_EVERY
            };
            self.next_scan = Some(Instant::now() + every.max(cost * 20));
        } else {
            self.reread(pid, bias);
        }
        self.observe_idle(pid, now_ns);
        Ok(self.build_views(pid))
    }

    /// Without poll probes, how long each idle task has looked the same: a
    /// task found idle whose state word and cell (header and future, up to
    /// [`IDLE_PEEK`] bytes, see [`IDLE_BUDGET`]) read as at the last
    /// refresh keeps its idle start; any other is idle since now. A poll
    /// between two refreshes that left both unchanged goes unseen, which
    /// the warnings say.
    fn observe_idle(&mut self, pid: u32, now_ns: u64) {
        if self.coverage.polls {
            return;
        }
        let vtables = &self.bin.vtables;
        let idle = |t: &Tracked| {
            t.state.is_some_and(|s| s.activity() == Activity::Idle)
                && !vtables[t.vtable].runs_on_blocking_pool()
        };
        let count = self.tasks.values().filter(|t| idle(t)).count();
        let share = (IDLE_BUDGET / count.max(1)).clamp(IDLE_PEEK_MIN, IDLE_PEEK);
        let mut spans = Vec::with_capacity(count);
        for (&header, t) in self.tasks.iter_mut() {
            if idle(t) {
                let cell = vtables[t.vtable].trailer_offset as usize;
                let len = t.idle_seen.map_or(share.min(cell), |s| s.len);
                spans.push((header, len));
            } else {
                t.idle_seen = None;
            }
        }
        let mem = Memory::new(pid);
        let tasks = &mut self.tasks;
        let ran_at = &self.ran_at;
        mem.read_spans(&spans, &mut |i, bytes| {
            let Some(t) = tasks.get_mut(&spans[i].0) else {
                return;
            };
            let ran = ran_at.get(&t.vtable).copied();
            t.idle_seen = bytes.map(|b| {
                let fingerprint = fingerprint(b);
                match t.idle_seen {
                    Some(seen)
                        if seen.fingerprint == fingerprint
                            && ran.is_none_or(|ts| ts <= seen.since) =>
                    {
                        seen
                    }
                    _ => IdleSeen {
                        since: now_ns,
                        fingerprint,
                        len: b.len(),
                    },
                }
            });
        });
    }

    fn merge_scan(&mut self, pid: u32, bias: u64, now_ns: u64) -> Result<()> {
        let align = cell_align(self.bin.tokio_version);
        let heap =
            scan(pid, &self.bin.vtables, bias, align).context("scanning the heap for tasks")?;
        let first = self.scans == 0;
        self.scans += 1;
        if first {
            let max_id = heap.tasks.iter().map(|t| t.id).max().unwrap_or(0);
            self.first_scan = Some((max_id, crate::target::clock::monotonic_ns()));
        }
        self.last_unstable = heap.unstable;
        if heap.capped && !self.scan_capped_said {
            self.scan_capped_said = true;
            self.notes.push(format!(
                "the heap scan stopped at {MAX_CANDIDATES} cells that look like task headers \
                 (its bound, README §Bounds): tasks further in the heap are seen only as the \
                 probes report them"
            ));
        }
        let mut found: HashMap<u64, LiveTask> =
            heap.tasks.into_iter().map(|t| (t.header, t)).collect();
        // Tasks the table has but the scan did not find have finished,
        // unless a probe saw them start while the scan was reading.
        let probes = self.coverage.follows_lifecycle();
        let vtables = &self.bin.vtables;
        // Blocking-pool tasks are no probe's to announce or end (without
        // `Harness::complete` probes): finding them is no correction.
        let followed = |vtable: usize| !vtables[vtable].runs_on_blocking_pool();
        let mut ended = 0;
        self.dropped.swap(0, 1);
        let dropped = &mut self.dropped[0];
        dropped.clear();
        self.tasks.retain(|header, t| {
            let alive = found.get(header).is_some_and(|live| live.id == t.id);
            if !alive && followed(t.vtable) {
                dropped.insert(t.id);
                ended += 1;
            }
            alive
        });
        if probes && !first {
            self.totals.corrected += ended;
        }
        let mut unseen = Vec::new();
        for (header, live) in found.drain() {
            let t = self.tasks.entry(header).or_insert_with(|| {
                if probes && !first && followed(live.vtable) {
                    // Alive, yet no probe saw it start: a LocalSet task, an
                    // inlined spawn path, or a lost event.
                    self.totals.corrected += 1;
                    if live.owner_id != 0 {
                        unseen.push(live.id);
                    }
                }
                // Before the first scan: any age. Later: new since the last
                // scan, so its start is known to within one.
                let since = if first {
                    Since::AtMost(now_ns)
                } else {
                    Since::Exact(now_ns)
                };
                Tracked::new(live.id, live.vtable, since)
            });
            t.state = Some(live.state);
            t.owner_id = live.owner_id;
        }
        let now = crate::target::clock::monotonic_ns();
        self.unannounced
            .extend(unseen.into_iter().map(|id| (id, now)));
        Ok(())
    }

    /// Re-read every known header; drop what finished without our noticing.
    fn reread(&mut self, pid: u32, bias: u64) {
        let mem = Memory::new(pid);
        let vtables = &self.bin.vtables;
        // Many headers per syscall; the span covers every vtable's id.
        let span = vtables.iter().map(task_span).max().unwrap_or(0);
        let headers: Vec<u64> = self.tasks.keys().copied().collect();
        let reads = mem.read_many(&headers, span);
        let mut ended = 0;
        self.dropped.swap(0, 1);
        let dropped = &mut self.dropped[0];
        dropped.clear();
        for (header, bytes) in headers.into_iter().zip(reads) {
            let Some(t) = self.tasks.get_mut(&header) else {
                continue;
            };
            let live =
                bytes.and_then(|b| parse_task(&b, header, &vtables[t.vtable], t.vtable, bias));
            match live {
                Some(live) if live.id == t.id && live.state.is_plausible_live() => {
                    t.state = Some(live.state);
                    t.owner_id = live.owner_id;
                }
                // Finished (its completion event is on its way, or was lost),
                // or the cell was freed and reused.
                _ => {
                    // Blocking-pool tasks end unannounced (see merge_scan).
                    if !vtables[t.vtable].runs_on_blocking_pool() {
                        dropped.insert(t.id);
                        ended += 1;
                    }
                    self.tasks.remove(&header);
                }
            }
        }
        self.totals.corrected += ended;
    }

    fn build_views(&mut self, pid: u32) -> Vec<TaskView> {
        self.note_sampled_sites();
        let mem = Memory::new(pid);
        let mut views = Vec::with_capacity(self.tasks.len());
        for (&header, t) in &self.tasks {
            // Spawned since the last read: not polled yet, so scheduled.
            let state = t.state.unwrap_or(StateWord(0b100 | (1 << 6)));
            let vt = &self.bin.vtables[t.vtable];
            let name = self.future(t);
            let created_by = self.created_by(t);
            let task_state = state.task_state();
            let idle = task_state.is_waiting();
            let blocked_since = match (idle, self.coverage.polls, t.last_poll) {
                (true, true, Some(ts)) => Some(Since::Exact(ts)),
                // Not polled since the poll probes went live.
                (true, true, None) => {
                    Some(Since::AtMost(self.probes_since.max(t.alive_since.ns())))
                }
                // Idle and unchanged at every refresh since then.
                (true, false, _) => t.idle_seen.map(|s| Since::AtMost(s.since)),
                _ => None,
            };
            let mut stack: Vec<Frame> = Vec::new();
            if idle && let Some(awaits) = &self.awaits {
                let mut read = |addr: u64, len: usize| {
                    let mut b = vec![0u8; len];
                    mem.read(addr, &mut b).ok().map(|()| b)
                };
                stack = awaits
                    .stack(t.vtable, header, &mut read)
                    .into_iter()
                    .map(|p| Frame {
                        function: p.function.into(),
                        file: p.file.into(),
                        line: p.line,
                    })
                    .collect();
            }
            let blocked_at = stack
                .iter()
                .find(|f| f.line != 0 && !is_library_frame(&f.function))
                .cloned();
            let stack = self
                .stacks
                .entry(stack)
                .or_insert_with_key(|s| Arc::from(s.as_slice()))
                .clone();
            let place = Place {
                never_ends: state.lost_waker(),
                // Neither is what num_alive_tasks() counts; only the worker
                // launchers are the runtime's.
                system: vt.is_runtime_own(),
                blocking: vt.runs_on_blocking_pool() && !vt.is_runtime_own(),
                created_by,
                via: None,
                start: name,
                stack,
                blocked_at,
                state: task_state,
                main: false,
                stack_unstable: false,
            };
            views.push(TaskView {
                key: header,
                id: t.id,
                place: Arc::new(place),
                blocked_since,
                alive_since: t.alive_since,
                waits_on: no_chan_waits(),
                stranded: Default::default(),
            });
        }
        views
    }
}

/// Async (bound) vtables by the future type their names give, as
/// [`short_future_name`] spells code paths; folded names count for each.
fn futures_by_name(vtables: &[super::vtables::TaskVtable]) -> HashMap<String, Vec<usize>> {
    let mut by: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, v) in vtables.iter().enumerate() {
        if v.runs_on_blocking_pool() {
            continue;
        }
        for name in v.name.future.iter().chain(&v.name.also) {
            by.entry(short_future_name(name)).or_default().push(i);
        }
    }
    by
}

/// A hash of what an idle task looked like.
fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// Frames of tokio and the standard library, skipped when naming where a
/// task is stuck (the program's own `.await` is the useful line).
fn is_library_frame(function: &str) -> bool {
    ["tokio::", "core::", "std::", "alloc::", "futures_"]
        .iter()
        .any(|p| function.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::super::vtables::{NameSource, TaskName, TaskVtable};
    use super::*;

    fn event(kind: TokioEventKind, header: u64, id: u64, vtable: u64, ts_ns: u64) -> TokioEvent {
        TokioEvent {
            ts_ns,
            header,
            id,
            vtable,
            kind: kind as u8,
            ..TokioEvent::default()
        }
    }

    /// A tracer for a binary with one vtable of a task bound to the
    /// multi-thread scheduler (the kind the table follows; the release
    /// build of tests/fixtures/rust has such vtables, which
    /// tests/tests/tokio_binary.rs checks), and no await decoder.
    fn tracer_with_one_task_vtable() -> TokioTracer {
        tracer_with(vec![vtable(0x5000, 8, "app::job::{{closure}}", BOUND)])
    }

    const BOUND: &str = "alloc::sync::Arc<tokio::runtime::scheduler::multi_thread::handle::Handle>";
    const BLOCKING: &str = "tokio::runtime::blocking::schedule::BlockingSchedule";

    /// A vtable whose id is `id_gap` bytes after the scheduler (8: an
    /// `Arc` scheduler; more: the blocking pool's whole handle).
    fn vtable(va: u64, id_gap: u64, future: &str, scheduler: &str) -> TaskVtable {
        TaskVtable {
            va,
            fns: [0; 7],
            trailer_offset: 80,
            scheduler_offset: 32,
            id_offset: 32 + id_gap,
            name: TaskName {
                future: Some(future.into()),
                scheduler: Some(scheduler.into()),
                source: NameSource::DropGlue,
                reason: None,
                also: Vec::new(),
                hint: None,
            },
        }
    }

    fn tracer_with(vtables: Vec<TaskVtable>) -> TokioTracer {
        let exe = std::env::current_exe().expect("the test binary");
        let elf = ElfFile::open(&exe).expect("an ELF file");
        let bin = RustBinary {
            rustc: None,
            tokio_version: None,
            has_symtab: true,
            has_dwarf: false,
            mangling: Default::default(),
            vtables,
        };
        TokioTracer::with_binary(&exe, elf, bin, None)
    }

    /// Blocking-pool tasks start at their one poll and end at a
    /// completion, apart from async tasks: the program's closures are
    /// `blocking`, the worker launchers the runtime's own.
    #[test]
    fn blocking_tasks_are_followed_apart() {
        let mut t = tracer_with(vec![
            vtable(0x5000, 8, "app::job::{{closure}}", BOUND),
            vtable(
                0x6000,
                24,
                "tokio::runtime::blocking::task::BlockingTask<app::hash_file::{{closure}}>",
                BLOCKING,
            ),
            vtable(
                0x7000,
                24,
                "tokio::runtime::blocking::task::BlockingTask<tokio::runtime::scheduler::multi_thread::worker::Launch::launch::{{closure}}>",
                BLOCKING,
            ),
        ]);
        t.set_bias(0);
        t.apply(&event(TokioEventKind::Poll, 0xa000, 3, 0x6000, 100));
        t.apply(&event(TokioEventKind::Poll, 0xb000, 1, 0x7000, 90));
        assert_eq!(t.totals.spawn, 0, "not async spawns");
        assert_eq!(t.tasks[&0xa000].alive_since, Since::Found(100));
        for h in [0xa000, 0xb000] {
            t.tasks.get_mut(&h).unwrap().state = Some(StateWord(0x81));
        }
        let views = t.build_views(std::process::id());
        let place = |key| &views.iter().find(|v| v.key == key).unwrap().place;
        assert!(place(0xa000).blocking && !place(0xa000).system);
        assert!(place(0xb000).system && !place(0xb000).blocking);
        t.apply(&event(TokioEventKind::Complete, 0xa000, 3, 0x6000, 200));
        assert!(!t.tasks.contains_key(&0xa000));
        assert_eq!(t.totals.complete, 0);
    }

    /// tokio polls a task notified while it completed (the poll finds it
    /// complete and drops a reference): with --detailed that poll comes
    /// after the completion event and must not bring the task back, while a
    /// new task in the same cell (a new id) is followed as usual.
    #[test]
    fn a_poll_after_completion_does_not_revive_the_task() {
        let mut t = tracer_with_one_task_vtable();
        t.set_bias(0);
        t.apply(&event(TokioEventKind::Spawn, 0xa000, 7, 0x5000, 100));
        t.apply(&event(TokioEventKind::Poll, 0xa000, 7, 0x5000, 110));
        t.apply(&event(TokioEventKind::Complete, 0xa000, 7, 0x5000, 120));
        t.apply(&event(TokioEventKind::Poll, 0xa000, 7, 0x5000, 130));
        assert!(t.tasks.is_empty(), "the late poll revived task 7");
        assert_eq!(t.totals.poll, 2, "the late poll is still a poll");
        t.apply(&event(TokioEventKind::Poll, 0xa000, 8, 0x5000, 140));
        assert_eq!(t.tasks[&0xa000].id, 8);
    }

    /// Without poll probes, an idle task's idle start is the first refresh
    /// that found it so, for as long as its cell reads the same; a change
    /// starts it again. Its view says the duration is a lower bound.
    #[test]
    fn idle_durations_come_from_unchanged_cells() {
        let mut t = tracer_with_one_task_vtable();
        t.set_bias(0);
        // A task cell in this process's own memory, read like a target's.
        let mut cell = vec![0u8; 80];
        cell[..8].copy_from_slice(&0x80u64.to_le_bytes());
        let header = cell.as_ptr() as u64;
        let mut tracked = Tracked::new(7, 0, Since::Exact(50));
        tracked.state = Some(StateWord(0x80));
        t.tasks.insert(header, tracked);
        let pid = std::process::id();
        t.observe_idle(pid, 1_000);
        t.observe_idle(pid, 2_000);
        assert_eq!(t.tasks[&header].idle_seen.map(|s| s.since), Some(1_000));
        let views = t.build_views(pid);
        assert_eq!(views[0].blocked_since, Some(Since::AtMost(1_000)));
        // A task of its type spawned one: one of them ran.
        t.note_running("app::job::{{closure}}", 2_500);
        t.observe_idle(pid, 2_600);
        assert_eq!(t.tasks[&header].idle_seen.map(|s| s.since), Some(2_600));
        t.observe_idle(pid, 2_700);
        assert_eq!(t.tasks[&header].idle_seen.map(|s| s.since), Some(2_600));
        // Polled in between: its future changed.
        cell[40] = 1;
        std::hint::black_box(&cell);
        t.observe_idle(pid, 3_000);
        assert_eq!(t.tasks[&header].idle_seen.map(|s| s.since), Some(3_000));
        // Not idle: no idle start.
        t.tasks.get_mut(&header).unwrap().state = Some(StateWord(0x84));
        t.observe_idle(pid, 4_000);
        assert_eq!(t.tasks[&header].idle_seen, None);
        assert_eq!(t.build_views(pid)[0].blocked_since, None);
    }

    /// The table follows spawn and completion events; a completion that
    /// arrives after a refresh already dropped the task is not a
    /// correction; a completion of a task no spawn event announced, after
    /// the first scan, switches the session to heap scans and says why.
    #[test]
    fn events_drive_the_table_and_missed_spawns_are_noticed() {
        let mut t = tracer_with_one_task_vtable();
        t.set_bias(0x1000);
        t.coverage = Coverage {
            spawns: true,
            completions: true,
            ..Coverage::default()
        };
        let vt = t
            .bin
            .vtables
            .iter()
            .find(|v| v.has_bound_scheduler() && !v.is_blocking())
            .expect("a task vtable")
            .va
            + 0x1000;
        t.first_scan = Some((5, 100));
        t.apply(&event(TokioEventKind::Spawn, 0xa000, 11, vt, 200));
        t.apply(&event(TokioEventKind::Spawn, 0xb000, 12, vt, 210));
        assert_eq!(t.tasks.len(), 2);
        assert_eq!(t.tasks[&0xa000].alive_since, Since::Exact(200));
        t.apply(&event(TokioEventKind::Complete, 0xa000, 11, vt, 300));
        assert_eq!(t.tasks.len(), 1);

        // A refresh found 12 finished before its event came.
        t.tasks.remove(&0xb000);
        t.dropped[0].insert(12);
        t.totals.corrected = 1;
        t.apply(&event(TokioEventKind::Complete, 0xb000, 12, vt, 310));
        assert_eq!(t.totals.corrected, 0);
        assert!(t.notes.is_empty() && t.coverage.spawns);

        // Id 8 is newer than the first scan found but older than the first
        // announced spawn: spawned before the probes were armed.
        for _ in 0..3 {
            t.apply(&event(TokioEventKind::Complete, 0xbf00, 8, vt, 315));
        }
        assert!(t.coverage.spawns && t.notes.is_empty(), "pre-arm tasks");

        // Ids 13, 15, 17 were never announced: one is a race, three a
        // blind spot.
        t.apply(&event(TokioEventKind::Complete, 0xc000, 13, vt, 320));
        assert!(t.coverage.spawns && t.notes.is_empty(), "one miss");
        t.apply(&event(TokioEventKind::Complete, 0xc100, 15, vt, 321));
        t.apply(&event(TokioEventKind::Complete, 0xc200, 17, vt, 322));
        assert!(!t.coverage.spawns, "falls back to heap scans");
        assert_eq!(t.notes.len(), 1, "{:?}", t.notes);

        // Records for vtables that are not tasks' are ignored.
        t.apply(&event(TokioEventKind::Spawn, 0xd000, 14, 0xdead, 330));
        assert!(!t.tasks.contains_key(&0xd000));
    }
}
