//! Causes end to end: each fixture under `leaktrace -c` (periodic reports
//! every second, then a final one), on the newest installed Go toolchain,
//! checked group by group against the fixture's own goroutine profile (the
//! count) and its expect.json (the verdict and the catalogue's `cause`).
//!
//! Every test prints one table line per expected group:
//!
//! ```text
//! fixture  group (blocked at)  count/runtime  verdict  cause  reason
//! ```
//!
//! and, for any fixture, a `leak` in any report of the run must be one of
//! the groups its expect.json lists as leaking: a control has none, and a
//! leak fixture's other groups (a spawn helper's healthy goroutines, a
//! server's background loops) are never called leaks.
mod common;

use std::sync::Mutex;

use common::*;
use leaktrace_e2e::{BuildMode, Expect, Group};

/// Catalogue causes `classify()` does not recognise yet. A fixture
/// expecting one is shown as pending (with what leaktrace says now) rather
/// than failing. Empty: the channel reader tells timers and tickers apart,
/// so `timer-in-select` and `ticker-never-stopped` are checked like the rest.
const NOT_YET_RECOGNISED: &[&str] = &[];

/// Leak fixtures leaktrace does not call leaks yet, and why. Their leaking
/// groups show the verdict leaktrace gives now (marked pending) instead of
/// failing; counts, causes given on `leak`/`suspect` groups, and the absence
/// of false alarms are still checked.
const PENDING_VERDICTS: &[(&str, &str)] = &[];

/// How one fixture is run.
struct Plan {
    fixture_args: &'static [&'static str],
    leaktrace: &'static [&'static str],
    /// Words the final reason of the primary group must contain.
    reason_has: &'static [&'static str],
    /// Words it must not contain.
    reason_lacks: &'static [&'static str],
}

/// Leak for 2s at 20 operations/s, reports every second, final at 5s.
const PLAIN: Plan = Plan {
    fixture_args: &["-leak-for", "2s", "-hold", "30s"],
    leaktrace: &["--interval", "1s", "--duration", "5s"],
    reason_has: &[],
    reason_lacks: &[],
};

/// One fixture at a time, whatever the test harness's threads: runs share
/// two CPUs, and the verdicts read lifetimes and trends.
static SERIAL: Mutex<()> = Mutex::new(());

fn causes(name: &str, plan: &Plan) {
    if !ebpf_available(name) {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let minor = go.minor();
    let bin = build(name, &go, BuildMode::Plain);
    let run = run_command_with(&bin, plan.fixture_args, plan.leaktrace);
    let expect = Expect::load(name);
    let report = run.last();
    let ctx = || {
        format!(
            "{name} {}\n{}\nruntime profile:\n{}\nstderr:\n{}",
            go.full,
            report.summary(),
            run.truth.raw,
            run.stderr
        )
    };
    assert_eq!(
        report.live(),
        run.truth.numgoroutine,
        "live goroutines vs runtime.NumGoroutine(): {}",
        ctx()
    );

    let pending = PENDING_VERDICTS
        .iter()
        .find(|(f, _)| *f == name)
        .map(|(_, why)| *why);
    let leaking: Vec<&Group> = expect.leak_groups().collect();
    let expected = leaking
        .iter()
        .map(|g| (*g, true))
        .chain(expect.must_not_flag.iter().map(|g| (g, false)));
    let mut lines = Vec::new();
    for (i, (group, leaks)) in expected.enumerate() {
        let at = group.blocked_at_for(minor);
        let ours = report.groups_at(&at);
        let truth = run.truth.profile.count_at(&at);
        let count: u64 = ours.iter().map(|g| g["count"].as_u64().unwrap_or(0)).sum();
        assert_eq!(
            count,
            truth,
            "goroutines at {at}: leaktrace vs the runtime's profile: {}",
            ctx()
        );
        let Some(g) = ours.first() else {
            // Short-lived work, none left at the end (0 in the profile too).
            lines.push(row(name, &at, 0, 0, "-", "-", "none left"));
            continue;
        };
        let verdict = g["verdict"].as_str().unwrap_or_default();
        let shown = match pending.filter(|_| leaks && verdict != "leak") {
            Some(_) => format!("{verdict} (leak: pending)"),
            None => verdict.to_string(),
        };
        match (&group.verdict, leaks) {
            _ if leaks && pending.is_some() => {}
            (Some(want), _) => assert_eq!(verdict, want, "verdict at {at}: {}", ctx()),
            (None, true) => assert_eq!(verdict, "leak", "verdict at {at}: {}", ctx()),
            (None, false) => {
                for g in &ours {
                    assert_ne!(g["verdict"], "leak", "{at} must not be a leak: {}", ctx());
                }
            }
        }
        let got = g["cause"].as_str();
        let cause = match &group.cause {
            // No cause on an `ok` group, by design.
            Some(Some(want)) if verdict == "ok" && pending.is_some() => {
                format!("{want} (pending; none on ok)")
            }
            Some(Some(want)) if NOT_YET_RECOGNISED.contains(&want.as_str()) => {
                format!("{want} (pending; now {})", got.unwrap_or("unknown"))
            }
            Some(want) => {
                assert_eq!(got, want.as_deref(), "cause at {at}: {}", ctx());
                got.unwrap_or("unknown").to_string()
            }
            None => got.unwrap_or("-").to_string(),
        };
        let why = g["why"].as_str().unwrap_or_default();
        if verdict != "ok" {
            for n in quoted_counts(why) {
                assert!(
                    n <= g["count"].as_u64().unwrap_or(0),
                    "{at}: the reason quotes {n}, more than the group's {}: {why}\n{}",
                    g["count"],
                    ctx()
                );
            }
        }
        if i == 0 && leaks && pending.is_none() {
            for w in plan.reason_has {
                assert!(why.contains(w), "{at}: the reason lacks {w:?}: {why}");
            }
            for w in plan.reason_lacks {
                assert!(!why.contains(w), "{at}: the reason says {w:?}: {why}");
            }
        }
        lines.push(row(name, &at, count, truth, &shown, &cause, why));
    }

    // No false alarm anywhere in the run.
    for (n, r) in run.reports.iter().enumerate() {
        for g in r.groups().iter().filter(|g| g["verdict"] == "leak") {
            let at = g["blocked_at"]["function"]
                .as_str()
                .or(g["start"]["function"].as_str())
                .unwrap_or_default();
            assert!(
                leaking.iter().any(|l| l.blocked_at_for(minor) == at),
                "report {n} of {name} ({} s) calls {at} a leak, which expect.json does not: {}\n{}",
                r.0["elapsed_s"],
                r.summary(),
                ctx()
            );
        }
    }
    if let Some(why) = pending {
        lines.push(format!("{name:<14} (pending: {why})"));
    }
    // After the harness's "test NAME ... " (no newline under --nocapture).
    println!();
    for l in lines {
        println!("{l}");
    }
}

/// The group sizes a reason quotes: "grew by N", "N more", "these N have".
fn quoted_counts(why: &str) -> Vec<u64> {
    let words: Vec<&str> = why.split_whitespace().collect();
    let num = |w: &str| w.trim_start_matches('+').parse::<u64>().ok();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or_default();
        let after = words.get(i + 2).copied().unwrap_or_default();
        if *w == "by" && i > 0 && words[i - 1] == "grew" {
            out.extend(num(next));
        }
        if next == "more" {
            out.extend(num(w));
        }
        if *w == "these" && after == "have" {
            out.extend(num(next));
        }
    }
    out
}

fn row(
    fixture: &str,
    at: &str,
    count: u64,
    truth: u64,
    verdict: &str,
    cause: &str,
    why: &str,
) -> String {
    format!("{fixture:<14} {at:<44} {count:>4}/{truth:<4} {verdict:<8} {cause:<26} {why}")
}

#[test]
fn reason_counts_are_parsed() {
    assert_eq!(
        quoted_counts("grows +19.8/s: 40 more goroutines older than 1s stuck"),
        vec![40]
    );
    assert_eq!(
        quoted_counts("grew by 60 in the first 3s of the session, flat for the last 5s"),
        vec![60]
    );
    assert_eq!(
        quoted_counts("its 4000 siblings finished within 2ms; these 4 have been blocked"),
        vec![4]
    );
}

// Causes: one fixture each.

#[test]
fn cond() {
    causes("cond", &PLAIN);
}

#[test]
fn http_client() {
    causes("http_client", &PLAIN);
}

#[test]
fn errgroup() {
    causes("errgroup", &PLAIN);
}

/// The real golang.org/x/sync/errgroup, not a look-alike.
#[test]
fn errgroup_x() {
    causes("errgroup_x", &PLAIN);
}

#[test]
fn spawn_helper() {
    causes(
        "spawn_helper",
        &Plan {
            fixture_args: &["-leak-for", "3s", "-hold", "30s"],
            leaktrace: &["--interval", "1s", "--duration", "6s"],
            ..PLAIN
        },
    );
}

/// Leak without growth: the stuck calls appear at once in the first
/// second; only their finished siblings' lifetimes tell.
#[test]
fn orphan() {
    causes(
        "orphan",
        &Plan {
            leaktrace: &["--older", "1s", "--interval", "1s", "--duration", "5s"],
            reason_has: &["siblings"],
            reason_lacks: &["grow", "grew"],
            ..PLAIN
        },
    );
}

/// Grows for 3s, then flat; a 2s window has long lost the growth by the
/// final report, which must still say leak.
#[test]
fn grow_stop() {
    causes(
        "grow_stop",
        &Plan {
            fixture_args: &["-leak-for", "3s", "-hold", "30s"],
            leaktrace: &["--window", "2s", "--interval", "1s", "--duration", "9s"],
            reason_has: &["grew by", "flat for the last"],
            reason_lacks: &[],
        },
    );
}

// Controls: nothing may be called a leak, in any report.

#[test]
fn control_main_select() {
    causes("main_select", &PLAIN);
}

/// Connections that come and stay: growth in step with the open sockets,
/// also once it has left a short window.
#[test]
fn control_conn_server() {
    causes(
        "conn_server",
        &Plan {
            fixture_args: &["-leak-for", "3s", "-hold", "30s"],
            leaktrace: &["--window", "2s", "--interval", "1s", "--duration", "9s"],
            ..PLAIN
        },
    );
}

#[test]
fn control_pool_idle() {
    causes("pool_idle", &PLAIN);
}

#[test]
fn control_steady_server() {
    causes("steady_server", &PLAIN);
}

/// The same server with every probe shed from the start (`--max-overhead
/// 0`: goroutines followed by walks of `runtime.allgs` only), as the default
/// budget sheds them on a busy server. Walk-found goroutines once counted
/// as "already there, so old": each refresh found a new batch of 5 ms
/// handlers, the "old" members grew with the sockets, and the handlers
/// were called a leak (CI, 1 run in 4).
#[test]
fn control_steady_server_probes_shed() {
    causes(
        "steady_server",
        &Plan {
            leaktrace: &[
                "--interval",
                "1s",
                "--duration",
                "5s",
                "--max-overhead",
                "0",
            ],
            ..PLAIN
        },
    );
}

#[test]
fn control_busy_loop() {
    causes("busy_loop", &PLAIN);
}

// The corpus's leaks, for their causes.

#[test]
fn chan_send() {
    causes("chan_send", &PLAIN);
}

#[test]
fn chan_recv() {
    causes("chan_recv", &PLAIN);
}

#[test]
fn nil_chan() {
    causes("nil_chan", &PLAIN);
}

#[test]
fn select_forever() {
    causes("select_forever", &PLAIN);
}

#[test]
fn waitgroup() {
    causes("waitgroup", &PLAIN);
}

#[test]
fn mutex() {
    causes("mutex", &PLAIN);
}

#[test]
fn timer() {
    causes("timer", &PLAIN);
}

#[test]
fn netio() {
    causes("netio", &PLAIN);
}

#[test]
fn pool_drain() {
    causes("pool_drain", &PLAIN);
}

#[test]
fn demo() {
    causes("demo", &PLAIN);
}
