//! The goroutines at the moment a Go program exits (issue #13).
//!
//! One sleepable uprobe (`go_final`; `go_final_nofault`, the same walk with
//! `bpf_probe_read_user` in a plain uprobe, is the fallback for kernels
//! that refuse sleepable uprobes), attached (pid-scoped) at the entry of
//! `runtime.exit` (the `exit_group` wrapper every Go exit ends in: return
//! from `main.main`, `os.Exit`, fatal panics and throws) and of
//! `runtime.dieFromSignal` (fatal signals, `GOTRACEBACK=crash`). It runs in
//! the exiting thread before the exit system call, so the process's memory
//! is intact, and walks `runtime.allgs` with `bpf_loop`: per `g`, one
//! `bpf_copy_from_user` of the struct, the fields leaktrace reports, and a
//! bounded frame-pointer walk of its stack. Sleepable, so the copies may
//! fault pages in rather than fail.
//!
//! It only reads: nothing in the process is changed, and the exit goes on
//! when the program returns (after the walk: that is the delay it adds).
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{
        bpf_copy_from_user, bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_loop, bpf_probe_read_user,
    },
    macros::{map, uprobe},
    maps::{Array, RingBuf},
    programs::ProbeContext,
};
use leaktrace_common::go_final::{
    FINAL_G_BYTES, FINAL_G_HEADER_BYTES, FINAL_MAX_FRAMES, FinalConfig, FinalEnd, FinalG,
    final_flags, final_kind, final_point,
};

/// Set by userspace before attach.
#[map]
static FINAL_CONFIG: Array<FinalConfig> = Array::with_max_entries(1, 0);

/// The walk's end record, also when the ring had no room for it; `walks`
/// doubles as the guard that lets only the first exiting thread walk.
#[map]
static FINAL_STATE: Array<FinalEnd> = Array::with_max_entries(1, 0);

/// One record per live goroutine, then the end. The loader sizes it
/// (`map_max_entries`); this is the default.
#[map]
static FINAL_EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// The `g` copy and the record being built. Not per CPU: a sleepable
/// program can be preempted, and another thread on the same CPU could then
/// run it. Slot = walking thread's tid % SLOTS, and only one walk runs
/// unless threads race into exit within a few instructions of each other.
const SLOTS: u32 = 4;
const G_WORDS: usize = FINAL_G_BYTES / 8;
/// The top of a goroutine's stack copied in one go (from its saved SP
/// up): the frame walk reads frames from there, and only frames above it
/// one by one. A parked goroutine's frames mostly lie within a few hundred
/// bytes; a helper call per frame cost ~90 ns (measured: this copy and the
/// batched `allgs` reads took 100,000 goroutines from 85 to 55 ms).
const STACK_WORDS: usize = 256;

/// `Scratch::cursor` words.
const CUR_FP: usize = 0;
const CUR_N: usize = 1;

/// `allgs` entries copied at a time.
const GPTR_BATCH: usize = 64;

#[repr(C)]
pub struct Scratch {
    gptrs: [u64; GPTR_BATCH],
    g: [u64; G_WORDS],
    stack: [u64; STACK_WORDS],
    /// The frame walk's cursor: the frame to read next (0 once the chain
    /// ended) and the frames stored so far.
    cursor: [u64; 2],
    /// The walk's counts. In the map, not in [`Walk`] on the stack: there
    /// the verifier tracks their exact values, every iteration of the
    /// bpf_loop is a new state to it, and loading took about a second
    /// (50 ms this way). The cursor is kept here for the same reason.
    counts: Counts,
    rec: FinalG,
}

#[map]
static FINAL_SCRATCH: Array<Scratch> = Array::with_max_entries(SLOTS, 0);

/// `g.atomicstatus` values (runtime2.go, every version 1.17–1.27).
const G_IDLE: u32 = 0;
const G_RUNNING: u32 = 2;
const G_SYSCALL: u32 = 3;
const G_DEAD: u32 = 6;
const G_DEADEXTRA: u32 = 11;
const G_SCAN: u32 = 0x1000;

/// How the exiting thread's own goroutine is unwound.
const CUR_NONE: u32 = 0;
/// From the probe's registers: [rsp] is the return address into the exit
/// function's caller, rbp that caller's frame (neither `runtime.exit`
/// nor `dieFromSignal` has pushed anything yet at entry).
const CUR_REGS: u32 = 1;
/// From `curg.sched`, which `systemstack` saved (exit on the system stack,
/// as `fatalpanic` / `fatalthrow` do).
const CUR_SCHED: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Counts {
    live: u64,
    emitted: u64,
    dropped: u64,
    unreadable: u64,
    /// Time spent waiting for room in the ring.
    waited_ns: u64,
}

/// State of one walk, on the program's stack (bpf_loop's context must be).
#[repr(C)]
struct Walk {
    base: u64,
    /// Entries to visit.
    count: u64,
    current_g: u64,
    cur_pc: u64,
    cur_bp: u64,
    /// The exiting goroutine's SP: where its frames start.
    cur_sp: u64,
    cur_mode: u32,
    walker: u32,
    slot: u32,
    _pad: u32,
}

/// How the target's memory is read: the sleepable program may fault pages
/// in; the fallback (kernels without sleepable uprobes) cannot, and
/// reports what is not resident as unreadable.
trait ReadUser {
    /// 0 on success, like the helpers.
    unsafe fn read(dst: *mut c_void, len: u32, src: *const c_void) -> i64;
}

/// `bpf_copy_from_user`: only in sleepable programs.
struct Faulting;
impl ReadUser for Faulting {
    #[inline(always)]
    unsafe fn read(dst: *mut c_void, len: u32, src: *const c_void) -> i64 {
        unsafe { bpf_copy_from_user(dst, len, src) }
    }
}

/// `bpf_probe_read_user`: anywhere; fails on a page that is not resident.
struct NoFault;
impl ReadUser for NoFault {
    #[inline(always)]
    unsafe fn read(dst: *mut c_void, len: u32, src: *const c_void) -> i64 {
        unsafe { bpf_probe_read_user(dst, len, src) }
    }
}

#[inline(always)]
fn copy_u64<R: ReadUser>(addr: u64) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: 8 bytes into a local; the helper checks the user address.
    let r = unsafe { R::read((&raw mut v).cast::<c_void>(), 8, addr as *const c_void) };
    (r == 0).then_some(v)
}

/// A field of the copied g at a byte offset from the config. The masks
/// keep every index inside the buffer for the verifier; userspace checks
/// that real offsets are below `g_size`.
#[inline(always)]
fn g_u64(g: &[u64; G_WORDS], off: u32) -> u64 {
    g[((off >> 3) & (G_WORDS as u32 - 1)) as usize]
}

#[inline(always)]
fn g_u32(g: &[u64; G_WORDS], off: u32) -> u32 {
    (g_u64(g, off) >> ((off & 4) * 8)) as u32
}

#[inline(always)]
fn g_u8(g: &[u64; G_WORDS], off: u32) -> u8 {
    (g_u64(g, off) >> ((off & 7) * 8)) as u8
}

#[uprobe(sleepable)]
pub fn go_final(ctx: ProbeContext) -> u32 {
    let _ = try_walk::<Faulting>(&ctx);
    0
}

/// The same walk for kernels that reject sleepable uprobes (loaded only
/// when `go_final` is refused): not-resident memory reads as unreadable.
#[uprobe]
pub fn go_final_nofault(ctx: ProbeContext) -> u32 {
    let _ = try_walk::<NoFault>(&ctx);
    0
}

#[inline(always)]
fn try_walk<R: ReadUser>(ctx: &ProbeContext) -> Option<()> {
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let cfg = FINAL_CONFIG.get(0)?;
    let state = FINAL_STATE.get_ptr_mut(0)?;
    // SAFETY: the map value lives as long as the map.
    let state = unsafe { &mut *state };
    state.walks += 1;
    if state.walks > 1 {
        // Another thread is walking, or has walked: this process is
        // exiting already, and that walk is the snapshot.
        return None;
    }
    let regs = unsafe { &*ctx.regs };
    let point = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let point_va = match point {
        final_point::EXIT => cfg.point_va[1],
        final_point::DIE_FROM_SIGNAL => cfg.point_va[2],
        _ => return None,
    };
    let bias = regs.rip.wrapping_sub(point_va);
    let arg = if point == final_point::EXIT {
        // ABI0 assembly: `code+0(FP)` is just above the return address.
        copy_u64::<R>(regs.rsp + 8).unwrap_or(0) as u32
    } else {
        // ABIInternal: the first integer argument is in RAX.
        regs.rax as u32
    };
    let walker = unsafe { bpf_get_current_pid_tgid() } as u32;

    // The exiting thread's goroutine: R14 is the current g (Go keeps it
    // there in ABIInternal code, and ABI0 callees do not clobber it); on
    // the system stack that is g0, and the goroutine is g0.m.curg.
    let r14 = regs.r14;
    let m = copy_u64::<R>(r14 + u64::from(cfg.g_m)).unwrap_or(0);
    let curg = if m != 0 {
        copy_u64::<R>(m + u64::from(cfg.m_curg)).unwrap_or(0)
    } else {
        0
    };
    let (current_g, cur_mode, cur_pc, cur_bp) = if curg != 0 && curg == r14 {
        (
            r14,
            CUR_REGS,
            copy_u64::<R>(regs.rsp).unwrap_or(0),
            regs.rbp,
        )
    } else if curg != 0 && point == final_point::EXIT {
        (curg, CUR_SCHED, 0, 0)
    } else {
        (curg, CUR_NONE, 0, 0)
    };
    let cur_sp = regs.rsp;

    let allgs = cfg.allgs_va.wrapping_add(bias);
    let base = copy_u64::<R>(allgs)?;
    let len = copy_u64::<R>(allgs + 8)?;
    let allglen = if cfg.allglen_va != 0 {
        copy_u64::<R>(cfg.allglen_va.wrapping_add(bias)).unwrap_or(len)
    } else {
        len
    };
    // allgs only grows; allglen is stored after the slice. Use the smaller.
    let n = if allglen < len { allglen } else { len };
    let max = u64::from(cfg.max_gs);
    let visit = if n < max { n } else { max };

    let mut walk = Walk {
        base,
        count: visit,
        current_g,
        cur_pc,
        cur_bp,
        cur_sp,
        cur_mode,
        walker,
        slot: walker % SLOTS,
        _pad: 0,
    };
    let scratch = FINAL_SCRATCH.get_ptr_mut(walk.slot)?;
    // SAFETY: this walk's map slot.
    unsafe { (*scratch).counts = Counts::default() };
    if base != 0 && visit > 0 {
        // SAFETY: the callback only touches `walk` through the pointer.
        unsafe {
            bpf_loop(
                visit as u32,
                walk_one::<R> as *mut c_void,
                (&raw mut walk).cast::<c_void>(),
                0,
            )
        };
    }

    // SAFETY: as above.
    let counts = unsafe { (*scratch).counts };
    let end = FinalEnd {
        kind: final_kind::END,
        walker,
        point,
        arg,
        allglen: n,
        walked: visit,
        live: counts.live,
        emitted: counts.emitted,
        dropped: counts.dropped,
        skipped: n - visit,
        unreadable: counts.unreadable,
        waited_ns: counts.waited_ns,
        start_ns,
        end_ns: unsafe { bpf_ktime_get_ns() },
        bias,
        current_g,
        walks: 1,
        done: 1,
    };
    let _ = FINAL_EVENTS.output::<FinalEnd>(&end, BPF_RB_FORCE_WAKEUP as u64);
    // `walks` may have been raised meanwhile by a thread that skipped.
    let walks = state.walks;
    *state = FinalEnd { walks, ..end };
    Some(())
}

/// One `allgs[i]`. Returns 0 to go on, 1 to stop the loop.
extern "C" fn walk_one<R: ReadUser>(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer try_walk gave it.
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    let Some(cfg) = FINAL_CONFIG.get(0) else {
        return 1;
    };
    let Some(scratch) = FINAL_SCRATCH.get_ptr_mut(walk.slot) else {
        return 1;
    };
    // SAFETY: map value, only this walk uses this slot.
    let scratch = unsafe { &mut *scratch };

    // The g pointers, GPTR_BATCH per copy (a helper call saved per g).
    let j = (i as usize) & (GPTR_BATCH - 1);
    if j == 0 {
        let left = walk.count - i;
        let k = if left < GPTR_BATCH as u64 {
            left
        } else {
            GPTR_BATCH as u64
        };
        // SAFETY: k ≤ the buffer's length.
        let r = unsafe {
            R::read(
                scratch.gptrs.as_mut_ptr().cast::<c_void>(),
                (k * 8) as u32,
                (walk.base + i * 8) as *const c_void,
            )
        };
        if r != 0 {
            // Entry by entry for this batch: mark the slots unreadable.
            scratch.gptrs = [u64::MAX; GPTR_BATCH];
        }
    }
    let gp = scratch.gptrs[j];
    if gp == u64::MAX {
        scratch.counts.unreadable += 1;
        return 0;
    }
    if gp == 0 {
        return 0;
    }
    let size = if cfg.g_size < FINAL_G_BYTES as u32 {
        cfg.g_size
    } else {
        FINAL_G_BYTES as u32
    };
    // SAFETY: `size` ≤ the buffer's length.
    let r = unsafe {
        R::read(
            scratch.g.as_mut_ptr().cast::<c_void>(),
            size,
            gp as *const c_void,
        )
    };
    if r != 0 {
        scratch.counts.unreadable += 1;
        return 0;
    }
    let g = &scratch.g;
    let status = g_u32(g, cfg.g_atomicstatus);
    let state = status & !G_SCAN;
    if state == G_IDLE || state == G_DEAD || state == G_DEADEXTRA {
        return 0;
    }
    scratch.counts.live += 1;

    let stack_lo = g_u64(g, cfg.g_stack_lo);
    let stack_hi = g_u64(g, cfg.g_stack_hi);
    let sched_pc = g_u64(g, cfg.g_sched_pc);
    let sched_sp = g_u64(g, cfg.g_sched_sp);
    let sched_bp = g_u64(g, cfg.g_sched_bp);
    let mut flags: u8 = 0;
    // (first pc, frame pointer, stack pointer) to walk from.
    let (pc0, fp, sp) = if gp == walk.current_g {
        flags |= final_flags::CURRENT;
        match walk.cur_mode {
            CUR_REGS => (walk.cur_pc, walk.cur_bp, walk.cur_sp),
            CUR_SCHED => (sched_pc, sched_bp, sched_sp),
            _ => (0, 0, 0),
        }
    } else if state == G_RUNNING {
        // Running on another thread: its registers are not ours to read.
        (0, 0, 0)
    } else if state == G_SYSCALL {
        flags |= final_flags::FROM_SYSCALL;
        let bp = if cfg.g_syscallbp != u32::MAX {
            g_u64(g, cfg.g_syscallbp)
        } else {
            0
        };
        (g_u64(g, cfg.g_syscallpc), bp, g_u64(g, cfg.g_syscallsp))
    } else {
        (sched_pc, sched_bp, sched_sp)
    };

    let rec = &mut scratch.rec;
    rec.kind = final_kind::G;
    rec.walker = walk.walker;
    rec.g = gp;
    rec.goid = g_u64(g, cfg.g_goid);
    rec.status = status;
    rec.wait_reason = g_u8(g, cfg.g_waitreason);
    rec.waitsince = g_u64(g, cfg.g_waitsince) as i64;
    rec.gopc = g_u64(g, cfg.g_gopc);
    rec.startpc = g_u64(g, cfg.g_startpc);
    rec.parent_goid = if cfg.g_parent_goid != u32::MAX {
        g_u64(g, cfg.g_parent_goid)
    } else {
        0
    };
    rec.sched_pc = sched_pc;
    rec.sched_sp = sched_sp;
    rec.sched_bp = sched_bp;
    rec.stack_lo = stack_lo;
    rec.stack_hi = stack_hi;

    // Frame pointers: [fp] = caller's fp, [fp+8] = return address. Stay
    // inside the goroutine's stack, and only go up. One step per iteration
    // of a nested bpf_loop: an unrolled loop made the verifier check the
    // rest of the program once per way out of it (measured ~1 s to load).
    let mut n: u32 = 0;
    if pc0 != 0 {
        rec.frames[0] = pc0;
        // The top of the stack, in one copy.
        let mut copied: u64 = 0;
        if cfg.max_frames > 1 && fp != 0 && sp >= stack_lo && sp < stack_hi && sp & 7 == 0 {
            let avail = stack_hi - sp;
            let len = if avail < (STACK_WORDS * 8) as u64 {
                avail
            } else {
                (STACK_WORDS * 8) as u64
            };
            // SAFETY: `len` ≤ the buffer's length.
            let r = unsafe {
                R::read(
                    scratch.stack.as_mut_ptr().cast::<c_void>(),
                    len as u32,
                    sp as *const c_void,
                )
            };
            if r == 0 {
                copied = len;
            }
        }
        let cursor = scratch.cursor.as_mut_ptr();
        // SAFETY: this walk's map slot.
        unsafe {
            core::ptr::write_volatile(cursor.wrapping_add(CUR_FP), fp);
            core::ptr::write_volatile(cursor.wrapping_add(CUR_N), 1);
        }
        let mut frames = Frames {
            lo: stack_lo,
            hi: stack_hi,
            buf_lo: sp,
            buf_hi: sp + copied,
            slot: walk.slot,
            flags: 0,
        };
        let max = cfg.max_frames.min(FINAL_MAX_FRAMES as u32);
        if max > 1 && fp != 0 {
            // SAFETY: the callback only touches `frames` through the pointer.
            unsafe {
                bpf_loop(
                    max - 1,
                    frame_step::<R> as *mut c_void,
                    (&raw mut frames).cast::<c_void>(),
                    0,
                )
            };
        }
        // SAFETY: as above.
        let (fp_left, got) = unsafe {
            (
                core::ptr::read_volatile(cursor.wrapping_add(CUR_FP)),
                core::ptr::read_volatile(cursor.wrapping_add(CUR_N)),
            )
        };
        if fp_left != 0 {
            // Stopped by the cap with the chain still going.
            flags |= final_flags::TRUNCATED;
        }
        flags |= frames.flags;
        n = got as u32;
    }
    // Re-borrow: frame_step wrote the frames through the map.
    let rec = &mut scratch.rec;
    rec.flags = flags;
    rec.nframes = n as u16;

    let len = FINAL_G_HEADER_BYTES
        + 8 * ((n as usize) & (2 * FINAL_MAX_FRAMES - 1)).min(FINAL_MAX_FRAMES);
    // SAFETY: `len` ≤ size_of::<FinalG>(); the record is plain data.
    let bytes = unsafe { core::slice::from_raw_parts((rec as *const FinalG).cast::<u8>(), len) };
    let wake = if scratch.counts.emitted & u64::from(cfg.wakeup_mask) == 0 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let mut sent = FINAL_EVENTS.output::<[u8]>(bytes, wake as u64).is_ok();
    if !sent && scratch.counts.waited_ns < cfg.wait_budget_ns {
        // The ring is full: the reader is behind. Wait for it, within what
        // is left of the walk's budget for waiting (the exit is held up
        // meanwhile), rather than lose the record.
        let start = unsafe { bpf_ktime_get_ns() };
        let mut wait = Resend {
            deadline: start + (cfg.wait_budget_ns - scratch.counts.waited_ns),
            len: len as u64,
            slot: walk.slot,
            sent: 0,
        };
        // SAFETY: the callback only touches `wait` through the pointer.
        unsafe {
            bpf_loop(
                1 << 22,
                resend_step as *mut c_void,
                (&raw mut wait).cast::<c_void>(),
                0,
            )
        };
        scratch.counts.waited_ns += unsafe { bpf_ktime_get_ns() } - start;
        sent = wait.sent != 0;
    }
    if sent {
        scratch.counts.emitted += 1;
    } else {
        scratch.counts.dropped += 1;
    }
    0
}

/// A record waiting for room in the ring.
#[repr(C)]
struct Resend {
    deadline: u64,
    len: u64,
    slot: u32,
    sent: u32,
}

/// One more try at sending the slot's record; 1 to stop (sent, or the
/// budget is spent).
extern "C" fn resend_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer walk_one gave it.
    let w = unsafe { &mut *ctx.cast::<Resend>() };
    if unsafe { bpf_ktime_get_ns() } > w.deadline {
        return 1;
    }
    let Some(scratch) = FINAL_SCRATCH.get_ptr(w.slot) else {
        return 1;
    };
    let len = (w.len as usize & 0x1ff).min(size_of::<FinalG>());
    // SAFETY: map value; `len` ≤ size_of::<FinalG>().
    let bytes =
        unsafe { core::slice::from_raw_parts((&raw const (*scratch).rec).cast::<u8>(), len) };
    if FINAL_EVENTS
        .output::<[u8]>(bytes, BPF_RB_FORCE_WAKEUP as u64)
        .is_ok()
    {
        w.sent = 1;
        return 1;
    }
    0
}

/// One frame-pointer step of a goroutine's stack walk.
#[repr(C)]
struct Frames {
    lo: u64,
    hi: u64,
    /// `[buf_lo, buf_hi)` is in the slot's `stack` buffer.
    buf_lo: u64,
    buf_hi: u64,
    slot: u32,
    flags: u8,
}

/// Reads `[fp, fp+16)`: the caller's frame pointer and the return address.
/// Returns 1 to stop.
extern "C" fn frame_step<R: ReadUser>(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer walk_one gave it.
    let f = unsafe { &mut *ctx.cast::<Frames>() };
    let Some(scratch) = FINAL_SCRATCH.get_ptr_mut(f.slot) else {
        return 1;
    };
    // SAFETY: map value; this walk's slot.
    let scratch = unsafe { &mut *scratch };
    // The cursor lives in the map (see `Scratch::counts`).
    let cursor = scratch.cursor.as_mut_ptr();
    let fp_at = cursor.wrapping_add(CUR_FP);
    let n_at = cursor.wrapping_add(CUR_N);
    // SAFETY: map value fields.
    let (fp, n) = unsafe {
        (
            core::ptr::read_volatile(fp_at),
            core::ptr::read_volatile(n_at),
        )
    };
    let stop = |flags: u8, f: &mut Frames| {
        f.flags |= flags;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(fp_at, 0) };
        1
    };
    if fp == 0 {
        return 1;
    }
    if fp < f.lo || fp + 16 > f.hi || fp & 7 != 0 {
        return stop(final_flags::BROKEN, f);
    }
    let mut pair = [0u64; 2];
    if fp >= f.buf_lo && fp + 16 <= f.buf_hi {
        let i = ((fp - f.buf_lo) >> 3) as usize;
        pair[0] = scratch.stack[i & (STACK_WORDS - 1)];
        pair[1] = scratch.stack[(i + 1) & (STACK_WORDS - 1)];
    } else {
        // SAFETY: 16 bytes into a local.
        let r = unsafe { R::read(pair.as_mut_ptr().cast::<c_void>(), 16, fp as *const c_void) };
        if r != 0 {
            return stop(final_flags::BROKEN, f);
        }
    }
    if pair[1] == 0 {
        return stop(0, f);
    }
    scratch.rec.frames[(n as usize) & (FINAL_MAX_FRAMES - 1)] = pair[1];
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(n_at, n + 1) };
    if pair[0] <= fp {
        // goexit's frame ends the chain with 0; anything else going down is
        // garbage.
        return stop(if pair[0] != 0 { final_flags::BROKEN } else { 0 }, f);
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(fp_at, pair[0]) };
    // Full: the cursor keeps the next frame, which marks it truncated.
    i64::from(n + 1 >= FINAL_MAX_FRAMES as u64)
}
