//! Types shared by the eBPF probes and the userspace tool, one module per
//! concern: [`go`] (goroutine lifecycle), [`tokio`] (task lifecycle),
//! [`threads`] (OS threads of the traced process), [`follow`] (a command's
//! descendants) and [`ring`] (the buffer task probes write to).
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
pub mod ring;
pub mod threads;
pub mod tokio;

#[cfg(feature = "user")]
mod user {
    use super::{follow, go, threads, tokio};
    // SAFETY: plain old data, `#[repr(C)]`, no pointers; every bit pattern is
    // a valid value (kinds are read back through `from_raw`).
    unsafe impl aya::Pod for go::GoEvent {}
    unsafe impl aya::Pod for go::GoConfig {}
    unsafe impl aya::Pod for tokio::TokioEvent {}
    unsafe impl aya::Pod for threads::ThreadEvent {}
    unsafe impl aya::Pod for threads::ThreadConfig {}
    unsafe impl aya::Pod for threads::ThreadNewStack {}
    unsafe impl aya::Pod for follow::FollowConfig {}
    unsafe impl aya::Pod for follow::ExecEvent {}
}
