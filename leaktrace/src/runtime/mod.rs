//! The seam between runtime-specific knowledge and the rest of leaktrace.
pub mod go;
