//! From task views to groups with trends and verdicts. Knows nothing about
//! Go or tokio beyond the seam's types.
pub mod cause;
pub mod channels;
pub mod deadlocks;
pub mod groups;
pub mod trend;
pub mod verdict;
