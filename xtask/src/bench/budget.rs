//! Section 7: the overhead budget (`--max-overhead`) on the churn program.
//! The same work (bench/churn paced at a fixed rate for a fixed time) runs
//! untraced, traced with no budget, and traced at 1 %, 2 % and 5 %; the
//! target's own CPU time (getrusage, which the uprobe traps are charged to)
//! per goroutine, traced against untraced, is the measured overhead, set
//! beside leaktrace's own estimate (the mean of its reports'
//! `overhead.estimated_pct`, one report a second over the same run).
use std::{
    collections::BTreeMap,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Markdown, Plan, Tools,
    proc::{Proc, only_child},
    report::num_after,
    stats::{fmt_med, median},
};

/// Goroutines per second offered (one spawn, park and exit each).
const RATE: u64 = 50_000;

#[derive(Clone, Copy)]
enum Cfg {
    Untraced,
    /// `--max-overhead` as given (`off`: never shed).
    Budget(&'static str),
}

struct BudgetRun {
    /// The target's CPU time per goroutine, ns: the whole run, and the
    /// steady state (from [`SETTLE`] to the last second).
    cpu_per_op: f64,
    steady_cpu_per_s: f64,
    /// Mean of the reports' estimates, %: the whole run, the steady state.
    estimated_pct: f64,
    steady_estimated_pct: f64,
    sheds: f64,
    /// Share of the reports with a probe shed.
    shed_reports: f64,
    /// Probe hits over the run (the final report's spawn, park and exit
    /// events: each is one hit of an armed probe), and goroutines done.
    hits: f64,
    ops: f64,
}

/// Where the steady state starts: after attach and the budget's reaction.
const SETTLE: Duration = Duration::from_secs(3);

/// CPU time of every thread of `pid` so far, ns (`/proc/PID/task/*/schedstat`,
/// exact, where `/proc/PID/stat` counts 10 ms ticks).
fn threads_cpu_ns(pid: u32) -> Option<f64> {
    let mut sum = 0.0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        sum += s.split_whitespace().next()?.parse::<f64>().ok()?;
    }
    Some(sum)
}

fn once(t: &Tools, cfg: Cfg, secs: u32) -> Result<BudgetRun> {
    let churn_args = [
        "-rate".to_string(),
        RATE.to_string(),
        "-for".to_string(),
        format!("{secs}s"),
    ];
    let limit = Duration::from_secs(u64::from(secs) * 10 + 60);
    let file = t.scratch.join("budget-reports.jsonl");
    let _ = std::fs::remove_file(&file);
    let mut p = match cfg {
        Cfg::Untraced => Proc::spawn(Command::new(&t.churn).args(&churn_args), "churn")?,
        Cfg::Budget(b) => Proc::spawn(
            Command::new(&t.leaktrace)
                .args(["--format", "json", "--interval", "1s", "--max-overhead", b])
                .arg("--output")
                .arg(&file)
                .arg("-c")
                .arg(&t.churn)
                .args(&churn_args),
            "leaktrace -c churn",
        )?,
    };
    p.stdin = None;
    // The churn process: leaktrace's child, once it runs.
    let started = Instant::now();
    let churn = loop {
        let pid = match cfg {
            Cfg::Untraced => Some(p.pid()),
            Cfg::Budget(_) => only_child(p.pid()),
        };
        if let Some(pid) = pid {
            break pid;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("churn did not start");
        }
        sleep(Duration::from_millis(5));
    };
    let t0 = Instant::now();
    sleep(SETTLE);
    let a = (
        Instant::now(),
        threads_cpu_ns(churn).context("churn's CPU")?,
    );
    sleep(
        Duration::from_secs(u64::from(secs)).saturating_sub(t0.elapsed() + Duration::from_secs(1)),
    );
    let b = (
        Instant::now(),
        threads_cpu_ns(churn).context("churn's CPU")?,
    );
    let steady_cpu_per_s = (b.1 - a.1) / b.0.duration_since(a.0).as_secs_f64();
    let steady = (
        a.0.duration_since(t0).as_secs_f64(),
        b.0.duration_since(t0).as_secs_f64(),
    );
    let status = p.wait(limit)?;
    let out = p.out.drain(Duration::from_secs(5));
    if !status.success() {
        bail!("{status}: {}", p.err.drain(Duration::from_secs(5)));
    }
    let reports = match cfg {
        Cfg::Untraced => String::new(),
        Cfg::Budget(_) => {
            std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
        }
    };
    let ops = num_after(&out, "goroutines ").context("churn printed no goroutines")?;
    let cpu = num_after(&out, "cpu_ns ").context("churn printed no cpu_ns")?;
    let mut estimates = Vec::new();
    let mut steady_estimates = Vec::new();
    let mut sheds = 0.0;
    let mut shed_reports = 0usize;
    let mut hits = 0.0;
    // Reports' elapsed_s counts from leaktrace's start, a moment before
    // churn's: close enough for a window of seconds.
    for line in reports.lines().filter(|l| l.starts_with('{')) {
        let r: serde_json::Value = serde_json::from_str(line)?;
        let o = &r["overhead"];
        if let Some(e) = o["estimated_pct"].as_f64() {
            estimates.push(e);
            let at = r["elapsed_s"].as_f64().unwrap_or(0.0);
            if at > steady.0 && at <= steady.1 + 0.5 {
                steady_estimates.push(e);
            }
        }
        sheds = o["sheds"].as_f64().unwrap_or(sheds);
        // Counts since attach: the last report's are the run's.
        let ev = &r["events"];
        hits = ["spawn", "park", "exit"]
            .iter()
            .filter_map(|k| ev[*k].as_f64())
            .sum();
        if o["probes"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["armed"] == false))
        {
            shed_reports += 1;
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(BudgetRun {
        cpu_per_op: cpu / ops.max(1.0),
        steady_cpu_per_s,
        estimated_pct: mean(&estimates),
        steady_estimated_pct: mean(&steady_estimates),
        sheds,
        shed_reports: shed_reports as f64 / estimates.len().max(1) as f64,
        hits,
        ops,
    })
}

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let secs = if plan.quick { 8 } else { 15 };
    let cfgs: [(&str, Cfg); 5] = [
        ("untraced", Cfg::Untraced),
        ("--max-overhead off (every probe armed)", Cfg::Budget("off")),
        ("--max-overhead 1", Cfg::Budget("1")),
        ("--max-overhead 2 (default)", Cfg::Budget("2")),
        ("--max-overhead 5", Cfg::Budget("5")),
    ];
    let mut runs: BTreeMap<usize, Vec<BudgetRun>> = BTreeMap::new();
    for round in 0..plan.runs {
        for (i, (name, cfg)) in cfgs.iter().enumerate() {
            eprintln!("bench: budget round {}/{}: {name}", round + 1, plan.runs);
            match once(t, *cfg, secs) {
                Ok(r) => runs.entry(i).or_default().push(r),
                Err(e) => eprintln!("bench: budget {name}: {e:#}"),
            }
        }
    }
    let col = |i: usize, f: fn(&BudgetRun) -> f64| -> Vec<f64> {
        runs.get(&i)
            .map(|v| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    let base = median(&col(0, |r| r.cpu_per_op));
    let steady_base = median(&col(0, |r| r.steady_cpu_per_s));
    // What one probe hit costs the target, from the run with every probe
    // armed: its extra CPU per goroutine over its hits per goroutine.
    let per_hit_ns = {
        let off = 1;
        let per_op = median(&col(off, |r| r.hits / r.ops.max(1.0)));
        (median(&col(off, |r| r.cpu_per_op)) - base) / per_op.max(1e-9)
    };
    let dash = || "—".to_string();
    let rows: Vec<Vec<String>> = cfgs
        .iter()
        .enumerate()
        .map(|(i, (name, cfg))| {
            let cpu = col(i, |r| r.cpu_per_op);
            let measured: Vec<f64> = cpu.iter().map(|c| (c / base - 1.0) * 100.0).collect();
            let steady: Vec<f64> = col(i, |r| r.steady_cpu_per_s)
                .iter()
                .map(|c| (c / steady_base - 1.0) * 100.0)
                .collect();
            if !matches!(cfg, Cfg::Budget(_)) {
                return vec![
                    name.to_string(),
                    fmt_med(&cpu, 0),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                ];
            }
            // The hits' cost against the untraced run's CPU for the same
            // goroutines: the excess the armed time alone explains.
            let implied: Vec<f64> = col(i, |r| r.hits / r.ops.max(1.0))
                .iter()
                .map(|h| h * per_hit_ns / base * 100.0)
                .collect();
            vec![
                name.to_string(),
                fmt_med(&cpu, 0),
                fmt_med(&measured, 1),
                fmt_med(&col(i, |r| r.estimated_pct), 1),
                fmt_med(&steady, 1),
                fmt_med(&col(i, |r| r.steady_estimated_pct), 1),
                format!(
                    "{:.0} % ({} sheds)",
                    median(&col(i, |r| r.shed_reports)) * 100.0,
                    fmt_med(&col(i, |r| r.sheds), 0)
                ),
                fmt_med(&col(i, |r| r.hits), 0),
                fmt_med(&implied, 1),
            ]
        })
        .collect();
    md.h2("7. Overhead budget");
    md.line(&format!(
        "bench/churn paced at {RATE} goroutines/s for {secs} s (one spawn, park and exit each), \
         under `leaktrace --interval 1s -c` at each `--max-overhead`. Measured overhead: the \
         target's own CPU time per goroutine (getrusage: user + system, where the uprobe traps \
         are charged) against the untraced run's, median of {} runs. Estimated: the mean of \
         leaktrace's reports' `overhead.estimated_pct` over the same run (one report a second; \
         the first window, before anything is shed, included in both). Steady state: from \
         {} s after churn starts to 1 s before it ends, the target's CPU per second from its \
         threads' schedstat against the untraced run's over the same span, and the mean \
         estimate of the reports in that span. Probe hits: the spawn and exit events of the \
         run (each one hit of an armed probe); their cost: those hits at what one hit costs \
         in the run with every probe armed ({:.2} µs: its extra CPU per goroutine over its \
         hits per goroutine), against the untraced run's CPU. Unlike the measured columns it \
         does not move with the machine's noise: with a budget it is what the probes cost \
         before the first shed (churn's warm-up burst of 2,000 goroutines right after start, \
         then the rest of the first 20 ms window).",
        plan.runs,
        SETTLE.as_secs(),
        per_hit_ns / 1000.0,
    ));
    md.table(
        &[
            "configuration",
            "target CPU ns / goroutine",
            "measured overhead %, whole run",
            "estimated %, whole run",
            "measured %, steady state",
            "estimated %, steady state",
            "reports with a probe shed",
            "probe hits (run)",
            "their cost, % of untraced (whole run)",
        ],
        &rows,
    );
    Ok(())
}
