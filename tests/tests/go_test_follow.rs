//! `leaktrace -f --fail-on leak -c go test ./...`: leaktrace follows the go
//! command to each package's test binary, reports each on its own, and
//! fails the run when a test left goroutines blocked — the goleak use case
//! without a line of test code. Ground truth: the leaking package's
//! TestMain prints its runtime's own goroutine dump right before exit.
mod common;

use std::process::{Command, Stdio};

use common::*;
use leaktrace_e2e::{
    GoToolchain,
    build::{go_command, workspace_dir},
    toolchain::newest,
};

fn module_dir() -> std::path::PathBuf {
    workspace_dir().join("tests/fixtures/gotest")
}

/// `go test` with the fixtures' offline environment, under leaktrace.
fn go_test_under_leaktrace(
    go: &GoToolchain,
    extra: &[&str],
    out: &std::path::Path,
) -> (i32, String, String) {
    let go_env = go_command(go, &module_dir());
    let mut cmd = Command::new(leaktrace_bin());
    for (k, v) in go_env.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let output = cmd
        .current_dir(module_dir())
        .args(["--format", "json", "--top", "50", "--output"])
        .arg(out)
        .args(extra)
        .arg("-c")
        .arg(&go.go)
        .args(["test", "-count=1", "-v", "./..."])
        .stdin(Stdio::null())
        .output()
        .expect("running leaktrace");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn go_test_from_outside_reports_each_package_binary_and_fails_on_the_leak() {
    if !ebpf_available("go_test_from_outside_reports_each_package_binary_and_fails_on_the_leak") {
        return;
    }
    let go = newest().expect("a Go toolchain (cargo xtask setup installs them)");
    let out = tempfile_path("follow.jsonl");
    let (code, stdout, stderr) = go_test_under_leaktrace(&go, &["-f", "--fail-on", "leak"], &out);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let reports = parse_reports(&text);
    let finals: Vec<&Report> = reports.iter().filter(|r| r.0["final"] == true).collect();
    let ctx = || format!("exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}\nreports:\n{text}");
    // One final report per package's test binary (the go tool and its
    // compiler and linker are passed over).
    let binaries: Vec<String> = finals
        .iter()
        .map(|r| r.0["target"]["cmdline"].as_str().unwrap_or("").to_string())
        .collect();
    for pkg in ["alpha", "beta", "gamma"] {
        assert_eq!(
            binaries
                .iter()
                .filter(|c| c.contains(&format!("{pkg}.test")))
                .count(),
            1,
            "one final report for {pkg}.test: {binaries:?}\n{}",
            ctx()
        );
    }
    assert_eq!(finals.len(), 3, "{}", ctx());
    // The runtime's own count of gamma's goroutines right before exit.
    let truth: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("numgoroutine "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("gamma printed no truth: {}", ctx()));
    let gamma = finals
        .iter()
        .find(|r| {
            r.0["target"]["cmdline"]
                .as_str()
                .is_some_and(|c| c.contains("gamma.test"))
        })
        .expect("gamma's report");
    let leaks: Vec<&serde_json::Value> = gamma
        .groups()
        .iter()
        .filter(|g| g["verdict"] == "leak")
        .collect();
    assert_eq!(leaks.len(), 1, "one leaking group in gamma: {}", ctx());
    let leak = leaks[0];
    // The runtime's own dump (debug=2, printed by TestMain right before
    // exit): the goroutines parked at the send.
    let dumped = stdout
        .split("\n\n")
        .filter(|b| b.contains("[chan send") && b.contains("gamma.(*Hub).Notify.func1"))
        .count() as u64;
    assert_eq!(leak["count"].as_u64(), Some(dumped), "{}", ctx());
    assert!(
        truth > dumped,
        "NumGoroutine counts the leak and main: {}",
        ctx()
    );
    assert_eq!(
        leak["blocked_at"]["function"].as_str(),
        Some("leaktrace.test/gotest/gamma.(*Hub).Notify.func1"),
        "{}",
        ctx()
    );
    assert_eq!(
        leak["cause"].as_str(),
        Some("send-without-receiver"),
        "{}",
        ctx()
    );
    assert!(
        gamma.0["at_exit"] == true,
        "gamma's final report is the moment of exit: {}",
        ctx()
    );
    for r in &finals {
        let c = r.0["target"]["cmdline"].as_str().unwrap_or("");
        if !c.contains("gamma.test") {
            assert!(
                r.groups().iter().all(|g| g["verdict"] != "leak"),
                "controls alpha and beta never leak: {}",
                ctx()
            );
        }
    }
    assert_eq!(code, 3, "--fail-on leak exits 3: {}", ctx());
    println!(
        "go test ./... under -f --fail-on leak: exit {code}; {} final reports; gamma: {} × {} [{}] {}: {}",
        finals.len(),
        leak["count"],
        leak["blocked_at"]["function"].as_str().unwrap_or(""),
        leak["cause"].as_str().unwrap_or(""),
        leak["verdict"].as_str().unwrap_or(""),
        leak["why"].as_str().unwrap_or("")
    );
}

/// Without -f, a wrapper is refused with the fix in the message.
#[test]
fn a_wrapper_without_follow_says_to_add_it() {
    let out = Command::new(leaktrace_bin())
        .args(["-c", "/bin/sh", "-c", "true"])
        .output()
        .expect("running leaktrace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("add -f"), "{err}");
}
