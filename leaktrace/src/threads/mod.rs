//! The target's OS threads, tracked beside its tasks as one slice: probes
//! (`task_newtask`, `task_rename`, `sched_process_exit`), the table seeded
//! from /proc, and the view it hands the report. A thread pool that only
//! grows is a leak tasks cannot show.
mod probes;
mod table;
pub mod view;

use anyhow::Context as _;

pub use probes::{ThreadProbes, comm};
pub use table::{Creator, ThreadChange, ThreadTable, fold_digits};
pub use view::{ThreadGroupReport, ThreadVerdict, ThreadsReport};

use crate::{probes::Probes, target::clock::monotonic_ns};

/// Thread tracking for one process.
pub struct Threads {
    probes: ThreadProbes,
    table: ThreadTable,
}

impl Threads {
    /// Attach, then list the threads already there (in that order, so none
    /// falls in between). Thread tracking is an addition: failing to start
    /// it is a warning, not an error.
    pub fn start(probes: &mut Probes, pid: u32, warnings: &mut Vec<String>) -> Option<Self> {
        let started = ThreadProbes::attach(probes, pid).and_then(|tp| {
            let table = ThreadTable::seed(pid).context("listing the target's threads")?;
            Ok(Self { probes: tp, table })
        });
        match started {
            Ok(t) => Some(t),
            Err(e) => {
                warnings.push(format!("threads are not tracked: {e:#}"));
                None
            }
        }
    }

    /// One sample: take the records waiting, then the table's view now.
    pub fn sample(&mut self) -> ThreadsReport {
        self.probes.drain(&mut self.table);
        self.table.report(monotonic_ns())
    }
}
