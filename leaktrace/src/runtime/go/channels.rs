//! The other side of a channel: which channel each goroutine blocked in a
//! channel operation waits on, and that channel's state.
//!
//! A goroutine parked in `chansend`, `chanrecv` or `selectgo` has its
//! `sudog`s in `g.waiting` (one; a select's are linked by `waitlink`), and
//! each sudog names its channel (`sudog.c`). From the `hchan` come the
//! buffer (`qcount`/`dataqsiz`), `closed`, and the wait queues (`recvq`,
//! `sendq`: sudogs linked by `next`), which also tell a select case's
//! direction: the sudog sits in one of the two queues. Channels fed by a
//! `time` timer are told by `hchan.timer` (Go ≥ 1.23, synchronous timer
//! channels), or by finding a runtime timer whose `arg` is the channel in
//! the per-P timer heaps (`runtime.allp`, before Go 1.23 or with
//! `asynctimerchan=1`).
//!
//! All of it is read while the program runs. Every structure is checked
//! (a sudog must name the goroutine and a channel, a queue node the channel
//! it is queued on, counts and flags must be possible), every walk is
//! bounded, and reads are batched: one `process_vm_readv` per level of
//! every list at once, each channel read once per refresh however many
//! goroutines wait on it. Whatever does not check out is dropped, never
//! guessed; the caller re-reads the goroutines afterwards and drops the
//! channels of any that moved meanwhile.
use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
};

use super::chan_layout::ChanLayout;
use crate::runtime::{ChanDir, ChanState, ChanTimer, ChanWait, ChanWaits};
use crate::target::memory::Memory;

/// Select cases followed per goroutine at most.
pub const MAX_SELECT_CASES: usize = 128;
/// Sudogs walked per wait queue at most. Most are already read (they are
/// the blocked goroutines' own), so this walk is in memory.
pub const MAX_QUEUE_STEPS: usize = 1 << 20;
/// Sudogs read from the target per wait queue at most (those that are not
/// the sudog of a goroutine read this refresh): one syscall per level.
pub const MAX_QUEUE_READS: usize = 256;
/// New waiters whose sudog lists are read together (and kept in memory).
const LIST_BATCH: usize = 4096;
/// Every channel is read again at least once in this many refreshes.
const FULL_READ_EVERY: u32 = 10;
/// Timers read from the heaps per refresh at most.
pub const MAX_TIMERS: usize = 1 << 20;
/// Ps in `runtime.allp` at most (GOMAXPROCS is capped at 2^10 by default;
/// be generous).
const MAX_PROCS: u64 = 1 << 14;
/// `unsafe.Sizeof(time.Time{})` on 64-bit targets: a `time` channel's
/// element size.
const TIME_SIZE: u16 = 24;

/// A fast hasher for the maps of this module, keyed by addresses and small
/// tuples of them: a refresh looks up every waiting goroutine, and SipHash
/// would cost more than everything else done per goroutine. The keys come
/// from the runtime's allocator, not from input an attacker picks.
#[derive(Clone, Copy, Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        // A final mix, so the low bits the map uses depend on every bit.
        let x = self.0 ^ (self.0 >> 29);
        x.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (x >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;
type Set<K> = HashSet<K, BuildHasherDefault<AddrHasher>>;

/// What reads the target: [`Target`], or a fake in tests.
pub trait ReadMem {
    /// Calls `f(i, bytes)` for every address, in order: the `len` bytes at
    /// `addrs[i]`, or `None` where they are unreadable.
    fn read_each(&self, addrs: &[u64], len: usize, f: &mut dyn FnMut(usize, Option<&[u8]>));

    /// `len` bytes at `addr`.
    fn read_vec(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = None;
        self.read_each(&[addr], len, &mut |_, b| out = b.map(<[u8]>::to_vec));
        out
    }
}

/// The target's memory: batched reads into one reused buffer
/// ([`Memory::read_each`]).
pub struct Target {
    mem: Memory,
}

impl Target {
    pub fn new(pid: u32) -> Self {
        Self {
            mem: Memory::new(pid),
        }
    }
}

impl ReadMem for Target {
    fn read_each(&self, addrs: &[u64], len: usize, f: &mut dyn FnMut(usize, Option<&[u8]>)) {
        self.mem.read_each(addrs, len, f);
    }
}

/// The channel operation a wait reason names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOp {
    // Numbered as `Waiter::op` reads them back.
    Send = 0,
    Recv = 1,
    Select = 2,
    NilSend = 3,
    NilRecv = 4,
}

impl WaitOp {
    /// From a wait reason as the runtime prints it (`chan send`, `chan
    /// receive (nil chan)`, `select`, `chan receive (synctest)`…). `None`
    /// for anything that waits on no channel, `select (no cases)` included.
    pub fn from_reason(reason: &str) -> Option<WaitOp> {
        let nil = reason.contains("(nil chan)");
        if reason.starts_with("chan send") {
            Some(if nil { WaitOp::NilSend } else { WaitOp::Send })
        } else if reason.starts_with("chan receive") {
            Some(if nil { WaitOp::NilRecv } else { WaitOp::Recv })
        } else if reason.starts_with("select") && reason != "select (no cases)" {
            Some(WaitOp::Select)
        } else {
            None
        }
    }
}

/// A user-space heap or stack address: non-null, 8-aligned, below the top
/// of the largest (57-bit) user address space.
fn is_ptr(p: u64) -> bool {
    p != 0 && p.is_multiple_of(8) && p < (1 << 56)
}

fn u64_at(b: &[u8], off: u32) -> Option<u64> {
    let o = off as usize;
    Some(u64::from_le_bytes(
        b.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: u32) -> Option<u32> {
    let o = off as usize;
    Some(u32::from_le_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u16_at(b: &[u8], off: u32) -> Option<u16> {
    let o = off as usize;
    Some(u16::from_le_bytes(
        b.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u8_at(b: &[u8], off: u32) -> Option<u8> {
    b.get(off as usize).copied()
}

/// The fields of a `runtime.sudog` used here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sudog {
    pub g: u64,
    pub next: u64,
    pub prev: u64,
    pub is_select: bool,
    pub waitlink: u64,
    pub c: u64,
}

impl Sudog {
    /// `None` when too short, or when a field is impossible (a bool that is
    /// neither 0 nor 1, a misaligned or kernel pointer).
    pub fn parse(b: &[u8], l: &ChanLayout) -> Option<Sudog> {
        let s = Sudog {
            g: u64_at(b, l.sudog_g)?,
            next: u64_at(b, l.sudog_next)?,
            prev: u64_at(b, l.sudog_prev)?,
            is_select: match u8_at(b, l.sudog_is_select)? {
                0 => false,
                1 => true,
                _ => return None,
            },
            waitlink: u64_at(b, l.sudog_waitlink)?,
            c: u64_at(b, l.sudog_c)?,
        };
        let ptr_or_nil = |p: u64| p == 0 || is_ptr(p);
        (is_ptr(s.g) && ptr_or_nil(s.next) && ptr_or_nil(s.prev) && ptr_or_nil(s.waitlink))
            .then_some(s)
            .filter(|s| ptr_or_nil(s.c))
    }
}

/// The fields of a `runtime.hchan` used here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hchan {
    pub qcount: u64,
    pub dataqsiz: u64,
    pub elemsize: u16,
    pub closed: bool,
    /// Go ≥ 1.23; 0 before.
    pub timer: u64,
    pub recvq: (u64, u64),
    pub sendq: (u64, u64),
}

impl Hchan {
    /// `None` when too short or not a possible channel: more buffered than
    /// room, `closed` neither 0 nor 1, a queue with a head and no tail.
    pub fn parse(b: &[u8], l: &ChanLayout) -> Option<Hchan> {
        let h = Hchan {
            qcount: u64_at(b, l.hchan_qcount)?,
            dataqsiz: u64_at(b, l.hchan_dataqsiz)?,
            elemsize: u16_at(b, l.hchan_elemsize)?,
            closed: match u32_at(b, l.hchan_closed)? {
                0 => false,
                1 => true,
                _ => return None,
            },
            timer: match l.hchan_timer {
                Some(off) => u64_at(b, off)?,
                None => 0,
            },
            recvq: (
                u64_at(b, l.hchan_recvq_first)?,
                u64_at(b, l.hchan_recvq_last)?,
            ),
            sendq: (
                u64_at(b, l.hchan_sendq_first)?,
                u64_at(b, l.hchan_sendq_last)?,
            ),
        };
        let queue_ok = |(first, last): (u64, u64)| {
            (first == 0 && last == 0) || (is_ptr(first) && is_ptr(last))
        };
        // makechan refuses anything whose buffer exceeds the address space.
        let buffer_ok = h.qcount <= h.dataqsiz
            && h.dataqsiz
                .checked_mul(u64::from(h.elemsize))
                .is_some_and(|b| b < 1 << 48);
        (buffer_ok && queue_ok(h.recvq) && queue_ok(h.sendq) && (h.timer == 0 || is_ptr(h.timer)))
            .then_some(h)
    }
}

/// The fields of a `runtime.timer` used here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timer {
    pub when: i64,
    pub period: i64,
    pub status: u32,
    /// Go ≥ 1.23.
    pub is_chan: Option<bool>,
    /// `arg`'s data word: the channel, for a `time` timer's.
    pub arg_data: u64,
}

impl Timer {
    pub fn parse(b: &[u8], l: &ChanLayout) -> Option<Timer> {
        let new = l.timer_is_chan.is_some();
        let t = Timer {
            when: u64_at(b, l.timer_when)? as i64,
            period: u64_at(b, l.timer_period)? as i64,
            status: if new {
                u32::from(u8_at(b, l.timer_status)?)
            } else {
                u32_at(b, l.timer_status)?
            },
            is_chan: match l.timer_is_chan {
                Some(off) => Some(match u8_at(b, off)? {
                    0 => false,
                    1 => true,
                    _ => return None,
                }),
                None => None,
            },
            arg_data: u64_at(b, l.timer_arg.checked_add(8)?)?,
        };
        (t.period >= 0 && (new || t.status <= 9)).then_some(t)
    }

    /// Will it still fire? Go ≥ 1.23: `when` is zeroed when it is stopped
    /// or has fired, and a stopped timer still in a heap is a zombie (flag
    /// 4). Before: a deleted, removing or removed timer (3, 4, 5), or one
    /// with no status (0, fired or never started), will not.
    pub fn pending(&self) -> bool {
        if self.is_chan.is_some() {
            self.when > 0 && self.status & 4 == 0
        } else {
            !matches!(self.status, 0 | 3..=5)
        }
    }

    fn kind(&self) -> ChanTimer {
        if !self.pending() {
            ChanTimer::Stopped
        } else if self.period > 0 {
            ChanTimer::Ticker
        } else {
            ChanTimer::Timer
        }
    }
}

/// What one refresh's read cost, for diagnostics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub waiters: usize,
    /// Waiters still in the park read at an earlier refresh: their sudogs
    /// were not read again.
    pub cached: usize,
    pub sudogs_read: usize,
    pub channels: usize,
    /// Channels read from memory (the others had not changed).
    pub channels_read: usize,
    pub queue_nodes_read: usize,
    pub timers_read: usize,
    /// Goroutines whose sudogs did not check out (they moved).
    pub dropped: usize,
}

/// One park of one goroutine: while all of it is unchanged the goroutine
/// has not woken (the park probe's timestamp changes at every park), so
/// its sudogs, and the channels they name, are those read before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParkKey {
    pub goid: u64,
    pub sp: u64,
    pub pc: u64,
    pub bp: u64,
    /// When the park probe saw it park (0: not seen since attach).
    pub parked_ns: u64,
}

/// One goroutine to read: its g, its `g.waiting`, what it waits in, and
/// which park this is ([`ParkKey::digest`]: a million waiters are listed
/// at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub g: u64,
    pub waiting: u64,
    /// The park's digest, with the operation in its low 3 bits: 24 bytes a
    /// waiter rather than 32 (a false match of the digest's other 61 bits
    /// is still a 2⁻⁶¹ chance).
    park_op: u64,
}
const _: () = assert!(size_of::<Waiter>() == 24);

impl Waiter {
    pub fn new(g: u64, waiting: u64, op: WaitOp, park: u64) -> Self {
        Self {
            g,
            waiting,
            park_op: (park & !OP_BITS) | op as u64,
        }
    }

    pub fn op(&self) -> WaitOp {
        match self.park_op & OP_BITS {
            0 => WaitOp::Send,
            1 => WaitOp::Recv,
            2 => WaitOp::Select,
            3 => WaitOp::NilSend,
            _ => WaitOp::NilRecv,
        }
    }

    /// Which park this is (see [`ParkKey::digest`]).
    pub fn park(&self) -> u64 {
        self.park_op & !OP_BITS
    }
}

/// Where a [`Waiter`] keeps its operation.
const OP_BITS: u64 = 7;

impl ParkKey {
    /// All of it in one word.
    pub fn digest(&self) -> u64 {
        digest(self)
    }
}

/// Several words in one, to compare what was read at two moments while
/// keeping 8 bytes per goroutine (SipHash: a false match is a 2⁻⁶⁴
/// chance); never 0, which callers use for "none".
pub fn digest(v: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(v) | 1
}

/// One case of a goroutine's wait, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Case {
    sudog: u64,
    chan: u64,
    dir: ChanDir,
}

/// What a park cache entry was read for: the waiter's `g.waiting` and
/// park, in one word.
fn park_digest(w: &Waiter) -> u64 {
    w.park() ^ w.waiting.rotate_left(29)
}

/// One goroutine's cached park: its g, its digest, the refresh that last
/// used it (0: rejected), and its one case when it has one of known
/// direction (a send or a receive: nearly always); a select's cases are in
/// `ChanReader::many`. One per blocked goroutine, maybe a million: the
/// case's sudog is not kept (only a select's direction is looked up by
/// it), 32 bytes rather than 48.
struct CachedPark {
    g: u64,
    digest: u64,
    /// The channel of its one case; 0: its cases are in `many`.
    chan: u64,
    used: u32,
    dir: ChanDir,
}
const _: () = assert!(size_of::<CachedPark>() <= 32);

impl CachedPark {
    /// Its cases: its own one, or those kept in `many`.
    fn cases(&self, many: &Map<u64, Arc<[Case]>>) -> Option<Cases> {
        if self.chan != 0 {
            return Some(Cases::One(Case {
                sudog: 0,
                chan: self.chan,
                dir: self.dir,
            }));
        }
        many.get(&self.g).cloned().map(Cases::Many)
    }
}

/// The cases of one wait: nearly always one (a send or a receive), kept
/// inline then, so a million blocked goroutines cost no allocation each.
#[derive(Clone, Debug)]
enum Cases {
    One(Case),
    Many(Arc<[Case]>),
}

impl std::ops::Deref for Cases {
    type Target = [Case];
    fn deref(&self) -> &[Case] {
        match self {
            Self::One(c) => std::slice::from_ref(c),
            Self::Many(c) => c,
        }
    }
}

impl FromIterator<Case> for Cases {
    fn from_iter<I: IntoIterator<Item = Case>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        match (iter.next(), iter.next()) {
            (Some(one), None) => Self::One(one),
            (first, second) => Self::Many(first.into_iter().chain(second).chain(iter).collect()),
        }
    }
}

/// Where each waiter's cases are during a read: nowhere, not read yet, a
/// cached park (its index in `ChanReader::parks`), or `own` (read now, or
/// a copy to look select directions up in); and whether they were read
/// now ([`Self::FRESH`]). One word per waiter, and no list of the waiters
/// to read (a million at attach).
struct CasesAt {
    at: Vec<u32>,
    own: Vec<Option<Cases>>,
}

impl CasesAt {
    const NONE: u32 = u32::MAX;
    /// Not in the cache: to be read.
    const UNREAD: u32 = u32::MAX - 1;
    const OWN: u32 = 1 << 31;
    const FRESH: u32 = 1 << 30;
    const INDEX: u32 = Self::FRESH - 1;

    fn set_own(&mut self, i: usize, c: Option<Cases>, fresh: bool) {
        self.at[i] = Self::OWN | self.own.len() as u32 | if fresh { Self::FRESH } else { 0 };
        self.own.push(c);
    }

    /// Read now (not from the cache).
    fn fresh(&self, i: usize) -> bool {
        let k = self.at[i];
        k != Self::NONE && k != Self::UNREAD && k & Self::FRESH != 0
    }

    /// In the park cache (not in `own`).
    fn cached(&self, i: usize) -> bool {
        let k = self.at[i];
        k != Self::NONE && k != Self::UNREAD && k & Self::OWN == 0
    }

    /// Waiter `i`'s cases (a copy: one case, or a shared list).
    fn get(&self, parks: &[CachedPark], many: &Map<u64, Arc<[Case]>>, i: usize) -> Option<Cases> {
        match self.at[i] {
            Self::NONE | Self::UNREAD => None,
            k if k & Self::OWN != 0 => self.own[(k & Self::INDEX) as usize].clone(),
            k => parks[(k & Self::INDEX) as usize].cases(many),
        }
    }

    fn all<'a>(
        &'a self,
        parks: &'a [CachedPark],
        many: &'a Map<u64, Arc<[Case]>>,
    ) -> impl Iterator<Item = Cases> + 'a {
        (0..self.at.len()).filter_map(move |i| self.get(parks, many, i))
    }
}

/// One channel during a refresh: as read, who waits on it, and the lists
/// of waits on it that goroutines share.
#[derive(Clone, Default)]
struct Slot {
    hchan: Option<Hchan>,
    receivers: u32,
    senders: u32,
    /// Some waiter's direction on it is unknown.
    unknown: bool,
    /// Some waiter on it was read now (a new park).
    fresh: bool,
    timer: Option<ChanTimer>,
    /// By direction × select.
    shared: [Option<ChanWaits>; 6],
}

impl Slot {
    fn state(&self) -> Option<ChanState> {
        let h = self.hchan?;
        Some(ChanState {
            cap: h.dataqsiz,
            len: h.qcount,
            closed: h.closed,
            elem_size: h.elemsize,
            timer: self.timer.unwrap_or(ChanTimer::No),
            receivers: self.receivers,
            senders: self.senders,
            counts_complete: !self.unknown,
        })
    }
}

/// What [`ChanReader::read`] found for one waiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChanRead {
    /// `None` when its sudogs did not check out.
    pub waits: Option<ChanWaits>,
    /// Read from memory now (not from an earlier refresh): the caller must
    /// check that the goroutine did not move meanwhile, and
    /// [`ChanReader::reject`] it if it did.
    pub fresh: bool,
}

/// Reads what goroutines wait on, one refresh at a time.
pub struct ChanReader {
    layout: ChanLayout,
    /// Run-time address of `runtime.allp`, when `.symtab` names it.
    allp: Option<u64>,
    /// The cases of each goroutine's park read before, sorted by g, with
    /// the refresh that last used it; only those the last refresh used are
    /// kept. One small entry per blocked goroutine, and there may be a
    /// million: a sorted list costs half a hash map's memory there.
    parks: Vec<CachedPark>,
    /// The cases of the cached parks that are not one send or receive
    /// (selects), by g.
    many: Map<u64, Arc<[Case]>>,
    /// Refreshes so far (never 0, which marks a rejected park).
    generation: u32,
    /// Each channel as last read, with its timer: what a channel whose
    /// waiters have not moved still is.
    chan_cache: Map<u64, (Hchan, Option<ChanTimer>)>,
    pub stats: ReadStats,
}

/// A walk along one wait queue.
struct Walk {
    chan: u64,
    dir: ChanDir,
    next: u64,
    steps: usize,
    reads: usize,
    done: bool,
}

impl ChanReader {
    pub fn new(layout: ChanLayout, allp: Option<u64>) -> Self {
        Self {
            layout,
            allp,
            parks: Vec::new(),
            many: Map::default(),
            generation: 0,
            chan_cache: Map::default(),
            stats: ReadStats::default(),
        }
    }

    pub fn layout(&self) -> &ChanLayout {
        &self.layout
    }

    /// Forget what was read for a fresh waiter of the last [`Self::read`]:
    /// it moved while being read.
    pub fn reject(&mut self, w: &Waiter) {
        // Marked unused rather than removed (no shifting of a long list):
        // the next read misses it and drops it.
        if let Some(p) = self.park_mut(w.g).filter(|p| p.digest == park_digest(w)) {
            p.used = 0;
        }
    }

    fn park_mut(&mut self, g: u64) -> Option<&mut CachedPark> {
        let i = self.parks.binary_search_by_key(&g, |p| p.g).ok()?;
        Some(&mut self.parks[i])
    }

    /// What each waiter waits on, in `waiters` order (see [`Self::read_each`]).
    pub fn read(&mut self, mem: &dyn ReadMem, waiters: &[Waiter]) -> Vec<ChanRead> {
        let mut out = Vec::with_capacity(waiters.len());
        self.read_each(mem, waiters, &mut |_, r| out.push(r));
        out
    }

    /// What each waiter waits on: `f(i, read)` for each, in `waiters`
    /// order, and nothing kept per waiter meanwhile (the caller stores it
    /// where it goes: a million waiters, no second list). Blocked senders
    /// and receivers are counted per channel over all the waiters given
    /// (all live goroutines): exact for those read, where a select case's
    /// direction is known.
    pub fn read_each(
        &mut self,
        mem: &dyn ReadMem,
        waiters: &[Waiter],
        f: &mut dyn FnMut(usize, ChanRead),
    ) {
        let l = self.layout;
        self.stats = ReadStats {
            waiters: waiters.len(),
            ..ReadStats::default()
        };
        self.generation = self.generation.wrapping_add(1).max(1);
        let generation = self.generation;
        let is_chan_op =
            |w: &Waiter| matches!(w.op(), WaitOp::Send | WaitOp::Recv | WaitOp::Select);

        // Cases: from the park cache, else from memory. Each waiter's are
        // named by a `CasesAt`: a cached park's stay in the cache (the
        // cache's entries do not move until the end), so a million cached
        // waiters cost 4 bytes each here, not a copy of their cases.
        let mut cases = CasesAt {
            at: vec![CasesAt::NONE; waiters.len()],
            own: Vec::new(),
        };
        for (i, w) in waiters.iter().enumerate() {
            if !is_chan_op(w) {
                continue;
            }
            let found = self.parks.binary_search_by_key(&w.g, |p| p.g).ok();
            match found.map(|k| (k, &mut self.parks[k])) {
                // `used` 0: rejected.
                Some((k, p)) if p.used != 0 && p.digest == park_digest(w) => {
                    p.used = generation;
                    // Select cases of unknown direction are looked up
                    // again below, in a copy.
                    let c = p.cases(&self.many);
                    if c.as_ref()
                        .is_some_and(|c| c.iter().any(|c| c.dir == ChanDir::Unknown))
                    {
                        cases.set_own(i, c, false);
                    } else {
                        cases.at[i] = k as u32;
                    }
                    self.stats.cached += 1;
                }
                _ => cases.at[i] = CasesAt::UNREAD,
            }
        }
        // In batches, so that the sudogs and lists read for a million new
        // waiters are never all in memory at once. The sudogs of selects
        // are kept for the queue walks below (the only ones they look for).
        // A send's or a receive's cases are final as read: they go straight
        // into the park cache, at its end (the entries found above stay
        // where they are), rather than into `own` and then the cache (a
        // million new waiters at attach: their cases once, not twice).
        let mut sudogs: Map<u64, Sudog> = Map::default();
        let kept = self.parks.len();
        let mut batch: Vec<usize> = Vec::with_capacity(LIST_BATCH);
        let mut next = 0;
        loop {
            batch.clear();
            while batch.len() < LIST_BATCH && next < waiters.len() {
                if cases.at[next] == CasesAt::UNREAD {
                    batch.push(next);
                }
                next += 1;
            }
            if batch.is_empty() {
                break;
            }
            let mut read: Map<u64, Sudog> = Map::default();
            let lists = self.read_lists(mem, waiters, &batch, &mut read);
            for (&i, list) in batch.iter().zip(lists) {
                let w = &waiters[i];
                let dir = match w.op() {
                    WaitOp::Send => ChanDir::Send,
                    WaitOp::Recv => ChanDir::Recv,
                    _ => ChanDir::Unknown,
                };
                let list: Option<Cases> = list.map(|list| {
                    list.iter()
                        .map(|a| Case {
                            sudog: *a,
                            chan: read[a].c,
                            dir,
                        })
                        .collect()
                });
                match list {
                    Some(Cases::One(c)) if dir != ChanDir::Unknown => {
                        cases.at[i] = CasesAt::FRESH | self.parks.len() as u32;
                        self.parks.push(CachedPark {
                            g: w.g,
                            digest: park_digest(w),
                            chan: c.chan,
                            used: generation,
                            dir,
                        });
                    }
                    list => cases.set_own(i, list, true),
                }
            }
            sudogs.extend(read.into_iter().filter(|(_, s)| s.is_select));
        }

        // Every channel once, in a slot of its own.
        let mut index: Map<u64, usize> = Map::default();
        let mut chans: Vec<u64> = Vec::new();
        for cs in cases.all(&self.parks, &self.many) {
            for c in cs.iter() {
                index.entry(c.chan).or_insert_with(|| {
                    chans.push(c.chan);
                    chans.len() - 1
                });
            }
        }
        self.stats.channels = chans.len();
        let mut slots: Vec<Slot> = vec![Slot::default(); chans.len()];
        // A channel all of whose waiters are still in the parks of the last
        // refresh is as it was then: a send, a receive or a close would have
        // woken one of them (blocked receivers mean an empty buffer, blocked
        // senders a full one). Only a timer can change under them (stopped,
        // reset), so everything is read again every FULL_READ_EVERY
        // refreshes all the same.
        let full = generation % FULL_READ_EVERY == 1;
        for i in (0..waiters.len()).filter(|&i| cases.fresh(i)) {
            for c in cases
                .get(&self.parks, &self.many, i)
                .iter()
                .flat_map(|c| c.iter())
            {
                slots[index[&c.chan]].fresh = true;
            }
        }
        let mut to_read: Vec<usize> = Vec::new();
        for (i, slot) in slots.iter_mut().enumerate() {
            match self.chan_cache.get(&chans[i]) {
                Some(&(h, timer)) if !full && !slot.fresh => {
                    slot.hchan = Some(h);
                    slot.timer = timer;
                }
                _ => to_read.push(i),
            }
        }
        let addrs: Vec<u64> = to_read.iter().map(|&i| chans[i]).collect();
        self.stats.channels_read = addrs.len();
        mem.read_each(&addrs, l.hchan_read_len(), &mut |k, b| {
            slots[to_read[k]].hchan = b.and_then(|b| Hchan::parse(b, &l));
        });

        // Select cases of unknown direction: in which queue of their
        // channel is the sudog?
        let mut wanted: Map<u64, Set<u64>> = Map::default();
        for c in cases.own.iter().flatten() {
            for c in c.iter().filter(|c| c.dir == ChanDir::Unknown) {
                wanted.entry(c.chan).or_default().insert(c.sudog);
            }
        }
        if !wanted.is_empty() {
            let hchans: Map<u64, Hchan> = wanted
                .keys()
                .filter_map(|c| Some((*c, slots[index[c]].hchan?)))
                .collect();
            let found = self.walk_queues(mem, &hchans, &mut sudogs, wanted);
            for c in cases.own.iter_mut().flatten() {
                if c.iter().any(|c| found.contains_key(&c.sudog)) {
                    *c = c
                        .iter()
                        .map(|c| Case {
                            dir: found.get(&c.sudog).copied().unwrap_or(c.dir),
                            ..*c
                        })
                        .collect();
                }
            }
        }

        // Who is blocked on each channel.
        for cs in cases.all(&self.parks, &self.many) {
            for c in cs.iter() {
                let slot = &mut slots[index[&c.chan]];
                match c.dir {
                    ChanDir::Recv => slot.receivers += 1,
                    ChanDir::Send => slot.senders += 1,
                    ChanDir::Unknown => slot.unknown = true,
                }
            }
        }
        self.timers(mem, &chans, &to_read, &mut slots);
        self.chan_cache = chans
            .iter()
            .zip(&slots)
            .filter_map(|(&c, slot)| Some((c, (slot.hchan?, slot.timer))))
            .collect();

        // Identical waits (many goroutines on one channel) share one list:
        // per slot, one per (direction, select).
        let mut nil: [Option<ChanWaits>; 2] = [None, None];
        // The new parks of selects go at the end too (the entries `cases`
        // names stay where they are meanwhile); then the parks not used now
        // go, and the list is sorted again.
        for (i, w) in waiters.iter().enumerate() {
            let select = w.op() == WaitOp::Select;
            let c = cases.get(&self.parks, &self.many, i);
            let waits: Option<ChanWaits> = match (w.op(), &c) {
                (WaitOp::NilSend | WaitOp::NilRecv, _) => {
                    let (k, dir) = if w.op() == WaitOp::NilSend {
                        (0, ChanDir::Send)
                    } else {
                        (1, ChanDir::Recv)
                    };
                    Some(
                        nil[k]
                            .get_or_insert_with(|| {
                                ChanWaits::from([ChanWait {
                                    chan: 0,
                                    dir,
                                    select: false,
                                    state: None,
                                }])
                            })
                            .clone(),
                    )
                }
                (_, Some(c)) if c.len() == 1 => {
                    let slot = &mut slots[index[&c[0].chan]];
                    let state = slot.state();
                    let k = c[0].dir as usize * 2 + select as usize;
                    Some(
                        slot.shared[k]
                            .get_or_insert_with(|| {
                                ChanWaits::from([ChanWait {
                                    chan: c[0].chan,
                                    dir: c[0].dir,
                                    select,
                                    state,
                                }])
                            })
                            .clone(),
                    )
                }
                (_, Some(c)) => Some(
                    c.iter()
                        .map(|c| ChanWait {
                            chan: c.chan,
                            dir: c.dir,
                            select,
                            state: slots[index[&c.chan]].state(),
                        })
                        .collect(),
                ),
                (_, None) => None,
            };
            let is_fresh = cases.fresh(i);
            match c {
                // Already in the cache (see above).
                Some(_) if is_fresh && cases.cached(i) => {}
                Some(cases) if is_fresh => {
                    let (chan, dir) = match &cases {
                        Cases::One(c) if c.dir != ChanDir::Unknown => (c.chan, c.dir),
                        Cases::One(c) => {
                            self.many.insert(w.g, Arc::from([*c]));
                            (0, ChanDir::Unknown)
                        }
                        Cases::Many(c) => {
                            self.many.insert(w.g, c.clone());
                            (0, ChanDir::Unknown)
                        }
                    };
                    self.parks.push(CachedPark {
                        g: w.g,
                        digest: park_digest(w),
                        chan,
                        used: generation,
                        dir,
                    });
                }
                Some(_) => {}
                None if is_chan_op(w) => self.stats.dropped += 1,
                None => {}
            }
            f(
                i,
                ChanRead {
                    waits,
                    fresh: is_fresh,
                },
            );
        }
        let added = self.parks.len() > kept;
        self.parks.retain(|p| p.used == generation);
        if added {
            self.parks.sort_unstable_by_key(|p| p.g);
        }
        let parks = &self.parks;
        self.many.retain(|g, _| {
            parks
                .binary_search_by_key(g, |p| p.g)
                .is_ok_and(|k| parks[k].chan == 0)
        });
        if self.parks.capacity() > 2 * self.parks.len() + 4096 {
            self.parks.shrink_to_fit();
        }
    }

    /// The sudog addresses (the `g.waiting` list) of each of the waiters
    /// `which` lists, in that order, level by level: one batched read per
    /// level for every list at once.
    fn read_lists(
        &mut self,
        mem: &dyn ReadMem,
        waiters: &[Waiter],
        which: &[usize],
        sudogs: &mut Map<u64, Sudog>,
    ) -> Vec<Option<Vec<u64>>> {
        let l = self.layout;
        let waiters: Vec<&Waiter> = which.iter().map(|&i| &waiters[i]).collect();
        let mut lists: Vec<Option<Vec<u64>>> = waiters
            .iter()
            .map(|w| matches!(w.op(), WaitOp::Send | WaitOp::Recv | WaitOp::Select).then(Vec::new))
            .collect();
        let mut cursors: Vec<(usize, u64)> = Vec::new();
        for (i, w) in waiters.iter().enumerate() {
            if lists[i].is_some() {
                if is_ptr(w.waiting) {
                    cursors.push((i, w.waiting));
                } else {
                    lists[i] = None;
                }
            }
        }
        for depth in 0..MAX_SELECT_CASES {
            if cursors.is_empty() {
                break;
            }
            let mut to_read: Vec<u64> = cursors
                .iter()
                .map(|c| c.1)
                .filter(|a| !sudogs.contains_key(a))
                .collect();
            to_read.sort_unstable();
            to_read.dedup();
            self.stats.sudogs_read += to_read.len();
            mem.read_each(&to_read, l.sudog_read_len(), &mut |i, b| {
                if let Some(s) = b.and_then(|b| Sudog::parse(b, &l)) {
                    sudogs.insert(to_read[i], s);
                }
            });
            let mut next = Vec::new();
            for (i, addr) in cursors {
                let w = waiters[i];
                let ok = sudogs.get(&addr).is_some_and(|s| {
                    s.g == w.g
                        && is_ptr(s.c)
                        && match w.op() {
                            WaitOp::Select => s.is_select,
                            _ => !s.is_select && s.waitlink == 0,
                        }
                });
                let Some(list) = lists[i].as_mut().filter(|l| ok && !l.contains(&addr)) else {
                    lists[i] = None;
                    continue;
                };
                list.push(addr);
                let link = sudogs[&addr].waitlink;
                // A select longer than MAX_SELECT_CASES keeps its first cases.
                if w.op() == WaitOp::Select && link != 0 && depth + 1 < MAX_SELECT_CASES {
                    next.push((i, link));
                }
            }
            cursors = next;
        }
        lists
    }

    /// Walk the wait queues of the channels in `wanted`, all at once,
    /// until every wanted sudog of a channel is met or the queues end,
    /// reading only the sudogs not already read. Returns the queue each
    /// wanted sudog was met in.
    fn walk_queues(
        &mut self,
        mem: &dyn ReadMem,
        hchans: &Map<u64, Hchan>,
        sudogs: &mut Map<u64, Sudog>,
        mut wanted: Map<u64, Set<u64>>,
    ) -> Map<u64, ChanDir> {
        let l = self.layout;
        let mut walks: Vec<Walk> = Vec::new();
        for (&c, h) in hchans.iter().filter(|(c, _)| wanted.contains_key(c)) {
            for (dir, (first, _)) in [(ChanDir::Recv, h.recvq), (ChanDir::Send, h.sendq)] {
                walks.push(Walk {
                    chan: c,
                    dir,
                    next: first,
                    steps: 0,
                    reads: 0,
                    done: false,
                });
            }
        }
        let mut found: Map<u64, ChanDir> = Map::default();
        loop {
            let mut pending: Vec<usize> = Vec::new();
            for (k, w) in walks.iter_mut().enumerate() {
                while !w.done {
                    let left = wanted.get(&w.chan).map_or(0, Set::len);
                    if w.next == 0 || left == 0 || w.steps >= MAX_QUEUE_STEPS {
                        w.done = true;
                        break;
                    }
                    match sudogs.get(&w.next) {
                        Some(s) if s.c == w.chan => {
                            w.steps += 1;
                            if let Some(set) = wanted.get_mut(&w.chan)
                                && set.remove(&w.next)
                            {
                                found.insert(w.next, w.dir);
                            }
                            w.next = s.next;
                        }
                        // Queued elsewhere by now: the queue moved under us.
                        Some(_) => w.done = true,
                        None if w.reads < MAX_QUEUE_READS => {
                            pending.push(k);
                            break;
                        }
                        None => w.done = true,
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
            let mut addrs: Vec<u64> = pending.iter().map(|&k| walks[k].next).collect();
            addrs.sort_unstable();
            addrs.dedup();
            self.stats.queue_nodes_read += addrs.len();
            mem.read_each(&addrs, l.sudog_read_len(), &mut |i, b| {
                if let Some(s) = b.and_then(|b| Sudog::parse(b, &l)) {
                    sudogs.insert(addrs[i], s);
                }
            });
            for k in pending {
                let w = &mut walks[k];
                w.reads += 1;
                if !sudogs.contains_key(&w.next) {
                    w.done = true;
                }
            }
        }
        found
    }

    /// Which of the channels just read (`read`: slot indices) a timer
    /// feeds: through `hchan.timer` when set, else, for channels shaped
    /// like a `time` channel (capacity 1, elements of `time.Time`'s size),
    /// from the timer heaps.
    fn timers(&mut self, mem: &dyn ReadMem, chans: &[u64], read: &[usize], slots: &mut [Slot]) {
        let l = self.layout;
        let linked: Vec<usize> = read
            .iter()
            .copied()
            .filter(|&i| slots[i].hchan.is_some_and(|h| h.timer != 0))
            .collect();
        if !linked.is_empty() {
            let addrs: Vec<u64> = linked
                .iter()
                .map(|&i| slots[i].hchan.map_or(0, |h| h.timer))
                .collect();
            self.stats.timers_read += addrs.len();
            mem.read_each(&addrs, l.timer_read_len(), &mut |k, b| {
                let i = linked[k];
                slots[i].timer = Some(match b.and_then(|b| Timer::parse(b, &l)) {
                    // newTimer: c.timer = &t; t.isChan; t.arg = c.
                    Some(t) if t.is_chan != Some(false) && t.arg_data == chans[i] => t.kind(),
                    _ => ChanTimer::Unknown,
                });
            });
        }
        let candidates: Vec<usize> = read
            .iter()
            .copied()
            .filter(|&i| {
                slots[i]
                    .hchan
                    .is_some_and(|h| h.timer == 0 && h.dataqsiz == 1 && h.elemsize == TIME_SIZE)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let heap = self.heap_timers(mem);
        for i in candidates {
            slots[i].timer = Some(match &heap {
                Some(by_chan) => by_chan.get(&chans[i]).map_or(ChanTimer::No, Timer::kind),
                None => ChanTimer::Unknown,
            });
        }
    }

    /// Every timer in the Ps' heaps, by the data word of its `arg`. `None`
    /// when the heaps cannot be found (no `runtime.allp`) or read.
    fn heap_timers(&mut self, mem: &dyn ReadMem) -> Option<Map<u64, Timer>> {
        let l = self.layout;
        let (allp, heap_off) = (self.allp?, l.p_timer_heap?);
        let header = mem.read_vec(allp, 16)?;
        let (ptr, len) = (u64_at(&header, 0)?, u64_at(&header, 8)?);
        if !is_ptr(ptr) || len == 0 || len > MAX_PROCS {
            return None;
        }
        let ps = mem.read_vec(ptr, len as usize * 8)?;
        let ps: Vec<u64> = ps
            .chunks_exact(8)
            .filter_map(|w| Some(u64::from_le_bytes(w.try_into().ok()?)))
            .filter(|&p| is_ptr(p))
            .filter_map(|p| p.checked_add(u64::from(heap_off)))
            .collect();
        let stride = l.timer_heap_stride.max(8) as usize;
        let mut heaps: Vec<(u64, u64)> = Vec::new();
        mem.read_each(&ps, 16, &mut |_, b| {
            if let Some((heap, n)) = b.and_then(|b| Some((u64_at(b, 0)?, u64_at(b, 8)?))) {
                heaps.push((heap, n));
            }
        });
        let mut timer_ptrs: Vec<u64> = Vec::new();
        for (heap, n) in heaps {
            let room = MAX_TIMERS.saturating_sub(timer_ptrs.len());
            if n == 0 || !is_ptr(heap) || n > room as u64 {
                continue;
            }
            let Some(entries) = mem.read_vec(heap, n as usize * stride) else {
                continue;
            };
            timer_ptrs.extend(
                entries
                    .chunks_exact(stride)
                    .filter_map(|e| Some(u64::from_le_bytes(e.get(..8)?.try_into().ok()?)))
                    .filter(|&t| is_ptr(t)),
            );
        }
        self.stats.timers_read += timer_ptrs.len();
        let mut by_chan = Map::default();
        mem.read_each(&timer_ptrs, l.timer_read_len(), &mut |_, b| {
            if let Some(t) = b
                .and_then(|b| Timer::parse(b, &l))
                .filter(|t| is_ptr(t.arg_data))
            {
                // Two timers on one channel: a pending one wins.
                by_chan
                    .entry(t.arg_data)
                    .and_modify(|old: &mut Timer| {
                        if !old.pending() {
                            *old = t;
                        }
                    })
                    .or_insert(t);
            }
        });
        Some(by_chan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake address space: regions of bytes.
    #[derive(Default)]
    struct Fake {
        regions: HashMap<u64, Vec<u8>>,
    }

    impl Fake {
        fn put(&mut self, addr: u64, bytes: Vec<u8>) {
            self.regions.insert(addr, bytes);
        }
        fn find(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            self.regions.iter().find_map(|(&base, b)| {
                let off = addr.checked_sub(base)? as usize;
                b.get(off..off.checked_add(len)?).map(<[u8]>::to_vec)
            })
        }
    }

    impl ReadMem for Fake {
        fn read_each(&self, addrs: &[u64], len: usize, f: &mut dyn FnMut(usize, Option<&[u8]>)) {
            for (i, &a) in addrs.iter().enumerate() {
                f(i, self.find(a, len).as_deref());
            }
        }
    }

    fn layout(minor: u32) -> ChanLayout {
        ChanLayout::for_minor(minor).unwrap()
    }

    fn park(g: u64) -> ParkKey {
        ParkKey {
            goid: g / 8,
            sp: g + 0x100,
            pc: 0x40_1000,
            bp: g + 0x200,
            parked_ns: 0,
        }
    }

    fn put64(b: &mut [u8], off: u32, v: u64) {
        b[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn sudog(l: &ChanLayout, g: u64, c: u64, select: bool, next: u64, waitlink: u64) -> Vec<u8> {
        let mut b = vec![0u8; l.sizeof_sudog as usize];
        put64(&mut b, l.sudog_g, g);
        put64(&mut b, l.sudog_c, c);
        put64(&mut b, l.sudog_next, next);
        put64(&mut b, l.sudog_waitlink, waitlink);
        b[l.sudog_is_select as usize] = select as u8;
        b
    }

    fn hchan(
        l: &ChanLayout,
        cap: u64,
        len: u64,
        elem: u16,
        recvq: (u64, u64),
        sendq: (u64, u64),
    ) -> Vec<u8> {
        let mut b = vec![0u8; l.sizeof_hchan as usize];
        put64(&mut b, l.hchan_qcount, len);
        put64(&mut b, l.hchan_dataqsiz, cap);
        b[l.hchan_elemsize as usize..l.hchan_elemsize as usize + 2]
            .copy_from_slice(&elem.to_le_bytes());
        put64(&mut b, l.hchan_recvq_first, recvq.0);
        put64(&mut b, l.hchan_recvq_last, recvq.1);
        put64(&mut b, l.hchan_sendq_first, sendq.0);
        put64(&mut b, l.hchan_sendq_last, sendq.1);
        b
    }

    #[test]
    fn wait_reasons() {
        assert_eq!(WaitOp::from_reason("chan send"), Some(WaitOp::Send));
        assert_eq!(
            WaitOp::from_reason("chan receive (nil chan)"),
            Some(WaitOp::NilRecv)
        );
        assert_eq!(
            WaitOp::from_reason("chan receive (durable)"),
            Some(WaitOp::Recv)
        );
        assert_eq!(WaitOp::from_reason("select"), Some(WaitOp::Select));
        assert_eq!(WaitOp::from_reason("select (no cases)"), None);
        assert_eq!(WaitOp::from_reason("sync.Mutex.Lock"), None);
    }

    /// Three senders queued on one unbuffered channel, read with every
    /// version's layout.
    #[test]
    fn senders_on_one_channel() {
        for minor in [19, 22, 23, 25, 26] {
            let l = layout(minor);
            let mut m = Fake::default();
            let c = 0x10_000;
            let (s1, s2, s3) = (0x20_000, 0x20_100, 0x20_200);
            let (g1, g2, g3) = (0x30_000, 0x30_400, 0x30_800);
            m.put(s1, sudog(&l, g1, c, false, s2, 0));
            m.put(s2, sudog(&l, g2, c, false, s3, 0));
            m.put(s3, sudog(&l, g3, c, false, 0, 0));
            m.put(c, hchan(&l, 0, 0, 8, (0, 0), (s1, s3)));
            let waiters: Vec<Waiter> = [(g1, s1), (g2, s2), (g3, s3)]
                .iter()
                .map(|&(g, waiting)| Waiter::new(g, waiting, WaitOp::Send, park(g).digest()))
                .collect();
            let mut r = ChanReader::new(l, None);
            let out = r.read(&m, &waiters);
            for w in &out {
                assert!(w.fresh);
                let w = w.waits.as_ref().unwrap();
                assert_eq!(w.len(), 1);
                let st = w[0].state.unwrap();
                assert_eq!(
                    (w[0].chan, w[0].dir, w[0].select),
                    (c, ChanDir::Send, false)
                );
                assert_eq!((st.senders, st.receivers, st.counts_complete), (3, 0, true));
                assert_eq!((st.cap, st.len, st.timer), (0, 0, ChanTimer::No));
            }
            assert!(ChanWaits::ptr_eq(
                out[0].waits.as_ref().unwrap(),
                out[2].waits.as_ref().unwrap()
            ));
            assert_eq!(r.stats.sudogs_read, 3, "go1.{minor}");
            assert_eq!(r.stats.channels, 1);
            assert_eq!(r.stats.queue_nodes_read, 0);
            // Still in the same parks: nothing read again but the channel.
            r.reject(&waiters[1]);
            let again = r.read(&m, &waiters);
            assert_eq!((r.stats.cached, r.stats.sudogs_read), (2, 1));
            assert_eq!(
                again,
                out.iter()
                    .enumerate()
                    .map(|(i, o)| ChanRead {
                        waits: o.waits.clone(),
                        fresh: i == 1,
                    })
                    .collect::<Vec<_>>()
            );
            // Parked again (the probe saw it): read again.
            let mut moved = waiters.clone();
            let w0 = moved[0];
            moved[0] = Waiter::new(
                w0.g,
                w0.waiting,
                w0.op(),
                ParkKey {
                    parked_ns: 7,
                    ..park(w0.g)
                }
                .digest(),
            );
            r.read(&m, &moved);
            assert_eq!((r.stats.cached, r.stats.sudogs_read), (2, 1));
        }
    }

    /// A select on a channel and a ticker channel; the sudog of another
    /// goroutine (not a waiter) is read from the queue.
    #[test]
    fn select_directions_and_timers() {
        for minor in [22, 23, 27] {
            let l = layout(minor);
            let mut m = Fake::default();
            let (c1, c2) = (0x10_000, 0x11_000);
            let g = 0x30_000;
            let (s1, s2, other) = (0x20_000, 0x20_100, 0x20_200);
            // s1: receive on c1 (second in its recvq after `other`); s2: on c2.
            m.put(other, sudog(&l, 0x30_400, c1, false, s1, 0));
            m.put(s1, sudog(&l, g, c1, true, 0, s2));
            m.put(s2, sudog(&l, g, c2, true, 0, 0));
            m.put(c1, hchan(&l, 0, 0, 8, (other, s1), (0, 0)));
            let tick = 0x40_000;
            let mut h2 = hchan(&l, 1, 0, TIME_SIZE, (s2, s2), (0, 0));
            let mut t = vec![0u8; l.sizeof_timer as usize];
            put64(&mut t, l.timer_when, 1_000);
            put64(&mut t, l.timer_period, 1_000_000);
            put64(&mut t, l.timer_arg + 8, c2);
            if let Some(off) = l.timer_is_chan {
                t[off as usize] = 1;
            }
            if let Some(off) = l.hchan_timer.filter(|_| minor >= 27) {
                // Go ≥ 1.23 with synchronous timer channels.
                put64(&mut h2, off, tick);
                m.put(tick, t);
            } else {
                if let Some(off) = l.timer_is_chan {
                    t[off as usize] = 0;
                    t[l.timer_status as usize] = 1; // heaped
                } else {
                    t[l.timer_status as usize] = 1; // waiting
                }
                // One P whose heap holds the ticker.
                let (allp, parr, p, heap) = (0x50_000u64, 0x51_000u64, 0x52_000u64, 0x60_000u64);
                let mut hdr = vec![0u8; 24];
                put64(&mut hdr, 0, parr);
                put64(&mut hdr, 8, 1);
                m.put(allp, hdr);
                m.put(parr, p.to_le_bytes().to_vec());
                let mut pb = vec![0u8; l.p_timer_heap.unwrap() as usize + 16];
                put64(&mut pb, l.p_timer_heap.unwrap(), heap);
                put64(&mut pb, l.p_timer_heap.unwrap() + 8, 1);
                m.put(p, pb);
                let mut entry = vec![0u8; l.timer_heap_stride as usize];
                put64(&mut entry, 0, tick);
                m.put(heap, entry);
                m.put(tick, t);
            }
            m.put(c2, h2);
            let mut r = ChanReader::new(l, Some(0x50_000));
            let out = r.read(&m, &[Waiter::new(g, s1, WaitOp::Select, park(g).digest())]);
            let w = out[0].waits.as_ref().unwrap();
            assert_eq!(w.len(), 2, "go1.{minor}");
            assert_eq!(
                (w[0].chan, w[0].dir, w[0].select),
                (c1, ChanDir::Recv, true)
            );
            let st = w[0].state.unwrap();
            // Counted among the waiters given: the other receiver is not one.
            assert_eq!((st.receivers, st.senders, st.counts_complete), (1, 0, true));
            assert_eq!(r.stats.queue_nodes_read, 1, "the other receiver's sudog");
            assert_eq!(st.timer, ChanTimer::No);
            assert_eq!((w[1].chan, w[1].dir), (c2, ChanDir::Recv));
            assert_eq!(w[1].state.unwrap().timer, ChanTimer::Ticker, "go1.{minor}");
        }
    }

    /// A sudog reused by another goroutine, a list that loops, a channel
    /// that does not parse: dropped, never guessed.
    #[test]
    fn torn_reads_are_dropped() {
        let l = layout(24);
        let mut m = Fake::default();
        let (c, g) = (0x10_000, 0x30_000);
        m.put(0x20_000, sudog(&l, 0x99_000, c, false, 0, 0));
        m.put(0x21_000, sudog(&l, g, c, true, 0, 0x21_000));
        let mut bad = hchan(&l, 1, 2, 8, (0, 0), (0, 0));
        put64(&mut bad, l.hchan_qcount, 5);
        m.put(c, bad);
        m.put(0x22_000, sudog(&l, g, c, false, 0, 0));
        let w = |waiting, op| Waiter::new(g, waiting, op, park(g).digest());
        let mut r = ChanReader::new(l, None);
        let out = r.read(
            &m,
            &[
                w(0x20_000, WaitOp::Send),
                w(0x21_000, WaitOp::Select),
                w(0x22_000, WaitOp::Recv),
                w(0, WaitOp::Recv),
                w(0x23_000, WaitOp::Recv),
                w(0, WaitOp::NilSend),
            ],
        );
        let out: Vec<_> = out.into_iter().map(|r| r.waits).collect();
        assert!(out[0].is_none(), "sudog of another goroutine");
        assert!(out[1].is_none(), "waitlink loops");
        let ok = out[2].as_ref().unwrap();
        assert_eq!(ok[0].chan, c);
        assert_eq!(ok[0].state, None, "impossible hchan: qcount > dataqsiz");
        assert!(out[3].is_none() && out[4].is_none());
        let nil = out[5].as_ref().unwrap();
        assert_eq!(
            (nil[0].chan, nil[0].dir, nil[0].state),
            (0, ChanDir::Send, None)
        );
    }

    /// A tiny xorshift generator: no dependency for fuzz-ish tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Random bytes of any length never panic the parsers.
    #[test]
    fn parsers_take_random_bytes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for minor in 19..=27 {
            let l = layout(minor);
            for _ in 0..2000 {
                let n = (rng.next() % 160) as usize;
                let b = rng.bytes(n);
                let _ = Sudog::parse(&b, &l);
                let _ = Hchan::parse(&b, &l);
                let _ = Timer::parse(&b, &l);
            }
        }
        // Short buffers are rejected, not read past.
        let l = layout(26);
        assert!(Sudog::parse(&[0u8; 8], &l).is_none());
        assert!(Hchan::parse(&[], &l).is_none());
    }

    /// A whole address space of random words (pointers into itself now and
    /// then, so lists and queues get walked): the reader never panics and
    /// stays within its bounds however the words link up.
    #[test]
    fn reader_takes_random_memory() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..40 {
            let l = layout(19 + round % 9);
            let base = 0x100_000u64;
            let size = 64 * 1024;
            let mut words = vec![0u8; size];
            for w in words.chunks_exact_mut(8) {
                let v = match rng.next() % 4 {
                    0 => base + (rng.next() % size as u64) / 8 * 8,
                    1 => rng.next() % 3,
                    _ => rng.next(),
                };
                w.copy_from_slice(&v.to_le_bytes());
            }
            let mut m = Fake::default();
            m.put(base, words);
            let waiters: Vec<Waiter> = (0..64)
                .map(|i| {
                    let g = base + (rng.next() % size as u64) / 8 * 8;
                    Waiter::new(
                        g,
                        base + (rng.next() % size as u64) / 8 * 8,
                        [WaitOp::Send, WaitOp::Recv, WaitOp::Select][i % 3],
                        park(g).digest(),
                    )
                })
                .collect();
            let mut r = ChanReader::new(l, Some(base + 8 * (rng.next() % 100)));
            let out = r.read(&m, &waiters);
            assert_eq!(out.len(), waiters.len());
            for w in out.iter().filter_map(|r| r.waits.as_ref()) {
                assert!(w.len() <= MAX_SELECT_CASES);
            }
            assert!(r.stats.queue_nodes_read <= 2 * r.stats.channels * MAX_QUEUE_READS);
        }
    }
}
