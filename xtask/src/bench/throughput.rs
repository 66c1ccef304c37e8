//! Section 3: the event rate leaktrace keeps up with, and what happens
//! above it or when its reader is stopped (the ring overflows).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{
    Markdown, Plan, Tools,
    proc::{Proc, TimeReport, only_child, read_time, signal, timed},
    report::{last_report, num_after},
    stats::median,
};

/// leaktrace's ring buffer (leaktrace-common's RING_BYTES), for the text;
/// a record is 64 bytes with the ring's header.
const RING_KIB: u64 = 8 * 1024;

struct TpRun {
    goroutines_per_s: f64,
    lost: f64,
    delivered: f64,
    time: TimeReport,
}

/// One throughput case: goroutines/s asked (0: unpaced), extra parked
/// goroutines, and how long leaktrace is stopped mid-run (a reader that
/// falls behind, e.g. descheduled on a loaded host).
#[derive(Clone, Copy)]
struct TpCase {
    rate: u64,
    live: u64,
    stall: Duration,
}

fn throughput_once(t: &Tools, bin: &Path, case: TpCase, secs: u32) -> Result<TpRun> {
    let TpCase { rate, live, stall } = case;
    let mut churn = Proc::spawn(
        Command::new(&t.churn).args([
            "-wait",
            "-par",
            "2",
            "-rate",
            &rate.to_string(),
            "-for",
            &format!("{secs}s"),
            "-live",
            &live.to_string(),
        ]),
        "churn -wait",
    )?;
    churn
        .out
        .wait_for("ready", Duration::from_secs(60), |l| l == "ready")?;
    let report = t.scratch.join("tp-report.jsonl");
    let time_file = t.scratch.join("tp-time.txt");
    let _ = std::fs::remove_file(&report);
    let mut lt = Proc::spawn(
        timed(bin, &time_file)
            .args(["--format", "json", "--output"])
            .arg(&report)
            .args(["--pid", &churn.pid().to_string()]),
        "leaktrace --pid churn",
    )?;
    lt.err.wait_for("attach", Duration::from_secs(120), |l| {
        l.starts_with("Attaching")
    })?;
    sleep(Duration::from_millis(500));
    churn.send_line("go")?;
    if !stall.is_zero() {
        sleep(Duration::from_millis(500));
        let pid = only_child(lt.pid()).context("leaktrace's pid under /usr/bin/time")?;
        signal(pid, "STOP");
        sleep(stall);
        signal(pid, "CONT");
    }
    churn.wait(Duration::from_secs(secs as u64 + 120))?;
    let out = churn.out.drain(Duration::from_secs(5));
    // leaktrace ends by itself when its target exits.
    lt.wait(Duration::from_secs(300))?;
    let ev = last_report(&report)?;
    Ok(TpRun {
        goroutines_per_s: num_after(&out, "goroutines_per_s ").unwrap_or(f64::NAN),
        lost: ev.lost,
        delivered: ev.delivered(),
        time: read_time(&time_file)?,
    })
}

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let mut bins: Vec<(String, PathBuf)> = vec![("leaktrace".into(), t.leaktrace.clone())];
    bins.extend(t.candidates.iter().cloned());
    let case = |rate, live, stall| TpCase { rate, live, stall };
    let mut cases: Vec<TpCase> = plan
        .tp_rates
        .iter()
        .map(|&r| case(r, 0, Duration::ZERO))
        .collect();
    cases.extend(plan.tp_live.iter().map(|&l| case(0, l, Duration::ZERO)));
    cases.extend(plan.tp_stalls.iter().map(|&s| case(0, 0, s)));
    let mut runs: BTreeMap<(usize, usize), Vec<TpRun>> = BTreeMap::new();
    for round in 0..plan.tp_runs {
        for (c, &k) in cases.iter().enumerate() {
            for (b, (name, bin)) in bins.iter().enumerate() {
                eprintln!(
                    "bench: throughput round {}/{}: {name}, rate {}/s, live {}, stall {:?}",
                    round + 1,
                    plan.tp_runs,
                    k.rate,
                    k.live,
                    k.stall
                );
                match throughput_once(t, bin, k, plan.tp_secs) {
                    Ok(r) => runs.entry((c, b)).or_default().push(r),
                    Err(e) => eprintln!("bench: throughput {name}: {e:#}"),
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut best_clean: Vec<f64> = vec![0.0; bins.len()];
    let mut worst_rss: Vec<f64> = vec![0.0; bins.len()];
    for (c, k) in cases.iter().enumerate() {
        for (b, (name, _)) in bins.iter().enumerate() {
            let Some(v) = runs.get(&(c, b)) else { continue };
            let g = median(&v.iter().map(|r| r.goroutines_per_s).collect::<Vec<_>>());
            let lost = median(&v.iter().map(|r| r.lost).collect::<Vec<_>>());
            let delivered = median(&v.iter().map(|r| r.delivered).collect::<Vec<_>>());
            let rss = median(&v.iter().map(|r| r.time.maxrss_kb).collect::<Vec<_>>()) / 1024.0;
            let cpu = median(
                &v.iter()
                    .map(|r| 100.0 * r.time.cpu_s / r.time.wall_s.max(0.01))
                    .collect::<Vec<_>>(),
            );
            let vcs = median(&v.iter().map(|r| r.time.vcs).collect::<Vec<_>>());
            if k.stall.is_zero() && v.iter().all(|r| r.lost == 0.0) {
                best_clean[b] = best_clean[b].max(3.0 * g);
            }
            worst_rss[b] = worst_rss[b].max(rss);
            rows.push(vec![
                name.clone(),
                if k.rate == 0 {
                    "unpaced".into()
                } else {
                    format!("{}", k.rate)
                },
                format!("{}", k.live),
                if k.stall.is_zero() {
                    "–".into()
                } else {
                    format!("{:.1} s", k.stall.as_secs_f64())
                },
                format!("{}", v.len()),
                format!("{g:.0}"),
                format!("{:.0}", 3.0 * g),
                format!("{lost:.0}"),
                format!("{:.1} %", 100.0 * lost / (lost + delivered).max(1.0)),
                format!("{rss:.0}"),
                format!("{cpu:.0} %"),
                format!("{vcs:.0}"),
            ]);
        }
    }
    md.h2("3. Event throughput");
    md.line(&format!(
        "bench/churn with 2 workers (`-par 2`) at a paced rate for {} s, leaktrace attached by \
         pid (under GNU time for its own CPU and peak RSS) before the load starts. Events \
         offered = 3 × goroutines/s achieved (the probes themselves slow the program, so an \
         unpaced run finds the most the traced program can produce: on 2 CPUs the probes' \
         cost caps the rate before leaktrace's reader does). Rows with live > 0 keep that many \
         extra goroutines parked during the run, which leaktrace keeps re-reading. Rows with a \
         stall stop leaktrace (SIGSTOP) for that long, 0.5 s into the load, then let it go on: \
         what happens when the reader falls behind the {} KiB ring (~{} records).",
        plan.tp_secs,
        RING_KIB,
        RING_KIB * 1024 / 64
    ));
    md.table(
        &[
            "binary",
            "goroutines/s asked",
            "parked live",
            "reader stalled",
            "runs",
            "goroutines/s achieved",
            "events/s offered",
            "events lost",
            "lost %",
            "leaktrace peak RSS (MiB)",
            "leaktrace CPU",
            "leaktrace voluntary context switches",
        ],
        &rows,
    );
    for (b, (name, _)) in bins.iter().enumerate() {
        md.line(&format!(
            "{name}: highest rate with 0 events lost in every run without a stall: {:.0} \
             events/s (the most this machine's traced program offered); largest peak RSS in \
             this section: {:.0} MiB.",
            best_clean[b], worst_rss[b]
        ));
    }
    Ok(())
}
