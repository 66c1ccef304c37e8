//! leaktrace: find goroutine and task leaks in a running process with eBPF.
//!
//! The flow, one module each, every arrow pointing down this list:
//! `session` (one loop for every runtime) → `report` (build, text, JSON) →
//! `threads` (the OS-thread slice) → `aggregate` (groups, trends,
//! verdicts) → `runtime` (the seam; Go and tokio behind it) → `probes`
//! (eBPF load/attach, ring buffer) → `symbols` (DWARF, native) → `target`
//! (the process, its ELF, read-only memory, clocks). `console` (stderr
//! messages that never panic) is a leaf every layer may use.
pub mod aggregate;
pub mod budget;
pub mod cli;
pub mod console;
pub mod probes;
pub mod report;
pub mod runtime;
pub mod session;
pub mod symbols;
pub mod target;
pub mod threads;
