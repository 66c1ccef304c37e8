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
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};
use aya_log_ebpf::warn;
use leaktrace_common::go::{GoConfig, GoEvent, GoEventKind, SpawnPoint};

use crate::maps::{emit, read_u8, read_u64};

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
    let regs = unsafe { &*ctx.regs };
    let cfg = config();
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if cookie == SpawnPoint::CasgstatusCall as u64 && regs.rbx as u32 != cfg.gstatus_dead {
        // The other casgstatus in newproc1 (_Gidle → _Gdead for a fresh g).
        return 0;
    }
    let g = regs.rax;
    if g == 0 {
        // Only if the probe point or the ABI assumption is wrong for this
        // binary: say so rather than drop spawns silently.
        warn!(&ctx, "go_spawn: no g in RAX at {:x}", regs.rip);
        return 0;
    }
    // newproc1 runs on g0; g0.m.curg is the goroutine executing `go`.
    let curg = if cfg.g_parent_goid == 0 || cfg.g_sched_bp != 0 {
        let m = read_u64(regs.r14 + cfg.g_m as u64);
        if m != 0 {
            read_u64(m + cfg.m_curg as u64)
        } else {
            0
        }
    } else {
        0
    };
    let parent_goid = if cfg.g_parent_goid != 0 {
        read_u64(g + cfg.g_parent_goid as u64)
    } else if curg != 0 {
        read_u64(curg + cfg.g_goid as u64)
    } else {
        0
    };
    let gopc = read_u64(g + cfg.g_gopc as u64);
    emit(GoEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        g,
        goid: 0,
        gopc,
        startpc: read_u64(g + cfg.g_startpc as u64),
        parent_goid,
        kind: GoEventKind::Spawn as u8,
        wait_reason: 0,
        _pad: [0; 6],
        via_pcs: creator_callers(&cfg, curg, gopc),
    });
    0
}

/// The return addresses of the two frames above the `go` statement's in the
/// creator's stack: who called the function that holds the `go` statement,
/// and who called that. A fixed number of reads, no loop.
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
    let lo = read_u64(curg + cfg.g_stack_lo as u64);
    let hi = read_u64(curg + cfg.g_stack_hi as u64);
    let within = |bp: u64| bp >= lo && bp < hi && hi - bp >= 16 && bp & 7 == 0;
    let frame = |bp: u64| -> [u64; 2] {
        // [bp] = the caller's frame pointer, [bp+8] = the return address.
        unsafe { bpf_probe_read_user(bp as *const [u64; 2]) }.unwrap_or([0, 0])
    };
    let mut bp = read_u64(curg + cfg.g_sched_bp as u64);
    if lo == 0 || !within(bp) {
        return out;
    }
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
        out[1] = read_u64(f[0] + 8);
    }
    out
}

#[uprobe]
pub fn go_park(ctx: ProbeContext) -> u32 {
    let g = unsafe { (*ctx.regs).rax };
    if g == 0 {
        warn!(&ctx, "go_park: no g in RAX");
        return 0;
    }
    let cfg = config();
    emit(GoEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        g,
        goid: read_u64(g + cfg.g_goid as u64),
        wait_reason: read_u8(g + cfg.g_waitreason as u64),
        kind: GoEventKind::Park as u8,
        ..GoEvent::default()
    });
    0
}

#[uprobe]
pub fn go_exit(ctx: ProbeContext) -> u32 {
    let g = unsafe { (*ctx.regs).rax };
    if g == 0 {
        warn!(&ctx, "go_exit: no g in RAX");
        return 0;
    }
    let cfg = config();
    emit(GoEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        g,
        goid: read_u64(g + cfg.g_goid as u64),
        kind: GoEventKind::Exit as u8,
        ..GoEvent::default()
    });
    0
}
