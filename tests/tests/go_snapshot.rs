//! Goroutines that leaked before leaktrace attached (the incident case): read
//! from the target's memory at attach, without ever stopping it.
mod common;

use std::time::{Duration, Instant};

use common::*;
use leaktrace_e2e::{BuildMode, Fixture, pick};

/// How many goroutines the fixture leaks before attach: 10,000 by default
/// (as in CI), `LEAKTRACE_SNAPSHOT_N` to change it.
fn n() -> u64 {
    std::env::var("LEAKTRACE_SNAPSHOT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn first_report_shows_every_goroutine_leaked_before_attach() {
    if !ebpf_available("first_report_shows_every_goroutine_leaked_before_attach") {
        return;
    }
    let n = n();
    for go in pick(&["1.19", "1.22", "1.24", "1.26", "1.27"]) {
        let modes: &[BuildMode] = if go.minor() == 19 || go.minor() >= 26 {
            &[BuildMode::Plain, BuildMode::Stripped]
        } else {
            &[BuildMode::Plain]
        };
        for &mode in modes {
            let bin = build("chan_send", &go, mode);
            let fx = Fixture::start(&bin, ["-n", &n.to_string(), "-hold", "120s"]);
            let truth = fx.truth(Duration::from_secs(120));
            let t0 = Instant::now();
            let (reports, stderr) = run_pid_mode(&fx, &["--duration", "1s"]);
            let took = t0.elapsed();
            let first = reports.first().expect("a report");
            let ctx = || format!("{} {mode:?}\n{}\n{stderr}", go.full, first.summary());
            assert_eq!(
                first.live(),
                truth.numgoroutine,
                "live vs runtime.NumGoroutine(): {}",
                ctx()
            );
            let at = "main.(*Hub).Publish.func1";
            let groups = first.groups_at(at);
            assert_eq!(groups.len(), 1, "one group blocked at {at}: {}", ctx());
            let g = groups[0];
            let want = truth.profile.count_blocked_at(at);
            assert!(want + 10 >= n, "the fixture leaked {want} of {n}");
            assert_eq!(g["count"].as_u64(), Some(want), "{}", ctx());
            assert_eq!(
                g["created_by"]["function"],
                "main.(*Hub).Publish",
                "{}",
                ctx()
            );
            assert_eq!(g["state"], "chan send", "{}", ctx());
            let line = truth
                .profile
                .blocked_at(at)
                .next()
                .and_then(|r| r.first_non_stdlib_frame())
                .map(|f| u64::from(f.line));
            assert_eq!(g["blocked_at"]["line"].as_u64(), line, "{}", ctx());
            assert_eq!(
                g["blocked_s"]["at_least"], true,
                "durations of pre-attach goroutines are lower bounds"
            );
            if mode == BuildMode::Stripped {
                assert!(
                    stderr.contains("-s -w") || stderr.contains("no DWARF"),
                    "the stripped build is named: {stderr}"
                );
            }
            println!(
                "snapshot {:<10} {:<8} {want} goroutines leaked before attach: group {} == runtime's {want}, live {} == NumGoroutine {}; leaktrace ran {:.1}s",
                go.full,
                format!("{mode:?}"),
                g["count"],
                first.live(),
                truth.numgoroutine,
                took.as_secs_f64()
            );
        }
    }
}

/// A fixture ticking every 1 ms reports the largest gap between ticks per
/// 100 ms window; leaktrace attaches and reads 100,000 goroutines. A
/// stop-the-world or ptrace-stop would show as a gap as long as the pause
/// (hundreds of ms for this many goroutines). The bound is loose on purpose:
/// it catches a pause, not scheduling noise.
#[test]
fn target_is_never_paused_during_a_large_snapshot() {
    if !ebpf_available("target_is_never_paused_during_a_large_snapshot") {
        return;
    }
    let go = one_go("1.26");
    let bin = build("ticker", &go, BuildMode::Plain);
    let fx = Fixture::start(&bin, ["-n", "100000", "-hold", "120s"]);
    fx.truth(Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(1500));
    let gaps = |fx: &Fixture| -> Vec<(u64, u64)> {
        fx.stdout_lines()
            .iter()
            .filter_map(|l| {
                let mut it = l.strip_prefix("gap ")?.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .collect()
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let start = now_ms();
    let (reports, stderr) = run_pid_mode(&fx, &["--duration", "2s"]);
    let end = now_ms();
    std::thread::sleep(Duration::from_millis(300));
    let all = gaps(&fx);
    let baseline = all
        .iter()
        .filter(|g| g.0 + 1000 >= start && g.0 < start)
        .map(|g| g.1)
        .max()
        .unwrap_or(0);
    let during: Vec<u64> = all
        .iter()
        .filter(|g| g.0 >= start && g.0 <= end + 100)
        .map(|g| g.1)
        .collect();
    let worst = during.iter().copied().max().unwrap_or(0);
    let report = reports.last().expect("a report");
    assert!(report.live() >= 100_000, "{}\n{stderr}", report.summary());
    assert!(
        during.len() >= 10,
        "the ticker kept reporting while leaktrace ran ({} windows)",
        during.len()
    );
    println!(
        "no pause: largest gap between 1 ms ticks while leaktrace read {} goroutines: {:.1} ms (baseline before attach: {:.1} ms, {} windows)",
        report.live(),
        worst as f64 / 1000.0,
        baseline as f64 / 1000.0,
        during.len()
    );
    assert!(
        worst < 100_000,
        "the target paused for {worst} µs while leaktrace attached"
    );
}
