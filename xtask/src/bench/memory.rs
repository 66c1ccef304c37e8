//! Section 5: leaktrace's peak RSS per live goroutine and its time to the
//! first report, at 100,000 goroutines (every run) and 1,000,000 (once per
//! binary in a full run), for the workspace's leaktrace and each
//! `--candidate` side by side (e.g. an earlier build: before and after).
use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use super::{
    Markdown, Plan, Tools,
    attach::{AttachRun, attach_once_with, chan_send},
    report::num_after,
    stats::{fmt_med, median},
};

/// One binary's runs at one size.
struct Size {
    runs: Vec<AttachRun>,
    /// The target's own RSS (KiB), per run.
    target_kb: Vec<f64>,
}

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let mut bins: Vec<(String, PathBuf)> = vec![("leaktrace".into(), t.leaktrace.clone())];
    bins.extend(t.candidates.iter().cloned());
    let mut sizes: Vec<u64> = vec![100, plan.attach_goroutines];
    if plan.one_million {
        sizes.push(1_000_000);
    }
    // sizes × bins; the small sizes `plan.runs` times, 1,000,000 once.
    let mut got: Vec<Vec<Size>> = sizes
        .iter()
        .map(|_| {
            bins.iter()
                .map(|_| Size {
                    runs: Vec::new(),
                    target_kb: Vec::new(),
                })
                .collect()
        })
        .collect();
    let mut notes = Vec::new();
    for (si, &n) in sizes.iter().enumerate() {
        let rounds = if n >= 1_000_000 { 1 } else { plan.runs };
        eprintln!("bench: memory: chan_send -n {n} ({rounds} rounds)");
        // One target per size, traced by each binary in turn per round
        // (A, B, A, B, …): what the first leaves behind is what the next
        // finds, so the target must not change between them.
        let mut p = chan_send(t, n)?;
        let target_kb = std::fs::read_to_string(format!("/proc/{}/status", p.pid()))
            .ok()
            .and_then(|s| num_after(&s, "VmRSS:"))
            .unwrap_or(f64::NAN);
        for _ in 0..rounds {
            for (bi, (name, bin)) in bins.iter().enumerate() {
                match attach_once_with(t, bin, p.pid(), &format!("{name} --pid chan_send -n {n}")) {
                    Ok(r) => {
                        got[si][bi].runs.push(r);
                        got[si][bi].target_kb.push(target_kb);
                    }
                    Err(e) => notes.push(format!("{name} at {n} goroutines failed: {e:#}")),
                }
            }
        }
        p.stop(Duration::from_secs(60));
    }
    let mut rows = Vec::new();
    for (si, &n) in sizes.iter().enumerate() {
        for (bi, (name, _)) in bins.iter().enumerate() {
            let s = &got[si][bi];
            let f = |g: &dyn Fn(&AttachRun) -> f64| s.runs.iter().map(g).collect::<Vec<f64>>();
            let small = median(
                &got[0][bi]
                    .runs
                    .iter()
                    .map(|r| r.time.maxrss_kb)
                    .collect::<Vec<_>>(),
            );
            let per = if si == 0 {
                "–".to_string()
            } else {
                fmt_med(&f(&|r| (r.time.maxrss_kb - small) * 1024.0 / n as f64), 0)
            };
            rows.push(vec![
                format!("{n}"),
                name.clone(),
                format!("{}", s.runs.len()),
                fmt_med(&f(&|r| r.time.maxrss_kb / 1024.0), 0),
                per,
                fmt_med(&f(&|r| r.first_report_s), 2),
                fmt_med(&f(&|r| r.total_s), 2),
                fmt_med(&f(&|r| r.time.cpu_s), 2),
                fmt_med(&f(&|r| r.live), 0),
                format!("{:.0}", median(&s.target_kb) / 1024.0),
            ]);
        }
    }
    md.h2("5. Memory");
    md.line(
        "leaktrace's peak RSS (GNU time's maximum resident set size; leaktrace has no child in \
         --pid mode) for `--pid PID --interval 100ms --count 2` on chan_send holding N leaked \
         goroutines (plus N finished ones in runtime.allgs), and the growth over the same \
         binary's 100-goroutine run, per goroutine. \"first report\" is from leaktrace's start \
         to its first report in the output file (attach, the snapshot of runtime.allgs, one \
         full read of every goroutine with its stack and channel; 100 ms of it is the report \
         interval). Each binary traces the same target in turn, round after round; 1,000,000 \
         goroutines: one run each (full run only).",
    );
    md.table(
        &[
            "live goroutines",
            "binary",
            "runs",
            "peak RSS (MiB)",
            "bytes per goroutine over 100",
            "first report (s)",
            "done (s)",
            "leaktrace CPU (s)",
            "live reported",
            "target RSS (MiB)",
        ],
        &rows,
    );
    if !plan.one_million {
        notes
            .push("1,000,000 goroutines: not run with --quick (the full run does it once).".into());
    }
    for n in notes {
        md.line(&n);
    }
    Ok(())
}
