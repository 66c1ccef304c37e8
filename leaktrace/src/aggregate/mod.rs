//! From events and task views to groups with trends and verdicts. Knows
//! nothing about Go or tokio beyond the seam's types.
pub mod groups;
pub mod live;
pub mod threads;
pub mod trend;
pub mod verdict;
