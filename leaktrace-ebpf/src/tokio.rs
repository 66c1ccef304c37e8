//! tokio task lifecycle probes.
//!
//! One program serves every tokio attach point; the cookie says which event
//! it is and where the task pointer is expected (see
//! [`leaktrace_common::tokio::tokio_cookie`]). The vtable functions (`raw::poll`,
//! `raw::shutdown`) take the header as their first argument by the fn-pointer
//! ABI, but `bind_inner` and `Schedule::release` are ordinary functions whose
//! argument shape LTO may change (`&Task` promoted to the header itself), so
//! every candidate is validated: a header's +16 word must be a vtable the
//! loader put into [`TOKIO_VTABLES`].
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, uprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use leaktrace_common::{
    stats::slot,
    tokio::{
        SPAWN_STACK_BYTES, TokioEvent, TokioEventKind, TokioSpawnStack,
        task_header::{MAX_PLAUSIBLE_REFS, REF_SHIFT, VTABLE as HEADER_VTABLE},
    },
};

use crate::maps::{copy_user_stack, count_hit, emit, read_u64};

/// Spawn stacks ([`TokioSpawnStack`]), apart from the task events: they
/// are 200 times larger. Room for ~500 waiting; a spawn that finds it full
/// still sends its event, without a stack (counted in
/// [`TOKIO_STACKS_LOST`]).
#[map]
static TOKIO_SPAWN_STACKS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per CPU: spawns sent without their stack because the ring was full.
#[map]
static TOKIO_STACKS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Spawns seen per vtable (future type), to sample their stacks: every one
/// of the first [`STACKS_IN_FULL`], then one in [`STACK_SAMPLE`]. Copying
/// 8 KiB costs a spawn about as much as the probe itself; a future type
/// spawned thousands of times a second needs only samples to show its
/// sites. Counts race between CPUs: a sample more or less.
#[map]
static TOKIO_SPAWNS_SEEN: HashMap<u64, u64> = HashMap::with_max_entries(8192, 0);
const STACKS_IN_FULL: u64 = 256;
const STACK_SAMPLE: u64 = 16;

/// Run-time vtable address → `id_offset` of the tasks using it. Filled by
/// the loader from the binary's vtables (load bias applied).
#[map]
static TOKIO_VTABLES: HashMap<u64, u64> = HashMap::with_max_entries(8192, 0);

/// `(vtable, id)` if `p` points at a live-looking task header: its +16 word
/// is a known vtable, its state word holds a plausible reference count, and
/// its id is set. One 64-byte read covers the header and, for every
/// scheduler tokio has, the id (`id_offset` is 40 or 48): each user-memory
/// read is a helper call, and these probes run twice per task.
#[inline(always)]
fn header_at(p: u64) -> Option<(u64, u64)> {
    if p < 4096 {
        return None;
    }
    let w = unsafe { bpf_probe_read_user(p as *const [u64; 8]) }.ok()?;
    let vtable = w[(HEADER_VTABLE / 8) as usize];
    let id_offset = *unsafe { TOKIO_VTABLES.get(&vtable) }?;
    // A reference count no live task can have: stack slots and freed
    // memory that happen to hold a vtable address are rejected.
    let refs = w[0] >> REF_SHIFT;
    if refs == 0 || refs >= MAX_PLAUSIBLE_REFS {
        return None;
    }
    // Constant indices only: a computed one would need a bounds check the
    // verifier sees as a path to a panic.
    let id = match id_offset {
        32 => w[4],
        40 => w[5],
        48 => w[6],
        56 => w[7],
        _ => read_u64(p + id_offset),
    };
    (id != 0).then_some((vtable, id))
}

/// One candidate: `p` itself or, `deref`, the word it points at.
#[inline(always)]
fn try_shape(p: u64, deref: bool, tag: u8) -> Option<(u64, u64, u64, u8)> {
    let h = if deref { read_u64(p) } else { p };
    let (vt, id) = header_at(h)?;
    Some((h, vt, id, tag * 2 + deref as u8))
}

/// One register, in the order the cookie says (a reference argument is
/// most likely a pointer to the task pointer).
#[inline(always)]
fn try_arg(p: u64, tag: u8, deref_first: bool) -> Option<(u64, u64, u64, u8)> {
    try_shape(p, deref_first, tag).or_else(|| try_shape(p, !deref_first, tag))
}

/// The task the probe's arguments point at: the cookie's register first,
/// then the other two. Written without indexing: a bounds check would
/// leave a panic path the verifier refuses.
#[inline(always)]
fn find_task(
    rdi: u64,
    rsi: u64,
    rdx: u64,
    preferred: u8,
    deref_first: bool,
) -> Option<(u64, u64, u64, u8)> {
    let (a, b, c) = match preferred {
        0 => ((rdi, 0), (rsi, 1), (rdx, 2)),
        1 => ((rsi, 1), (rdi, 0), (rdx, 2)),
        _ => ((rdx, 2), (rdi, 0), (rsi, 1)),
    };
    try_arg(a.0, a.1, deref_first)
        .or_else(|| try_arg(b.0, b.1, deref_first))
        .or_else(|| try_arg(c.0, c.1, deref_first))
}

#[uprobe]
pub fn tokio_task(ctx: ProbeContext) -> u32 {
    let t0 = unsafe { bpf_ktime_get_ns() };
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    task_event(&ctx, cookie, t0);
    count_hit(slot::TOKIO_BASE + (cookie as u32 & 7), t0);
    0
}

/// The task probe's work; every way out of it is one counted hit.
#[inline(always)]
fn task_event(ctx: &ProbeContext, cookie: u64, t0: u64) {
    // Copied out first: the verifier refuses loads through a context
    // pointer the compiler has offset (as indexing the registers would).
    let regs = unsafe { &*ctx.regs };
    let (rdi, rsi, rdx) = unsafe {
        (
            core::ptr::read_volatile(&regs.rdi),
            core::ptr::read_volatile(&regs.rsi),
            core::ptr::read_volatile(&regs.rdx),
        )
    };
    let (ip, sp, bp) = unsafe {
        (
            core::ptr::read_volatile(&regs.rip),
            core::ptr::read_volatile(&regs.rsp),
            core::ptr::read_volatile(&regs.rbp),
        )
    };
    let kind = cookie as u8;
    let preferred = (cookie >> 8) as u8;
    let deref_first = (cookie >> 16) & 1 == 1;
    // No match is not an error: `release` also runs for tasks of schedulers
    // whose vtables we were not told about, and a probe must stay silent
    // and cheap on paths it does not understand.
    let Some((header, vtable, id, found_as)) = find_task(rdi, rsi, rdx, preferred, deref_first)
    else {
        return;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    if kind == TokioEventKind::Spawn as u8 && sample_stack(vtable) {
        // Before the event: once userspace reads the spawn, its stack is
        // already committed in the other ring.
        send_stack(header, id, tid, ip, sp, bp);
    }
    emit(TokioEvent {
        ts_ns: t0,
        header,
        id,
        vtable,
        tid,
        kind,
        found_as,
        _pad: [0; 2],
    });
}

/// Whether this spawn of `vtable`'s future type gets its stack copied.
#[inline(always)]
fn sample_stack(vtable: u64) -> bool {
    let seen = match TOKIO_SPAWNS_SEEN.get_ptr_mut(&vtable) {
        Some(n) => {
            // SAFETY: a map value; a racing CPU costs one sample at most.
            unsafe {
                *n += 1;
                *n
            }
        }
        None => {
            let _ = TOKIO_SPAWNS_SEEN.insert(&vtable, &1, 0);
            1
        }
    };
    seen <= STACKS_IN_FULL || seen % STACK_SAMPLE == 0
}

/// The spawning thread's registers and top of stack, for the spawn site.
#[inline(always)]
fn send_stack(header: u64, id: u64, tid: u32, ip: u64, sp: u64, bp: u64) {
    let Some(mut slot) = TOKIO_SPAWN_STACKS.reserve::<TokioSpawnStack>(0) else {
        if let Some(lost) = TOKIO_STACKS_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; uprobe programs do not nest on a CPU.
            unsafe { *lost += 1 };
        }
        return;
    };
    let rec = slot.as_mut_ptr();
    // SAFETY: `rec` is a reserved record of the right size.
    unsafe {
        (*rec).header = header;
        (*rec).id = id;
        (*rec).ip = ip;
        (*rec).sp = sp;
        (*rec).bp = bp;
        (*rec).tid = tid;
        (*rec).stack_len =
            copy_user_stack((&raw mut (*rec).stack).cast(), sp, SPAWN_STACK_BYTES as u32);
    }
    slot.submit(0);
}
