//! Spawn helpers (issue #12, "identity that survives wrappers"): when one
//! `go` statement starts the goroutines of many callers, leaktrace reads who
//! called the helper at spawn and groups (and names) them by that caller.
//! Checked on the spawn_via fixture against the runtime's own profile.
mod common;

use common::*;
use leaktrace_e2e::{BuildMode, pick};

const HELPER: &str = "main.(*Server).startGoRoutine";
const LEAKING_CALLER: &str = "main.(*Server).createClient";
const HEALTHY_CALLERS: &[&str] = &[
    "main.(*Server).publishStats",
    "main.(*Server).reloadAccounts",
];
const BLOCKED_AT: &str = "main.(*client).readLoop";

/// Go 1.19 (systemstack has no frame of its own, so the saved frame pointer
/// is newproc's) and 1.21+ (it has one); a stripped and a PIE build, where
/// the callers are symbolized from pclntab alone and at a load bias.
#[test]
fn spawn_helper_groups_by_the_helpers_caller() {
    if !ebpf_available("spawn_helper_groups_by_the_helpers_caller") {
        return;
    }
    let mut runs = Vec::new();
    for go in pick(&["1.19", "1.22", "1.26"]) {
        runs.push((go.clone(), BuildMode::Plain));
        if go.minor() == 19 {
            runs.push((go.clone(), BuildMode::Stripped));
        }
        if go.minor() == 26 {
            runs.push((go, BuildMode::Pie));
        }
    }
    assert!(!runs.is_empty(), "no Go toolchain: run `cargo xtask setup`");
    for (go, mode) in runs {
        let bin = build("spawn_via", &go, mode);
        let run = run_command_mode(&bin, &["-leak-for", "3s", "-hold", "20s"], "5s");
        let report = run.last();
        let ctx = || {
            format!(
                "spawn_via {} {mode:?}\n{}\nstderr:\n{}",
                go.full,
                summary(report),
                run.stderr
            )
        };
        assert_eq!(
            report.live(),
            run.truth.numgoroutine,
            "live vs runtime.NumGoroutine(): {}",
            ctx()
        );

        // The leak: one group, named by the helper's caller, with the
        // runtime's own count.
        let leaking = report.groups_at(BLOCKED_AT);
        assert_eq!(
            leaking.len(),
            1,
            "one group blocked at {BLOCKED_AT}: {}",
            ctx()
        );
        let g = leaking[0];
        assert_eq!(g["created_by"]["function"], HELPER, "{}", ctx());
        assert_eq!(g["created_via"]["function"], LEAKING_CALLER, "{}", ctx());
        assert_eq!(g["state"], "chan send", "{}", ctx());
        let want = run.truth.profile.count_blocked_at(BLOCKED_AT);
        assert!(want >= 40, "the fixture leaked only {want}: {}", ctx());
        assert_eq!(
            g["count"].as_u64(),
            Some(want),
            "count vs the runtime's: {}",
            ctx()
        );
        assert_eq!(g["verdict"], "leak", "{}", ctx());

        for r in &run.reports {
            for g in r.groups() {
                let via = g["created_via"]["function"].as_str();
                // The healthy callers' goroutines finish: never a leak.
                if via.is_some_and(|v| HEALTHY_CALLERS.contains(&v)) {
                    assert_ne!(g["verdict"], "leak", "a healthy caller: {}", ctx());
                    assert_eq!(g["created_by"]["function"], HELPER, "{}", ctx());
                }
                // Only the helper's goroutines have a caller: ordinary `go`
                // statements (one caller each) keep today's groups.
                if g["created_by"]["function"] != HELPER {
                    assert!(g["created_via"].is_null(), "via on a plain site: {}", ctx());
                }
                // Whatever the reason quotes about the group is about it.
                if g["blocked_at"]["function"] == BLOCKED_AT {
                    let count = g["count"].as_u64().unwrap_or(0);
                    for n in quoted_counts(g["why"].as_str().unwrap_or("")) {
                        assert!(n <= count, "the reason quotes {n} > {count}: {}", ctx());
                    }
                }
            }
        }
        println!(
            "spawn_via {:<9} {:<8} {} blocked via {LEAKING_CALLER} == runtime's {want}, verdict {}; \
             {} spawned, {} lost",
            go.full,
            format!("{mode:?}"),
            g["count"],
            g["verdict"],
            report.events("spawn"),
            report.events("lost")
        );
    }
}

/// Numbers a reason states about the group's own members ("60 more
/// goroutines", "these 60 have", "grew by 60", "60 blocked", "flat at 60",
/// "60 now").
fn quoted_counts(why: &str) -> Vec<u64> {
    let words: Vec<&str> = why.split_whitespace().collect();
    let num = |w: &str| {
        w.trim_matches(|c: char| !c.is_ascii_digit())
            .parse::<u64>()
            .ok()
    };
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or("");
        let prev = if i > 0 { words[i - 1] } else { "" };
        let about_members = matches!(next, "more" | "blocked" | "now;" | "now")
            || prev == "these"
            || (prev == "by" && i >= 2 && words[i - 2] == "grew")
            || (prev == "at" && i >= 2 && words[i - 2] == "flat");
        if about_members && let Some(n) = num(w) {
            out.push(n);
        }
    }
    out
}

fn summary(r: &Report) -> String {
    let mut s = r.summary();
    for g in r.groups() {
        if !g["created_via"].is_null() {
            s.push_str(&format!(
                "  via {} ({} {}): {}\n",
                g["created_via"]["function"], g["count"], g["state"], g["verdict"]
            ));
        }
    }
    s
}

#[test]
fn quoted_counts_reads_the_reasons() {
    assert_eq!(
        quoted_counts(
            "grows +14.9/s: 60 more goroutines older than 1s stuck in `chan send` at x over 5s"
        ),
        vec![60]
    );
    assert_eq!(
        quoted_counts(
            "its 120 siblings from the same creation site finished within 3ms (p99; the longest lived 5ms); these 60 have been blocked for 2s"
        ),
        vec![60]
    );
    assert_eq!(quoted_counts("grew by 12 in the first 3s"), vec![12]);
    assert_eq!(quoted_counts("flat at 7 over 5s"), vec![7]);
}
