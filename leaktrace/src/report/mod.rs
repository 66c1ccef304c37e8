//! What a report says (the JSON contract) and how it is shown.
pub mod json;
pub mod model;
pub mod text;
