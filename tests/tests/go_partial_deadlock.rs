//! Partial deadlocks while the rest of the program runs: pairs of
//! goroutines sending on each other's channels, next to a goroutine that
//! keeps running and an idle pool the program still holds. Go's runtime
//! never reports these (`all goroutines are asleep` needs all of them);
//! Go 1.27's goroutineleak profile, which the fixture writes when asked, is
//! the ground truth: leaktrace's stranded goroutines are exactly the ones
//! it lists, each pair is one DEADLOCK finding with both members, and the
//! idle pool is neither stranded nor a leak.
mod common;

use common::*;
use leaktrace_e2e::{BuildMode, Profile};

#[test]
fn pairs_deadlocked_while_the_rest_runs() {
    if !ebpf_available("partial deadlock") {
        return;
    }
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let bin = build("partial_deadlock", &go, BuildMode::Plain);
    let leak_file = tempfile_path("goroutineleak.txt");
    let leak_arg = leak_file.to_string_lossy().into_owned();
    let run = run_command_with(
        &bin,
        &[
            "-leak-for",
            "1s",
            "-rate",
            "5",
            "-hold",
            "30s",
            "-leakprofile",
            &leak_arg,
        ],
        &["--interval", "1s", "--duration", "6s"],
    );
    let report = run.last();
    let ctx = || format!("{}\nstderr:\n{}", report.summary(), run.stderr);
    assert_eq!(report.live(), run.truth.numgoroutine, "live: {}", ctx());

    let pairs = ["main.(*Bank).Transfer.func1", "main.(*Bank).Transfer.func2"];
    let in_pairs: u64 = pairs.iter().map(|f| run.truth.profile.count_at(f)).sum();
    assert!(in_pairs >= 2, "the fixture deadlocked nothing: {}", ctx());

    // A conservative scan may keep one pair alive through a stale stack
    // slot (the frame that made the last pair's channels, since
    // overwritten only in part): at most one pair missed, never one more.
    let mut deadlocked = 0;
    for f in pairs {
        for g in report.groups_at(f) {
            assert_eq!(g["verdict"], "leak", "{f}: {}", ctx());
            let d = g["deadlocked"].as_u64().unwrap_or(0);
            assert_eq!(g["stranded"].as_u64(), Some(d), "{f}: {}", ctx());
            let why = g["why"].as_str().unwrap_or_default();
            assert!(d == 0 || why.starts_with("deadlock:"), "{f}: {why}");
            deadlocked += d;
        }
    }
    assert!(
        deadlocked <= in_pairs && deadlocked + 2 >= in_pairs && deadlocked % 2 == 0,
        "{deadlocked} of {in_pairs} deadlocked: {}",
        ctx()
    );
    // One finding per pair, each naming one goroutine of each side.
    let found = report.0["partial_deadlocks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(found.len() as u64, deadlocked / 2, "findings: {}", ctx());
    for d in &found {
        let at: Vec<&str> = d["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .map(|p| p["blocked_at"].as_str().unwrap_or_default())
            .collect();
        let mut sorted = at.clone();
        sorted.sort();
        assert_eq!(sorted, pairs, "one of each side: {d}");
    }
    // The idle pool the audit loop still feeds is not stranded.
    let pool = report.groups_at("main.(*Pool).worker");
    assert_eq!(pool.len(), 1, "pool: {}", ctx());
    assert_eq!(pool[0]["stranded"], 0, "pool stranded: {}", ctx());
    assert_ne!(pool[0]["verdict"], "leak", "pool: {}", ctx());

    // Go's own view, where this toolchain has it.
    let stranded: u64 = report
        .groups()
        .iter()
        .map(|g| g["stranded"].as_u64().unwrap_or(0))
        .sum();
    match std::fs::read_to_string(&leak_file) {
        Ok(text) => {
            let _ = std::fs::remove_file(&leak_file);
            let leaked = Profile::parse(&text.replacen("goroutineleak", "goroutine", 1))
                .unwrap_or_else(|e| panic!("goroutineleak profile: {e}\n{text}"));
            // Never more than Go finds; what it finds that leaktrace
            // does not is the pair a stale slot may hide.
            assert!(
                stranded <= leaked.total && stranded + 2 >= leaked.total,
                "stranded {stranded} vs Go's goroutineleak profile:\n{text}\n{}",
                ctx()
            );
            println!(
                "{} goroutines deadlocked in {} pairs; stranded {stranded}, goroutineleak {}",
                in_pairs,
                found.len(),
                leaked.total
            );
        }
        Err(_) => {
            assert_eq!(stranded, deadlocked, "stranded: {}", ctx());
            println!("{} (no goroutineleak profile in {})", in_pairs, go.full);
        }
    }
}
