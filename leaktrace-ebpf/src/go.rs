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
//! from `gp.sched`, and only for goroutines that are still parked.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns},
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
    let parent_goid = if cfg.g_parent_goid != 0 {
        read_u64(g + cfg.g_parent_goid as u64)
    } else {
        // newproc1 runs on g0; g0.m.curg is the goroutine executing `go`.
        let m = read_u64(regs.r14 + cfg.g_m as u64);
        let curg = if m != 0 {
            read_u64(m + cfg.m_curg as u64)
        } else {
            0
        };
        if curg != 0 {
            read_u64(curg + cfg.g_goid as u64)
        } else {
            0
        }
    };
    emit(GoEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        g,
        goid: 0,
        gopc: read_u64(g + cfg.g_gopc as u64),
        startpc: read_u64(g + cfg.g_startpc as u64),
        parent_goid,
        kind: GoEventKind::Spawn as u8,
        wait_reason: 0,
        _pad: [0; 6],
    });
    0
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
