//! The exit-time walk of `runtime.allgs` (issue #13): shared by the
//! `leaktrace-final` probe object and `runtime::go::final_walk`.
//!
//! A probe on the Go runtime's exit path (`runtime.exit`, the exit_group
//! wrapper, and `runtime.dieFromSignal`) walks every `g` in the kernel, in
//! the exiting thread, before the process is gone. It sends one
//! [`FinalG`] per live goroutine (header plus `nframes` return addresses:
//! the record is cut after the last frame) to the `FINAL_EVENTS` ring, then
//! a [`FinalEnd`] there and in the `FINAL_STATE` map, which userspace reads
//! even when the ring had no room left for it.

/// Most return addresses one record carries (the walk stops there and sets
/// [`final_flags::TRUNCATED`]).
pub const FINAL_MAX_FRAMES: usize = 32;

/// Bytes of a `runtime.g` the probe copies (sizeof(g) is 392–456 in Go
/// 1.19–1.27; every field read lies below 320).
pub const FINAL_G_BYTES: usize = 512;

/// Default cap on the `allgs` entries one walk visits (`bpf_loop` allows
/// 1 << 23). Entries past it are counted in [`FinalEnd::skipped`].
pub const FINAL_DEFAULT_MAX_GS: u32 = 1 << 20;

/// Record kinds: the first `u32` of every record in `FINAL_EVENTS`.
pub mod final_kind {
    /// A [`super::FinalG`].
    pub const G: u32 = 1;
    /// A [`super::FinalEnd`]: the walk is over.
    pub const END: u32 = 2;
}

/// [`FinalG::flags`].
pub mod final_flags {
    /// The goroutine the exiting thread was running (the probe's own R14,
    /// or `g0.m.curg` on the system stack). Its frames start at the caller
    /// of the exit function, from the probe's registers or its `sched`.
    pub const CURRENT: u8 = 1;
    /// The frame walk stopped at [`super::FINAL_MAX_FRAMES`].
    pub const TRUNCATED: u8 = 2;
    /// A frame could not be read (the chain left the goroutine's stack,
    /// or the memory did not read): the frames so far are kept.
    pub const BROKEN: u8 = 4;
    /// The frames come from `syscallpc` / `syscallbp` (a goroutine in a
    /// system call).
    pub const FROM_SYSCALL: u8 = 8;
}

/// Which exit function fired: the attach cookie, and [`FinalEnd::point`].
pub mod final_point {
    /// `runtime.exit(code int32)`: `exit_group`. `arg` = the exit code.
    pub const EXIT: u32 = 1;
    /// `runtime.dieFromSignal(sig uint32)`. `arg` = the signal.
    pub const DIE_FROM_SIGNAL: u32 = 2;
    /// Number of points ([`super::FinalConfig::point_va`] has one per
    /// value, index 0 unused).
    pub const COUNT: usize = 3;
}

/// What the probe needs to know about this binary. Set by userspace in the
/// one-entry `FINAL_CONFIG` array before the probes are attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FinalConfig {
    /// Link-time VA of each probe point, by [`final_point`] value: the
    /// probe computes the load bias as `rip - point_va[cookie]`, so PIE and
    /// `-c` (not mapped yet at attach) need nothing more.
    pub point_va: [u64; final_point::COUNT],
    /// Link-time VA of the `runtime.allgs` slice header (ptr, len, cap).
    pub allgs_va: u64,
    /// Link-time VA of `runtime.allglen`; 0 to use `allgs.len`.
    pub allglen_va: u64,
    /// Most `allgs` entries visited.
    pub max_gs: u32,
    /// Most frames per goroutine (≤ [`FINAL_MAX_FRAMES`]).
    pub max_frames: u32,
    /// Bytes of `g` copied (≤ [`FINAL_G_BYTES`]).
    pub g_size: u32,
    /// Offsets in `runtime.g` (from DWARF or the per-version table).
    pub g_stack_lo: u32,
    pub g_stack_hi: u32,
    pub g_m: u32,
    pub g_sched_sp: u32,
    pub g_sched_pc: u32,
    pub g_sched_bp: u32,
    pub g_syscallsp: u32,
    pub g_syscallpc: u32,
    /// `u32::MAX` when absent (Go < 1.23).
    pub g_syscallbp: u32,
    pub g_atomicstatus: u32,
    pub g_goid: u32,
    pub g_waitsince: u32,
    pub g_waitreason: u32,
    /// `u32::MAX` when absent (Go < 1.21).
    pub g_parent_goid: u32,
    pub g_gopc: u32,
    pub g_startpc: u32,
    /// Offset of `curg` in `runtime.m`.
    pub m_curg: u32,
    /// The reader is woken when `emitted & wakeup_mask == 0` (a power of
    /// two minus one): a wake-up per record would cost an interrupt each.
    pub wakeup_mask: u32,
    pub _pad: u32,
    /// Longest the walk waits in all for room in the ring when the reader
    /// falls behind (the exit waits with it); past it, records are dropped.
    pub wait_budget_ns: u64,
}

/// One goroutine as it was at exit. Sent as `FINAL_G_HEADER_BYTES +
/// 8 * nframes` bytes: the unused tail of `frames` is not sent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FinalG {
    /// [`final_kind::G`].
    pub kind: u32,
    /// Thread that walked (tells two racing walks apart).
    pub walker: u32,
    /// Address of the `runtime.g`.
    pub g: u64,
    pub goid: u64,
    /// `g.atomicstatus`, scan bit included.
    pub status: u32,
    /// `g.waitreason` (per-version numbering).
    pub wait_reason: u8,
    /// [`final_flags`].
    pub flags: u8,
    pub nframes: u16,
    /// `g.waitsince` (nanotime, set lazily by the GC; 0 if never).
    pub waitsince: i64,
    pub gopc: u64,
    pub startpc: u64,
    /// 0 where Go has no `parentGoid` (< 1.21).
    pub parent_goid: u64,
    pub sched_pc: u64,
    pub sched_sp: u64,
    pub sched_bp: u64,
    pub stack_lo: u64,
    pub stack_hi: u64,
    /// Return addresses, innermost first (`sched.pc` first for a parked
    /// goroutine); run-time addresses.
    pub frames: [u64; FINAL_MAX_FRAMES],
}

/// Bytes of [`FinalG`] before `frames`.
pub const FINAL_G_HEADER_BYTES: usize = core::mem::offset_of!(FinalG, frames);

/// The end of one walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FinalEnd {
    /// [`final_kind::END`].
    pub kind: u32,
    pub walker: u32,
    /// [`final_point`] that fired.
    pub point: u32,
    /// Exit code (`runtime.exit`) or signal (`dieFromSignal`).
    pub arg: u32,
    /// `allglen` read at the start of the walk.
    pub allglen: u64,
    /// `allgs` entries visited (≤ max_gs).
    pub walked: u64,
    /// Live goroutines found (status not idle/dead).
    pub live: u64,
    /// Records sent.
    pub emitted: u64,
    /// Records the ring had no room for.
    pub dropped: u64,
    /// `allgs` entries past `max_gs`, not visited.
    pub skipped: u64,
    /// Entries whose `g` could not be read.
    pub unreadable: u64,
    /// Time the walk waited for the reader to make room in the ring.
    pub waited_ns: u64,
    /// `bpf_ktime_get_ns()` when the probe fired and when the walk ended.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Load bias the probe computed (0 for a non-PIE binary).
    pub bias: u64,
    /// The exiting thread's `g` (R14) and the goroutine it ran.
    pub current_g: u64,
    /// Times the probe fired in this process; only the first walks. More
    /// than 1 is normal: `dieFromSignal` re-enters itself when the
    /// re-raised signal is forwarded to SIG_DFL, and threads can race into
    /// exit.
    pub walks: u32,
    /// 1 once this record is complete (in `FINAL_STATE`).
    pub done: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, no pointers.
    unsafe impl aya::Pod for super::FinalConfig {}
    // SAFETY: `#[repr(C)]` plain old data, as above.
    unsafe impl aya::Pod for super::FinalEnd {}
}
