//! The final report at the moment a program ends badly (issue #13): a test
//! that hangs in a partial deadlock until `-test.timeout`, a test that
//! panics with workers left blocked, and the runtime's own "all goroutines
//! are asleep". Ground truth: the goroutine dump each of these prints on
//! its way out (GOTRACEBACK=all), compared count by count; the exit status
//! is the program's own.
mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use common::*;
use leaktrace_e2e::{
    GoToolchain,
    build::{go_command, target_dir, workspace_dir},
    toolchain::newest,
};
use serde_json::Value;

/// `go test -c` of one package of tests/fixtures/goexit.
fn test_binary(go: &GoToolchain, pkg: &str) -> PathBuf {
    let out = target_dir().join(format!("goexit/{}/{pkg}.test", go.full));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let status = go_command(go, &workspace_dir().join("tests/fixtures/goexit"))
        .args(["test", "-c", "-o"])
        .arg(&out)
        .arg(format!("./{pkg}"))
        .status()
        .expect("go test -c");
    assert!(status.success(), "building {pkg}.test");
    out
}

struct Ended {
    code: i32,
    stderr: String,
    reports: Vec<Report>,
}

fn run(bin: &PathBuf, leaktrace_args: &[&str], args: &[&str]) -> Ended {
    let out = tempfile_path("exit.jsonl");
    let o = Command::new(leaktrace_bin())
        .args(["--format", "json", "--top", "50", "--output"])
        .arg(&out)
        .args(leaktrace_args)
        .arg("-c")
        .arg(bin)
        .args(args)
        .env("GOTRACEBACK", "all")
        .stdin(Stdio::null())
        .output()
        .expect("running leaktrace");
    Ended {
        code: o.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        reports: parse_reports(&std::fs::read_to_string(&out).unwrap_or_default()),
    }
}

/// Goroutines in the program's own dump with this wait reason whose
/// stack mentions `function`.
fn dumped(stderr: &str, reason: &str, function: &str) -> u64 {
    stderr
        .split("\n\n")
        .filter(|b| b.starts_with("goroutine ") && b.contains(&format!("[{reason}")))
        .filter(|b| b.contains(function))
        .count() as u64
}

fn leaked_at(report: &Report, function: &str) -> u64 {
    report
        .groups()
        .iter()
        .filter(|g| {
            g["verdict"] == "leak" && g["blocked_at"]["function"].as_str() == Some(function)
        })
        .map(|g| g["count"].as_u64().unwrap_or(0))
        .sum()
}

fn final_at_exit(e: &Ended) -> &Report {
    let last = e
        .reports
        .last()
        .unwrap_or_else(|| panic!("no report: {}", e.stderr));
    assert!(
        last.0["final"] == true && last.0["at_exit"] == true,
        "{}",
        last.0
    );
    last
}

fn summary(name: &str, e: &Ended, leaks: &[(&str, u64, u64)]) -> String {
    let parts: Vec<String> = leaks
        .iter()
        .map(|(f, ours, truth)| format!("{f}: {ours} leak == dump {truth}"))
        .collect();
    format!("{name}: exit {}; {}", e.code, parts.join("; "))
}

#[test]
fn a_hung_partial_deadlock_is_seen_live_and_at_the_timeout() {
    if !ebpf_available("a_hung_partial_deadlock_is_seen_live_and_at_the_timeout") {
        return;
    }
    let go = newest().expect("a Go toolchain");
    let bin = test_binary(&go, "hang");
    let e = run(&bin, &["-i", "1", "--hang", "2s"], &["-test.timeout=6s"]);
    let ctx = || format!("stderr:\n{}", e.stderr);
    // Live: every goroutine of the program blocked on the others.
    let live_deadlock = e
        .reports
        .iter()
        .filter(|r| r.0["final"] == false)
        .find(|r| r.0["deadlock"].is_object())
        .unwrap_or_else(|| panic!("no periodic report said deadlock: {}", ctx()));
    let participants = live_deadlock.0["deadlock"]["participants"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        participants >= 3,
        "the two transfers and the test: {}",
        live_deadlock.0
    );
    // At the timeout panic: still blocked.
    let last = final_at_exit(&e);
    let f = "leaktrace.test/goexit/hang.Transfer.func1";
    let g = "leaktrace.test/goexit/hang.Transfer.func2";
    let (ours, truth) = (
        leaked_at(last, f) + leaked_at(last, g),
        dumped(&e.stderr, "chan receive", "hang.Transfer.func"),
    );
    assert_eq!((ours, truth), (2, 2), "{}", ctx());
    assert_eq!(
        leaked_at(last, "leaktrace.test/goexit/hang.Transfer"),
        1,
        "the test waits on them: {}",
        ctx()
    );
    assert_eq!(e.code, 2, "the test binary's own status: {}", ctx());
    println!(
        "{} (live deadlock with {participants} participants)",
        summary("hang", &e, &[("Transfer.func1+2", ours, truth)])
    );
}

#[test]
fn a_panic_leaves_its_blocked_workers_in_the_report() {
    if !ebpf_available("a_panic_leaves_its_blocked_workers_in_the_report") {
        return;
    }
    let go = newest().expect("a Go toolchain");
    let bin = test_binary(&go, "panicleak");
    let e = run(&bin, &["--fail-on", "leak"], &[]);
    let last = final_at_exit(&e);
    let f = "leaktrace.test/goexit/panicleak.StartWorkers.func1";
    let (ours, truth) = (
        leaked_at(last, f),
        dumped(&e.stderr, "chan receive", "panicleak.StartWorkers.func1"),
    );
    assert_eq!((ours, truth), (12, 12), "stderr:\n{}\n{}", e.stderr, last.0);
    let cause = last
        .groups()
        .iter()
        .find(|g| g["blocked_at"]["function"].as_str() == Some(f))
        .map(|g: &Value| g["cause"].clone());
    assert_eq!(cause, Some(Value::from("receive-without-sender")));
    assert_eq!(e.code, 3, "--fail-on leak: {}", e.stderr);
    println!(
        "{}",
        summary("panicleak", &e, &[("StartWorkers.func1", ours, truth)])
    );
}

#[test]
fn the_runtimes_own_deadlock_is_reported_at_exit() {
    if !ebpf_available("the_runtimes_own_deadlock_is_reported_at_exit") {
        return;
    }
    let go = newest().expect("a Go toolchain");
    let bin = test_binary(&go, "asleep");
    let e = run(&bin, &[], &[]);
    assert!(
        e.stderr.contains("all goroutines are asleep"),
        "{}",
        e.stderr
    );
    let last = final_at_exit(&e);
    let f = "leaktrace.test/goexit/asleep.TestMain.func1";
    let (ours, truth) = (
        leaked_at(last, f),
        dumped(&e.stderr, "chan send", "asleep.TestMain.func1"),
    );
    assert_eq!((ours, truth), (7, 7), "stderr:\n{}\n{}", e.stderr, last.0);
    // The main goroutine parked in `select {}` is not called a leak.
    assert!(
        last.groups()
            .iter()
            .all(|g| g["verdict"] != "leak" || g["blocked_at"]["function"].as_str() == Some(f)),
        "{}",
        last.0
    );
    assert_eq!(e.code, 2, "{}", e.stderr);
    println!(
        "{}",
        summary("asleep", &e, &[("TestMain.func1", ours, truth)])
    );
}
