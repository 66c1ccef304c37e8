//! Types shared by the eBPF probes and the userspace tool, one module per
//! concern: [`go`] (goroutine lifecycle), [`tokio`] (task lifecycle),
//! [`threads`] (OS threads of the traced process), [`follow`] (a command's
//! descendants), [`ring`] (the buffer task probes write to) and [`stats`]
//! (per-probe hit counters for the overhead budget).
//!
//! Everything here is `#[repr(C)]` and plain old data: the probes write these
//! bytes into a ring buffer and userspace reads them back, so both sides must
//! agree on the layout bit for bit. Each record's size is asserted at compile
//! time; a test round-trips every record through userspace's decoders.
//! Field offsets of the traced runtime are never compiled in; they arrive at
//! load time in [`go::GoConfig`] and the maps.
//!
//! Every event kind follows one style: a `#[repr]` enum written into the
//! record's `kind` field as its integer, read back with `from_raw`.
#![no_std]

pub mod follow;
pub mod go;
/// The exit-time walk of `runtime.allgs`: its config and records.
pub mod go_final;
pub mod ring;
pub mod stats;
pub mod threads;
pub mod tokio;

#[cfg(feature = "user")]
mod user {
    use super::{follow, go, stats, threads, tokio};
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for stats::ProbeStat {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for go::GoEvent {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for go::GoConfig {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for tokio::TokioEvent {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for tokio::TokioSpawnStack {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for threads::ThreadEvent {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for threads::ThreadConfig {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for threads::ThreadNewStack {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for follow::FollowConfig {}
    // SAFETY: `#[repr(C)]` plain old data (asserted sizes, no pointers).
    unsafe impl aya::Pod for follow::ExecEvent {}
}
