//! Tracing tokio tasks in an unmodified Rust binary.
//!
//! Today tasks are found by heap scans ([`tracer`]); probes for spawn and
//! completion are still to come. The pieces, each usable alone:
//! - [`binary`]: is it Rust + tokio, which rustc and tokio, refuse tokio < 1.23;
//! - [`vtables`]: every task vtable, named by its future type (and how);
//! - [`state`]: the task state word (running/scheduled/idle/complete, lost waker);
//! - [`heap_scan`]: every live task of a running process, read-only.
//!
//! Facts and measurements behind them: `shared/research/rust-tokio.md`.
pub mod await_points;
pub mod binary;
pub mod heap_scan;
pub mod probe_points;
pub mod state;
pub mod tracer;
pub mod vtables;

#[cfg(test)]
mod fixtures;
