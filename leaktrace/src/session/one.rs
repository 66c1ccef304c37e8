//! `--pid` and `-c`: one process, followed across the programs it executes.
//!
//! An exec replaces everything a trace knows (the binary, its load bias,
//! probe points, the task table), so the trace of the old program ends with
//! its final report (labelled as the state before the exec) and a new trace
//! starts for the new program, as `-f` does for each program it sees: a Go
//! or tokio program is read again, probed and snapshotted; anything else is
//! traced for its threads only, and says so. The exec is noticed by the
//! `sched_process_exec` tracepoint, filtered in the kernel to this process;
//! it is never held (a process leaktrace did not start is never stopped).
use std::rc::Rc;

use anyhow::Result;
use tokio::sync::watch;

use super::{
    execs::{FollowProbes, Watch, traceable},
    exit_code,
    stops::{End, Signals},
    trace::{Ctx, Outcome, Target, trace},
};
use crate::{
    runtime::{Runtime, none::ThreadsOnly},
    target::{
        clock::monotonic_ns,
        privileges::{Credentials, check_may_trace},
        process::Process,
    },
};

pub(super) async fn run(
    ctx: Rc<Ctx>,
    mut signals: Signals,
    rt: Box<dyn Runtime>,
    target: Target,
) -> Result<i32> {
    let pid = target.pid();
    let started_ns = monotonic_ns();
    let child = matches!(target, Target::Command(_));
    let mut execs = match FollowProbes::attach(Watch::Execs(pid)) {
        Ok(w) => Some(w),
        Err(e) => {
            crate::say!(
                "warning: an exec of pid {pid} would not be noticed (reports would then describe \
                 the old program): {e:#}"
            );
            None
        }
    };
    // `-c`: the command's own start is an exec (of leaktrace's fork).
    let mut starting = child;
    let mut history: Vec<String> = Vec::new();
    let mut next = Some((rt, target));
    let mut last: Option<Outcome> = None;
    while let Some((rt, target)) = next.take() {
        let (stop_tx, stop_rx) = watch::channel(None);
        let traced = trace(ctx.clone(), rt, target, stop_rx, history.clone());
        tokio::pin!(traced);
        let mut exec_at = None;
        let outcome = loop {
            tokio::select! {
                r = &mut traced => break r?,
                end = signals.next() => {
                    let _ = stop_tx.send(Some(end));
                    break traced.await?;
                }
                evs = next_execs(&mut execs) => {
                    for ev in evs?.into_iter().filter(|e| e.pid == pid) {
                        if std::mem::take(&mut starting) {
                            continue;
                        }
                        exec_at = Some(ev.ts_ns);
                    }
                    if exec_at.is_some() {
                        let _ = stop_tx.send(Some(End::Exec));
                        break traced.await?;
                    }
                }
            }
        };
        last = Some(outcome);
        let Some(ts) = exec_at else { break };
        let Ok(proc) = Process::open(pid) else {
            // Gone right after its exec: the old trace's report is the last.
            break;
        };
        let at_s = ts.saturating_sub(started_ns) as f64 / 1e9;
        let mut note = format!("pid {pid} exec'd {} at {at_s:.1}s", proc.exe_display);
        if let Err(e) = check_may_trace(&Credentials::current(), pid) {
            // A setuid program: no longer this user's to read.
            crate::say!("note: {note}, which leaktrace stops tracing: {e:#}");
            break;
        }
        let options = super::runtime_options(&ctx.args);
        let rt = match traceable(pid, options.clone()) {
            Ok((rt, _)) => {
                note.push_str("; traced anew from there");
                rt
            }
            Err(_) => {
                let why = crate::runtime::open(&proc.exe_link, options)
                    .err()
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_else(|| "a Go toolchain program".into());
                note.push_str(", which is neither Go nor tokio: only its threads are traced");
                Box::new(ThreadsOnly::new(why))
            }
        };
        crate::say!("note: {note}");
        history.push(note);
        next = Some((rt, Target::Reexec { proc, child }));
    }
    if let Some(w) = execs {
        w.finish();
    }
    let outcome = last.expect("at least one trace ran");
    Ok(exit_code(
        &ctx.args,
        outcome.status.unwrap_or(0),
        std::slice::from_ref(&outcome),
    ))
}

/// The watcher's next execs; pending forever without one.
async fn next_execs(
    execs: &mut Option<FollowProbes>,
) -> Result<Vec<leaktrace_common::follow::ExecEvent>> {
    match execs {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
