//! Tracing tokio tasks in an unmodified Rust binary, behind [`TokioRuntime`].
//!
//! Probes follow spawns, completions and cancellations (and, detailed,
//! polls and wakes); heap scans find what they cannot see. The pieces:
//! - [`binary`]: is it Rust + tokio, which rustc and tokio, refuse tokio < 1.23;
//! - [`vtables`]: every task vtable, named by its future type (and how);
//! - [`state`]: the task state word (running/scheduled/idle/complete, lost waker);
//! - [`code_points`]: spawn and completion points of stripped binaries, by code shape;
//! - [`heap_scan`]: every live task of a running process, read-only;
//! - [`spawn_sites`]: where the program spawned each task (the spawn probe's stack).
//!
//! Facts and measurements behind them: `shared/research/rust-tokio.md`.
pub mod await_points;
pub mod binary;
pub mod code_points;
pub mod heap_scan;
pub mod panic_locations;
pub mod probe_points;
mod seam;
pub mod spawn_sites;
pub mod state;
pub mod tracer;
pub mod vtables;

pub use seam::{TOKIO, TokioRuntime};
