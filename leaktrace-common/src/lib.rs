//! Types shared by the eBPF probes and the userspace tool.
//!
//! Everything here is `#[repr(C)]` and plain old data: the probes write these
//! bytes into the ring buffer and userspace reads them back, so both sides must
//! agree on the layout bit for bit. Field offsets of the traced runtime are
//! never compiled in; they arrive at load time in [`GoConfig`].
#![no_std]

/// What happened to a goroutine.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `runtime.newproc1` filled in a new g (gopc, startpc, parent are valid).
    Spawn = 1,
    /// `runtime.park_m`: the goroutine blocked; `wait_reason` is valid.
    Park = 2,
    /// `runtime.goexit0`: the goroutine finished; its g may be reused after this.
    Exit = 3,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Spawn),
            2 => Some(Self::Park),
            3 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// One record in the ring buffer.
///
/// A single fixed-size record for all kinds keeps the probe code branch-free
/// and the decoder trivial; at 48 bytes it is well under one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
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
    /// [`EventKind`] as u8.
    pub kind: u8,
    /// Park: `g.waitreason` (version-specific numbering, decoded in userspace).
    pub wait_reason: u8,
    pub _pad: [u8; 6],
}

/// Where the probes find things in a `runtime.g` (and `runtime.m`) of this
/// particular Go binary. Filled from DWARF or the per-version table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoConfig {
    pub g_goid: u32,
    pub g_gopc: u32,
    pub g_startpc: u32,
    pub g_waitreason: u32,
    /// 0 when the runtime has no `g.parentGoid` (Go < 1.21): the probe then
    /// reads the creator as `g0.m.curg.goid` instead.
    pub g_parent_goid: u32,
    pub g_m: u32,
    pub m_curg: u32,
    /// `_Gdead`, the old status of the `casgstatus` call that makes a new g
    /// runnable; the spawn probe on that call filters on it.
    pub gstatus_dead: u32,
}

/// Cookie values telling the spawn program which kind of attach point fired.
pub mod spawn_point {
    /// A `CALL runtime.casgstatus` inside newproc1: RAX = g, EBX = old
    /// status, ECX = new status. Only `_Gdead → runnable/waiting` is a spawn.
    pub const CASGSTATUS_CALL: u64 = 1;
    /// A `RET` of newproc1: RAX = the new g (single-stepped, so slower).
    pub const NEWPROC1_RET: u64 = 2;
}

/// Ring buffer size in bytes (a power of two and a multiple of the page size).
pub const RING_BYTES: u32 = 8 << 20;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data with no padding holes that matter and no pointers.
    unsafe impl aya::Pod for super::GoEvent {}
    unsafe impl aya::Pod for super::GoConfig {}
}
