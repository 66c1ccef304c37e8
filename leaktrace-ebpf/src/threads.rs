//! OS thread lifecycle of the traced process, from kernel tracepoints, so it
//! works for any language, libc and linking:
//! - `task:task_newtask` (not `sched_process_fork`): it carries the clone
//!   flags, so threads are told from child processes here rather than by a
//!   racy look at /proc, and it fires inside `copy_process` before the new
//!   thread can run, so its NEW record always precedes its RENAME and EXIT in
//!   the ring (`sched_process_fork` fires after the wake-up, and a thread that
//!   exits at once can beat it);
//! - `task:task_rename`: std and tokio name a thread from inside it, right
//!   after it starts, so the name arrives after NEW;
//! - `sched:sched_process_exit`: runs in the exiting thread.
//!
//! These fire for every task on the machine; a one-entry array lookup and a
//! compare is all a foreign task costs.
use crate::maps::copy_user_stack;
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::{map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use leaktrace_common::threads::{
    THREAD_STACK_BYTES, ThreadConfig, ThreadEvent, ThreadEventKind, ThreadNewStack,
};

/// Written by userspace after load; `tgid == 0` keeps every program idle.
#[map]
static THREAD_TARGET: Array<ThreadConfig> = Array::with_max_entries(1, 0);

/// Separate from the task ring: different record types, and thread events
/// are rare. Sized for ~120 creations with stacks waiting at once; when it is
/// too full for a stack, the creation still goes in without one.
#[map]
static THREAD_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per CPU: [0] records lost because [`THREAD_EVENTS`] was full, [1]
/// creations sent without their stack for the same reason.
#[map]
static THREAD_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// `CLONE_THREAD` from include/uapi/linux/sched.h (ABI, never changes).
const CLONE_THREAD: u64 = 0x0001_0000;

/// The config if the current task belongs to the traced process.
#[inline(always)]
fn in_target() -> Option<(ThreadConfig, u32)> {
    let cfg = *THREAD_TARGET.get(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if cfg.tgid == 0 || (pid_tgid >> 32) as u32 != cfg.tgid {
        return None;
    }
    Some((cfg, pid_tgid as u32))
}

#[inline(always)]
fn count_lost(index: u32) {
    if let Some(slot) = THREAD_LOST.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; tracepoint programs do not nest on a CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn event(kind: ThreadEventKind, tid: u32, by_tid: u32, comm: [u8; 16]) -> ThreadEvent {
    ThreadEvent {
        kind: kind as u32,
        tid,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        by_tid,
        _pad: 0,
        comm,
    }
}

#[inline(always)]
fn emit(ev: ThreadEvent) {
    if THREAD_EVENTS.output::<ThreadEvent>(&ev, 0).is_err() {
        count_lost(0);
    }
}

#[tracepoint]
pub fn thread_newtask(ctx: TracePointContext) -> u32 {
    let Some((cfg, by_tid)) = in_target() else {
        return 0;
    };
    // SAFETY: offsets come from this kernel's format file.
    let flags: u64 = unsafe { ctx.read_at(cfg.newtask_clone_flags as usize) }.unwrap_or(0);
    if flags & CLONE_THREAD == 0 {
        // fork/vfork/posix_spawn: a child process, not a thread of ours.
        return 0;
    }
    let tid: u32 = unsafe { ctx.read_at(cfg.newtask_pid as usize) }.unwrap_or(0);
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let ev = event(ThreadEventKind::New, tid, by_tid, comm);
    let Some(mut slot) = THREAD_EVENTS.reserve::<ThreadNewStack>(0) else {
        count_lost(1);
        emit(ev);
        return 0;
    };
    let rec = slot.as_mut_ptr();
    // SAFETY: `rec` is a reserved record of the right size. The user
    // registers of a task in a syscall are at the top of its kernel stack,
    // which `bpf_task_pt_regs` finds; their layout is the x86_64 ABI's.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u64;
        let reg = |i: usize| bpf_probe_read_kernel(regs.add(i)).unwrap_or(0);
        // struct pt_regs: r15..rbp is index 4, rip 16, rsp 19.
        let (bp, ip, sp) = (reg(4), reg(16), reg(19));
        (*rec).event = ThreadEvent {
            kind: ThreadEventKind::NewStack as u32,
            ..ev
        };
        (*rec).ip = ip;
        (*rec).sp = sp;
        (*rec).bp = bp;
        (*rec)._pad = 0;
        (*rec).stack_len = copy_user_stack(
            (&raw mut (*rec).stack).cast(),
            sp,
            THREAD_STACK_BYTES as u32,
        );
    }
    slot.submit(0);
    0
}

#[tracepoint]
pub fn thread_rename(ctx: TracePointContext) -> u32 {
    // Renames come from the process itself: prctl(PR_SET_NAME) on the
    // calling thread, or a write to /proc/self/task/TID/comm for another.
    let Some((cfg, by_tid)) = in_target() else {
        return 0;
    };
    // SAFETY: offsets come from this kernel's format file.
    let tid: u32 = unsafe { ctx.read_at(cfg.rename_pid as usize) }.unwrap_or(0);
    let comm: [u8; 16] = unsafe { ctx.read_at(cfg.rename_newcomm as usize) }.unwrap_or([0; 16]);
    emit(event(ThreadEventKind::Rename, tid, by_tid, comm));
    0
}

#[tracepoint]
pub fn thread_exit(_ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = in_target() else {
        return 0;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit(event(ThreadEventKind::Exit, tid, tid, comm));
    0
}
