//! Go goroutine lifecycle probes.
//!
//! All three hooks see the goroutine's `runtime.g` in RAX (Go's register
//! ABI, first argument / result), and run on the system stack (R14 = g0):
//! - spawn: a `CALL runtime.casgstatus(newg, _Gdead, _Grunnable)` inside
//!   `runtime.newproc1`, or failing that each `RET` of newproc1;
//! - park: `runtime.park_m(gp)`, reached through `mcall` for every gopark;
//! - exit: `runtime.goexit0(gp)`, reached through `mcall` from goexit1.
//!
//! The probes only copy a few words; stacks are unwound later in userspace
//! from `gp.sched`, and only for goroutines that are still parked. The one
//! exception is the creator's callers at spawn (see [`creator_callers`]):
//! that stack is gone once the `go` statement's function returns.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_attach_cookie, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user,
        generated,
    },
    macros::{map, uprobe},
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use aya_log_ebpf::warn;
use leaktrace_common::{
    go::{GoConfig, GoEvent, GoEventKind, SpawnPoint},
    stats::slot,
};

use crate::maps::{count_hit, emit, read_u64};

/// Set by the loader before the program is loaded.
#[unsafe(no_mangle)]
static GO_CONFIG: GoConfig = GoConfig {
    g_goid: 0,
    g_gopc: 0,
    gstatus_dead: 6,
    walk_creators: 0,
};

#[inline(always)]
fn config() -> GoConfig {
    // Volatile: otherwise the compiler folds the zero initialiser into the code.
    unsafe { core::ptr::read_volatile(&GO_CONFIG) }
}

#[uprobe]
pub fn go_spawn(ctx: ProbeContext) -> u32 {
    let t0 = unsafe { bpf_ktime_get_ns() };
    spawn(&ctx, t0);
    count_hit(slot::GO_SPAWN, t0);
    0
}

/// The spawn probe's work; every way out of it is one counted hit.
#[inline(always)]
fn spawn(ctx: &ProbeContext, t0: u64) {
    let regs = unsafe { &*ctx.regs };
    let cfg = config();
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if cookie == SpawnPoint::CasgstatusCall as u64 && regs.rbx as u32 != cfg.gstatus_dead {
        // The other casgstatus in newproc1 (_Gidle → _Gdead for a fresh g).
        return;
    }
    let g = regs.rax;
    if g == 0 {
        // Only if the probe point or the ABI assumption is wrong for this
        // binary: say so rather than drop spawns silently.
        warn!(ctx, "go_spawn: no g in RAX at {:x}", regs.rip);
        return;
    }
    // Every user-memory read is a helper call on each of possibly a million
    // spawns a second: only what userspace uses is read. The start pc and
    // the parent are in the g, which the refresh reads anyway; `startpc`
    // and `parent_goid` stay 0 here.
    let gopc = read_u64(g + cfg.g_gopc as u64);
    let walk = cfg.walk_creators != 0
        && (unsafe { GO_PLAIN_SITES.get(&gopc) }.is_none()
            || unsafe { bpf_get_prandom_u32() } % PLAIN_SAMPLE == 0);
    emit(GoEvent {
        ts_ns: t0,
        g,
        goid: 0,
        gopc,
        startpc: 0,
        parent_goid: 0,
        kind: GoEventKind::Spawn as u8,
        wait_reason: 0,
        _pad: [0; 6],
        via_pcs: if walk {
            creator_callers(regs.rbp, gopc)
        } else {
            [0; 2]
        },
    });
}

/// `go` statements (gopc) that userspace saw start many goroutines, all
/// from one caller: the spawn probe skips their walk (a hash lookup instead
/// of about five reads), except for one spawn in [`PLAIN_SAMPLE`], which is
/// how a second caller showing up later is still noticed (userspace then
/// removes the entry).
#[map]
static GO_PLAIN_SITES: HashMap<u64, u64> = HashMap::with_max_entries(8192, 0);

const PLAIN_SAMPLE: u32 = 64;

/// Words of g0's stack read in one go at newproc1's frame pointer: its
/// saved frame pointer and return address, and newproc.func1's frame with
/// the creator's frame pointer at its base (0x30 bytes above in go1.19 to
/// 1.27). No more: newproc.func1 runs just below `g0.sched.sp`, and a
/// g0 stack's top can be the end of its mapping (go_via saw 4 spawns in 60
/// lose their walk on go1.26 with 128 bytes).
const G0_WORDS: usize = 8;
/// Words of the creator's stack read in one go from its frame pointer:
/// systemstack's and newproc's frames, and usually the frame of the
/// function holding `go`; frames beyond are read one by one.
const CHUNK_WORDS: usize = 32;
/// The farthest one frame pointer may be above the one before it in the
/// creator's stack (a frame larger than this is not followed).
const MAX_FRAME: u64 = 1 << 20;

/// Room for those two reads: too big for the 512-byte BPF stack.
#[repr(C)]
pub struct SpawnScratch {
    g0: [u64; G0_WORDS],
    chunk: [u64; CHUNK_WORDS],
}

#[map]
static GO_SCRATCH: PerCpuArray<SpawnScratch> = PerCpuArray::with_max_entries(1, 0);

/// Fill `dst` from user memory at `src`; false if unreadable.
#[inline(always)]
fn read_into<T>(dst: *mut T, src: u64) -> bool {
    let ret = unsafe {
        generated::bpf_probe_read_user(dst.cast(), size_of::<T>() as u32, src as *const _)
    };
    ret == 0
}

/// The return addresses of the two frames above the `go` statement's in the
/// creator's stack: who called the function that holds the `go` statement,
/// and who called that. Two reads of a chunk each (rarely one frame more),
/// no loop. Each user-memory read costs ≈ 0.15 µs on these machines
/// (bench/ANALYSIS.md §3), and this walk runs on every spawn of a spawn
/// helper's `go` statement, hence [`GO_PLAIN_SITES`] for the others.
///
/// The chain starts at newproc1's own frame pointer (`rbp`), on g0's
/// stack: newproc1 was called by newproc.func1, which `systemstack` called
/// after switching stacks without touching BP, so newproc.func1's saved
/// frame pointer is the creator's: newproc's frame on Go < 1.21, or
/// systemstack's (an assembler-made frame) from 1.21 (the value
/// `gosave_systemstack_switch` also stores in `curg.sched.bp`, which the
/// walk read before, at the price of reading `g0.m`, `m.curg` and the g).
/// The frame whose return address is `gopc` (newproc's: gopc *is*
/// newproc's return address) is therefore the first or the second one, and
/// finding it there is what validates the chain; above it every frame
/// pointer must be 8-aligned, above the one before and at most
/// [`MAX_FRAME`] from it. Anything else (a `go` run on the system stack, a
/// function without a frame pointer) gives zeros, never a guess.
#[inline(always)]
fn creator_callers(rbp: u64, gopc: u64) -> [u64; 2] {
    let mut out = [0u64; 2];
    if rbp == 0 || gopc == 0 || rbp & 7 != 0 {
        return out;
    }
    let Some(scratch) = GO_SCRATCH.get_ptr_mut(0) else {
        return out;
    };
    // SAFETY: this CPU's slot; a uprobe program is not preempted by another
    // instance on the same CPU.
    let scratch = unsafe { &mut *scratch };
    let whole = read_into(&mut scratch.g0, rbp);
    // [rbp] = newproc.func1's frame pointer; at it, the creator's.
    let func1 = if whole { scratch.g0[0] } else { read_u64(rbp) };
    if func1 <= rbp || func1 & 7 != 0 || func1 - rbp > MAX_FRAME {
        return out;
    }
    let i = ((func1 - rbp) / 8) as usize;
    let mut bp = if whole && i < G0_WORDS {
        scratch.g0[i & (G0_WORDS - 1)]
    } else {
        read_u64(func1)
    };
    if bp == 0 || bp & 7 != 0 {
        return out;
    }
    let base = bp;
    if !read_into(&mut scratch.chunk, base) {
        // The chunk ran past the stack's mapping: frame by frame.
        scratch.chunk = [0; CHUNK_WORDS];
    }
    let chunk = &scratch.chunk;
    // [bp] = the caller's frame pointer, [bp+8] = the return address.
    let frame = |bp: u64| -> [u64; 2] {
        let i = (bp.wrapping_sub(base) / 8) as usize;
        // `i + 2`, not `+ 1`: the verifier bounds the byte offset, not
        // the word index, and needs one word of slack to see the read fit.
        if bp >= base && i + 2 < CHUNK_WORDS && chunk[(i + 1) & (CHUNK_WORDS - 1)] != 0 {
            [
                chunk[i & (CHUNK_WORDS - 1)],
                chunk[(i + 1) & (CHUNK_WORDS - 1)],
            ]
        } else {
            unsafe { bpf_probe_read_user(bp as *const [u64; 2]) }.unwrap_or([0, 0])
        }
    };
    let up = |from: u64, to: u64| to > from && to & 7 == 0 && to - from <= MAX_FRAME;
    let mut f = frame(bp);
    if f[1] != gopc {
        // Go ≥ 1.21: systemstack's frame first.
        if !up(bp, f[0]) {
            return out;
        }
        bp = f[0];
        f = frame(bp);
        if f[1] != gopc {
            return out;
        }
    }
    // f is newproc's frame; f[0] the frame of the function holding `go`.
    if !up(bp, f[0]) {
        return out;
    }
    bp = f[0];
    f = frame(bp);
    out[0] = f[1];
    if out[0] != 0 && up(bp, f[0]) {
        out[1] = frame(f[0])[1];
    }
    out
}

#[uprobe]
pub fn go_park(ctx: ProbeContext) -> u32 {
    let t0 = unsafe { bpf_ktime_get_ns() };
    let g = unsafe { (*ctx.regs).rax };
    if g == 0 {
        warn!(&ctx, "go_park: no g in RAX");
        return 0;
    }
    let cfg = config();
    emit(GoEvent {
        ts_ns: t0,
        g,
        // The goid tells a reused g apart; the wait reason is read from
        // memory at each refresh, so the probe does not read it.
        goid: read_u64(g + cfg.g_goid as u64),
        kind: GoEventKind::Park as u8,
        ..GoEvent::default()
    });
    count_hit(slot::GO_PARK, t0);
    0
}

#[uprobe]
pub fn go_exit(ctx: ProbeContext) -> u32 {
    let t0 = unsafe { bpf_ktime_get_ns() };
    let g = unsafe { (*ctx.regs).rax };
    if g == 0 {
        warn!(&ctx, "go_exit: no g in RAX");
        return 0;
    }
    // The g alone names the row to drop: no read.
    emit(GoEvent {
        ts_ns: t0,
        g,
        kind: GoEventKind::Exit as u8,
        ..GoEvent::default()
    });
    count_hit(slot::GO_EXIT, t0);
    0
}

/// Calibration (`leaktrace::probes::calibrate`): attached to a function of
/// leaktrace's own process, it does nothing but count, so timing a burst of
/// calls with and without it measures what one uprobe hit costs the traced
/// thread on this machine (the trap and the return to user space).
#[uprobe]
pub fn calibrate_hit(_ctx: ProbeContext) -> u32 {
    let t0 = unsafe { bpf_ktime_get_ns() };
    count_hit(slot::CALIBRATE, t0);
    0
}
