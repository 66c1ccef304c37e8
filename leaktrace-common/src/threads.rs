//! OS thread records of the traced process and the thread probes' config.

/// What happened to a thread of the traced process.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadEventKind {
    /// `task:task_newtask` with `CLONE_THREAD`: the creating thread made a
    /// new thread. Fires before the new thread can run, so its rename and
    /// exit always come later in the ring. A [`ThreadEvent`] alone: the
    /// ring had no room for the creator's stack.
    New = 1,
    /// `task:task_rename`: a thread's `comm` changed (std and tokio name
    /// their threads from inside the new thread, right after it starts).
    Rename = 2,
    /// `sched:sched_process_exit`: a thread ended.
    Exit = 3,
    /// New with the creating thread's registers and top of stack: a
    /// [`ThreadNewStack`].
    NewStack = 4,
}

impl ThreadEventKind {
    pub const fn from_raw(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::New),
            2 => Some(Self::Rename),
            3 => Some(Self::Exit),
            4 => Some(Self::NewStack),
            _ => None,
        }
    }
}

/// Bytes of the creating thread's user stack a NewStack record carries,
/// from its stack pointer up. Unwound in userspace with `.eh_frame`, because
/// glibc's `pthread_create` keeps no frame pointer and the kernel's
/// frame-pointer walk stops there (measured: one real frame, `clone3`).
/// 8 KiB reached `main` from both `std::thread::spawn` (0.85 KiB deep) and
/// tokio's runtime start (2.6 KiB deep) in a release build.
pub const THREAD_STACK_BYTES: usize = 8192;

/// One record in the thread ring buffer (`THREAD_EVENTS`), or the head of
/// a [`ThreadNewStack`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadEvent {
    /// [`ThreadEventKind`] as u32; first so userspace can tell the record
    /// types apart.
    pub kind: u32,
    /// The thread the event is about: the new, renamed or exiting thread.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the tracepoint.
    pub ts_ns: u64,
    /// The thread that hit the tracepoint: for New, the creating thread.
    pub by_tid: u32,
    pub _pad: u32,
    /// New: the creating thread's name (the new thread starts with a copy);
    /// Rename: the new name; Exit: the name at exit. NUL-padded.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<ThreadEvent>() == 40);

/// A New record with what userspace needs to unwind the creating thread's
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

const _: () = assert!(size_of::<ThreadNewStack>() == 40 + 32 + THREAD_STACK_BYTES);

/// What the thread probes read from the `THREAD_TARGET` map: which process
/// to follow, and where this kernel puts the tracepoint fields (offsets from
/// tracefs `format` files, which moved between kernel versions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

const _: () = assert!(size_of::<ThreadConfig>() == 20);
