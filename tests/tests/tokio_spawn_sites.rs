//! tokio spawn sites: the fixture's `sites` mode spawns the same async fn
//! (`site_waiter`) from two functions and prints where, from
//! `Location::caller()` of a `#[track_caller]` fn called on each spawn's
//! line. leaktrace, unwinding the spawning thread's stack copied at the
//! spawn probe, must put the tasks in two groups, each `spawned by` the
//! function the fixture names (and at its line where the build has line
//! tables), with the fixture's counts. A stripped build has no names for
//! the stack: its tasks stay one group by future type. Also prints what the
//! unwinding costs per task, and what the spawn probe costs the program's
//! own spawns (not asserted).
mod common;

use std::{collections::HashMap, process::Command, time::Duration};

use common::*;
use serde_json::Value;

/// (function, count) the `sites` mode spawns with its default N = 12.
const SITES: [(&str, u64); 2] = [("admin_listen", 12), ("worker_pool", 7)];

/// `spawn_site <fn> <file>:<line>` lines: fn → (file, line).
fn fixture_sites(lines: &[String]) -> HashMap<String, (String, u32)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("spawn_site ")?.split_whitespace();
            let f = w.next()?.to_string();
            let (file, line) = w.next()?.rsplit_once(':')?;
            Some((f, (file.to_string(), line.parse().ok()?)))
        })
        .collect()
}

/// The groups, one line each (Report::summary expects Go's counters).
fn show(r: &Report) -> String {
    r.groups()
        .iter()
        .map(|g| {
            format!(
                "{} × {} spawned by {} [{}]",
                g["count"], g["start"]["function"], g["created_by"], g["state"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn site_groups(r: &Report) -> Vec<&Value> {
    r.groups()
        .iter()
        .filter(|g| {
            g["start"]["function"]
                .as_str()
                .is_some_and(|f| f.ends_with("::site_waiter"))
        })
        .collect()
}

#[test]
fn spawn_sites_match_the_fixtures_own_record() {
    if !ebpf_available("spawn_sites_match_the_fixtures_own_record") {
        return;
    }
    // (profile, whether its line tables give the line)
    for (profile, lines) in [("lines", true), ("release", false), ("fatlto", false)] {
        let bin = tokio_fixture(profile);
        let run = run_command_until(
            &bin,
            // The delay lets the probes arm before the spawns.
            &["sites", "--delay", "1s", "--hold", "30s"],
            // The report comes ~0.3 s after the spawns: show young tasks.
            &["--older", "0s"],
            "alive_tasks ",
            Duration::from_secs(60),
        );
        let r = run.last();
        let truth = fixture_sites(&run.lines);
        let ctx = || {
            format!(
                "{profile}\nfixture: {truth:?}\nfinal report: {}\n{}",
                show(r),
                run.stderr
            )
        };
        let groups = site_groups(r);
        assert_eq!(groups.len(), 2, "two spawn sites, two groups: {}", ctx());
        for (f, count) in SITES {
            let (file, line) = truth
                .get(f)
                .unwrap_or_else(|| panic!("the fixture printed no site for {f}: {}", ctx()));
            let g = groups
                .iter()
                .find(|g| {
                    g["created_by"]["function"]
                        .as_str()
                        .is_some_and(|s| s == format!("tokio_fixture::{f}"))
                })
                .unwrap_or_else(|| panic!("no group spawned by {f}: {}", ctx()));
            assert_eq!(g["count"].as_u64(), Some(count), "{f}: {}", ctx());
            if lines {
                let got_file = g["created_by"]["file"].as_str().unwrap_or("");
                assert!(got_file.ends_with(file.as_str()), "{f}: {}", ctx());
                assert_eq!(g["created_by"]["line"].as_u64(), Some(u64::from(*line)));
            }
            println!(
                "{profile:<8} {f}: fixture {file}:{line} × {count}; leaktrace {} ({}:{}) × {}",
                g["created_by"]["function"].as_str().unwrap_or(""),
                g["created_by"]["file"].as_str().unwrap_or(""),
                g["created_by"]["line"],
                g["count"]
            );
        }
        let e = &r.0["events"];
        let stacks = e["spawn_stacks"].as_u64().unwrap_or(0);
        assert!(stacks >= 19, "every spawn's stack unwound: {}", ctx());
        assert_eq!(e["spawn_stacks_lost"], 0, "{}", ctx());
        println!(
            "{profile:<8} {stacks} stacks unwound, {:.1} µs each (leaktrace's time)",
            e["spawn_unwind_ns"].as_u64().unwrap_or(0) as f64 / stacks as f64 / 1e3
        );
    }

    // Stripped: nothing names the stack; one group by future type.
    let run = run_command_until(
        &tokio_fixture("stripped"),
        &["sites", "--delay", "1s", "--hold", "30s"],
        &["--older", "0s", "--debug-dir", "/nonexistent"],
        "alive_tasks ",
        Duration::from_secs(60),
    );
    let r = run.last();
    let g = r
        .groups()
        .iter()
        .max_by_key(|g| g["count"].as_u64())
        .unwrap_or_else(|| panic!("no group: {}", show(r)));
    assert_eq!(g["count"].as_u64(), Some(19), "{}", show(r));
    assert_eq!(g["created_by"], g["start"], "{}", show(r));
}

/// The spawn probe's cost to the program, now that it copies the stack:
/// `spawnbench` alone and under leaktrace (printed, not asserted; timings
/// on a shared machine are noisy).
#[test]
fn spawn_stack_cost_is_measured() {
    if !ebpf_available("spawn_stack_cost_is_measured") {
        return;
    }
    let bin = tokio_fixture("release");
    let n = "20000";
    let bench = |line: &str| -> f64 {
        line.trim_start_matches("spawn_ns_per_task ")
            .trim()
            .parse()
            .unwrap_or(f64::NAN)
    };
    let out = Command::new(&bin)
        .args(["spawnbench", "--n", n])
        .output()
        .expect("spawnbench");
    let alone = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("spawn_ns_per_task "))
        .map(bench)
        .expect("spawn_ns_per_task");
    let run = run_command_until(
        &bin,
        &["spawnbench", "--n", n, "--delay", "1s"],
        &[],
        "alive_tasks ",
        Duration::from_secs(60),
    );
    let traced = run
        .value("spawn_ns_per_task ")
        .map(bench)
        .expect("spawn_ns_per_task under leaktrace");
    let e = &run.last().0["events"];
    let stacks = e["spawn_stacks"].as_u64().unwrap_or(0);
    println!(
        "spawnbench {n} tasks: {alone:.0} ns/task alone, {traced:.0} ns/task traced (+{:.0} ns); \
         {stacks} stacks unwound in {:.1} µs each, {} stacks lost (ring full)",
        traced - alone,
        e["spawn_unwind_ns"].as_u64().unwrap_or(0) as f64 / stacks.max(1) as f64 / 1e3,
        e["spawn_stacks_lost"]
    );
}
