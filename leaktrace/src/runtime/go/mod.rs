//! Everything leaktrace knows about Go's runtime.
pub mod allgs_locate;
pub mod binary;
pub mod layout;
pub mod probe_points;
pub mod version;
pub mod wait_reason;
