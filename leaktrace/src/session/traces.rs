//! The traces running side by side when several processes are traced
//! (`-f`, `--all`): one local task per process, each with its own stop
//! channel, so an exec ends one trace and a signal ends them all.
use std::{collections::HashMap, rc::Rc};

use anyhow::{Result, anyhow};
use tokio::{sync::watch, task::JoinSet};

use super::{
    stops::End,
    trace::{Ctx, Outcome, Target, trace},
};
use crate::runtime::Runtime;

#[derive(Default)]
pub(super) struct Traces {
    running: JoinSet<(u32, Result<Outcome>)>,
    stops: HashMap<u32, watch::Sender<Option<End>>>,
}

impl Traces {
    /// Trace `target` from now on (on the current `LocalSet`).
    pub(super) fn start(&mut self, ctx: Rc<Ctx>, rt: Box<dyn Runtime>, target: Target) {
        let pid = target.pid();
        let (tx, rx) = watch::channel(None);
        self.stops.insert(pid, tx);
        self.running
            .spawn_local(async move { (pid, trace(ctx, rt, target, rx, Vec::new()).await) });
    }

    /// End the trace of `pid`, if there is one (it finishes with its final
    /// report; [`Traces::next`] returns it).
    pub(super) fn stop(&mut self, pid: u32, end: End) {
        if let Some(tx) = self.stops.remove(&pid) {
            let _ = tx.send(Some(end));
        }
    }

    pub(super) fn stop_all(&self, end: End) {
        for tx in self.stops.values() {
            let _ = tx.send(Some(end));
        }
    }

    /// Whether a trace of `pid` runs and has not been told to stop.
    pub(super) fn traces(&self, pid: u32) -> bool {
        self.stops.contains_key(&pid)
    }

    /// Traces running, including those finishing.
    pub(super) fn len(&self) -> usize {
        self.running.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// A trace failed because no report can be written any more (closed
    /// stdout, full disk): every trace ends, and the first such error is
    /// leaktrace's. True the first time (the session then ends whatever
    /// else it runs).
    pub(super) fn output_gone(
        &self,
        e: anyhow::Error,
        first: &mut Option<anyhow::Error>,
        ending: &mut Option<End>,
    ) -> bool {
        first.get_or_insert(e);
        if ending.is_some() {
            return false;
        }
        *ending = Some(End::OutputFailed);
        self.stop_all(End::OutputFailed);
        true
    }

    /// The next trace to end: its pid and outcome. Pending while none
    /// runs.
    pub(super) async fn next(&mut self) -> Result<(u32, Result<Outcome>)> {
        let Some(done) = self.running.join_next().await else {
            return std::future::pending().await;
        };
        let (pid, result) = done.map_err(|e| anyhow!("a trace failed: {e}"))?;
        // Its stop channel, unless a newer trace of the same pid (after an
        // exec) owns that slot now.
        if self.stops.get(&pid).is_some_and(|tx| tx.is_closed()) {
            self.stops.remove(&pid);
        }
        Ok((pid, result))
    }
}
