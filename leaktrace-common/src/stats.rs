//! Per-probe hit counters, kept in-kernel so the overhead budget
//! (`leaktrace::budget`) knows how often each probe fires and how long its
//! program ran, without one ring record per hit.

/// One probe's totals on one CPU (the map is per CPU; userspace sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStat {
    /// Times the probe's program ran (each one a uprobe trap the target paid).
    pub hits: u64,
    /// Nanoseconds spent inside the program, summed (the trap itself not
    /// included: that is what calibration measures); measured on one hit
    /// in 16 per CPU and counted 16 times.
    pub ns: u64,
}
const _: () = assert!(size_of::<ProbeStat>() == 16);

/// Slots of the `PROBE_STATS` map.
pub mod slot {
    pub const GO_SPAWN: u32 = 0;
    pub const GO_PARK: u32 = 1;
    pub const GO_EXIT: u32 = 2;
    /// tokio: this plus the event kind (1..=5), see `TokioEventKind`.
    pub const TOKIO_BASE: u32 = 4;
    /// The calibration probe on leaktrace's own process.
    pub const CALIBRATE: u32 = 15;
    pub const COUNT: u32 = 16;
}
