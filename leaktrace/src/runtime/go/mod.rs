//! Everything leaktrace knows about Go's runtime: the binary (version,
//! pclntab symbols, `runtime.g` layout, wait reasons), where the probes go,
//! the live goroutine table and the memory reader, behind [`GoRuntime`].
pub mod allgs_locate;
pub mod allgs_read;
pub mod attach;
pub mod binary;
pub mod chan_layout;
pub mod channels;
pub mod events;
/// The goroutines at the moment the target exits (issue #13).
pub mod final_walk;
pub mod heap;
pub mod layout;
pub mod live;
pub mod own_code;
pub mod pclntab;
pub mod probe_points;
/// Goroutines nothing can wake, found by walking the heap (issue #13).
pub mod reachability;
pub mod reader;
pub mod stranded;
mod tracer;
pub mod version;
pub mod wait_reason;

pub use tracer::{GO, GoRuntime};
