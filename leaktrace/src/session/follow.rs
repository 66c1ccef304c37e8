//! `-f -c CMD`: trace the command and every Go or tokio program it starts.
//!
//! The follow probes keep, in the kernel, the set of the command's
//! descendants (every fork of a followed process joins it) and stop each of
//! them right after an exec (SIGSTOP), before its first instruction. Here
//! each exec is looked at: a Go or tokio program gets its own trace (probes
//! attached, then SIGCONT); anything else is continued at once. A held
//! process waits a few milliseconds, never more than it takes to read its
//! ELF headers and attach.
use std::{collections::HashMap, path::Path, rc::Rc};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use leaktrace_common::follow::{ExecEvent, FollowConfig};
use tokio::{io::unix::AsyncFd, sync::watch, task::JoinSet};

use super::{
    exit_code,
    stops::{End, Signals, pidfd},
    trace::{Ctx, Outcome, Target, trace},
};
use crate::{
    probes::{Probes, ring::decode_record, tracefs},
    report::output::OutputFailed,
    runtime::{self, Options},
    target::{
        launch::{HeldChild, try_reap},
        privileges::{Credentials, check_may_trace},
        process::Process,
    },
};

pub(super) async fn run(ctx: Rc<Ctx>, mut child: HeldChild, mut signals: Signals) -> Result<i32> {
    let root = child.pid;
    let mut follow = FollowProbes::attach(root, Watch::Descendants)?;
    let root_exit = pidfd(root)?;
    child.release()?;
    let options = super::runtime_options(&ctx.args);
    let mut traces: JoinSet<(u32, Result<Outcome>)> = JoinSet::new();
    let mut stops: HashMap<u32, watch::Sender<Option<End>>> = HashMap::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut root_status = None;
    let mut ending: Option<End> = None;
    let mut output_failed = None;
    loop {
        if ending.is_some() && traces.is_empty() {
            break;
        }
        tokio::select! {
            execs = follow.next() => {
                for ev in execs? {
                    if ending.is_some() {
                        resume(&ev);
                        continue;
                    }
                    // The same process running a new program: its old
                    // trace ends (its probes watch the old file).
                    if let Some(old) = stops.remove(&ev.pid) {
                        let _ = old.send(Some(End::Exec));
                    }
                    match traceable(ev.pid, options.clone()) {
                        Some((rt, proc)) => {
                            let (tx, rx) = watch::channel(None);
                            stops.insert(ev.pid, tx);
                            let ctx = ctx.clone();
                            let pid = ev.pid;
                            traces.spawn_local(async move {
                                (pid, trace(ctx, rt, Target::Exec(proc), rx, Vec::new()).await)
                            });
                        }
                        None => resume(&ev),
                    }
                }
            }
            Some(done) = traces.join_next() => {
                let (pid, result) = done.map_err(|e| anyhow!("a trace failed: {e}"))?;
                if stops.get(&pid).is_some_and(|tx| tx.is_closed()) {
                    stops.remove(&pid);
                }
                match result {
                    Ok(o) => outcomes.push(o),
                    Err(e) if e.downcast_ref::<OutputFailed>().is_some() => {
                        // No report can be written any more: end everything.
                        output_failed.get_or_insert(e);
                        if ending.is_none() {
                            ending = Some(End::OutputFailed);
                            stop_all(&stops, End::OutputFailed);
                            // SAFETY: signalling our own child.
                            unsafe { libc::kill(root as libc::pid_t, libc::SIGTERM) };
                        }
                    }
                    Err(e) => {
                        crate::say!("leaktrace: pid {pid}: {e:#}");
                        // A trace that failed before releasing its process
                        // must not leave it stopped (harmless if it runs).
                        // SAFETY: continuing a process our probe stopped.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                    }
                }
            }
            _ = root_exit.readable(), if root_status.is_none() => {
                root_status = Some(try_reap(root).unwrap_or(0));
                // What the command left running is reported as it is now.
                ending = Some(End::CommandExited);
                stop_all(&stops, End::CommandExited);
            }
            end = signals.next(), if ending.is_none() => {
                ending = Some(end);
                stop_all(&stops, end);
                // We started it; tracing is over, so is its run. (On Ctrl-C
                // the terminal already sent it SIGINT.)
                // SAFETY: signalling our own child.
                unsafe { libc::kill(root as libc::pid_t, libc::SIGTERM) };
            }
        }
    }
    // No process may stay held: detach, then continue whatever the probe
    // stopped since the last read.
    follow.finish();
    let status = root_status.or_else(|| try_reap(root)).unwrap_or(0);
    if let Some(e) = output_failed {
        return Err(e);
    }
    if outcomes.is_empty() {
        crate::say!("leaktrace: the command started no Go or tokio program");
    }
    Ok(exit_code(&ctx.args, status, &outcomes))
}

fn stop_all(stops: &HashMap<u32, watch::Sender<Option<End>>>, end: End) {
    for tx in stops.values() {
        let _ = tx.send(Some(end));
    }
}

/// Continue a process the probe stopped.
fn resume(ev: &ExecEvent) {
    if ev.held != 0 {
        // SAFETY: continuing a process our probe stopped.
        unsafe { libc::kill(ev.pid as libc::pid_t, libc::SIGCONT) };
    }
}

/// A Go or tokio program worth a trace (not one of the Go toolchain's own
/// tools, which `go build` and `go test` run by the dozen).
pub(super) fn traceable(
    pid: u32,
    options: Options,
) -> Option<(Box<dyn runtime::Runtime>, Process)> {
    let proc = Process::open(pid).ok()?;
    // A descendant may have become someone else (a setuid program).
    check_may_trace(&Credentials::current(), pid).ok()?;
    if is_go_toolchain(Path::new(&proc.exe_display)) {
        return None;
    }
    let rt = runtime::open(&proc.exe_link, options).ok()?;
    Some((rt, proc))
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Watch {
    /// `-f`: the process and every descendant; each exec held (SIGSTOP)
    /// until leaktrace has looked at it.
    Descendants,
    /// One traced process's own execs, never held: a process leaktrace did
    /// not start is never stopped (`--pid`), and its new image is read from
    /// memory at re-attach like any running process.
    Execs,
}

/// The follow programs, attached for the whole session.
pub(super) struct FollowProbes {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Holds the links; dropping it detaches them.
    _probes: Probes,
}

impl FollowProbes {
    pub(super) fn attach(root: u32, watch: Watch) -> Result<Self> {
        let tracefs = tracefs::ensure_mounted()?;
        let field = |name: &str| -> Result<u32> {
            Ok(tracefs::field(&tracefs, "task/task_newtask", name)?.offset)
        };
        let config = FollowConfig {
            enabled: 1,
            newtask_pid: field("pid")?,
            newtask_clone_flags: field("clone_flags")?,
            hold: u32::from(watch == Watch::Descendants),
            exit_group_dead: tracefs::field(&tracefs, "sched/sched_process_exit", "group_dead")
                .map(|f| f.offset)
                .unwrap_or(0),
            _pad: 0,
        };
        let mut probes = Probes::load(&[])?;
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
        followed
            .insert(root, 1, 0)
            .context("following the command")?;
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
            if watch == Watch::Descendants || name == "follow_exec" {
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
