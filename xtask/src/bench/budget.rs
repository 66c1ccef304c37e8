//! Section 7: the overhead budget (`--max-overhead`) on the churn program.
//! The same work (bench/churn paced at a fixed rate for a fixed time) runs
//! untraced, traced with no budget, and traced at 1 %, 2 % and 5 %; the
//! target's own CPU time (getrusage, which the uprobe traps are charged to)
//! per goroutine, traced against untraced, is the measured overhead, set
//! beside leaktrace's own estimate (the mean of its reports'
//! `overhead.estimated_pct`, one report a second over the same run).
use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    Markdown, Plan, Tools,
    proc::capture,
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
    /// The target's CPU time per goroutine, ns.
    cpu_per_op: f64,
    /// Mean of the reports' estimates, %.
    estimated_pct: f64,
    sheds: f64,
    /// Share of the reports with a probe shed.
    shed_reports: f64,
}

fn once(t: &Tools, cfg: Cfg, secs: u32) -> Result<BudgetRun> {
    let churn_args = [
        "-rate".to_string(),
        RATE.to_string(),
        "-for".to_string(),
        format!("{secs}s"),
    ];
    let limit = Duration::from_secs(u64::from(secs) * 10 + 60);
    let (out, reports) = match cfg {
        Cfg::Untraced => {
            let (_, out, _) =
                capture(Command::new(&t.churn).args(&churn_args), "churn", limit)?;
            (out, String::new())
        }
        Cfg::Budget(b) => {
            let file = t.scratch.join("budget-reports.jsonl");
            let _ = std::fs::remove_file(&file);
            let (status, out, err) = capture(
                Command::new(&t.leaktrace)
                    .args(["--format", "json", "--interval", "1s", "--max-overhead", b])
                    .arg("--output")
                    .arg(&file)
                    .arg("-c")
                    .arg(&t.churn)
                    .args(&churn_args),
                "leaktrace -c churn",
                limit,
            )?;
            if !status.success() {
                bail!("leaktrace --max-overhead {b} -c churn: {status}: {err}");
            }
            let reports = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            (out, reports)
        }
    };
    let ops = num_after(&out, "goroutines ").context("churn printed no goroutines")?;
    let cpu = num_after(&out, "cpu_ns ").context("churn printed no cpu_ns")?;
    let mut estimates = Vec::new();
    let mut sheds = 0.0;
    let mut shed_reports = 0usize;
    for line in reports.lines().filter(|l| l.starts_with('{')) {
        let r: serde_json::Value = serde_json::from_str(line)?;
        let o = &r["overhead"];
        if let Some(e) = o["estimated_pct"].as_f64() {
            estimates.push(e);
        }
        sheds = o["sheds"].as_f64().unwrap_or(sheds);
        if o["probes"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["armed"] == false))
        {
            shed_reports += 1;
        }
    }
    let n = estimates.len().max(1) as f64;
    Ok(BudgetRun {
        cpu_per_op: cpu / ops.max(1.0),
        estimated_pct: estimates.iter().sum::<f64>() / n,
        sheds,
        shed_reports: shed_reports as f64 / n,
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
    let rows: Vec<Vec<String>> = cfgs
        .iter()
        .enumerate()
        .map(|(i, (name, cfg))| {
            let cpu = col(i, |r| r.cpu_per_op);
            let measured: Vec<f64> = cpu.iter().map(|c| (c / base - 1.0) * 100.0).collect();
            let traced = matches!(cfg, Cfg::Budget(_));
            vec![
                name.to_string(),
                fmt_med(&cpu, 0),
                if traced {
                    fmt_med(&measured, 1)
                } else {
                    "—".into()
                },
                if traced {
                    fmt_med(&col(i, |r| r.estimated_pct), 1)
                } else {
                    "—".into()
                },
                if traced {
                    format!(
                        "{:.0} % ({} sheds)",
                        median(&col(i, |r| r.shed_reports)) * 100.0,
                        fmt_med(&col(i, |r| r.sheds), 0)
                    )
                } else {
                    "—".into()
                },
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
         the first window, before anything is shed, included in both).",
        plan.runs
    ));
    md.table(
        &[
            "configuration",
            "target CPU ns / goroutine",
            "measured overhead %",
            "estimated overhead %",
            "reports with a probe shed",
        ],
        &rows,
    );
    Ok(())
}
