//! The ring buffer every task probe writes to.

/// Ring buffer size in bytes (a power of two and a multiple of the page size).
pub const RING_BYTES: u32 = 8 << 20;
