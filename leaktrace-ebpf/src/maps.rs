//! Maps and helpers shared by every probe family.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use leaktrace_common::{
    ring::RING_BYTES,
    stats::{ProbeStat, slot},
};

/// All task events, in the order the probes reserved them (so, for one
/// task, spawn < park… < exit even across CPUs). One session traces one
/// runtime, so every record in it has that runtime's type.
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

/// Hits and in-program time per probe (see `leaktrace_common::stats`):
/// what the overhead budget estimates the target's cost from. Per CPU, so
/// counting never contends.
#[map]
pub static PROBE_STATS: PerCpuArray<ProbeStat> = PerCpuArray::with_max_entries(slot::COUNT, 0);

/// Hits of one probe on one CPU per timed one: the program's own time is
/// measured on one hit in this many and counted for all of them, saving a
/// `bpf_ktime_get_ns` on the others (the budget and the calibration need
/// a mean over thousands of hits, not each one).
const TIME_EVERY: u64 = 16;

/// Count one hit of probe `slot` whose program started at `t0`
/// (`bpf_ktime_get_ns`). Returns `t0`, for the record's timestamp.
#[inline(always)]
pub fn count_hit(slot: u32, t0: u64) -> u64 {
    if let Some(stat) = PROBE_STATS.get_ptr_mut(slot & (slot::COUNT - 1)) {
        // SAFETY: per-CPU slot, and a uprobe program cannot be preempted by
        // another instance on the same CPU.
        unsafe {
            (*stat).hits += 1;
            if (*stat).hits % TIME_EVERY == 0 {
                let now = bpf_ktime_get_ns();
                (*stat).ns += now.saturating_sub(t0) * TIME_EVERY;
            }
        }
    }
    t0
}

/// A user-memory word, 0 when unreadable (the callers treat 0 as "none").
#[inline(always)]
pub fn read_u64(addr: u64) -> u64 {
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// Copy `event` into [`EVENTS`], or count it lost.
#[inline(always)]
pub fn emit<T: 'static>(event: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut slot) => {
            slot.write(event);
            slot.submit(wakeup_flags::<T>());
        }
        None => count_lost(),
    }
}

/// Waking the reader on every record costs the traced thread an IRQ-work
/// interrupt per event (measured: most of leaktrace's overhead per goroutine).
/// Wake it only when the data waiting crosses a multiple of 1/16 of the ring;
/// the reader's 50 ms poll timeout collects anything below that. Only the
/// crossing record wakes it, so a reader that fell behind costs 16 wake-ups
/// per ring rather than one per record (measured: 6.5 → 3.8 µs per goroutine
/// with the reader stopped). A crossing missed because another CPU reserved
/// in between is covered by the next one or by the poll.
#[inline(always)]
fn wakeup_flags<T>() -> u64 {
    // Our own record (8-byte header + T, 8-aligned) is already counted.
    let record: u64 = ((size_of::<T>() as u64 + 8) + 7) & !7;
    let step = u64::from(RING_BYTES / 16);
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if waiting >= step && waiting / step != waiting.saturating_sub(record) / step {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Copy the top of a user stack into `dst`: as much of `max` bytes as the
/// mapping holds (a read past its end fails whole, so try smaller). The
/// bytes copied, 0 if none.
///
/// # Safety
/// `dst` must be valid for `max` bytes.
#[inline(always)]
pub unsafe fn copy_user_stack(dst: *mut u8, sp: u64, max: u32) -> u32 {
    let src = sp as *const core::ffi::c_void;
    let mut len = max;
    while len >= 512 {
        if unsafe { generated::bpf_probe_read_user(dst.cast(), len, src) } == 0 {
            return len;
        }
        len /= 2;
    }
    0
}
