//! The text exports on reports made here: folded stacks add up to `live`
//! (shown and omitted groups alike) and keep the format's separators out of
//! frames; the Prometheus exposition escapes label values and bounds its
//! series per process without hiding a leak. (pprof files are checked by
//! `go tool pprof` itself in tests/tests/exports.rs.)
use std::sync::Arc;

use leaktrace::{
    aggregate::verdict::Verdict,
    report::{
        folded::folded,
        labels::created_by,
        metrics::{GROUP_SERIES, Traced, metrics},
        model::{EventTotals, GroupReport, Report, SessionGrowth, TargetInfo},
    },
    runtime::go::GO,
    symbols::Frame,
};

fn frame(function: &str, line: u32) -> Frame {
    Frame {
        function: Arc::from(function),
        file: Arc::from("/src/app/main.go"),
        line,
    }
}

fn group(count: u64, start: &str, state: &str, verdict: Verdict) -> GroupReport {
    GroupReport {
        count,
        kind: None,
        main: false,
        state: state.into(),
        created_by: frame("main.main", 10),
        created_via: None,
        start: frame(start, 20),
        blocked_at: Some(frame(start, 21)),
        blocked_s: None,
        growth_per_s: 0.0,
        session: SessionGrowth::default(),
        verdict,
        why: String::new(),
        cause: (verdict == Verdict::Leak).then_some("send-without-receiver"),
        fix: None,
        channels: None,
        stack: vec![
            frame("runtime.gopark", 1),
            frame(start, 21),
            frame("main.main", 10),
        ],
        sample_ids: Vec::new(),
        stranded: 0,
        deadlocked: 0,
        trend: Vec::new(),
    }
}

fn report(groups: Vec<GroupReport>, omitted: Vec<GroupReport>) -> Report {
    let live = groups.iter().chain(&omitted).map(|g| g.count).sum();
    Report {
        is_final: false,
        elapsed_s: 3.0,
        target: TargetInfo {
            pid: 4242,
            exe: "/srv/app".into(),
            cmdline: None,
            runtime: GO,
            runtime_version: "go1.27.3".into(),
            symbols: "symtab",
            warnings: Vec::new(),
        },
        events: EventTotals::default(),
        live,
        data_age_s: Some(0.0),
        system: 0,
        blocking: 0,
        window_s: 3.0,
        groups_omitted: omitted.len(),
        groups,
        omitted,
        at_exit: false,
        deadlock: None,
        partial_deadlocks: Vec::new(),
        notes: Vec::new(),
        threads: None,
        overhead: None,
    }
}

#[test]
fn folded_stacks_add_up_to_live_root_first_with_the_state_as_leaf() {
    let r = report(
        vec![
            group(40, "main.send", "chan send", Verdict::Leak),
            // A tokio-like type name holding the format's separator.
            group(2, "app::Fut<[u8; 4]>", "idle", Verdict::Ok),
        ],
        vec![group(3, "main.young", "select", Verdict::Ok)],
    );
    let text = folded(&[&r]);
    assert_eq!(
        text,
        "main.main;app::Fut<[u8, 4]>;runtime.gopark;idle 2\n\
         main.main;main.send;runtime.gopark;chan send 40\n\
         main.main;main.young;runtime.gopark;select 3\n"
    );
    let total: u64 = text
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, r.live);

    // Several processes: each stack starts at its process.
    let mut other = report(
        vec![group(1, "main.send", "chan send", Verdict::Ok)],
        vec![],
    );
    other.target.pid = 7;
    let text = folded(&[&r, &other]);
    assert!(text.contains("/srv/app (pid 7);main.main;main.send;runtime.gopark;chan send 1\n"));
    assert!(text.contains("/srv/app (pid 4242);main.main;main.send;runtime.gopark;chan send 40\n"));
}

#[test]
fn metrics_escape_label_values() {
    let mut g = group(5, "main.(*T).f\"q\\w", "chan send", Verdict::Leak);
    g.created_by = frame("main.new\nline", 3);
    let r = report(vec![g], vec![]);
    let text = metrics(&[Traced {
        report: &r,
        probes_armed: 4,
    }]);
    let line = text
        .lines()
        .find(|l| l.starts_with("leaktrace_tasks{"))
        .expect("a group series");
    assert_eq!(
        line,
        "leaktrace_tasks{pid=\"4242\",exe=\"/srv/app\",runtime=\"go\",\
         created_by=\"main.new\\nline (main.go:3)\",start=\"main.(*T).f\\\"q\\\\w\",\
         state=\"chan send\",verdict=\"leak\",cause=\"send-without-receiver\"} 5"
    );
    assert!(text.contains("# TYPE leaktrace_tasks gauge\n"));
    assert!(text.contains("# TYPE leaktrace_spawned_total counter\n"));
    assert!(
        text.contains("leaktrace_probes_armed{pid=\"4242\",exe=\"/srv/app\",runtime=\"go\"} 4\n")
    );
    assert!(
        text.contains("leaktrace_live_tasks{pid=\"4242\",exe=\"/srv/app\",runtime=\"go\"} 5\n")
    );
}

#[test]
fn metrics_bound_group_series_and_never_fold_a_leak_away() {
    // Many large healthy groups and one small leak, partly omitted from
    // the text report.
    let mut groups: Vec<GroupReport> = (0..GROUP_SERIES as u64 + 20)
        .map(|i| {
            group(
                100 + i,
                &format!("main.worker{i}"),
                "chan receive",
                Verdict::Ok,
            )
        })
        .collect();
    let omitted = groups.split_off(10);
    let mut shown = vec![group(1, "main.leaky", "chan send", Verdict::Leak)];
    shown.extend(groups);
    let r = report(shown, omitted);
    let text = metrics(&[Traced {
        report: &r,
        probes_armed: 4,
    }]);
    let series: Vec<(&str, u64)> = text
        .lines()
        .filter(|l| l.starts_with("leaktrace_tasks{"))
        .map(|l| {
            let (labels, value) = l.rsplit_once(' ').unwrap();
            (labels, value.parse().unwrap())
        })
        .collect();
    assert_eq!(series.len(), GROUP_SERIES);
    assert!(
        series[0].0.contains("start=\"main.leaky\""),
        "{:?}",
        series[0]
    );
    let other: Vec<_> = series
        .iter()
        .filter(|(l, _)| l.contains("created_by=\"other\""))
        .collect();
    assert_eq!(other.len(), 1);
    // Everything is counted once: the series add up to live.
    assert_eq!(series.iter().map(|(_, v)| v).sum::<u64>(), r.live);
    // The named healthy series (all but the leak's and other) are the
    // largest ones.
    let smallest_named = series
        .iter()
        .filter(|(l, _)| l.contains("verdict=\"ok\"") && !l.contains("\"other\""))
        .map(|(_, v)| *v)
        .min()
        .unwrap();
    let healthy = GROUP_SERIES as u64 + 20;
    let named = GROUP_SERIES as u64 - 2;
    assert_eq!(smallest_named, 100 + healthy - named);
}

/// The overhead budget's state in /metrics: the estimate as a ratio, and
/// per probe whether it is armed and its rate.
#[test]
fn metrics_say_which_probes_are_armed() {
    use leaktrace::budget::{Overhead, estimate::ProbeOverhead};
    let mut r = report(Vec::new(), Vec::new());
    let probe = |name, armed, hits_per_s| ProbeOverhead {
        name,
        armed,
        hits_per_s,
        hits_estimated: !armed,
        cost_ns: 1500.0,
    };
    r.overhead = Some(Overhead {
        budget_pct: Some(2.0),
        estimated_pct: 1.5,
        target_cpu_pct: 80.0,
        nearly_idle: false,
        trap_ns: Some(1000.0),
        not_armed: Vec::new(),
        calibration: "measured at start".into(),
        probes: vec![probe("park", false, 40_000.0), probe("spawn", true, 120.0)],
        sheds: 1,
        rearms: 0,
        approximate: vec!["park probe shed"],
        sheddable: true,
    });
    let text = metrics(&[Traced {
        report: &r,
        probes_armed: 3,
    }]);
    let labels = r#"pid="4242",exe="/srv/app",runtime="go""#;
    for line in [
        format!("leaktrace_estimated_overhead_ratio{{{labels}}} 0.015"),
        format!("leaktrace_probe_armed{{{labels},probe=\"park\"}} 0"),
        format!("leaktrace_probe_armed{{{labels},probe=\"spawn\"}} 1"),
        format!("leaktrace_probe_hits_per_second{{{labels},probe=\"park\"}} 40000"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    let header = leaktrace::report::text::overhead_line(r.overhead.as_ref().unwrap());
    assert!(
        header.contains("park shed (≈ 40k/s)") && header.contains("spawn 120/s"),
        "{header}"
    );
    // Not armed by choice (no --detailed) is said as such, not as shed.
    let o = r.overhead.as_mut().unwrap();
    o.probes.retain(|p| p.name != "park");
    o.not_armed = vec![leaktrace::runtime::NotArmed {
        name: "park",
        armed_by: "--detailed",
        approximate: "blocked durations are known to a refresh (≥)",
    }];
    let header = leaktrace::report::text::overhead_line(o);
    assert!(
        header.contains("park not armed (--detailed arms it)") && !header.contains("park shed"),
        "{header}"
    );
}

/// Go's main goroutine resolves its creator to a runtime wrapper
/// (`runtime.newproc (<autogenerated>:1)`): every export names it as the
/// runtime's, and only for the main goroutine.
#[test]
fn the_main_goroutine_is_created_by_the_runtime() {
    let mut main = group(1, "main.main", "select", Verdict::Ok);
    main.main = true;
    main.created_by = Frame {
        function: Arc::from("runtime.newproc"),
        file: Arc::from("<autogenerated>"),
        line: 1,
    };
    assert_eq!(
        created_by(&main),
        "the runtime (the program's main goroutine)"
    );
    let mut other = main.clone();
    other.main = false;
    assert_eq!(created_by(&other), "runtime.newproc (<autogenerated>:1)");
    assert_eq!(
        created_by(&group(1, "main.worker", "select", Verdict::Ok)),
        "main.main (main.go:10)"
    );
}
