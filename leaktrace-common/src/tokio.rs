//! tokio task lifecycle records, attach cookies and the task header layout.

/// What happened to a tokio task, as the attach point's cookie says.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokioEventKind {
    /// `OwnedTasks<S>::bind_inner(&self, task, notified)`: the task joins
    /// its runtime's list, on the spawning thread (what `num_alive_tasks()`
    /// counts from here on).
    Spawn = 1,
    /// `<Arc<Handle> as Schedule>::release(&self, &task)` or, where LTO
    /// removed that symbol, `Harness<T, S>::complete(self)`: the task left
    /// its runtime's list (finished, panicked or cancelled).
    Complete = 2,
    /// `raw::shutdown`: the runtime cancels the task (runtime shutdown, or a
    /// spawn into a closed runtime).
    Shutdown = 3,
    /// Detailed mode only: `raw::poll`, a poll begins.
    Poll = 4,
    /// Detailed mode only: `waker::wake_by_val` / `wake_by_ref`.
    Wake = 5,
}

impl TokioEventKind {
    pub const fn from_raw(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Spawn),
            2 => Some(Self::Complete),
            3 => Some(Self::Shutdown),
            4 => Some(Self::Poll),
            5 => Some(Self::Wake),
            _ => None,
        }
    }
}

/// The attach cookie of a tokio probe: the event kind in the low byte; in
/// the next, the argument register most likely to hold the task (0 = 1st,
/// 1 = 2nd, 2 = 3rd); bit 16 set when that argument is more likely a
/// pointer to the task pointer (`&Task`). The probe validates its guess and
/// tries the other shapes before giving up, because LTO can change the
/// shape of arguments that are not fn-pointer typed.
pub const fn tokio_cookie(kind: TokioEventKind, arg: u8, by_reference: bool) -> u64 {
    (kind as u64) | ((arg as u64) << 8) | ((by_reference as u64) << 16)
}

/// The tokio task header (tokio ≥ 1.21, 64-bit, `repr(C)`), as both the
/// probes and the heap scan validate it: `state`, `queue_next`, `vtable`,
/// `owner_id`.
pub mod task_header {
    pub const VTABLE: u64 = 16;
    pub const OWNER_ID: u64 = 24;
    pub const LEN: usize = 32;
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// [`TokioEventKind`] as u8.
    pub kind: u8,
    /// Which candidate held the header: `arg * 2 + deref` (for checking the
    /// guess in the cookie; 0xff when none validated and nothing was sent).
    pub found_as: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(size_of::<TokioEvent>() == 40);

/// Bytes of the spawning thread's stack a [`TokioSpawnStack`] carries, from
/// its stack pointer up: the spawn path (`tokio::spawn` → `spawn_inner` →
/// the scheduler's `spawn` → `bind_inner`) moves the future by value
/// through several frames, so they can be as large as the future (tokio
/// boxes futures beyond 16 KiB); the program's frame lies above them.
pub const SPAWN_STACK_BYTES: usize = 8192;

/// With a spawn event, in its own ring (`TOKIO_SPAWN_STACKS`), sent first:
/// the spawning thread's registers at `bind_inner` and the top of its
/// stack, unwound in userspace with `.eh_frame` to the first frame outside
/// tokio (where the program called `tokio::spawn`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TokioSpawnStack {
    /// The task, as in its [`TokioEvent`].
    pub header: u64,
    pub id: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// How many bytes of `stack` are valid (the copy shrinks near the top
    /// of the stack mapping); 0 if none could be read.
    pub stack_len: u32,
    pub tid: u32,
    pub stack: [u8; SPAWN_STACK_BYTES],
}

const _: () = assert!(size_of::<TokioSpawnStack>() == 48 + SPAWN_STACK_BYTES);
