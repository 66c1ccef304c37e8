//! Inputs an attacker or a broken build controls: a binary whose DWARF
//! lies about `sizeof(runtime.g)` (two bytes of `.debug_info` changed, as
//! a battery run did: 456 → 16383) must not be believed. leaktrace says
//! the debug info cannot be right, uses its own table for that Go version,
//! and its counts and memory stay what they are on the intact binary.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::*;
use leaktrace_e2e::{BuildMode, GroundTruth};

/// `leaktrace ARGS`, its stdout and stderr, exit status and peak RSS.
// Reaped by wait4, which also gives the child's own rusage (std's wait
// does not).
#[allow(clippy::zombie_processes)]
fn run_measured(args: &[&std::ffi::OsStr]) -> (String, String, i32, u64) {
    let out = tempfile_path("stdout");
    let err = tempfile_path("stderr");
    let child = Command::new(leaktrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("starting leaktrace");
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are valid.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(r, child.id() as i32, "wait4");
    let read = |p: &std::path::Path| {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        s
    };
    let code = std::process::ExitStatus::from_raw(status)
        .code()
        .unwrap_or(-1);
    (read(&out), read(&err), code, usage.ru_maxrss as u64 * 1024)
}

#[test]
fn a_lying_sizeof_g_is_refused_and_the_table_used() {
    if !ebpf_available("hostile inputs") {
        return;
    }
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let intact = build("chan_send", &go, BuildMode::Plain);
    // Go compresses its DWARF; decompress a copy so one attribute can be
    // changed in place.
    let plain = tempfile_path("chan_send-dwarf");
    let st = Command::new("objcopy")
        .arg("--decompress-debug-sections")
        .arg(&intact)
        .arg(&plain)
        .status()
        .expect("objcopy (binutils): run `cargo xtask setup`");
    assert!(st.success(), "objcopy failed");
    let mut bytes = std::fs::read(&plain).expect("read copy");
    // The struct's DIE: its name inline, then DW_AT_byte_size as ULEB128.
    let size = leaktrace::runtime::go::layout::GLayout::for_version(
        &leaktrace::runtime::go::version::GoVersion::parse(&go.full).expect("version"),
    )
    .expect("table")
    .sizeof_g;
    let mut want = b"runtime.g\0".to_vec();
    want.extend(uleb(u64::from(size)));
    let at = bytes
        .windows(want.len())
        .position(|w| w == want.as_slice())
        .expect("runtime.g's DIE in .debug_info");
    let forged = uleb(16383);
    assert_eq!(forged.len(), want.len() - 10, "same length, in place");
    bytes[at + 10..at + want.len()].copy_from_slice(&forged);
    let patched = tempfile_path("chan_send-patched");
    std::fs::write(&patched, &bytes).expect("write patched");
    std::fs::set_permissions(
        &patched,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");

    let mut outcomes = Vec::new();
    for (what, bin) in [("intact", &intact), ("patched", &patched)] {
        let report = tempfile_path("report.jsonl");
        let (stdout, stderr, code, rss) = run_measured(&[
            "--format".as_ref(),
            "json".as_ref(),
            "--duration".as_ref(),
            "4s".as_ref(),
            "--output".as_ref(),
            report.as_os_str(),
            "-c".as_ref(),
            bin.as_os_str(),
            "-n".as_ref(),
            "2000".as_ref(),
            "-hold".as_ref(),
            "30s".as_ref(),
        ]);
        assert_eq!(code, 0, "{what}: leaktrace failed:\n{stderr}");
        let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
        let truth: GroundTruth = first_truth_block(&lines).expect("ground truth");
        let reports = parse_reports(&std::fs::read_to_string(&report).unwrap_or_default());
        let _ = std::fs::remove_file(&report);
        let last = reports.last().expect("a final report");
        assert_eq!(last.live(), truth.numgoroutine, "{what}: live\n{stderr}");
        let refused = stderr.contains("cannot be") && stderr.contains("table instead");
        assert_eq!(refused, what == "patched", "{what}: warning\n{stderr}");
        println!(
            "{what}: live {} == runtime {}, leaktrace peak RSS {} MiB",
            last.live(),
            truth.numgoroutine,
            rss >> 20
        );
        outcomes.push(rss);
    }
    // The forged size would have read 16383 bytes per goroutine: what the
    // battery saw was ten times the intact run's memory.
    assert!(
        outcomes[1] < outcomes[0] * 2,
        "patched RSS {} vs intact {}",
        outcomes[1],
        outcomes[0]
    );
    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(&patched);
}

fn uleb(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}
