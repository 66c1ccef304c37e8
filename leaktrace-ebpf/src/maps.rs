//! Maps shared by every probe family.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use leaktrace_common::RING_BYTES;

/// All events, in the order the probes reserved them (so, for one goroutine,
/// spawn < park… < exit even across CPUs).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Records the probes could not reserve because the ring was full. Per CPU so
/// counting a loss never contends; userspace sums the CPUs.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count_lost() {
    if let Some(slot) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, and a uprobe program cannot be preempted by
        // another instance on the same CPU.
        unsafe { *slot += 1 };
    }
}
