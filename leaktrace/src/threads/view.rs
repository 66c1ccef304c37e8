//! What thread tracking hands the report: its own view, built by the thread
//! table. Field names are part of the JSON contract.
use serde::Serialize;

use crate::symbols::Frame;

/// The process's OS threads (when thread tracking is on).
#[derive(Clone, Debug, Serialize)]
pub struct ThreadsReport {
    /// Threads alive now (what /proc/PID/task lists).
    pub live: u64,
    /// Threads created and exited since attach.
    pub created: u64,
    pub exited: u64,
    /// Thread events the probes could not deliver (ring buffer full).
    pub lost: u64,
    pub groups: Vec<ThreadGroupReport>,
}

/// Threads with one name pattern (digits folded to `#`) and one creator.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadGroupReport {
    /// The members' names as the program set them (the kernel keeps 15
    /// bytes): one name, `a, b`, or the first and last in natural order
    /// (`conn-1 … conn-12`).
    pub name: String,
    /// What groups them: the name with digit runs folded to `#`.
    pub pattern: String,
    /// The distinct names, in natural order (at most 32).
    pub names: Vec<String>,
    /// The program's function that spawned them, else the spawning thread's
    /// name, `(main thread)` or `(before attach)`.
    pub created_by: String,
    /// That function as a frame, when known.
    pub site: Option<Frame>,
    pub count: u64,
    /// Age of the oldest member.
    pub oldest_s: f64,
    pub growth_per_s: f64,
    pub verdict: ThreadVerdict,
    pub why: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadVerdict {
    /// More members at each of several samples, none exiting.
    Growing,
    Ok,
}
