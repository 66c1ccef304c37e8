//! leaktrace: find goroutine and task leaks in a running process with eBPF.
//!
//! The flow, one module each:
//! `target` (what the process is, read-only memory) → `runtime` (the seam:
//! what Go or tokio look like inside) → `probes` (eBPF load/attach, ring
//! buffer) → `aggregate` (live tasks, groups, growth, verdicts) → `report`
//! (text and JSON). `session` wires them together for one run.
pub mod aggregate;
pub mod cli;
pub mod probes;
pub mod report;
pub mod runtime;
pub mod session;
pub mod symbols;
pub mod target;
