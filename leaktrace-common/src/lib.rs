//! Types shared by the eBPF probes and the userspace tool.
//!
//! Everything here is `#[repr(C)]` and plain old data: the probes write these
//! bytes into the ring buffer and userspace reads them back, so both sides must
//! agree on the layout bit for bit. Field offsets of the traced runtime are
//! never compiled in; they arrive at load time in [`GoConfig`].
#![no_std]

/// The exit-time walk of `runtime.allgs` (issue #13).
pub mod go_final;

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

/// What happened to a tokio task, as the `cookie` of the attach point says.
pub mod tokio_kind {
    /// `OwnedTasks<S>::bind_inner(&self, task, notified)`: the task joins
    /// its runtime's list, on the spawning thread (what `num_alive_tasks()`
    /// counts from here on).
    pub const SPAWN: u8 = 1;
    /// `<Arc<Handle> as Schedule>::release(&self, &task)` or, where LTO
    /// removed that symbol, `Harness<T, S>::complete(self)`: the task left
    /// its runtime's list (finished, panicked or cancelled).
    pub const COMPLETE: u8 = 2;
    /// `raw::shutdown`: the runtime cancels the task (runtime shutdown, or a
    /// spawn into a closed runtime).
    pub const SHUTDOWN: u8 = 3;
    /// Detailed mode only: `raw::poll`, a poll begins.
    pub const POLL: u8 = 4;
    /// Detailed mode only: `waker::wake_by_val` / `wake_by_ref`.
    pub const WAKE: u8 = 5;
}

/// The attach cookie of a tokio probe: the event kind in the low byte; in
/// the next, the argument register most likely to hold the task (0 = 1st,
/// 1 = 2nd, 2 = 3rd); bit 16 set when that argument is more likely a
/// pointer to the task pointer (`&Task`). The probe validates its guess and
/// tries the other shapes before giving up, because LTO can change the
/// shape of arguments that are not fn-pointer typed.
pub fn tokio_cookie(kind: u8, arg: u8, by_reference: bool) -> u64 {
    u64::from(kind) | (u64::from(arg) << 8) | (u64::from(by_reference) << 16)
}

/// The tokio task header (tokio ≥ 1.21, 64-bit, `repr(C)`), as both the
/// probes and the heap scan validate it: `state`, `queue_next`, `vtable`,
/// `owner_id`.
pub mod tokio_task {
    pub const HEADER_VTABLE: u64 = 16;
    pub const HEADER_OWNER_ID: u64 = 24;
    pub const HEADER_LEN: usize = 32;
    /// The reference count sits above the six flag bits of the state word.
    pub const REF_SHIFT: u32 = 6;
    /// A live task holds a handful of references (list, JoinHandle, wakers,
    /// abort handles). Anything near this bound is not a task: glibc's
    /// safe-linked free-list pointers land in the same word once a cell is
    /// freed, and they decode as refcounts of 2^25 and more.
    pub const MAX_PLAUSIBLE_REFS: u64 = 1 << 20;
}

/// One tokio record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the probe.
    pub ts_ns: u64,
    /// Run-time address of the task's `Header` (its `RawTask` pointer).
    pub header: u64,
    /// tokio's task id, read at `header + vtable.id_offset`.
    pub id: u64,
    /// Run-time address of the task's vtable.
    pub vtable: u64,
    /// Thread that hit the probe.
    pub tid: u32,
    /// [`tokio_kind`].
    pub kind: u8,
    /// Which candidate held the header: `arg * 2 + deref` (for checking the
    /// guess in the cookie; 0xff when none validated and nothing was sent).
    pub found_as: u8,
    pub _pad: [u8; 2],
}

/// Ring buffer size in bytes (a power of two and a multiple of the page size).
pub const RING_BYTES: u32 = 8 << 20;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data with no padding holes that matter and no pointers.
    unsafe impl aya::Pod for super::GoEvent {}
    unsafe impl aya::Pod for super::GoConfig {}
    unsafe impl aya::Pod for super::TokioEvent {}
    unsafe impl aya::Pod for super::ThreadEvent {}
    unsafe impl aya::Pod for super::ThreadConfig {}
    unsafe impl aya::Pod for super::ThreadNewStack {}
}

/// What happened to a thread of the traced process.
pub mod thread_kind {
    /// `task:task_newtask` with `CLONE_THREAD`: the creating thread made a
    /// new thread. Fires before the new thread can run, so its rename and
    /// exit always come later in the ring. A [`super::ThreadEvent`] alone: the
    /// ring had no room for the creator's stack.
    pub const NEW: u32 = 1;
    /// `task:task_rename`: a thread's `comm` changed (std and tokio name
    /// their threads from inside the new thread, right after it starts).
    pub const RENAME: u32 = 2;
    /// `sched:sched_process_exit`: a thread ended.
    pub const EXIT: u32 = 3;
    /// NEW with the creating thread's registers and top of stack: a
    /// [`super::ThreadNewStack`].
    pub const NEW_STACK: u32 = 4;
}

/// Bytes of the creating thread's user stack a NEW_STACK record carries,
/// from its stack pointer up. Unwound in userspace with `.eh_frame`, because
/// glibc's `pthread_create` keeps no frame pointer and the kernel's
/// frame-pointer walk stops there (measured: one real frame, `clone3`).
/// 8 KiB reached `main` from both `std::thread::spawn` (0.85 KiB deep) and
/// tokio's runtime start (2.6 KiB deep) in a release build.
pub const THREAD_STACK_BYTES: usize = 8192;

/// One record in the thread ring buffer (`THREAD_EVENTS`), or the head of
/// a [`ThreadNewStack`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadEvent {
    /// [`thread_kind`]; first so userspace can tell the record types apart.
    pub kind: u32,
    /// The thread the event is about: the new, renamed or exiting thread.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the tracepoint.
    pub ts_ns: u64,
    /// The thread that hit the tracepoint: for NEW, the creating thread.
    pub by_tid: u32,
    pub _pad: u32,
    /// NEW: the creating thread's name (the new thread starts with a copy);
    /// RENAME: the new name; EXIT: the name at exit. NUL-padded.
    pub comm: [u8; 16],
}

/// A NEW record with what userspace needs to unwind the creating thread's
/// stack: its user registers at the clone syscall and the stack above `sp`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadNewStack {
    pub event: ThreadEvent,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// How many bytes of `stack` are valid (the read shrinks near the top
    /// of the stack mapping); 0 if none could be read.
    pub stack_len: u32,
    pub _pad: u32,
    pub stack: [u8; THREAD_STACK_BYTES],
}

/// What the thread probes read from the `THREAD_TARGET` map: which process
/// to follow, and where this kernel puts the tracepoint fields (offsets from
/// tracefs `format` files, which moved between kernel versions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadConfig {
    /// The traced process (its tgid); 0 turns the probes off.
    pub tgid: u32,
    /// `task_newtask`: offsets of `pid` (the new task) and `clone_flags`.
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    /// `task_rename`: offsets of `pid` (the renamed task) and `newcomm`.
    pub rename_pid: u32,
    pub rename_newcomm: u32,
}
