//! What a report says (the JSON contract), how it is built from task views,
//! and how it is shown.
pub mod agent_metrics;
pub mod build;
pub mod folded;
pub mod json;
pub mod labels;
pub mod metrics;
pub mod model;
pub mod output;
pub mod pprof;
pub mod text;
pub mod tui;
