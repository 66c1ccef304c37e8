//! `probes::multi` against the running kernel (issue #14): a uprobe-multi
//! link fires at each offset with that offset's cookie, only in the given
//! process, stops when dropped, is refused for a program loaded without the
//! attach type (which is why leaktrace loads its own copy), and the copy of a
//! real leaktrace probe shares aya's maps, including the overridden config.
//!
//! The probe points are in this test binary (`/proc/self/exe`): two tiny
//! assembly functions whose registers the test sets. Needs root (skips
//! otherwise) and Linux ≥ 6.6 (skips when the kernel has no multi links).
#![cfg(target_arch = "x86_64")]

use std::{
    arch::{asm, global_asm},
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd};
use leaktrace::probes::{Global, Probes, multi};
use leaktrace_common::go::{GoConfig, GoEvent, GoEventKind, SpawnPoint};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

// Probe targets: `nop; ret`, so the test controls every register they see
// (and the nop is emulated, no single-step).
global_asm!(
    ".globl lt_multi_target_a",
    ".type lt_multi_target_a,@function",
    "lt_multi_target_a:",
    "nop",
    "ret",
    ".size lt_multi_target_a, .-lt_multi_target_a",
    ".globl lt_multi_target_b",
    ".type lt_multi_target_b,@function",
    "lt_multi_target_b:",
    "nop",
    "ret",
    ".size lt_multi_target_b, .-lt_multi_target_b",
    ".globl lt_multi_target_c",
    ".type lt_multi_target_c,@function",
    "lt_multi_target_c:",
    "nop",
    "ret",
    ".size lt_multi_target_c, .-lt_multi_target_c",
);

unsafe extern "C" {
    fn lt_multi_target_a();
    fn lt_multi_target_b();
    // lt_multi_target_c: only probed (by name), never called.
}

/// Call `f` with RAX = `rax` and RBX = `rbx` (what leaktrace's Go probes
/// read: the g and, at a casgstatus call, the old status).
fn call_with(f: unsafe extern "C" fn(), rax: u64, rbx: u64) {
    // SAFETY: the targets are `nop; ret`; rbx is saved and restored around
    // the call (LLVM reserves it, so it cannot be an operand).
    unsafe {
        asm!(
            "push rbx",
            "mov rbx, {b}",
            "call {f}",
            "pop rbx",
            f = in(reg) f,
            b = in(reg) rbx,
            in("rax") rax,
            clobber_abi("C"),
        )
    };
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// File offsets of the named functions in this executable.
fn self_offsets(names: &[&str]) -> Vec<u64> {
    let data = std::fs::read("/proc/self/exe").unwrap();
    let file = object::File::parse(&*data).unwrap();
    names
        .iter()
        .map(|name| {
            let sym = file
                .symbols()
                .find(|s| s.name() == Ok(*name))
                .unwrap_or_else(|| panic!("{name} not in the symbol table"));
            let addr = sym.address();
            let seg = file
                .segments()
                .find(|s| addr >= s.address() && addr < s.address() + s.size())
                .unwrap();
            addr - seg.address() + seg.file_range().0
        })
        .collect()
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: a zero-initialised bpf_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd(r: i64) -> OwnedFd {
    // SAFETY: a new fd from the kernel.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// An array map of 8 u64 counters.
fn counters() -> OwnedFd {
    // SAFETY: plain old data.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writes to the map-create member.
    let u = unsafe { &mut attr.__bindgen_anon_1 };
    u.map_type = 2; // BPF_MAP_TYPE_ARRAY
    u.key_size = 4;
    u.value_size = 8;
    u.max_entries = 8;
    fd(sys_bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).expect("BPF_MAP_CREATE"))
}

fn counter(map: &OwnedFd, key: u32) -> u64 {
    let mut value = 0u64;
    // SAFETY: plain old data.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writes to the map-element member.
    let u = unsafe { &mut attr.__bindgen_anon_2 };
    u.map_fd = map.as_raw_fd() as u32;
    u.key = &key as *const u32 as u64;
    u.__bindgen_anon_1.value = &mut value as *mut u64 as u64;
    sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr).expect("lookup");
    value
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst | (src << 4)) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `counters[bpf_get_attach_cookie(ctx)] += 1`, as a kprobe-type program
/// loaded with `expected_attach_type`.
fn cookie_counter(map: &OwnedFd, expected_attach_type: u32) -> io::Result<OwnedFd> {
    let prog = [
        insn(0x85, 0, 0, 0, 174),             // call bpf_get_attach_cookie
        insn(0x63, 10, 0, -4, 0),             // *(u32 *)(r10 - 4) = r0
        insn(0xbf, 2, 10, 0, 0),              // r2 = r10
        insn(0x07, 2, 0, 0, -4),              // r2 += -4
        insn(0x18, 1, 1, 0, map.as_raw_fd()), // r1 = map (ld_imm64 pseudo map fd)
        0,                                    //   (second half)
        insn(0x85, 0, 0, 0, 1),               // call bpf_map_lookup_elem
        insn(0x15, 0, 0, 2, 0),               // if r0 == 0 goto +2
        insn(0xb7, 1, 0, 0, 1),               // r1 = 1
        insn(0xdb, 0, 1, 0, 0),               // lock *(u64 *)(r0 + 0) += r1
        insn(0xb7, 0, 0, 0, 0),               // r0 = 0
        insn(0x95, 0, 0, 0, 0),               // exit
    ];
    let license = c"GPL";
    // SAFETY: plain old data.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writes to the prog-load member.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = 2; // BPF_PROG_TYPE_KPROBE
    u.expected_attach_type = expected_attach_type;
    u.insns = prog.as_ptr() as u64;
    u.insn_cnt = prog.len() as u32;
    u.license = license.as_ptr() as u64;
    sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(fd)
}

/// Skip (false) unless root and the kernel has uprobe-multi links.
fn multi_available(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped, needs root");
        return false;
    }
    let map = counters();
    let prog = cookie_counter(&map, multi::BPF_TRACE_UPROBE_MULTI).expect("BPF_PROG_LOAD");
    let offsets = self_offsets(&["lt_multi_target_c"]);
    match multi::attach_uprobe_multi(
        prog.as_fd(),
        Path::new("/proc/self/exe"),
        &offsets,
        &[],
        std::process::id(),
    ) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                multi::is_unsupported(&e) || e.raw_os_error() == Some(libc::EINVAL),
                "{test}: unexpected error {e}"
            );
            eprintln!("{test}: skipped, no uprobe-multi links on this kernel ({e})");
            false
        }
    }
}

/// Both tests probe and call the same two functions of this process, and
/// the test harness runs them on two threads: one test's calls would hit
/// the other's link (seen: an "after detach" count of 2 where 1 was called).
static TARGETS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn each_offset_fires_with_its_own_cookie_only_in_the_pid_and_until_dropped() {
    if !multi_available("each_offset_fires_with_its_own_cookie") {
        return;
    }
    let _one_at_a_time = TARGETS.lock().unwrap_or_else(|e| e.into_inner());
    let exe = Path::new("/proc/self/exe");
    let offsets = self_offsets(&["lt_multi_target_a", "lt_multi_target_b"]);
    let map = counters();

    // What aya 0.14 loads: expected_attach_type 0. The kernel refuses it.
    let plain = cookie_counter(&map, 0).expect("load with attach type 0");
    let err = multi::attach_uprobe_multi(plain.as_fd(), exe, &offsets, &[3, 5], std::process::id())
        .expect_err("a program loaded without BPF_TRACE_UPROBE_MULTI");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");

    let prog = cookie_counter(&map, multi::BPF_TRACE_UPROBE_MULTI).unwrap();

    // Scoped to another process: our calls do not count.
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let link = multi::attach_uprobe_multi(prog.as_fd(), exe, &offsets, &[3, 5], other.id())
        .expect("uprobe-multi link for another pid");
    call_with(lt_multi_target_a, 0, 0);
    call_with(lt_multi_target_b, 0, 0);
    drop(link);
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!((counter(&map, 3), counter(&map, 5)), (0, 0), "pid filter");

    // Scoped to us: a fires with cookie 3, b with cookie 5.
    let link = multi::attach_uprobe_multi(prog.as_fd(), exe, &offsets, &[3, 5], std::process::id())
        .expect("uprobe-multi link");
    call_with(lt_multi_target_a, 0, 0);
    for _ in 0..4 {
        call_with(lt_multi_target_b, 0, 0);
    }
    let counts: Vec<u64> = (0..8).map(|k| counter(&map, k)).collect();
    assert_eq!(counts, [0, 0, 0, 1, 0, 4, 0, 0], "hits by cookie");

    // Dropped: detached.
    drop(link);
    call_with(lt_multi_target_a, 0, 0);
    call_with(lt_multi_target_b, 0, 0);
    assert_eq!((counter(&map, 3), counter(&map, 5)), (1, 4), "after detach");
}

/// leaktrace's real `go_spawn`, as `probes::multi::load_multi_copy` loads it:
/// it writes to aya's EVENTS ring, sees the GoConfig aya loaded (a
/// `gstatus_dead` of 9, not the object's 6), and tells its two points apart
/// by cookie (at a casgstatus call only `_Gdead → …` is a spawn).
#[test]
fn the_copy_of_a_real_probe_shares_aya_maps_and_reads_its_cookies() {
    if !multi_available("the_copy_of_a_real_probe_shares_aya_maps") {
        return;
    }
    let _one_at_a_time = TARGETS.lock().unwrap_or_else(|e| e.into_inner());
    let config = GoConfig {
        gstatus_dead: 9,
        ..GoConfig::default()
    };
    let mut probes = Probes::load(&[Global::of("GO_CONFIG", &config)]).expect("loading the probes");
    let prog: &mut aya::programs::UProbe = probes
        .ebpf_mut()
        .program_mut("go_spawn")
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().expect("aya loads go_spawn");
    let copy = multi::load_multi_copy(multi::embedded_object(), "go_spawn", prog)
        .expect("uprobe-multi copy of go_spawn");
    let offsets = self_offsets(&["lt_multi_target_a", "lt_multi_target_b"]);
    let cookies = [
        SpawnPoint::CasgstatusCall as u64,
        SpawnPoint::Newproc1Ret as u64,
    ];
    let link = multi::attach_uprobe_multi(
        copy.as_fd(),
        Path::new("/proc/self/exe"),
        &offsets,
        &cookies,
        std::process::id(),
    )
    .expect("uprobe-multi link");

    let gs = [0u64; 4];
    let g = |i: usize| &gs[i] as *const u64 as u64;
    call_with(lt_multi_target_a, g(0), 9); // casgstatus from _Gdead (9 here): spawn
    call_with(lt_multi_target_a, g(1), 6); // from another status: not a spawn
    call_with(lt_multi_target_b, g(2), 1); // newproc1 RET: always a spawn
    drop(link);

    let mut ring = probes.take_ring().unwrap();
    let mut spawned = Vec::new();
    while let Some(item) = ring.next() {
        assert!(item.len() >= size_of::<GoEvent>());
        // SAFETY: GoEvent is plain old data, the length is checked.
        let ev: GoEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        assert_eq!(ev.kind, GoEventKind::Spawn as u8);
        spawned.push(ev.g);
    }
    assert_eq!(spawned, [g(0), g(2)], "spawn events by g");
}
