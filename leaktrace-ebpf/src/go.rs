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
    g_startpc: 0,
    g_waitreason: 0,
    g_parent_goid: 0,
    g_m: 0,
    m_curg: 0,
    gstatus_dead: 6,
    g_stack_lo: 0,
    g_stack_hi: 0,
    g_sched_bp: 0,
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
    let walk = cfg.g_sched_bp != 0
        && (unsafe { GO_PLAIN_SITES.get(&gopc) }.is_none()
            || unsafe { bpf_get_prandom_u32() } % PLAIN_SAMPLE == 0);
    // newproc1 runs on g0; g0.m.curg is the goroutine executing `go`.
    let curg = if walk {
        let m = read_u64(regs.r14 + cfg.g_m as u64);
        if m != 0 {
            read_u64(m + cfg.m_curg as u64)
        } else {
            0
        }
    } else {
        0
    };
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
            creator_callers(&cfg, curg, gopc)
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

/// Words of the creator's `runtime.g` read in one go: its stack bounds and
/// `sched.bp` all lie below this (`sched.bp` is at 104 or 96).
const G_HEAD_WORDS: usize = 16;
/// Words of the creator's stack read in one go from its saved frame
/// pointer: systemstack's and newproc's frames, and usually the frame of
/// the function holding `go`; frames beyond are read one by one.
const CHUNK_WORDS: usize = 32;

/// Room for those two reads: too big for the 512-byte BPF stack.
#[repr(C)]
pub struct SpawnScratch {
    head: [u64; G_HEAD_WORDS],
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
/// and who called that. A fixed number of reads (about five: m, curg, the
/// g's head, a chunk of stack, rarely one frame beyond it), no loop;
/// measured ≈ 0.7 µs per spawn on the churn benchmark (≈ 3 µs traced
/// without it), hence [`GO_PLAIN_SITES`].
///
/// `newproc` switched to g0 through `systemstack`, which saved the creator's
/// frame pointer in `curg.sched.bp` (`gosave_systemstack_switch`). That is
/// newproc's own frame on Go < 1.21, or systemstack's (an assembler-made
/// frame) from 1.21; the frame whose return address is `gopc` (newproc's:
/// gopc *is* newproc's return address) is therefore the first or the second
/// one, and finding it there is what validates the chain. Every frame
/// pointer must lie in the creator's stack `[stack.lo, stack.hi)` and above
/// the previous one. Anything else (a `go` run on the system stack, a
/// stale `sched.bp`) gives zeros, never a guess.
#[inline(always)]
fn creator_callers(cfg: &GoConfig, curg: u64, gopc: u64) -> [u64; 2] {
    let mut out = [0u64; 2];
    if cfg.g_sched_bp == 0 || curg == 0 || gopc == 0 {
        return out;
    }
    let Some(scratch) = GO_SCRATCH.get_ptr_mut(0) else {
        return out;
    };
    // SAFETY: this CPU's slot; a uprobe program is not preempted by another
    // instance on the same CPU.
    let scratch = unsafe { &mut *scratch };
    if !read_into(&mut scratch.head, curg) {
        return out;
    }
    let head = &scratch.head;
    // Power-of-two sizes: the verifier follows a masked index.
    let at = |off: u32| head[(off as usize / 8) & (G_HEAD_WORDS - 1)];
    let (lo, hi, mut bp) = (at(cfg.g_stack_lo), at(cfg.g_stack_hi), at(cfg.g_sched_bp));
    let chunk_bytes = (CHUNK_WORDS * 8) as u64;
    let within = |bp: u64| bp >= lo && bp < hi && hi - bp >= 16 && bp & 7 == 0;
    if lo == 0 || hi < lo || hi - lo < chunk_bytes || !within(bp) {
        return out;
    }
    // The chunk starts at bp, or ends at the top of the stack.
    let base = if hi - bp >= chunk_bytes {
        bp
    } else {
        hi - chunk_bytes
    };
    if !read_into(&mut scratch.chunk, base) {
        return out;
    }
    let chunk = &scratch.chunk;
    // [bp] = the caller's frame pointer, [bp+8] = the return address.
    let frame = |bp: u64| -> [u64; 2] {
        let i = (bp.wrapping_sub(base) / 8) as usize;
        // `i + 2`, not `+ 1`: the verifier bounds the byte offset, not
        // the word index, and needs one word of slack to see the read fit.
        if bp >= base && i + 2 < CHUNK_WORDS {
            [
                chunk[i & (CHUNK_WORDS - 1)],
                chunk[(i + 1) & (CHUNK_WORDS - 1)],
            ]
        } else {
            unsafe { bpf_probe_read_user(bp as *const [u64; 2]) }.unwrap_or([0, 0])
        }
    };
    let mut f = frame(bp);
    if f[1] != gopc {
        // Go ≥ 1.21: systemstack's frame first.
        if f[0] <= bp || !within(f[0]) {
            return out;
        }
        bp = f[0];
        f = frame(bp);
        if f[1] != gopc {
            return out;
        }
    }
    // f is newproc's frame; f[0] the frame of the function holding `go`.
    if f[0] <= bp || !within(f[0]) {
        return out;
    }
    bp = f[0];
    f = frame(bp);
    out[0] = f[1];
    if out[0] != 0 && f[0] > bp && within(f[0]) {
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
