//! The overhead budget (`--max-overhead`): a burst of goroutine churn makes
//! leaktrace shed its costly probes (park with `--detailed`, then spawn and
//! exit) and follow the goroutines by reading memory; after the burst it
//! re-arms them. At
//! every budget the live count still equals the program's own
//! `runtime.NumGoroutine()`, the reports say which probes are armed and what
//! is approximate, and every link leaktrace made (re-arming makes new ones)
//! is gone once it exits.
mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::*;
use leaktrace_e2e::BuildMode;
use serde_json::Value;

/// One traced run of the burst fixture.
struct BudgetRun {
    reports: Vec<Report>,
    /// The fixture's last `numgoroutine` line.
    numgoroutine: u64,
    /// Every BPF link leaktrace held at some point (sampled every 50 ms),
    /// and those it held at the end.
    links: BTreeSet<(&'static str, String)>,
    last_links: BTreeSet<(&'static str, String)>,
    stderr: String,
}

/// `detailed`: arm the park probe too (the budget sheds it first).
fn run(budget: &str, calm: &str, detailed: bool) -> BudgetRun {
    let go = one_go("1.26");
    let fixture = build("budget/burst", &go, BuildMode::Plain);
    let fixture = fixture.to_string_lossy().into_owned();
    // Reports to a file: the fixture's lines share leaktrace's stdout.
    let out = tempfile_path("budget-reports.jsonl");
    let out_arg = out.to_string_lossy().into_owned();
    let args = [
        "--output",
        &out_arg,
        "--format",
        "json",
        "--interval",
        "1s",
        "--max-overhead",
        budget,
        "-c",
        &fixture,
        "-leak-for",
        "3s",
        "-calm",
        calm,
        "-hold",
        "60s",
    ];
    let detailed = detailed.then_some("--detailed");
    let mut lt = Traced::start(&detailed.into_iter().chain(args).collect::<Vec<_>>());
    let mut links = BTreeSet::new();
    let mut last_links = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lt.stdout().iter().any(|l| l == "phase done") {
        assert!(
            Instant::now() < deadline,
            "--max-overhead {budget}: no `phase done`: {}",
            lt.stderr()
        );
        if let Ok(Some(st)) = lt.child.try_wait() {
            panic!("leaktrace exited ({st}) early: {}", lt.stderr());
        }
        last_links = held_bpf_objects(lt.pid())
            .into_iter()
            .filter(|o| o.0 == "link")
            .collect();
        links.extend(last_links.iter().cloned());
        std::thread::sleep(Duration::from_millis(50));
    }
    let numgoroutine = lt
        .stdout()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("numgoroutine "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the fixture's ground truth");
    lt.signal(libc::SIGINT);
    let (code, _, stderr) = lt.finish();
    let reports = parse_reports(&std::fs::read_to_string(&out).unwrap_or_default());
    let _ = std::fs::remove_file(&out);
    assert_eq!(code, Some(0), "--max-overhead {budget}: {stderr}");
    let left: Vec<(&'static str, String)> = links.iter().cloned().collect();
    assert_eq!(
        still_loaded(&left),
        Vec::<String>::new(),
        "--max-overhead {budget}: links left behind"
    );
    BudgetRun {
        reports,
        numgoroutine,
        links,
        last_links,
        stderr,
    }
}

fn overhead(r: &Report) -> &Value {
    &r.0["overhead"]
}

/// Whether probe `name` is armed in this report.
fn armed(r: &Report, name: &str) -> bool {
    overhead(r)["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["armed"].as_bool())
        .unwrap_or_else(|| panic!("no probe {name} in {}", overhead(r)))
}

fn approximate(r: &Report) -> Vec<String> {
    overhead(r)["approximate"]
        .as_array()
        .expect("approximate")
        .iter()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect()
}

/// The final report's live count is the program's own, whatever was shed.
fn check_live(run: &BudgetRun, budget: &str) {
    let last = run.reports.last().expect("a final report");
    assert_eq!(last.0["final"], true);
    assert_eq!(
        last.live(),
        run.numgoroutine,
        "--max-overhead {budget}: live vs runtime.NumGoroutine()\n{}\n{}",
        last.summary(),
        run.stderr
    );
}

#[test]
fn sheds_under_a_burst_and_rearms_after() {
    if !ebpf_available("sheds_under_a_burst_and_rearms_after") {
        return;
    }
    // --detailed: park is the first step.
    let run = run("0.5", "10s", true);
    check_live(&run, "0.5");
    for r in &run.reports {
        let o = overhead(r);
        assert_eq!(o["budget_pct"], 0.5, "{o}");
        assert!(o["estimated_pct"].as_f64().is_some(), "{o}");
        assert!(o["trap_ns"].as_f64().is_some_and(|t| t > 0.0), "{o}");
    }
    // During the burst: the park probe shed first, and what it costs said.
    let shed = run
        .reports
        .iter()
        .position(|r| !armed(r, "park"))
        .unwrap_or_else(|| {
            panic!(
                "the park probe was never shed:\n{}",
                run.reports
                    .iter()
                    .map(|r| overhead(r).to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    let during = &run.reports[shed];
    assert!(
        approximate(during).iter().any(|a| a.contains("park")),
        "{}",
        overhead(during)
    );
    // Spawn and exit go together, and their loss of accuracy is said.
    for r in &run.reports {
        assert_eq!(armed(r, "spawn"), armed(r, "exit"), "{}", overhead(r));
        if !armed(r, "spawn") {
            assert!(
                approximate(r).iter().any(|a| a.contains("lower bounds")),
                "{}",
                overhead(r)
            );
        }
    }
    // After it: everything re-armed, nothing approximate any more.
    let last = run.reports.last().unwrap();
    for probe in ["park", "spawn", "exit"] {
        assert!(armed(last, probe), "{probe}: {}", overhead(last));
    }
    assert!(approximate(last).is_empty(), "{}", overhead(last));
    let o = overhead(last);
    // (A shed may skip a step when the rates say one would not be enough;
    // re-arming goes back one step at a time.)
    assert!(
        o["sheds"].as_u64() >= Some(1) && o["rearms"].as_u64() >= o["sheds"].as_u64(),
        "{o}"
    );
    // Shedding closed the three probes' links and re-arming made new ones.
    assert!(
        run.links.len() >= run.last_links.len() + 3,
        "links seen: {:?}, at the end: {:?}",
        run.links,
        run.last_links
    );
}

#[test]
fn live_is_exact_at_every_budget() {
    if !ebpf_available("live_is_exact_at_every_budget") {
        return;
    }
    // 0: memory reads only, from the start.
    let run0 = run("0", "2s", true);
    check_live(&run0, "0");
    for r in &run0.reports {
        for probe in ["park", "spawn", "exit"] {
            assert!(!armed(r, probe), "{probe}: {}", overhead(r));
        }
        assert!(approximate(r).len() >= 2, "{}", overhead(r));
    }
    assert!(
        run0.reports.last().unwrap().0["events"]["found"].as_u64() > Some(0),
        "goroutines found by walking allgs: {}",
        run0.reports.last().unwrap().0["events"]
    );
    // off, default probes: never shed, still estimated; park not armed,
    // by choice, and said so (not as shed).
    let off = run("off", "2s", false);
    check_live(&off, "off");
    for r in &off.reports {
        assert_eq!(overhead(r)["budget_pct"], Value::Null);
        for probe in ["spawn", "exit"] {
            assert!(armed(r, probe), "{probe}: {}", overhead(r));
        }
        let probes = overhead(r)["probes"].as_array().expect("probes");
        assert!(
            probes.iter().all(|p| p["name"] != "park"),
            "{}",
            overhead(r)
        );
        assert_eq!(
            overhead(r)["not_armed"][0]["name"],
            "park",
            "{}",
            overhead(r)
        );
        assert_eq!(overhead(r)["not_armed"][0]["armed_by"], "--detailed");
        assert!(approximate(r).is_empty(), "{}", overhead(r));
    }
    // A default session under the budget: spawn and exit are the first
    // step, the count still the program's own.
    let default = run("0.5", "2s", false);
    check_live(&default, "0.5 (default probes)");
}
