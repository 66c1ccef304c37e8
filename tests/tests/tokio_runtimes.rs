//! tokio runtimes as programs use them: the fixture's `runtimes` mode runs
//! tasks on its `#[tokio::main]` multi-thread runtime, a second
//! multi-thread runtime, a current-thread runtime, a `LocalSet` on that
//! runtime's thread, and `spawn_blocking` closures, each kind its own async
//! fn, all waiting for good; then it prints every runtime's own
//! `num_alive_tasks()` and `num_workers()`, and its own counts of LocalSet
//! tasks and running blocking closures (tokio's `num_blocking_threads()`
//! needs `--cfg tokio_unstable`; no stable metric counts LocalSet tasks).
//!
//! leaktrace must count, per kind, what those say: `live` is Σ
//! `num_alive_tasks()` plus the LocalSet's tasks; blocking closures are a
//! `blocking` group (`kind: "blocking"`) counted in `blocking`, not in
//! `live` and not the runtime's own; the multi-thread runtimes' worker
//! launchers are the runtime's own (`system`) where names tell them, and
//! `blocking` in a stripped build. Idle tasks have idle durations without
//! `--detailed`, as lower bounds (`≥`) no longer than they truly idled.
mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use serde_json::Value;

/// The fixture's own numbers.
#[derive(Debug, Default)]
struct Truth {
    /// Runtime name → (flavor, num_alive_tasks, num_workers).
    runtimes: HashMap<String, (String, u64, u64)>,
    local: u64,
    blocking: u64,
    alive: u64,
}

impl Truth {
    fn parse(lines: &[String]) -> Option<Truth> {
        let mut t = Truth::default();
        for l in lines {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["runtime", name, flavor, "alive", n, "workers", k] => {
                    t.runtimes.insert(
                        name.to_string(),
                        (flavor.to_string(), n.parse().ok()?, k.parse().ok()?),
                    );
                }
                ["local_tasks", n] => t.local = n.parse().ok()?,
                ["blocking_tasks", n] => t.blocking = n.parse().ok()?,
                ["alive_tasks", n] => t.alive = n.parse().ok()?,
                _ => {}
            }
        }
        (t.runtimes.len() == 3).then_some(t)
    }

    /// Worker launchers: one blocking-pool task per multi-thread worker.
    fn launchers(&self) -> u64 {
        self.runtimes
            .values()
            .filter(|(flavor, _, _)| flavor == "multi_thread")
            .map(|r| r.2)
            .sum()
    }
}

fn function(g: &Value) -> &str {
    g["start"]["function"].as_str().unwrap_or("")
}

fn show(r: &Report) -> String {
    let mut s = format!(
        "live {} blocking {} system {} events {}\n",
        r.0["live"], r.0["blocking"], r.0["system"], r.0["events"]
    );
    for g in r.groups() {
        s.push_str(&format!(
            "  {} {} × {} [{}] blocked_s {} {}\n",
            g["kind"], g["count"], g["start"]["function"], g["state"], g["blocked_s"], g["verdict"]
        ));
    }
    s
}

#[test]
fn every_runtime_flavor_is_counted_as_tokio_counts_it() {
    if !ebpf_available("every_runtime_flavor_is_counted_as_tokio_counts_it") {
        return;
    }
    for profile in ["release", "stripped"] {
        let bin = tokio_fixture(profile);
        let run = run_command_until(
            &bin,
            // The delay lets the probes arm before the spawns; the tasks
            // then idle 3 s before the fixture counts them.
            &[
                "runtimes",
                "--delay",
                "1s",
                "--leak-for",
                "3s",
                "--hold",
                "30s",
            ],
            &["--interval", "1s"],
            "alive_tasks ",
            Duration::from_secs(60),
        );
        let r = run.last();
        let ctx = || {
            format!(
                "{profile}\nfixture:\n{}\nfinal report: {}\nnotes: {}\nstderr:\n{}",
                run.lines.join("\n"),
                show(r),
                r.0["notes"],
                run.stderr
            )
        };
        let truth =
            Truth::parse(&run.lines).unwrap_or_else(|| panic!("no ground truth: {}", ctx()));
        assert_eq!(
            truth.alive,
            truth.runtimes.values().map(|r| r.1).sum::<u64>(),
            "{}",
            ctx()
        );
        assert_eq!(r.0["target"]["runtime"], "rust-tokio", "{}", ctx());
        // LocalSet tasks are the program's tasks, in no runtime's count.
        assert_eq!(r.live(), truth.alive + truth.local, "live: {}", ctx());
        let blocking = r.0["blocking"].as_u64().unwrap_or(u64::MAX);
        let system = r.0["system"].as_u64().unwrap_or(u64::MAX);
        let groups = r.groups();
        let blocking_groups: Vec<&Value> =
            groups.iter().filter(|g| g["kind"] == "blocking").collect();
        let blocking_in_groups: u64 = blocking_groups
            .iter()
            .map(|g| g["count"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(blocking_in_groups, blocking, "{}", ctx());
        for g in &blocking_groups {
            // Their closures run for good: a state, not a leak of its own.
            assert_eq!(g["state"], "running", "{}", ctx());
            assert_eq!(g["verdict"], "ok", "{}", ctx());
        }
        // Every bound spawn went through a probed `bind_inner` (in the
        // stripped build, found by code shape), whatever the runtime's
        // flavor; LocalSet spawns do not.
        assert_eq!(r.events("spawn"), truth.alive, "spawns seen: {}", ctx());
        if profile == "stripped" {
            // Nothing names the launchers: they are blocking tasks too.
            assert_eq!(blocking, truth.blocking + truth.launchers(), "{}", ctx());
            assert_eq!(system, 0, "{}", ctx());
            // One group per future type, with each kind's count.
            let mut want: Vec<u64> = truth.runtimes.values().map(|r| r.1).collect();
            want.push(truth.local);
            want.sort();
            let mut idle: Vec<u64> = groups
                .iter()
                .filter(|g| g["kind"].is_null())
                .map(|g| g["count"].as_u64().unwrap_or(0))
                .collect();
            idle.sort();
            assert_eq!(idle, want, "{}", ctx());
        } else {
            assert_eq!(blocking, truth.blocking, "{}", ctx());
            assert_eq!(system, truth.launchers(), "launchers: {}", ctx());
            let count_of = |f: &str| -> u64 {
                groups
                    .iter()
                    .filter(|g| function(g).ends_with(&format!("::{f}")))
                    .map(|g| g["count"].as_u64().unwrap_or(0))
                    .sum()
            };
            for (f, rt) in [
                ("main_rt_waiter", "main"),
                ("second_rt_waiter", "second"),
                ("current_rt_waiter", "current"),
            ] {
                assert_eq!(count_of(f), truth.runtimes[rt].1, "{f}: {}", ctx());
            }
            assert_eq!(count_of("local_waiter"), truth.local, "{}", ctx());
            let [b] = blocking_groups.as_slice() else {
                panic!("one blocking group: {}", ctx());
            };
            assert!(
                function(b).contains("blocking_waiter"),
                "named by its closure: {}",
                ctx()
            );
        }
        // Idle for the 3 s of --leak-for (at 1 s refreshes): a lower bound
        // of at least 1 s, and no more than the session, which they idled
        // all of.
        let elapsed = r.0["elapsed_s"].as_f64().unwrap_or(0.0);
        for g in groups.iter().filter(|g| g["kind"].is_null()) {
            let b = &g["blocked_s"];
            assert_eq!(g["state"], "idle", "{}", ctx());
            assert_eq!(b["at_least"], true, "a lower bound: {}", ctx());
            let (min, max) = (
                b["min"].as_f64().unwrap_or(0.0),
                b["max"].as_f64().unwrap_or(f64::MAX),
            );
            assert!(
                min >= 1.0 && max <= elapsed,
                "idle {min}–{max}s in a {elapsed}s session: {}",
                ctx()
            );
        }
        println!(
            "tokio runtimes {profile:<8} live {} == Σ num_alive_tasks {} + LocalSet {}; blocking {} (fixture {} running{}); system {}; spawned {}; idle ≥ {}",
            r.live(),
            truth.alive,
            truth.local,
            blocking,
            truth.blocking,
            if profile == "stripped" {
                format!(" + {} launchers", truth.launchers())
            } else {
                String::new()
            },
            system,
            r.events("spawn"),
            groups
                .iter()
                .filter_map(|g| g["blocked_s"]["min"].as_f64())
                .fold(f64::INFINITY, f64::min)
        );
        for (name, (flavor, alive, workers)) in &truth.runtimes {
            println!("  runtime {name} ({flavor}, {workers} workers): num_alive_tasks {alive}");
        }
    }
}
