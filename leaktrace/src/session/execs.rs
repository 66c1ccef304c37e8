//! The exec watch every session mode shares: the follow programs
//! (`sched_process_exec` and friends, leaktrace-ebpf/src/follow.rs)
//! attached for the whole session, reporting the execs of one process
//! (`--pid`, `-c`), of a command's descendants (`-f`, each held until
//! looked at) or of the whole host (`--all`, none held); and whether an
//! exec'd program is worth a trace.
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use leaktrace_common::follow::{ExecEvent, FollowConfig};
use tokio::io::unix::AsyncFd;

use crate::{
    probes::{Probes, ring::decode_record, tracefs},
    runtime::{self, Options},
    target::{
        host::Cgroup,
        privileges::{Credentials, check_may_trace},
        process::Process,
    },
};

/// Continue a process the probe stopped.
pub(super) fn resume(ev: &ExecEvent) {
    if ev.held != 0 {
        // SAFETY: continuing a process our probe stopped.
        unsafe { libc::kill(ev.pid as libc::pid_t, libc::SIGCONT) };
    }
}

/// The smallest ring the kernel takes.
const PAGE_BYTES: u32 = 4096;

/// Why an exec'd program gets no trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unfit {
    /// Gone already, or no executable (a kernel thread).
    Gone,
    /// Not this user's to read (a setuid program, another user's).
    NotPermitted,
    /// Neither Go nor tokio, or one of the Go toolchain's own tools.
    NotGoOrTokio,
}

/// A Go or tokio program worth a trace (not one of the Go toolchain's own
/// tools, which `go build` and `go test` run by the dozen).
pub(super) fn traceable(
    pid: u32,
    options: Options,
) -> Result<(Box<dyn runtime::Runtime>, Process), Unfit> {
    let proc = Process::open(pid).map_err(|_| Unfit::Gone)?;
    // A descendant may have become someone else (a setuid program).
    check_may_trace(&Credentials::current(), pid).map_err(|_| Unfit::NotPermitted)?;
    if is_go_toolchain(Path::new(&proc.exe_display)) {
        return Err(Unfit::NotGoOrTokio);
    }
    let rt = runtime::open(&proc.exe_link, options).map_err(|_| Unfit::NotGoOrTokio)?;
    Ok((rt, proc))
}

/// `$GOROOT/bin/go`, `$GOROOT/bin/gofmt` and `$GOROOT/pkg/tool/*/*`.
fn is_go_toolchain(exe: &Path) -> bool {
    let parent = exe.parent();
    let in_tool_dir = parent
        .and_then(Path::parent)
        .is_some_and(|p| p.ends_with("pkg/tool"));
    let goroot_bin = parent.is_some_and(|p| p.ends_with("bin"))
        && matches!(
            exe.file_name().and_then(|n| n.to_str()),
            Some("go" | "gofmt")
        )
        && parent
            .and_then(Path::parent)
            .is_some_and(|root| root.join("src/runtime").is_dir());
    in_tool_dir || goroot_bin
}

/// What the follow programs watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Watch {
    /// `-f`: this process and every descendant; each exec held (SIGSTOP)
    /// until leaktrace has looked at it.
    Descendants(u32),
    /// One traced process's own execs, never held: a process leaktrace did
    /// not start is never stopped (`--pid`), and its new image is read from
    /// memory at re-attach like any running process.
    Execs(u32),
    /// `--all`: every exec on the host, or in one cgroup subtree (filtered
    /// in the kernel), never held.
    Host(Option<Cgroup>),
}
/// The follow programs, attached for the whole session.
pub(super) struct FollowProbes {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Holds the links; dropping it detaches them.
    _probes: Probes,
}

impl FollowProbes {
    pub(super) fn attach(watch: Watch) -> Result<Self> {
        let tracefs = tracefs::ensure_mounted()?;
        let cgroup = match &watch {
            Watch::Host(cgroup) => cgroup.as_ref(),
            _ => None,
        };
        let field = |name: &str| -> Result<u32> {
            Ok(tracefs::field(&tracefs, "task/task_newtask", name)?.offset)
        };
        let config = FollowConfig {
            enabled: 1,
            newtask_pid: field("pid")?,
            newtask_clone_flags: field("clone_flags")?,
            hold: u32::from(matches!(watch, Watch::Descendants(_))),
            exit_group_dead: tracefs::field(&tracefs, "sched/sched_process_exit", "group_dead")
                .map(|f| f.offset)
                .unwrap_or(0),
            all: u32::from(matches!(watch, Watch::Host(_))),
            cgroup_id: cgroup.map_or(0, |c| c.id),
            cgroup_level: cgroup.map_or(0, |c| c.level),
            _pad: 0,
        };
        let mut probes = match watch {
            // The host watch fills neither the follow set nor the rings
            // of the other programs: the smallest of each.
            Watch::Host(_) => Probes::load_sized(&[], Some(PAGE_BYTES))?,
            _ => Probes::load(&[])?,
        };
        let ebpf = probes.ebpf_mut();
        let mut cfg: Array<&mut MapData, FollowConfig> = Array::try_from(
            ebpf.map_mut("FOLLOW_CONFIG")
                .context("FOLLOW_CONFIG map missing from the probes object")?,
        )?;
        cfg.set(0, config, 0).context("setting FOLLOW_CONFIG")?;
        let mut followed: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
            ebpf.map_mut("FOLLOWED")
                .context("FOLLOWED map missing from the probes object")?,
        )?;
        if let Watch::Descendants(root) | Watch::Execs(root) = watch {
            followed
                .insert(root, 1, 0)
                .context("following the command")?;
        }
        for (name, category, event) in [
            ("follow_fork", "task", "task_newtask"),
            ("follow_exec", "sched", "sched_process_exec"),
            ("follow_exit", "sched", "sched_process_exit"),
        ] {
            // One process: the set stays that process (no fork program),
            // and no exit program either, since it removes a process when
            // its leader thread exits, which an exec from another thread
            // (Go's syscall.Exec) does first (de_thread): the exec itself
            // would then go unseen. The session ends at the exit anyway.
            // The host: every exec, the set unused.
            if matches!(watch, Watch::Descendants(_)) || name == "follow_exec" {
                probes.attach_tracepoint(name, category, event)?;
            }
        }
        let ring = RingBuf::try_from(
            probes
                .ebpf_mut()
                .take_map("FOLLOW_EVENTS")
                .context("FOLLOW_EVENTS map missing from the probes object")?,
        )?;
        Ok(Self {
            // SAFETY: the RingBuf owns its fd and lives inside the AsyncFd.
            ring: unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .context("watching the follow ring")?,
            _probes: probes,
        })
    }

    /// Detach the follow programs, then continue every process they held
    /// that no one looked at yet.
    pub(super) fn finish(self) {
        let FollowProbes { mut ring, _probes } = self;
        drop(_probes);
        let ring = ring.get_mut();
        while let Some(item) = ring.next() {
            if let Some(ev) = decode_record::<ExecEvent>(&item) {
                resume(&ev);
            }
        }
    }

    /// The execs reported since the last call (waits for at least one).
    pub(super) async fn next(&mut self) -> Result<Vec<ExecEvent>> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(ev) = decode_record::<ExecEvent>(&item) {
                out.push(ev);
            }
        }
        guard.clear_ready();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_go_toolchain_is_passed_over() {
        let goroot = std::env::temp_dir().join(format!("lt-goroot-{}", std::process::id()));
        std::fs::create_dir_all(goroot.join("src/runtime")).unwrap();
        assert!(is_go_toolchain(&goroot.join("bin/go")));
        assert!(is_go_toolchain(Path::new(
            "/usr/lib/go-1.19/pkg/tool/linux_amd64/compile"
        )));
        assert!(!is_go_toolchain(Path::new(
            "/tmp/go-build123/b001/pkg.test"
        )));
        assert!(!is_go_toolchain(Path::new("/usr/local/bin/go-server")));
        let _ = std::fs::remove_dir_all(goroot);
    }
}
