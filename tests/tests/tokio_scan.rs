//! tokio (first step, no probes yet): `leaktrace --pid` on unmodified
//! release binaries finds every live task by heap scan, agrees with the
//! runtime's own `num_alive_tasks()`, names tasks by their async fn where
//! the build allows, and flags tasks that can never be woken.
mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::*;
use leaktrace_e2e::Fixture;

/// Build the fixture project (tests/fixtures/rust) with `profile`; shares
/// its target dir with the unit tests in leaktrace/src/runtime/tokio.
fn build(profile: &str) -> PathBuf {
    let root = leaktrace_e2e::build::workspace_dir();
    let target = leaktrace_e2e::target_dir().join("tokio-fixtures");
    let status = Command::new("cargo")
        .args([
            "build",
            "--locked",
            "--quiet",
            "--profile",
            profile,
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root.join("tests/fixtures/rust"))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo build of the tokio fixture");
    assert!(
        status.success(),
        "building the tokio fixture ({profile}) failed"
    );
    let dir = if profile == "release" {
        "release"
    } else {
        profile
    };
    target.join(dir).join("tokio-fixture")
}

#[test]
fn tokio_tasks_match_num_alive_tasks_and_lost_wakers_are_leaks() {
    if !ebpf_available("tokio_tasks_match_num_alive_tasks_and_lost_wakers_are_leaks") {
        return;
    }
    for profile in ["release", "lines", "fatlto", "stripped"] {
        let bin = build(profile);
        for mode in ["pending", "oneshot", "mpsc", "short", "server"] {
            let fx = Fixture::start(&bin, [mode, "5", "60"]);
            let alive: u64 = fx
                .wait_for_line("alive_tasks ", Duration::from_secs(30))
                .trim_start_matches("alive_tasks ")
                .trim()
                .parse()
                .expect("alive_tasks");
            let (reports, stderr) = run_pid_mode(&fx, &["--duration", "1s"]);
            let r = reports.last().expect("a report");
            let ctx = || format!("{profile} {mode}\n{}\n{stderr}", r.summary());
            assert_eq!(r.0["target"]["runtime"], "rust-tokio", "{}", ctx());
            assert_eq!(
                r.live(),
                alive,
                "live tasks vs num_alive_tasks(): {}",
                ctx()
            );
            let named = profile != "stripped";
            let want = match mode {
                "pending" => Some("pending_forever"),
                "oneshot" => Some("oneshot_waiter"),
                "mpsc" => Some("mpsc_consumer"),
                _ => None,
            };
            if let Some(f) = want {
                let g = r
                    .groups()
                    .iter()
                    .max_by_key(|g| g["count"].as_u64())
                    .unwrap_or_else(|| panic!("no group: {}", ctx()));
                assert_eq!(g["count"].as_u64(), Some(5), "{}", ctx());
                let name = g["created_by"]["function"].as_str().unwrap_or("");
                if named {
                    assert!(
                        name.ends_with(&format!("::{f}")),
                        "named by its async fn: {}",
                        ctx()
                    );
                }
                if mode == "pending" {
                    assert_eq!(g["verdict"], "leak", "a task nothing can wake: {}", ctx());
                    assert!(
                        g["state"].as_str().unwrap_or("").contains("no waker"),
                        "{}",
                        ctx()
                    );
                } else {
                    assert!(
                        g["state"].as_str().unwrap_or("").starts_with("idle"),
                        "{}",
                        ctx()
                    );
                }
            } else {
                for g in r.groups() {
                    assert_ne!(
                        g["verdict"],
                        "leak",
                        "a control was called a leak: {}",
                        ctx()
                    );
                }
            }
            println!(
                "tokio {profile:<9} {mode:<8} live {} == num_alive_tasks {alive}; {}",
                r.live(),
                r.groups()
                    .first()
                    .map(|g| format!(
                        "{} × {} [{}] {}",
                        g["count"], g["created_by"]["function"], g["state"], g["verdict"]
                    ))
                    .unwrap_or_else(|| "no groups".into())
            );
        }
    }
}

/// A Rust program without tokio, and a non-Go, non-Rust program, get a
/// clear refusal that says what leaktrace traces.
#[test]
fn neither_go_nor_tokio_is_refused_clearly() {
    if !ebpf_available("neither_go_nor_tokio_is_refused_clearly") {
        return;
    }
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    let out = Command::new(leaktrace_bin())
        .args(["--pid", &sleeper.id().to_string()])
        .output()
        .expect("leaktrace");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a Go binary") && err.contains("not a tokio program"),
        "{err}"
    );
    println!("refused: {}", err.trim());
}
