//! Reading goroutines out of the target's memory, read-only and without
//! stopping it: the attach-time snapshot of `runtime.allgs`, and at each
//! refresh the live state, wait reason and blocked stack of every goroutine
//! in the table.
//!
//! The program keeps running while we read, so every read is validated: a g
//! whose status or stack moved under us is read again, and reported as
//! unstable rather than as truth if it keeps moving.
use std::{collections::HashMap, num::NonZeroUsize, sync::Arc, time::Instant};

use lru::LruCache;

use anyhow::{Context as _, Result};

use super::{
    allgs_locate::AllgsLocation,
    allgs_read,
    binary::GoBinary,
    channels::{ChanReader, ParkKey, ReadMem, Target, WaitOp, Waiter, digest},
    layout::{ChanLayout, GLayout},
    live::{LiveTable, LiveTask, Origin},
    wait_reason::gstatus,
};
use crate::{
    runtime::{Place, Since, TaskState, TaskView, no_chan_waits, no_frames},
    symbols::Frame,
    target::{clock::monotonic_ns, memory::Memory},
};

/// What a walk of `runtime.allgs` saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllgsWalk {
    /// Live goroutines (the runtime's own included).
    pub live: usize,
    /// The highest goid of any g, live or dead.
    pub max_goid: u64,
    /// Said when `allgs` was longer than leaktrace reads (`allgs_read`).
    pub note: Option<String>,
}

/// Frames deeper than this are not unwound (Go's own tracebacks stop at 100).
const MAX_FRAMES: usize = 64;
/// Stack bytes read per goroutine, from its saved SP upwards.
const MAX_STACK_READ: u64 = 64 * 1024;
/// Attempts at a consistent read of one goroutine.
const READ_ATTEMPTS: usize = 3;

pub struct GoReader {
    bin: Arc<GoBinary>,
    mem: Memory,
    /// Runtime address = link-time VA + bias (non-zero for PIE).
    bias: u64,
    /// pc (VA) → frames; None outside Go code. The pcs come from the
    /// target's stacks and g's: bounded, least recently used out.
    frames: LruCache<u64, Option<Arc<[Frame]>>>,
    /// Identical stacks (the common case in a leak) share one
    /// symbolization, numbered: a goroutine's row remembers the number of
    /// its last validated walk and a digest of the saved registers it was
    /// read from (`LiveTask::walk`): while they are unchanged it is still
    /// parked at the same place, so the walk holds and is not read again.
    stack_ids: HashMap<Vec<u64>, u32>,
    stack_list: Vec<Arc<Stack>>,
    /// The numbers in the rows refer to an older `stack_list`: forget them.
    walks_stale: bool,
    /// What the tasks at one place share, made once per place.
    places: HashMap<PlaceKey, Arc<Place>>,
    /// Per (gopc, startpc): who created it and what it runs (LRU).
    origins: LruCache<(u64, u64), Arc<OriginNames>>,
    /// Per (gopc, the creator's caller pcs): the caller shown as `via` (LRU).
    vias: LruCache<(u64, [u64; 2]), Option<Frame>>,
    /// Per creation site (`go` statement line): the callers seen so far
    /// (LRU: a site evicted learns again whether it is a spawn helper).
    site_callers: LruCache<Frame, SiteCallers>,
    /// The park probe is shed (overhead budget): blocked-since times come
    /// from the refreshes (see `LiveTask::seen_parked_ns`).
    pub parks_by_memory: bool,
    /// `go` statements the spawn probe was told to walk only now and then
    /// (one caller after many spawns), with their site. At most one per
    /// site the live table counts (`live::MAX_LIFETIME_SITES`).
    plain: HashMap<u64, Frame>,
    /// What goroutines blocked on channels wait on; `None` when the
    /// channel structures' layout is unknown (see `chan_note`).
    chans: Option<ChanReader>,
    /// Where the channel layout came from, or why there is none; said once.
    chan_note: Option<String>,
    /// The target's memory for the channel reads (batched, no allocation
    /// per structure).
    target: Target,
}

/// Spawns a `go` statement must have made, all from one caller, before the
/// spawn probe stops reading its callers on every spawn.
const PLAIN_AFTER: u64 = 64;

/// Changes to the spawn probe's set of plain `go` statements.
#[derive(Debug, Default)]
pub struct PlainSites {
    pub add: Vec<u64>,
    pub remove: Vec<u64>,
}

/// Whether one `go` statement is a spawn helper: it is once goroutines came
/// to it through two distinct callers (since attach, counting those that
/// have exited). Until then its goroutines keep today's groups.
#[derive(Debug)]
struct SiteCallers {
    first: Frame,
    helper: bool,
}

/// The walks of one batch's parked goroutines, [`MAX_FRAMES`] slots each
/// in one buffer (a batch is at most [`CHUNK`] goroutines: 512 KiB), not
/// one `Vec` per goroutine.
struct Walks {
    pcs: Vec<u64>,
    lens: Vec<u8>,
}

impl Walks {
    /// Each walk starts as its goroutine's saved pc alone.
    fn new(hs: &[GHeader]) -> Self {
        let mut pcs = vec![0; hs.len() * MAX_FRAMES];
        for (j, h) in hs.iter().enumerate() {
            pcs[j * MAX_FRAMES] = h.sched_pc;
        }
        Self {
            pcs,
            lens: vec![1; hs.len()],
        }
    }

    fn set(&mut self, j: usize, pcs: &[u64]) {
        let n = pcs.len().min(MAX_FRAMES);
        self.pcs[j * MAX_FRAMES..j * MAX_FRAMES + n].copy_from_slice(&pcs[..n]);
        self.lens[j] = n as u8;
    }

    fn get(&self, j: usize) -> &[u64] {
        &self.pcs[j * MAX_FRAMES..j * MAX_FRAMES + usize::from(self.lens[j])]
    }
}

/// One batch of rows as read (see [`GoReader::read_chunk`]).
struct ChunkRead {
    headers: Vec<Option<GHeader>>,
    /// Per row: its walk's number, and whether it kept moving.
    walks: Vec<(Option<u32>, bool)>,
}

/// What a validated walk of the goroutine at `g` was read from: while its
/// goid and saved registers are the same, it is parked at the same place.
/// A 64-bit digest stands for the five words (a false match is a 2⁻⁶⁴
/// chance per refresh and goroutine); never 0, which means "no walk".
fn walk_digest(g: u64, h: &GHeader) -> u64 {
    digest((g, h.goid, h.sched_sp, h.sched_pc, h.sched_bp))
}

/// Every field of a header, as a digest: whether a goroutine moved between
/// two reads, kept for a million of them in 8 bytes each.
fn header_digest(h: &GHeader) -> u64 {
    digest(h)
}

/// One symbolized blocked stack and what we derive from it.
#[derive(Debug)]
struct Stack {
    frames: Arc<[Frame]>,
    blocked_at: Option<Frame>,
    /// The outermost frame that is not a compiler wrapper.
    start: Option<Frame>,
}

#[derive(Debug)]
struct OriginNames {
    created_by: Frame,
    /// From the start pc alone (thunks unwrapped); the stack, when there is
    /// one, names the start function better.
    start: Frame,
    system: bool,
}

/// What makes tasks share a [`Place`]: their names (by pointer), their
/// walk (by pointer), their state and wait reason, and `via`.
#[derive(Clone, Debug)]
struct PlaceKey {
    names: Arc<OriginNames>,
    stack: Option<Arc<Stack>>,
    state: u32,
    reason: u8,
    via: Option<Frame>,
    /// Goroutine 1, and a stack that kept moving (see `Place`).
    main: bool,
    unstable: bool,
}

impl PartialEq for PlaceKey {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.names, &o.names)
            && match (&self.stack, &o.stack) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && (self.state, self.reason, self.main, self.unstable)
                == (o.state, o.reason, o.main, o.unstable)
            && self.via == o.via
    }
}
impl Eq for PlaceKey {}
impl std::hash::Hash for PlaceKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        Arc::as_ptr(&self.names).hash(h);
        self.stack.as_ref().map(Arc::as_ptr).hash(h);
        (self.state, self.reason, self.main, self.unstable, &self.via).hash(h);
    }
}

/// Goroutines read per batch: one `process_vm_readv` for their headers,
/// one for the stacks to walk, one to check those did not move meanwhile.
const CHUNK: usize = 1024;
/// Stack bytes read per goroutine in a batch, from its saved SP; a walk
/// that goes further reads the rest on its own.
const STACK_WINDOW: u64 = 1024;
/// Distinct walks, and places, kept before starting over: generation
/// caches, emptied at the start of a refresh once over the bound (rows refer
/// to walks by number, so they cannot be evicted one by one mid-refresh;
/// one refresh adds at most one of each per goroutine it reads).
const MAX_STACKS: usize = 100_000;
const MAX_PLACES: usize = 100_000;
/// Entries of each cache keyed by pcs read from the target (frames,
/// origins, `via` callers, sites' callers), least recently used evicted
/// first. A program's distinct pcs that matter (go statements, start
/// functions, return addresses of parked stacks) number in the thousands;
/// 2¹⁶ entries of a few dozen bytes each keep each cache under ~10 MiB
/// whatever pcs a hostile target shows, and eviction only costs a
/// symbolization again.
const MAX_PC_CACHE: NonZeroUsize = NonZeroUsize::new(1 << 16).expect("non-zero");

/// The fields of a `runtime.g` we use, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GHeader {
    pub stack_lo: u64,
    pub stack_hi: u64,
    pub sched_sp: u64,
    pub sched_pc: u64,
    pub sched_bp: u64,
    pub syscallsp: u64,
    pub status: u32,
    pub goid: u64,
    pub waitsince: i64,
    pub waitreason: u8,
    pub parent_goid: u64,
    pub gopc: u64,
    pub startpc: u64,
    /// `g.waiting` (the sudog list of a channel wait); 0 when its offset is
    /// unknown. Set by [`GHeader::with_waiting`].
    pub waiting: u64,
}

impl GHeader {
    /// The header with `g.waiting` read from the same bytes.
    pub fn with_waiting(mut self, bytes: &[u8], offset: Option<u32>) -> Self {
        self.waiting = offset
            .and_then(|off| {
                let o = off as usize;
                Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
            })
            .unwrap_or(0);
        self
    }

    pub fn parse(bytes: &[u8], l: &GLayout) -> Option<Self> {
        let u64_at = |off: u32| -> Option<u64> {
            let o = off as usize;
            Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
        };
        let u32_at = |off: u32| -> Option<u32> {
            let o = off as usize;
            Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?))
        };
        Some(Self {
            stack_lo: u64_at(l.g_stack_lo)?,
            stack_hi: u64_at(l.g_stack_hi)?,
            sched_sp: u64_at(l.g_sched_sp)?,
            sched_pc: u64_at(l.g_sched_pc)?,
            sched_bp: u64_at(l.g_sched_bp)?,
            syscallsp: u64_at(l.g_syscallsp)?,
            status: u32_at(l.g_atomicstatus)?,
            goid: u64_at(l.g_goid)?,
            waitsince: u64_at(l.g_waitsince)? as i64,
            waitreason: *bytes.get(l.g_waitreason as usize)?,
            parent_goid: match l.g_parent_goid {
                Some(off) => u64_at(off)?,
                None => 0,
            },
            gopc: u64_at(l.g_gopc)?,
            startpc: u64_at(l.g_startpc)?,
            waiting: 0,
        })
    }

    /// Status without the GC's scan bit.
    pub fn state(&self) -> u32 {
        self.status & !gstatus::SCAN
    }

    pub fn is_gone(&self) -> bool {
        matches!(
            self.state(),
            gstatus::IDLE | gstatus::DEAD | gstatus::DEADEXTRA
        )
    }
}

impl GoReader {
    pub fn new(bin: Arc<GoBinary>, pid: u32, bias: u64) -> Self {
        let (chan_layout, chan_note) = chan_layout(&bin);
        let allp = bin.elf.symbol("runtime.allp").map(|a| a + bias);
        Self {
            chans: chan_layout.map(|l| ChanReader::new(l, allp)),
            chan_note,
            target: Target::new(pid),
            bin,
            mem: Memory::new(pid),
            bias,
            frames: LruCache::new(MAX_PC_CACHE),
            stack_ids: HashMap::new(),
            stack_list: Vec::new(),
            walks_stale: false,
            places: HashMap::new(),
            origins: LruCache::new(MAX_PC_CACHE),
            vias: LruCache::new(MAX_PC_CACHE),
            site_callers: LruCache::new(MAX_PC_CACHE),
            plain: HashMap::new(),
            parks_by_memory: false,
        }
    }

    /// Where the channel layout came from, or why channels are not read;
    /// once.
    pub fn take_chan_note(&mut self) -> Option<String> {
        self.chan_note.take()
    }

    fn g_waiting(&self) -> Option<u32> {
        self.chans.as_ref().map(|c| c.layout().g_waiting)
    }

    fn parse_header(&self, bytes: &[u8]) -> Option<GHeader> {
        GHeader::parse(bytes, &self.bin.layout).map(|h| h.with_waiting(bytes, self.g_waiting()))
    }

    /// For `-c`: a PIE's load address is known only once it is mapped.
    pub fn set_bias(&mut self, bias: u64) {
        if bias != self.bias {
            self.bias = bias;
            if let Some(c) = self.chans.as_mut() {
                let allp = self.bin.elf.symbol("runtime.allp").map(|a| a + bias);
                *c = ChanReader::new(*c.layout(), allp);
            }
            self.frames.clear();
            self.stack_ids.clear();
            self.stack_list.clear();
            self.walks_stale = true;
            self.places.clear();
            self.origins.clear();
            self.vias.clear();
            self.site_callers.clear();
            self.plain.clear();
        }
    }

    /// Bytes read per g: up to the last field [`GHeader`] uses, not the
    /// whole struct (a refresh copies this for every goroutine, twice for
    /// those whose stack it walks).
    fn g_len(&self) -> usize {
        let l = &self.bin.layout;
        let last = [
            l.g_stack_lo,
            l.g_stack_hi,
            l.g_sched_sp,
            l.g_sched_pc,
            l.g_sched_bp,
            l.g_syscallsp,
            l.g_atomicstatus,
            l.g_goid,
            l.g_waitsince,
            l.g_waitreason,
            l.g_gopc,
            l.g_startpc,
        ]
        .into_iter()
        .chain(l.g_parent_goid)
        .chain(self.g_waiting())
        .max()
        .unwrap_or(0);
        ((last as usize) + 8).min(l.sizeof_g as usize)
    }

    /// Every goroutine alive now, from `runtime.allgs` (lock-free, as the
    /// runtime's own `forEachGRace` does: read the length, then the array;
    /// g structs are never freed, so a stale pointer reads a dead g at worst),
    /// into `table`. Returns how many.
    pub fn snapshot(
        &mut self,
        at: &AllgsLocation,
        pid: u32,
        table: &mut LiveTable,
    ) -> Result<(usize, Option<String>)> {
        let walk = self.walk_allgs(at, pid, &mut |key, goid| {
            table.insert_existing(LiveTask::existing(key, goid));
        })?;
        Ok((walk.live, walk.note))
    }

    /// A walk of `runtime.allgs` while the spawn probe is shed (overhead
    /// budget): goroutines the table does not know are added as found now.
    pub fn rescan(
        &mut self,
        at: &AllgsLocation,
        pid: u32,
        table: &mut LiveTable,
    ) -> Result<AllgsWalk> {
        let now = monotonic_ns();
        self.walk_allgs(at, pid, &mut |key, goid| {
            table.insert_found(LiveTask::found(key, goid, now));
        })
    }

    /// Call `live(g address, goid)` for every live goroutine of `allgs`
    /// (read in bounded batches, its length checked: `allgs_read`).
    fn walk_allgs(
        &mut self,
        at: &AllgsLocation,
        pid: u32,
        live: &mut dyn FnMut(u64, u64),
    ) -> Result<AllgsWalk> {
        let slice = allgs_read::read_slice(
            &self.mem,
            at.allgs + self.bias,
            at.allglen.map(|a| a + self.bias),
            self.bin.layout.sizeof_g,
            allgs_read::mapped_bytes(pid),
        )
        .context("reading runtime.allgs")?;
        let layout = &self.bin.layout;
        let mut walk = AllgsWalk::default();
        let g_len = self.g_len();
        let read = allgs_read::for_each_g(
            &self.mem,
            &slice,
            g_len,
            allgs_read::MAX_ALLGLEN,
            &mut |addr, bytes| {
                let Some(h) = bytes.and_then(|b| GHeader::parse(b, layout)) else {
                    return;
                };
                // A dead g keeps the goid it last had: the highest goid
                // counts the goroutines created so far (to within the
                // runtime's per-P batches of goids).
                walk.max_goid = walk.max_goid.max(h.goid);
                if h.is_gone() || h.goid == 0 {
                    return;
                }
                walk.live += 1;
                live(addr, h.goid);
            },
        )?;
        walk.note = read.note(allgs_read::MAX_ALLGLEN);
        Ok(walk)
    }

    /// Read every task in the table into `views` (emptied first, its
    /// memory reused). A task found finished is flagged, and dropped only
    /// if the next read finds it finished again and no exit event explained
    /// it meanwhile: the spawn probe fires just before the runtime marks the
    /// new g runnable, so one "dead" read can be a g that is being born.
    pub fn views(&mut self, table: &mut LiveTable, snapshot_ns: u64, views: &mut Vec<TaskView>) {
        let t_start = Instant::now();
        for (gopc, pcs) in table.take_new_callers() {
            self.note_caller(gopc, pcs);
        }
        if self.stack_list.len() > MAX_STACKS {
            self.stack_ids.clear();
            self.stack_list.clear();
            self.walks_stale = true;
        }
        if std::mem::take(&mut self.walks_stale) {
            for t in table.tasks_mut() {
                t.walk_digest = 0;
            }
        }
        if self.places.len() > MAX_PLACES {
            self.places.clear();
        }
        views.clear();
        views.reserve(table.len());
        // Channel waiters, in the views' order, and for each a digest of
        // the header its view was made from (to see whether it moved).
        // Room for every task up front: pages never written are never
        // resident, and growing by doubling would copy (and briefly hold
        // twice) lists of a million.
        let mut waiters: Vec<Waiter> = Vec::with_capacity(table.len());
        let mut checks: Vec<u64> = Vec::with_capacity(table.len());
        let mut dead_twice = Vec::new();
        let (mut tasks, origins) = table.tasks_and_origins();
        // One batch of rows at a time, not a list of all of them.
        let mut chunk: Vec<&mut LiveTask> = Vec::with_capacity(CHUNK);
        loop {
            chunk.clear();
            chunk.extend(tasks.by_ref().take(CHUNK));
            if chunk.is_empty() {
                break;
            }
            let chunk = &mut chunk[..];
            let read = self.read_chunk(chunk, &mut dead_twice);
            for ((task, h), (walk, unstable)) in chunk.iter().zip(read.headers).zip(read.walks) {
                let Some(h) = h else { continue };
                let view = self.view(task, origins.of(task), h, walk, unstable, snapshot_ns);
                if let TaskState::Waiting(reason) = view.state()
                    && let Some(op) = WaitOp::from_reason(reason)
                {
                    let park = ParkKey {
                        goid: h.goid,
                        sp: h.sched_sp,
                        pc: h.sched_pc,
                        bp: h.sched_bp,
                        parked_ns: task.parked_ns().or(task.seen_parked_ns()).unwrap_or(0),
                    };
                    waiters.push(Waiter::new(task.key, h.waiting, op, park.digest()));
                    checks.push(header_digest(&h));
                }
                views.push(view);
            }
        }
        drop((chunk, tasks));
        for key in dead_twice {
            table.remove_dead(key);
        }
        // The views are refilled in place; after a burst, give back what
        // the next refreshes will not need.
        if views.capacity() > 2 * views.len() + 4096 {
            views.shrink_to_fit();
        }
        let t0 = Instant::now();
        self.read_channels(views, &waiters, &mut checks);
        log::debug!(
            "refresh: {} goroutines read in {:?}, of which channels {:?} ({:?})",
            views.len(),
            t_start.elapsed(),
            t0.elapsed(),
            self.chans.as_ref().map(|c| c.stats)
        );
    }

    /// Read one batch of rows: each live one's header (None: finished, see
    /// [`Self::views`]) and, for the blocked ones, a validated walk of
    /// their stack (its number) and whether it kept moving.
    fn read_chunk(&mut self, chunk: &mut [&mut LiveTask], dead_twice: &mut Vec<u64>) -> ChunkRead {
        let keys: Vec<u64> = chunk.iter().map(|t| t.key).collect();
        let mut headers: Vec<Option<GHeader>> = vec![None; keys.len()];
        self.mem.read_each(&keys, self.g_len(), &mut |i, b| {
            headers[i] = b
                .and_then(|b| self.parse_header(b))
                .filter(|h| !h.is_gone());
        });
        for (task, h) in chunk.iter_mut().zip(&headers) {
            let Some(h) = h else {
                if task.seen_dead() {
                    dead_twice.push(task.key);
                }
                task.set_seen_dead(true);
                continue;
            };
            if task.id != 0 && h.goid != task.id {
                task.forget_history();
            }
            task.id = h.goid;
            task.set_seen_dead(false);
        }
        if self.parks_by_memory {
            // No park probe: a goroutine blocked somewhere new since the
            // last validated walk parked at most now.
            let now = monotonic_ns();
            for (task, h) in chunk.iter_mut().zip(&headers) {
                match h {
                    Some(h) if is_waiting(h) => {
                        let known = task.parked_ns().is_some() || task.seen_parked_ns().is_some();
                        if !known || task.walk_digest != walk_digest(task.key, h) {
                            task.set_seen_parked(now);
                        }
                    }
                    Some(_) => task.set_seen_parked(0),
                    None => {}
                }
            }
        }
        let mut walks: Vec<(Option<u32>, bool)> = vec![(None, false); keys.len()];
        let mut pending: Vec<usize> = (0..keys.len())
            .filter(|&i| headers[i].is_some_and(|h| is_waiting(&h)))
            .collect();
        for _ in 0..READ_ATTEMPTS {
            // Parked where the last validated walk saw it: that walk holds.
            pending.retain(|&i| {
                let h = headers[i].expect("pending rows have headers");
                let task = &chunk[i];
                if task.walk_digest == walk_digest(task.key, &h) {
                    walks[i] = (Some(task.walk), false);
                    false
                } else {
                    true
                }
            });
            if pending.is_empty() {
                break;
            }
            let walked = self.unwind_all(&pending, &headers);
            // Read the g again: if it moved (woke, or the GC moved its
            // stack) while we walked, the walk may mix two stacks.
            let again_keys: Vec<u64> = pending.iter().map(|&i| keys[i]).collect();
            let mut again: Vec<Option<GHeader>> = vec![None; pending.len()];
            self.mem.read_each(&again_keys, self.g_len(), &mut |j, b| {
                again[j] = b.and_then(|b| self.parse_header(b));
            });
            let mut next = Vec::new();
            for (j, (&i, again)) in pending.iter().zip(again).enumerate() {
                let h = headers[i].expect("pending rows have headers");
                match again {
                    Some(a) if a == h => {
                        let id = self.intern(walked.get(j));
                        chunk[i].walk = id;
                        chunk[i].walk_digest = walk_digest(keys[i], &h);
                        walks[i] = (Some(id), false);
                    }
                    Some(a) if !a.is_gone() => {
                        headers[i] = Some(a);
                        walks[i].1 = true;
                        if is_waiting(&a) {
                            next.push(i);
                        }
                    }
                    _ => {}
                }
            }
            pending = next;
        }
        ChunkRead { headers, walks }
    }

    /// Fill in what channel waiters wait on. A goroutine whose sudogs were
    /// read now (not in the same park as at an earlier refresh) is read
    /// again afterwards: one that moved meanwhile (woke, parked elsewhere)
    /// gets nothing rather than a mix of two waits.
    ///
    /// `list` is in `views` order (a view's waiter is the next one with its
    /// g: no list of view numbers), with `checks` its headers' digests;
    /// those of waiters that need no check become 0 (no list of the fresh
    /// ones either).
    fn read_channels(&mut self, views: &mut [TaskView], list: &[Waiter], checks: &mut [u64]) {
        let Some(chans) = self.chans.as_mut() else {
            return;
        };
        if list.is_empty() {
            return;
        }
        // Each list goes straight to its view; the fresh ones are checked
        // below, and a view whose goroutine moved loses its list again.
        let mut v = 0;
        chans.read_each(&self.target, list, &mut |k, read| {
            while views[v].key != list[k].g {
                v += 1;
            }
            if !read.fresh {
                checks[k] = 0;
            }
            if let Some(waits) = read.waits {
                views[v].waits_on = waits;
            }
        });
        // In batches: no list of a million addresses at once.
        let mut moved: Vec<u32> = Vec::new();
        let mut fresh = (0..list.len()).filter(|&k| checks[k] != 0).peekable();
        let mut batch: Vec<usize> = Vec::with_capacity(CHUNK);
        while fresh.peek().is_some() {
            batch.clear();
            batch.extend(fresh.by_ref().take(CHUNK));
            let keys: Vec<u64> = batch.iter().map(|&k| list[k].g).collect();
            self.target.read_each(&keys, self.g_len(), &mut |j, b| {
                let again = b.and_then(|b| self.parse_header(b));
                if again.map(|h| header_digest(&h)) != Some(checks[batch[j]]) {
                    moved.push(batch[j] as u32);
                }
            });
        }
        let chans = self.chans.as_mut().expect("checked above");
        let mut v = 0;
        for k in moved {
            let w = &list[k as usize];
            while views[v].key != w.g {
                v += 1;
            }
            chans.reject(w);
            views[v].waits_on = no_chan_waits();
        }
    }

    /// The view of one task, from its header and its walk.
    fn view(
        &mut self,
        task: &LiveTask,
        origin: Origin,
        h: GHeader,
        walk: Option<u32>,
        unstable: bool,
        snapshot_ns: u64,
    ) -> TaskView {
        let waiting = is_waiting(&h);
        let (state, reason) = match h.state() {
            gstatus::WAITING | gstatus::LEAKED => (0, h.waitreason),
            gstatus::SYSCALL => (1, 0),
            gstatus::RUNNABLE | gstatus::PREEMPTED => (2, 0),
            _ => (3, 0),
        };
        let names = self.origin(h.gopc, h.startpc);
        let via = self.via_of(origin, h.gopc, &names.created_by);
        let stack = walk
            .filter(|_| waiting)
            .and_then(|id| self.stack_list.get(id as usize).cloned());
        let key = PlaceKey {
            names,
            stack,
            state,
            reason,
            via,
            // Goroutine 1 runs runtime.main, the only one without a `go` statement.
            main: h.goid == 1,
            unstable: unstable && waiting,
        };
        let place = match self.places.get(&key) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(self.place(&key));
                self.places.insert(key, p.clone());
                p
            }
        };
        let blocked_since = waiting.then(|| match task.parked_ns() {
            Some(t) => Since::Exact(t),
            // Seen blocked here by a refresh, the park probe shed.
            None if let Some(t) = task.seen_parked_ns() => Since::AtMost(t),
            None => {
                // Blocked since before we looked: at the latest at the
                // snapshot, or at the GC cycle that stamped waitsince.
                let ws = u64::try_from(h.waitsince).unwrap_or(0);
                Since::AtMost(if ws != 0 && ws < snapshot_ns {
                    ws
                } else {
                    snapshot_ns
                })
            }
        });
        let alive_since = match task.spawned_ns() {
            Some(t) => Since::Exact(t),
            None => match task.found_ns() {
                Some(t) => Since::Found(t),
                None => Since::AtMost(snapshot_ns),
            },
        };
        TaskView {
            key: task.key,
            id: h.goid,
            place,
            blocked_since,
            alive_since,
            waits_on: no_chan_waits(),
            stranded: Default::default(),
        }
    }

    /// The place of the tasks that share `key`.
    fn place(&self, key: &PlaceKey) -> Place {
        let state = match key.state {
            0 => TaskState::Waiting(
                self.bin
                    .wait_reasons
                    .name(key.reason)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("wait reason {}", key.reason)),
            ),
            1 => TaskState::Syscall,
            2 => TaskState::Runnable,
            _ => TaskState::Running,
        };
        let stack = key.stack.as_ref();
        Place {
            never_ends: state.is_waiting() && self.bin.wait_reasons.never_ends(key.reason),
            state,
            system: key.names.system,
            blocking: false,
            main: key.main,
            stack_unstable: key.unstable,
            created_by: key.names.created_by.clone(),
            via: key.via.clone(),
            start: stack
                .and_then(|s| s.start.clone())
                .unwrap_or_else(|| key.names.start.clone()),
            blocked_at: stack.and_then(|s| s.blocked_at.clone()),
            stack: stack.map_or_else(no_frames, |s| s.frames.clone()),
        }
    }

    /// Symbolize a walk, sharing the result among identical stacks: its
    /// number in `stack_list`.
    fn intern(&mut self, pcs: &[u64]) -> u32 {
        if let Some(&id) = self.stack_ids.get(pcs) {
            return id;
        }
        let mut frames: Vec<Frame> = Vec::new();
        for &pc in pcs {
            // Hidden wrappers (`gowrapN`) vanish, as in Go's tracebacks;
            // only a pc outside Go code shows as a bare address.
            match self.frames_at(pc.wrapping_sub(1)) {
                Some(f) => frames.extend(f.iter().cloned()),
                None => frames.push(Frame::unknown(pc)),
            }
        }
        frames.retain(|f| &*f.function != "runtime.goexit");
        let stack = Arc::new(Stack {
            blocked_at: frames
                .iter()
                .find(|f| self.bin.own_code.is_own(&f.function))
                .cloned(),
            start: start_from_stack(&frames),
            frames: frames.into(),
        });
        let id = self.stack_list.len() as u32;
        self.stack_list.push(stack);
        self.stack_ids.insert(pcs.to_vec(), id);
        id
    }

    /// The `go` statement at a run-time gopc, as views name it.
    pub fn created_by(&self, gopc: u64) -> Frame {
        let va = gopc.wrapping_sub(1).wrapping_sub(self.bias);
        self.bin
            .symbols
            .try_frames(va)
            .and_then(|f| f.first().cloned())
            .or_else(|| self.physical_frame(gopc.wrapping_sub(1)))
            .unwrap_or_else(|| Frame::unknown(gopc))
    }

    /// A caller pair seen for the first time: one more caller of its site?
    fn note_caller(&mut self, gopc: u64, pcs: [u64; 2]) {
        let site = self.created_by(gopc);
        let Some(via) = self.via_frame(gopc, pcs, &site) else {
            return;
        };
        match self.site_callers.get_mut(&site) {
            Some(s) => s.helper |= s.first != via,
            None => {
                self.site_callers.put(
                    site,
                    SiteCallers {
                        first: via,
                        helper: false,
                    },
                );
            }
        }
    }

    /// Which `go` statements the spawn probe may stop walking (many spawns,
    /// one caller) and which it must walk again (their site turned out to
    /// be a helper). Call after [`Self::views`], which takes in the callers.
    pub fn plain_sites(&mut self, table: &LiveTable) -> PlainSites {
        let mut changes = PlainSites::default();
        let is_helper =
            |r: &Self, site: &Frame| r.site_callers.peek(site).is_some_and(|s| s.helper);
        let candidates: Vec<u64> = table
            .spawns_by_site()
            .filter(|&(gopc, n)| n >= PLAIN_AFTER && !self.plain.contains_key(&gopc))
            .map(|(gopc, _)| gopc)
            .collect();
        for gopc in candidates {
            let site = self.created_by(gopc);
            if !is_helper(self, &site) {
                changes.add.push(gopc);
                self.plain.insert(gopc, site);
            }
        }
        let helpers: Vec<u64> = self
            .plain
            .iter()
            .filter(|(_, site)| is_helper(self, site))
            .map(|(&gopc, _)| gopc)
            .collect();
        for gopc in helpers {
            self.plain.remove(&gopc);
            changes.remove.push(gopc);
        }
        changes
    }

    /// The task's caller through a spawn helper; None unless its site is
    /// one. `origin`: what the spawn probe saw; `gopc`: the g's own.
    pub fn via_of(&mut self, origin: Origin, gopc: u64, site: &Frame) -> Option<Frame> {
        if origin.via_pcs[0] == 0 || origin.created_pc != gopc {
            return None;
        }
        if !self.site_callers.peek(site).is_some_and(|s| s.helper) {
            return None;
        }
        self.via_frame(gopc, origin.via_pcs, site)
    }

    /// Who called the spawn helper `site`: the first of the program's own
    /// frames above the `go` statement that is neither the helper itself nor
    /// a compiler wrapper. The frames above are those inlined at the `go`
    /// statement (a small helper is often inlined into its caller), then
    /// those at each caller pc the spawn probe read.
    fn via_frame(&mut self, gopc: u64, pcs: [u64; 2], site: &Frame) -> Option<Frame> {
        if let Some(v) = self.vias.get(&(gopc, pcs)) {
            return v.clone();
        }
        let mut above: Vec<Frame> = self
            .frames_at(gopc.wrapping_sub(1))
            .map(|f| f.iter().skip(1).cloned().collect())
            .unwrap_or_default();
        for pc in pcs.into_iter().take_while(|&pc| pc != 0) {
            match self.frames_at(pc.wrapping_sub(1)) {
                Some(f) => above.extend(f.iter().cloned()),
                None => break,
            }
        }
        let via = above.into_iter().find(|f| {
            f.function != site.function
                && !is_wrapper(&f.function)
                && &*f.file != "<autogenerated>"
                && self.bin.own_code.is_own(&f.function)
        });
        self.vias.put((gopc, pcs), via.clone());
        via
    }

    fn origin(&mut self, gopc: u64, startpc: u64) -> Arc<OriginNames> {
        if let Some(o) = self.origins.get(&(gopc, startpc)) {
            return o.clone();
        }
        let created_by = self.created_by(gopc);
        // The start pc is often a compiler wrapper (`gowrapN`), which
        // `frames` hides; the wrapper's own name still says whose it is.
        let physical = self.physical_frame(startpc);
        let system = physical
            .as_ref()
            .is_some_and(|f| is_system_start(&f.function));
        let start = self
            .decode_thunk(startpc.wrapping_sub(self.bias), &created_by)
            .or(physical)
            .unwrap_or_else(|| Frame::unknown(startpc));
        let o = Arc::new(OriginNames {
            created_by,
            start,
            system,
        });
        self.origins.put((gopc, startpc), o.clone());
        o
    }

    /// Return addresses of parked goroutines (`pending` indexes
    /// `headers`), innermost first, walking each frame-pointer chain from
    /// `gp.sched` inside the goroutine's own stack. The first
    /// `STACK_WINDOW` bytes of every stack come in one batch; a chain
    /// leaving them reads its whole stack alone.
    fn unwind_all(&self, pending: &[usize], headers: &[Option<GHeader>]) -> Walks {
        let hs: Vec<GHeader> = pending
            .iter()
            .map(|&i| headers[i].expect("pending rows have headers"))
            .collect();
        let spans: Vec<(u64, usize)> = hs
            .iter()
            .map(|h| match stack_span(h) {
                Some((lo, len)) => (lo, len.min(STACK_WINDOW) as usize),
                None => (0, 0),
            })
            .collect();
        let mut out = Walks::new(&hs);
        // One scratch walk for all: no allocation per goroutine.
        let mut pcs = Vec::with_capacity(MAX_FRAMES);
        let mut deeper = Vec::new();
        self.mem.read_spans(&spans, &mut |j, b| {
            let (Some(b), Some((lo, len))) = (b, stack_span(&hs[j])) else {
                return;
            };
            if b.is_empty() {
                return;
            }
            pcs.clear();
            pcs.push(hs[j].sched_pc);
            if !walk_frames(&hs[j], lo, b, &mut pcs) && (b.len() as u64) < len {
                deeper.push(j);
            }
            out.set(j, &pcs);
        });
        // Stacks deeper than the window, one at a time, into one buffer.
        let mut buf = Vec::new();
        for j in deeper {
            let Some((lo, len)) = stack_span(&hs[j]) else {
                continue;
            };
            buf.clear();
            buf.resize(len as usize, 0);
            pcs.clear();
            pcs.push(hs[j].sched_pc);
            if self.mem.read(lo, &mut buf).is_ok() {
                walk_frames(&hs[j], lo, &buf, &mut pcs);
            }
            out.set(j, &pcs);
        }
        out
    }

    /// For a goroutine we cannot unwind (running), the function behind the
    /// compiler's thunk for `go f(x)`: `gowrapN` (Go ≥ 1.22), `dwrap.N`, or a
    /// `funcN` closure on the `go` statement's own line (1.18–1.21). The
    /// thunk's first direct call outside the runtime is `f`.
    fn decode_thunk(&self, va: u64, created_by: &Frame) -> Option<Frame> {
        use iced_x86::{Decoder, DecoderOptions, FlowControl};
        let f = self.bin.symbols.function_at(va)?;
        let here = self.bin.symbols.innermost_frame(va)?;
        let last = f.name.rsplit('.').next().unwrap_or("");
        let thunk = is_wrapper(&f.name)
            || (last.starts_with("func")
                && last[4..].chars().all(|c| c.is_ascii_digit())
                && here.file == created_by.file
                && here.line == created_by.line);
        if !thunk {
            return None;
        }
        let len = (f.end.saturating_sub(f.entry)).min(512) as usize;
        let code = self.bin.elf.read_va(f.entry, len)?;
        let mut decoder = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
        while decoder.can_decode() {
            let insn = decoder.decode();
            if insn.flow_control() != FlowControl::Call || !insn.is_call_near() {
                continue;
            }
            let target = insn.near_branch_target();
            let callee = self.bin.symbols.function_at(target)?;
            if callee.name.starts_with("runtime.") {
                continue;
            }
            return self.bin.symbols.innermost_frame(callee.entry);
        }
        None
    }

    /// The innermost frame at a runtime address, wrappers included.
    fn physical_frame(&self, pc: u64) -> Option<Frame> {
        self.bin.symbols.innermost_frame(pc.wrapping_sub(self.bias))
    }

    /// Frames at a runtime address (bias removed), cached. None outside Go
    /// code; empty when the only frame there is a hidden wrapper.
    fn frames_at(&mut self, pc: u64) -> Option<Arc<[Frame]>> {
        let va = pc.wrapping_sub(self.bias);
        if let Some(f) = self.frames.get(&va) {
            return f.clone();
        }
        let frames: Option<Arc<[Frame]>> = self.bin.symbols.try_frames(va).map(Into::into);
        self.frames.put(va, frames.clone());
        frames
    }
}

/// The channel layout: from DWARF, else the version table (checked
/// against each other when both exist), with a note on where it came from
/// when that is not DWARF.
fn chan_layout(bin: &GoBinary) -> (Option<ChanLayout>, Option<String>) {
    let shown = &bin.version.raw;
    let table = ChanLayout::for_minor(bin.version.minor).filter(|_| bin.version.major == 1);
    match (ChanLayout::from_dwarf(&bin.elf), table) {
        (Ok(Some(dwarf)), table) => {
            let note = table.map(|t| dwarf.differences(&t)).filter(|d| !d.is_empty()).map(|d| {
                let d: Vec<String> = d.iter().map(|(f, a, b)| format!("{f} {a} (table {b})")).collect();
                format!("{shown}: channel structures differ from the version table: {}; using DWARF", d.join(", "))
            });
            (Some(dwarf), note)
        }
        (Ok(None), Some(t)) => (Some(t), None),
        (Err(e), Some(t)) => (
            Some(t),
            Some(format!(
                "{shown}: could not read the channel structures from DWARF ({e}); using the version table"
            )),
        ),
        (Ok(None), None) | (Err(_), None) => (
            None,
            Some(format!(
                "{shown}: channel structure layout unknown without DWARF; what goroutines wait on is not read"
            )),
        ),
    }
}

/// The part of a parked goroutine's stack a walk reads: from its saved SP
/// up to the stack's top, at most `MAX_STACK_READ` bytes; None when the
/// saved registers make no sense.
fn stack_span(h: &GHeader) -> Option<(u64, u64)> {
    let (lo, hi) = (h.sched_sp, h.stack_hi);
    if lo == 0 || hi <= lo || lo < h.stack_lo {
        return None;
    }
    Some((lo, (hi - lo).min(MAX_STACK_READ)))
}

/// Follow the frame-pointer chain from `h.sched_bp` through `buf` (the
/// stack read from `lo`), appending return addresses to `pcs`. False when
/// the chain left `buf` (a longer read may go further).
fn walk_frames(h: &GHeader, lo: u64, buf: &[u8], pcs: &mut Vec<u64>) -> bool {
    let end = lo + buf.len() as u64;
    let word = |addr: u64| -> Option<u64> {
        let off = addr.checked_sub(lo)? as usize;
        Some(u64::from_le_bytes(buf.get(off..off + 8)?.try_into().ok()?))
    };
    let mut fp = h.sched_bp;
    while pcs.len() < MAX_FRAMES && fp >= lo {
        if fp.saturating_add(16) > end {
            return false;
        }
        let (Some(next), Some(ret)) = (word(fp), word(fp + 8)) else {
            break;
        };
        if ret == 0 {
            break;
        }
        pcs.push(ret);
        // Frames live at increasing addresses; anything else is garbage.
        if next <= fp {
            break;
        }
        fp = next;
    }
    true
}

fn is_waiting(h: &GHeader) -> bool {
    matches!(h.state(), gstatus::WAITING | gstatus::LEAKED)
}

/// The Go runtime's own goroutines, as `isSystemGoroutine` decides: started
/// in package runtime, except the main goroutine (and the finalizer
/// goroutine, which Go counts as system unless it is running a finalizer).
pub(crate) fn is_system_start(function: &str) -> bool {
    function.starts_with("runtime.")
        && function != "runtime.main"
        && function != "runtime.handleAsyncEvent"
}

/// The goroutine's real function: the outermost frame under `goexit` that is
/// not a compiler-generated wrapper (`gowrapN`, `dwrap.N`).
pub(crate) fn start_from_stack(stack: &[Frame]) -> Option<Frame> {
    stack
        .iter()
        .rev()
        .find(|f| !is_wrapper(&f.function) && &*f.file != "<autogenerated>")
        .cloned()
}

fn is_wrapper(function: &str) -> bool {
    let last = function.rsplit('.').next().unwrap_or("");
    last.starts_with("gowrap") || function.contains(".dwrap.") || last.starts_with("dwrap")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_walk_says_when_it_leaves_the_window() {
        // A stack at 0x1000: frames at 0x1010 → 0x1040 → 0x1400 (beyond
        // a 0x100-byte window), each [next fp, return address].
        let lo = 0x1000u64;
        let mut stack = vec![0u8; 0x500];
        let mut put = |addr: u64, v: u64| {
            let o = (addr - lo) as usize;
            stack[o..o + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(0x1010, 0x1040);
        put(0x1018, 0xaaa);
        put(0x1040, 0x1400);
        put(0x1048, 0xbbb);
        put(0x1400, 0);
        put(0x1408, 0xccc);
        let h = GHeader {
            stack_lo: lo,
            stack_hi: lo + 0x500,
            sched_sp: lo,
            sched_pc: 0x999,
            sched_bp: 0x1010,
            ..GHeader::default()
        };
        assert_eq!(stack_span(&h), Some((lo, 0x500)));
        let mut pcs = vec![h.sched_pc];
        assert!(
            !walk_frames(&h, lo, &stack[..0x100], &mut pcs),
            "left the window"
        );
        assert_eq!(pcs, vec![0x999, 0xaaa, 0xbbb]);
        let mut pcs = vec![h.sched_pc];
        assert!(walk_frames(&h, lo, &stack, &mut pcs));
        assert_eq!(pcs, vec![0x999, 0xaaa, 0xbbb, 0xccc]);
        // Saved registers that make no sense: nothing to read.
        assert_eq!(stack_span(&GHeader { sched_sp: 0, ..h }), None);
    }

    #[test]
    fn system_goroutines_and_wrappers() {
        assert!(is_system_start("runtime.bgsweep"));
        assert!(is_system_start("runtime.gcBgMarkWorker"));
        assert!(!is_system_start("runtime.main"));
        assert!(!is_system_start("main.main.func1"));
        assert!(is_wrapper("main.main.gowrap1"));
        assert!(is_wrapper("main.main.dwrap.1"));
        assert!(!is_wrapper("main.worker"));
        let f = |name: &str| Frame {
            function: name.into(),
            file: "x.go".into(),
            line: 1,
        };
        let stack = vec![
            f("runtime.gopark"),
            f("main.worker"),
            f("main.main.gowrap1"),
        ];
        assert_eq!(&*start_from_stack(&stack).unwrap().function, "main.worker");
    }
}
