//! tokio end to end: leaktrace on unmodified tokio programs (the fixture in
//! tests/fixtures/rust, built as release, release with line tables only,
//! fat LTO and stripped) that leak tasks at a steady rate over healthy load,
//! or only do healthy work. The live count must agree with the runtime's own
//! `num_alive_tasks()`, each leak must be named by its async fn and called a
//! `leak`, and no control may be.
mod common;

use std::{
    panic::AssertUnwindSafe,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use leaktrace_e2e::Fixture;
use serde_json::Value;

const PROFILES: &[&str] = &["release", "lines", "fatlto", "stripped"];
/// Mode, and the async fn its leaked tasks run.
const LEAKS: &[(&str, &str)] = &[
    ("oneshot", "oneshot_waiter"),
    ("mpsc", "mpsc_consumer"),
    ("pending", "pending_forever"),
];
const CONTROLS: &[&str] = &["short", "server"];
/// The active phase: long enough for the leaked tasks' old count (alive
/// ≥ --older, 1s) to rise at several 500 ms samples, with margin for a slow
/// machine; every run costs about this plus 0.3s.
const LEAK_FOR: &str = "4s";
/// What the fixture leaks at its default --rate (20/s) in LEAK_FOR.
const LEAKED: u64 = 80;

/// The group's future type (`created_by` is where it was spawned).
fn function(g: &Value) -> &str {
    g["start"]["function"].as_str().unwrap_or("")
}

/// Named by the async fn where the build keeps names; by vtable address in
/// a stripped build.
fn assert_named(g: &Value, profile: &str, f: &str, ctx: &dyn Fn() -> String) {
    let name = function(g);
    if profile == "stripped" {
        assert!(name.starts_with("vtable@0x"), "{}", ctx());
    } else {
        assert!(
            name.ends_with(&format!("::{f}")),
            "named by its async fn {f}: {}",
            ctx()
        );
    }
}

/// A leaked group's idle durations without --detailed: lower bounds, the
/// longest no longer than the session (they never woke after their first
/// poll, so the truth is their age). Returns (min, max).
fn idle_lower_bounds(r: &Report, g: &Value, ctx: &dyn Fn() -> String) -> (f64, f64) {
    let b = &g["blocked_s"];
    assert_eq!(
        b["at_least"],
        true,
        "idle durations as lower bounds: {}",
        ctx()
    );
    assert_eq!(b["max_at_least"], true, "{}", ctx());
    let (min, max) = (b["min"].as_f64(), b["max"].as_f64());
    let (Some(min), Some(max)) = (min, max) else {
        panic!("no idle durations: {}", ctx());
    };
    let elapsed = r.0["elapsed_s"].as_f64().unwrap_or(0.0);
    assert!(
        0.0 <= min && min <= max && max <= elapsed,
        "idle {min}–{max}s in a {elapsed}s session: {}",
        ctx()
    );
    (min, max)
}

fn alive_tasks(run: &CommandRun, ctx: &dyn Fn() -> String) -> u64 {
    run.value("alive_tasks ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the fixture printed no alive_tasks: {}", ctx()))
}

/// Reports every second (sampling stays at 500 ms) so that a control called
/// a leak at any point of its run fails, not only at the end.
const EXTRA: &[&str] = &["--interval", "1s"];

/// Every profile × mode. A failed run does not stop the others: the whole
/// matrix is printed, then the failures are listed.
#[test]
fn command_mode_leaks_are_named_and_called_leak_controls_are_not() {
    if !ebpf_available("command_mode_leaks_are_named_and_called_leak_controls_are_not") {
        return;
    }
    let t0 = Instant::now();
    let mut runs = 0;
    let mut failures = Vec::new();
    for profile in PROFILES {
        let bin = tokio_fixture(profile);
        let modes = LEAKS.iter().map(|l| (l.0, Some(l.1)));
        for (mode, leaked_fn) in modes.chain(CONTROLS.iter().map(|&c| (c, None))) {
            let run = run_command_until(
                &bin,
                &[mode, "--leak-for", LEAK_FOR, "--hold", "30s"],
                EXTRA,
                "alive_tasks ",
                Duration::from_secs(60),
            );
            runs += 1;
            let checked = std::panic::catch_unwind(AssertUnwindSafe(|| {
                check_command_run(profile, mode, leaked_fn, &run)
            }));
            match checked {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let first = msg.lines().next().unwrap_or("").to_string();
                    println!("tokio -c {profile:<9} {mode:<8} FAILED: {first}");
                    failures.push(msg);
                }
            }
        }
    }
    println!(
        "{runs} runs in {:.1}s (builds included), {} failed",
        t0.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The checks on one `-c` run; returns its line for the test's output.
fn check_command_run(
    profile: &str,
    mode: &str,
    leaked_fn: Option<&str>,
    run: &CommandRun,
) -> String {
    let r = run.last();
    let ctx = || {
        format!(
            "{profile} {mode}\nfixture:\n{}\nfinal report: {}\nstderr:\n{}",
            run.lines.join("\n"),
            r.summary(),
            run.stderr
        )
    };
    let alive = alive_tasks(run, &ctx);
    assert_eq!(r.0["target"]["runtime"], "rust-tokio", "{}", ctx());
    // The probes see every spawn and completion (tasks before the probes
    // armed come from the first heap scan); in stripped builds at the
    // functions found by code shape.
    let notes = r.0["notes"].to_string();
    assert!(r.events("spawn") >= alive, "spawns seen: {}", ctx());
    assert!(!notes.contains("missed"), "spawn probe coverage: {}", ctx());
    assert_eq!(
        r.live(),
        alive,
        "live tasks vs num_alive_tasks(): {}",
        ctx()
    );
    let top = r.groups().iter().max_by_key(|g| g["count"].as_u64());
    if let Some(f) = leaked_fn {
        assert_eq!(alive, LEAKED, "the fixture's own count: {}", ctx());
        let g = top.unwrap_or_else(|| panic!("no group: {}", ctx()));
        assert_named(g, profile, f, &ctx);
        assert_eq!(g["count"].as_u64(), Some(alive), "{}", ctx());
        assert_eq!(g["verdict"], "leak", "{}", ctx());
        idle_lower_bounds(r, g, &ctx);
        let state = g["state"].as_str().unwrap_or("");
        if mode == "pending" {
            assert!(state.contains("no waker"), "{}", ctx());
        } else {
            assert!(state.starts_with("idle"), "{}", ctx());
        }
    } else {
        for report in &run.reports {
            for g in report.groups() {
                assert_ne!(
                    g["verdict"],
                    "leak",
                    "a control was called a leak at {:.1}s: {}\n{}",
                    report.0["elapsed_s"].as_f64().unwrap_or(0.0),
                    report.summary(),
                    ctx()
                );
            }
        }
        if mode == "server" {
            // The long-lived accept loop is there, and healthy.
            assert_eq!(alive, 1, "the fixture's own count: {}", ctx());
            let g = top.unwrap_or_else(|| panic!("no accept_loop group: {}", ctx()));
            assert_named(g, profile, "accept_loop", &ctx);
            assert_eq!(g["verdict"], "ok", "{}", ctx());
            // It accepted until the end of the active phase: where spawn
            // sites show it spawning handlers, its idle duration starts
            // again (its memory looks the same between connections).
            let elapsed = r.0["elapsed_s"].as_f64().unwrap_or(0.0);
            let idle = g["blocked_s"]["max"].as_f64().unwrap_or(0.0);
            if profile != "stripped" {
                assert!(
                    idle <= elapsed - 1.0,
                    "accept_loop idle ≥ {idle}s in a {elapsed}s session: {}",
                    ctx()
                );
            }
        } else {
            assert_eq!(alive, 0, "the fixture's own count: {}", ctx());
        }
    }
    format!(
        "tokio -c {profile:<9} {mode:<8} live {:>3} == num_alive_tasks {alive:>3}; {} ({:.1}s, {} reports)",
        r.live(),
        top.map(|g| format!(
            "{} × {} [{}] {}: {}",
            g["count"],
            function(g),
            g["state"].as_str().unwrap_or(""),
            g["verdict"].as_str().unwrap_or(""),
            g["why"].as_str().unwrap_or("")
        ))
        .unwrap_or_else(|| "no groups".into()),
        run.took.as_secs_f64(),
        run.reports.len()
    )
}

/// A stripped build under 200 short tasks a second (1-8 ms each, so most
/// live shorter than any refresh): the spawn and completion probes, at the
/// functions found by code shape, must count exactly the tasks the fixture
/// counted itself, and the live count must equal `num_alive_tasks()`.
#[test]
fn stripped_build_counts_every_short_task() {
    if !ebpf_available("stripped_build_counts_every_short_task") {
        return;
    }
    let bin = tokio_fixture("stripped");
    // --n 1: one job per 5 ms tick; the delay lets the probes arm first.
    let run = run_command_until(
        &bin,
        &[
            "short",
            "--n",
            "1",
            "--delay",
            "1s",
            "--leak-for",
            "5s",
            "--hold",
            "30s",
        ],
        &[],
        "alive_tasks ",
        Duration::from_secs(60),
    );
    let r = run.last();
    let ctx = || {
        format!(
            "fixture:\n{}\nfinal report: {}\nnotes: {}\nstderr:\n{}",
            run.lines.join("\n"),
            r.summary(),
            r.0["notes"],
            run.stderr
        )
    };
    let count = |prefix: &str| -> u64 {
        run.value(prefix)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the fixture printed no {prefix}: {}", ctx()))
    };
    let (spawned, completed) = (count("tasks_spawned "), count("tasks_completed "));
    let alive = alive_tasks(&run, &ctx);
    // Its own counts: ~200/s for 5 s, every one ended.
    assert!(spawned >= 500, "{}", ctx());
    assert_eq!((completed, alive), (spawned, 0), "{}", ctx());
    assert_eq!(r.events("spawn"), spawned, "spawns seen: {}", ctx());
    assert_eq!(r.events("exit"), completed, "completions seen: {}", ctx());
    assert_eq!(r.live(), alive, "live vs num_alive_tasks(): {}", ctx());
    println!(
        "stripped short: fixture spawned {spawned} completed {completed} alive {alive}; \
         leaktrace spawn {} exit {} live {} (corrected {}, lost {})",
        r.events("spawn"),
        r.events("exit"),
        r.live(),
        r.events("corrected"),
        r.events("lost")
    );
}

/// `--pid` on a fixture that has been leaking for a second: the tasks from
/// before the attach count, the trend from those after makes the verdict,
/// and the final report (after the fixture went quiescent) matches its count.
#[test]
fn pid_mode_on_a_process_already_leaking() {
    if !ebpf_available("pid_mode_on_a_process_already_leaking") {
        return;
    }
    for (profile, (mode, f)) in [("release", LEAKS[0]), ("stripped", LEAKS[1])] {
        let bin = tokio_fixture(profile);
        // A long active phase: attaching waits for the kernel's uprobe lock,
        // which other tests' sessions hold while they detach, so the trend
        // may start seconds late on a busy machine.
        let fx = Fixture::start(&bin, [mode, "--leak-for", "8s", "--hold", "30s"]);
        std::thread::sleep(Duration::from_secs(1));
        // Ends at least 9s after the fixture started: after its quiescent line.
        let (reports, stderr) = run_pid_mode(&fx, &["--duration", "8s"]);
        let alive: u64 = fx
            .wait_for_line("alive_tasks ", Duration::from_secs(10))
            .trim_start_matches("alive_tasks ")
            .trim()
            .parse()
            .expect("alive_tasks");
        let r = reports.last().expect("a report");
        let ctx = || format!("{profile} {mode} --pid\n{}\n{stderr}", r.summary());
        assert_eq!(r.0["final"], true, "{}", ctx());
        assert_eq!(
            r.live(),
            alive,
            "live tasks vs num_alive_tasks(): {}",
            ctx()
        );
        let g = r
            .groups()
            .iter()
            .max_by_key(|g| g["count"].as_u64())
            .unwrap_or_else(|| panic!("no group: {}", ctx()));
        assert_named(g, profile, f, &ctx);
        assert_eq!(g["count"].as_u64(), Some(alive), "{}", ctx());
        assert_eq!(g["verdict"], "leak", "{}", ctx());
        let (min, max) = idle_lower_bounds(r, g, &ctx);
        // The tasks leaked before attach have idled all the session.
        assert!(
            max >= 3.0,
            "idle ≥ {max}s for tasks idle since attach: {}",
            ctx()
        );
        println!(
            "tokio --pid {profile:<9} {mode:<8} live {:>3} == num_alive_tasks {alive:>3}; {} × {} idle ≥{min:.1}–≥{max:.1}s {}: {}",
            r.live(),
            g["count"],
            function(g),
            g["verdict"].as_str().unwrap_or(""),
            g["why"].as_str().unwrap_or("")
        );
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

/// The line of `tests/fixtures/rust/src/main.rs` holding `text`.
fn fixture_line(text: &str) -> u64 {
    let root = leaktrace_e2e::build::workspace_dir();
    let src = std::fs::read_to_string(root.join("tests/fixtures/rust/src/main.rs"))
        .expect("fixture source");
    let at = src
        .lines()
        .position(|l| l.contains(text) && !l.trim_start().starts_with("//"))
        .unwrap_or_else(|| panic!("{text:?} not in the fixture"));
    at as u64 + 1
}

/// Full DWARF and `--detailed`: each leaked task's group names the `.await`
/// it is parked at (decoded from its state machine in memory), idle
/// durations come from the poll probe, and polls are counted.
#[test]
fn detailed_mode_gives_await_lines_and_idle_durations() {
    if !ebpf_available("detailed_mode_gives_await_lines_and_idle_durations") {
        return;
    }
    let bin = tokio_fixture("fulldebug");
    // The cause each leak is recognised as (README §Causes): a receive on
    // an mpsc channel whose senders stay alive, and a future nothing can
    // ever wake. A oneshot whose sender is kept has no catalogue entry yet.
    for (mode, f, await_text, cause) in [
        ("oneshot", "oneshot_waiter", "rx.await", None),
        (
            "mpsc",
            "mpsc_consumer",
            "rx.recv().await",
            Some("channel-never-closed"),
        ),
        (
            "pending",
            "pending_forever",
            "pending::<()>().await",
            Some("no-waker"),
        ),
    ] {
        let run = run_command_until(
            &bin,
            &[mode, "--leak-for", LEAK_FOR, "--hold", "30s"],
            &["--detailed", "--stacks"],
            "alive_tasks ",
            Duration::from_secs(60),
        );
        let r = run.last();
        let ctx = || format!("{mode}: {}\nstderr:\n{}", r.summary(), run.stderr);
        let alive = alive_tasks(&run, &ctx);
        assert_eq!(r.live(), alive, "{}", ctx());
        let g = r
            .groups()
            .iter()
            .max_by_key(|g| g["count"].as_u64())
            .unwrap_or_else(|| panic!("no group: {}", ctx()));
        assert_eq!(g["count"].as_u64(), Some(LEAKED), "{}", ctx());
        assert_eq!(g["verdict"], "leak", "{}", ctx());
        let at = &g["blocked_at"];
        let line = fixture_line(await_text);
        assert!(
            at["function"]
                .as_str()
                .unwrap_or("")
                .ends_with(&format!("::{f}")),
            "{}",
            ctx()
        );
        assert_eq!(
            at["line"].as_u64(),
            Some(line),
            "the .await line: {}",
            ctx()
        );
        assert!(!g["blocked_s"].is_null(), "idle durations: {}", ctx());
        assert!(r.0["events"]["poll"].as_u64().unwrap_or(0) > 0, "{}", ctx());
        if let Some(cause) = cause {
            assert_eq!(g["cause"].as_str(), Some(cause), "{}", ctx());
        }
        println!(
            "tokio --detailed fulldebug {mode:<8} live {} == {alive}; {} × {} blocked at main.rs:{} (the `{await_text}`), cause {}, idle {}–{}s; {} polls",
            r.live(),
            g["count"],
            function(g),
            line,
            g["cause"],
            g["blocked_s"]["min"],
            g["blocked_s"]["max"],
            r.0["events"]["poll"]
        );
    }
}
