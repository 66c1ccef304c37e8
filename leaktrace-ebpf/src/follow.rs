//! Following a command's descendants (`-f`): the set of followed processes
//! grows with every fork of one of them (`task:task_newtask`, which carries
//! the clone flags, so threads are not mistaken for processes), shrinks at
//! each exit, and every exec of a followed process is reported — held
//! stopped when asked, so its probes can go in before it runs. For the host
//! agent (`--all`) every exec is reported (never held), optionally only
//! those in one cgroup subtree.
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_send_signal},
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, RingBuf},
    programs::TracePointContext,
};
use leaktrace_common::follow::{ExecEvent, FollowConfig};

#[map]
static FOLLOW_CONFIG: Array<FollowConfig> = Array::with_max_entries(1, 0);

/// tgid → 1 for every followed process. Bounded: a fork beyond it is not
/// followed (userspace counts the map's size).
#[map]
static FOLLOWED: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// Execs are rare; each wakes the reader at once (it may be holding a
/// stopped process).
#[map]
static FOLLOW_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// `CLONE_THREAD` from include/uapi/linux/sched.h.
const CLONE_THREAD: u64 = 0x0001_0000;
const SIGSTOP: u32 = 19;
const SIGCONT: u32 = 18;

#[inline(always)]
fn config() -> Option<FollowConfig> {
    let cfg = *FOLLOW_CONFIG.get(0)?;
    (cfg.enabled != 0).then_some(cfg)
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[tracepoint]
pub fn follow_fork(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    if unsafe { FOLLOWED.get(&current_tgid()) }.is_none() {
        return 0;
    }
    // SAFETY: offsets come from this kernel's format file.
    let flags: u64 = unsafe { ctx.read_at(cfg.newtask_clone_flags as usize) }.unwrap_or(0);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let pid: u32 = unsafe { ctx.read_at(cfg.newtask_pid as usize) }.unwrap_or(0);
    if pid != 0 {
        let _ = FOLLOWED.insert(&pid, &1, 0);
    }
    0
}

#[tracepoint]
pub fn follow_exec(_ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    // After exec the task is its process's leader: pid == tgid.
    let pid = current_tgid();
    if cfg.all != 0 {
        // The cgroup subtree: the task's ancestor at the cgroup's level is
        // the cgroup itself exactly when the task is in it or below.
        if cfg.cgroup_id != 0
            && unsafe { bpf_get_current_ancestor_cgroup_id(cfg.cgroup_level as i32) }
                != cfg.cgroup_id
        {
            return 0;
        }
    } else if unsafe { FOLLOWED.get(&pid) }.is_none() {
        return 0;
    }
    let held = cfg.all == 0 && cfg.hold != 0 && unsafe { bpf_send_signal(SIGSTOP) } == 0;
    let ev = ExecEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid,
        held: held as u32,
    };
    if FOLLOW_EVENTS
        .output::<ExecEvent>(&ev, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
        && held
    {
        // Nobody would ever continue it: do not leave it stopped.
        let _ = unsafe { bpf_send_signal(SIGCONT) };
    }
    0
}

#[tracepoint]
pub fn follow_exit(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let gone = if cfg.exit_group_dead != 0 {
        // SAFETY: the offset comes from this kernel's format file.
        unsafe { ctx.read_at::<u8>(cfg.exit_group_dead as usize) }.unwrap_or(0) != 0
    } else {
        // Older kernels: the leader's exit (an exec from another thread
        // is then missed, as before).
        pid == tgid
    };
    if gone {
        let _ = FOLLOWED.remove(&tgid);
    }
    0
}
