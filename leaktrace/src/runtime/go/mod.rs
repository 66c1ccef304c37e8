//! Everything leaktrace knows about Go's runtime.
pub mod allgs_locate;
pub mod attach;
pub mod binary;
pub mod events;
/// The goroutines at the moment the target exits (issue #13).
pub mod final_walk;
pub mod layout;
pub mod probe_points;
pub mod reader;
pub mod version;
pub mod wait_reason;
