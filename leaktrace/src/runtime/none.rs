//! A program with no runtime leaktrace knows, traced for its OS threads
//! only: what a traced process becomes when it execs into something that is
//! neither Go nor tokio (`/bin/sleep`, a shell). Its reports keep the
//! threads table and say, in a warning, why there are no tasks.
use std::path::Path;

use anyhow::Result;

use super::{Attached, Description, PlannedProbe, Runtime, RuntimeKind, TaskCounts, TaskView};
use crate::probes::{Global, Probes};

/// JSON `"runtime": "none"`.
pub const NONE: RuntimeKind = RuntimeKind {
    name: "none",
    task: "task",
    tasks: "tasks",
    ended: "ended",
    origin: "created by",
    spawned: None,
    ids: "task ids",
};

pub struct ThreadsOnly {
    /// Why the program has no tasks to trace (what `runtime::open` said).
    why: String,
}

impl ThreadsOnly {
    pub fn new(why: String) -> Self {
        Self { why }
    }
}

impl Runtime for ThreadsOnly {
    fn kind(&self) -> RuntimeKind {
        NONE
    }

    fn describe(&self) -> Description {
        Description {
            version: "no Go or tokio runtime".into(),
            symbols: "none",
        }
    }

    fn probe_globals(&self) -> Vec<Global> {
        Vec::new()
    }

    fn plan(&self) -> Result<Vec<PlannedProbe>> {
        Ok(Vec::new())
    }

    fn attach(&mut self, _: &mut Probes, _: &Path, _: u32) -> Result<Attached> {
        Ok(Attached {
            warnings: vec![format!(
                "no goroutines or tasks are traced in this program, only its threads: {}",
                self.why
            )],
            detail: Some("threads only".into()),
        })
    }

    fn record_size(&self) -> usize {
        // No task probe is attached, so no record ever comes.
        size_of::<u64>()
    }

    fn apply(&mut self, _: &[u8]) {}

    fn snapshot(&mut self, _: u32) -> Result<Option<String>> {
        Ok(None)
    }

    fn refresh(&mut self, _: &mut Probes, _: u32, views: &mut Vec<TaskView>) -> Result<bool> {
        views.clear();
        Ok(true)
    }

    fn counts(&self) -> TaskCounts {
        TaskCounts::default()
    }

    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}
