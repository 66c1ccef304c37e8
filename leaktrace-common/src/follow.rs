//! Following a command's descendants (`-f`): which processes are followed,
//! and the record sent when one of them execs a new program.

/// What the follow probes read from the `FOLLOW_CONFIG` map: where this
/// kernel puts `task_newtask`'s fields (from tracefs, as for threads), and
/// whether to hold each exec'd process until leaktrace has looked at it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowConfig {
    /// 0 keeps every follow program idle.
    pub enabled: u32,
    /// `task_newtask`: offsets of `pid` (the new task) and `clone_flags`.
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    /// Non-zero: stop (SIGSTOP) a followed process right after its exec, so
    /// its probes are attached before its first instruction; leaktrace
    /// continues it (SIGCONT) within milliseconds.
    pub hold: u32,
    /// `sched_process_exit`: offset of `group_dead` (Linux ≥ 6.16), 0 when
    /// the kernel has no such field. A process leaves the followed set only
    /// when its whole thread group is dead: an exec from a thread other than
    /// the leader (Go's syscall.Exec) first ends the old leader thread, and
    /// that must not hide the exec that follows.
    pub exit_group_dead: u32,
    /// Non-zero (`--all`): report every exec on the host, not only the
    /// followed set's, and hold none of them.
    pub all: u32,
    /// `--cgroup`: with `all`, only execs in this cgroup v2 (its id, the
    /// directory's inode number) or below it; 0 for any.
    pub cgroup_id: u64,
    /// The cgroup's depth below the cgroup v2 root (the root is 0): its
    /// id is the exec'ing task's ancestor at this level.
    pub cgroup_level: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<FollowConfig>() == 40);

/// A followed process executed a new program (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The process (its tgid, which exec keeps).
    pub pid: u32,
    /// Non-zero when the probe stopped it (see [`FollowConfig::hold`]).
    pub held: u32,
}

const _: () = assert!(size_of::<ExecEvent>() == 16);
