//! Goroutine lifecycle records and the Go probes' configuration.

/// What happened to a goroutine.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoEventKind {
    /// `runtime.newproc1` filled in a new g (gopc is valid; startpc and
    /// parent are 0: the refresh reads them from the g).
    Spawn = 1,
    /// `runtime.park_m`: the goroutine blocked (`goid` is valid;
    /// `wait_reason` is 0: the refresh reads it from the g).
    Park = 2,
    /// `runtime.goexit0`: the goroutine finished; its g may be reused after this.
    Exit = 3,
}

impl GoEventKind {
    pub const fn from_raw(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Spawn),
            2 => Some(Self::Park),
            3 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// One goroutine record in the ring buffer.
///
/// A single fixed-size record for all kinds keeps the probe code branch-free
/// and the decoder trivial; at 72 bytes (80 with the ring's header) it is
/// just over one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the probe.
    pub ts_ns: u64,
    /// Address of the `runtime.g`. Stable for the goroutine's life; reused
    /// only after its Exit event.
    pub g: u64,
    /// goid; 0 on Spawn where the runtime assigns it after our probe point.
    pub goid: u64,
    /// Spawn: return address of the `go` statement's call to newproc.
    pub gopc: u64,
    /// Spawn: entry of the goroutine's function (often a compiler wrapper).
    pub startpc: u64,
    /// Spawn: goid of the creating goroutine.
    pub parent_goid: u64,
    /// [`GoEventKind`] as u8.
    pub kind: u8,
    /// Park: `g.waitreason` (version-specific numbering, decoded in userspace).
    pub wait_reason: u8,
    pub _pad: [u8; 6],
    /// Spawn: return addresses of the frames above the one holding the `go`
    /// statement in the creator's stack (its caller, then the caller's
    /// caller), innermost first; 0 where the creator's frame-pointer chain
    /// could not be followed. What a spawn helper's callers are told by.
    pub via_pcs: [u64; 2],
}

const _: () = assert!(size_of::<GoEvent>() == 72);

/// Where the probes find things in a `runtime.g` (and `runtime.m`) of this
/// particular Go binary. Filled from DWARF or the per-version table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoConfig {
    pub g_goid: u32,
    pub g_gopc: u32,
    /// `_Gdead`, the old status of the `casgstatus` call that makes a new g
    /// runnable; the spawn probe on that call filters on it.
    pub gstatus_dead: u32,
    /// Nonzero: the spawn probe reads the return addresses above the `go`
    /// statement in the creator's stack (`GoEvent::via_pcs`); 0: they stay
    /// 0.
    pub walk_creators: u32,
}

const _: () = assert!(size_of::<GoConfig>() == 16);

/// The attach cookie of a spawn probe: which kind of point fired.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnPoint {
    /// A `CALL runtime.casgstatus` inside newproc1: RAX = g, EBX = old
    /// status, ECX = new status. Only `_Gdead → runnable/waiting` is a spawn.
    CasgstatusCall = 1,
    /// A `RET` of newproc1: RAX = the new g (single-stepped, so slower).
    Newproc1Ret = 2,
}
