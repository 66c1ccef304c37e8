//! `-f -c CMD`: trace the command and every Go or tokio program it starts.
//!
//! The follow probes keep, in the kernel, the set of the command's
//! descendants (every fork of a followed process joins it) and stop each of
//! them right after an exec (SIGSTOP), before its first instruction. Here
//! each exec is looked at: a Go or tokio program gets its own trace (probes
//! attached, then SIGCONT); anything else is continued at once. A held
//! process waits a few milliseconds, never more than it takes to read its
//! ELF headers and attach.
use std::rc::Rc;

use anyhow::Result;

use super::{
    execs::{FollowProbes, Watch, resume, traceable},
    exit_code,
    stops::{End, Signals, pidfd},
    trace::{Ctx, Outcome, Target},
    traces::Traces,
};
use crate::{
    report::output::OutputFailed,
    target::launch::{HeldChild, try_reap},
};

pub(super) async fn run(ctx: Rc<Ctx>, mut child: HeldChild, mut signals: Signals) -> Result<i32> {
    let root = child.pid;
    let mut follow = FollowProbes::attach(Watch::Descendants(root))?;
    let root_exit = pidfd(root)?;
    child.release()?;
    let options = super::runtime_options(&ctx.args);
    let mut traces = Traces::default();
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
                    traces.stop(ev.pid, End::Exec);
                    match traceable(ev.pid, options.clone()) {
                        Ok((rt, proc)) => traces.start(ctx.clone(), rt, Target::Exec(proc)),
                        Err(_) => resume(&ev),
                    }
                }
            }
            done = traces.next() => {
                let (pid, result) = done?;
                match result {
                    Ok(o) => outcomes.push(o),
                    Err(e) if e.downcast_ref::<OutputFailed>().is_some() => {
                        if traces.output_gone(e, &mut output_failed, &mut ending) {
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
                traces.stop_all(End::CommandExited);
            }
            end = signals.next(), if ending.is_none() => {
                ending = Some(end);
                traces.stop_all(end);
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
