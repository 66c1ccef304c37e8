//! Section 4: time to the first report on a large binary and on many
//! goroutines, and whether the target stalls meanwhile (a 1 ms ticker).
use std::{
    collections::BTreeMap,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    Markdown, Plan, Tools,
    proc::{Proc, TimeReport, read_time, timed},
    report::{last_report, num_after},
    stats::{fmt_med, median, ratio},
};

pub(super) struct AttachRun {
    pub(super) attach_s: f64,
    pub(super) first_report_s: f64,
    pub(super) total_s: f64,
    pub(super) time: TimeReport,
    pub(super) live: f64,
}

/// Attach to `pid` and take two reports 100 ms apart (the first one needs
/// the snapshot and one full read of every goroutine).
pub(super) fn attach_once(t: &Tools, pid: u32, label: &str) -> Result<AttachRun> {
    attach_once_with(t, &t.leaktrace, pid, label)
}

/// [`attach_once`] with another leaktrace binary (a candidate).
pub(super) fn attach_once_with(
    t: &Tools,
    bin: &std::path::Path,
    pid: u32,
    label: &str,
) -> Result<AttachRun> {
    trace_once(t, bin, pid, label, &["--interval", "100ms", "--count", "2"])
}

/// Run leaktrace on `pid` with `args` until it exits by itself; when it
/// attached and when its first report appeared.
fn trace_once(
    t: &Tools,
    bin: &std::path::Path,
    pid: u32,
    label: &str,
    args: &[&str],
) -> Result<AttachRun> {
    let report = t.scratch.join("attach-report.jsonl");
    let time_file = t.scratch.join("attach-time.txt");
    let _ = std::fs::remove_file(&report);
    let t0 = Instant::now();
    let mut lt = Proc::spawn(
        timed(bin, &time_file)
            .args(["--format", "json", "--output"])
            .arg(&report)
            .args(["--pid", &pid.to_string()])
            .args(args),
        label,
    )?;
    let (attached, _) = lt.err.wait_for("attach", Duration::from_secs(300), |l| {
        l.starts_with("Attaching")
    })?;
    let first = loop {
        if std::fs::read(&report).is_ok_and(|b| b.contains(&b'\n')) {
            break Instant::now();
        }
        if let Some(s) = lt.child.try_wait()? {
            bail!(
                "leaktrace exited ({s}) before its first report: {}",
                lt.err.tail()
            );
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("no report within 600 s");
        }
        sleep(Duration::from_millis(2));
    };
    lt.wait(Duration::from_secs(600))?;
    let total_s = t0.elapsed().as_secs_f64();
    let ev = last_report(&report)?;
    Ok(AttachRun {
        attach_s: (attached - t0).as_secs_f64(),
        first_report_s: (first - t0).as_secs_f64(),
        total_s,
        time: read_time(&time_file)?,
        live: ev.live,
    })
}

pub(super) fn chan_send(t: &Tools, n: u64) -> Result<Proc> {
    let mut p = Proc::spawn(
        Command::new(&t.chan_send).args(["-n", &n.to_string(), "-hold", "900s"]),
        "chan_send",
    )?;
    // The ground-truth block (a stop-the-world goroutine profile) comes
    // ~300 ms after the leak; wait for it so it cannot overlap a measurement.
    p.out
        .wait_for("chan_send's truth block", Duration::from_secs(300), |l| {
            l == "--- end ---"
        })?;
    Ok(p)
}

struct Gap {
    window_ms: f64,
    max_gap_ms: f64,
    /// When the largest gap ended, from the window's start.
    max_gap_end_ms: f64,
}

fn roll(p: &mut Proc) -> Result<Gap> {
    p.send_line("")?;
    let (_, l) = p
        .out
        .wait_for("a ticker window", Duration::from_secs(30), |l| {
            l.starts_with("window_ms")
        })?;
    Ok(Gap {
        window_ms: num_after(&l, "window_ms ").unwrap_or(f64::NAN),
        max_gap_ms: num_after(&l, "max_gap_us ").unwrap_or(f64::NAN) / 1000.0,
        max_gap_end_ms: num_after(&l, "max_gap_end_ms ").unwrap_or(f64::NAN),
    })
}

/// One traced window (attach, snapshot, two reports) and one equally long
/// untraced window right after it, on a ticker holding `n` goroutines.
fn ticker_once(t: &Tools, ticker: &mut Proc, args: &[&str]) -> Result<(Gap, Gap, AttachRun)> {
    roll(ticker)?;
    let run = trace_once(
        t,
        &t.leaktrace,
        ticker.pid(),
        "leaktrace --pid bench/ticker",
        args,
    )?;
    let traced = roll(ticker)?;
    sleep(Duration::from_secs_f64(traced.window_ms / 1000.0));
    let quiet = roll(ticker)?;
    Ok((traced, quiet, run))
}

/// Which part of leaktrace's run each traced window's largest gap
/// overlapped, counted (the window starts a few ms before leaktrace does).
fn gap_phases<'a>(runs: impl Iterator<Item = (&'a Gap, &'a AttachRun)>) -> String {
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for (g, r) in runs {
        let end = g.max_gap_end_ms / 1000.0;
        let start = end - g.max_gap_ms / 1000.0;
        // The final report and the probes' detach take its last moments.
        let exit_from = r.total_s - 0.2;
        let phase = if end <= r.attach_s {
            "a. start-up (reading the binary, attaching the probes)"
        } else if start >= exit_from {
            "d. its last 200 ms (final read and report, detaching the probes, exit)"
        } else if start >= r.first_report_s {
            "c. after the first report"
        } else if start >= r.attach_s {
            "b. attached, until the first report (snapshot, first full read)"
        } else {
            "a-b. across the attach"
        };
        *phases.entry(phase).or_default() += 1;
    }
    if phases.is_empty() {
        return "–".into();
    }
    phases
        .iter()
        .map(|(p, n)| format!("{p}: {n}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// How long leaktrace traces in the steady-state runs.
const STEADY: &str = "6s";

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let n = plan.attach_goroutines;
    let mut big = Proc::spawn(&mut Command::new(&t.big), "bench/big")?;
    big.out
        .wait_for("ready", Duration::from_secs(30), |l| l.starts_with("ready"))?;
    let mut small = chan_send(t, 100)?;
    let mut many = chan_send(t, n)?;
    let mut ticker = Proc::spawn(
        Command::new(&t.ticker).args(["-n", &n.to_string()]),
        "bench/ticker",
    )?;
    ticker
        .out
        .wait_for("ready", Duration::from_secs(120), |l| {
            l.starts_with("ready")
        })?;
    sleep(Duration::from_secs(1));

    let targets: [(&str, u32); 3] = [
        ("bench/big (large binary, idle)", big.pid()),
        ("chan_send -n 100", small.pid()),
        ("chan_send -n 100000", many.pid()),
    ];
    let mut runs: BTreeMap<usize, Vec<AttachRun>> = BTreeMap::new();
    let mut gaps: Vec<(Gap, Gap)> = Vec::new();
    let mut ticker_runs = Vec::new();
    // (attached, first report) in seconds from leaktrace's start, per ticker run.
    let mut steady: Vec<(Gap, Gap, AttachRun)> = Vec::new();
    for round in 0..plan.runs {
        for (i, (name, pid)) in targets.iter().enumerate() {
            eprintln!("bench: attach round {}/{}: {name}", round + 1, plan.runs);
            match attach_once(t, *pid, name) {
                Ok(r) => runs.entry(i).or_default().push(r),
                Err(e) => eprintln!("bench: attach {name}: {e:#}"),
            }
        }
        eprintln!("bench: attach round {}/{}: ticker", round + 1, plan.runs);
        match ticker_once(t, &mut ticker, &["--interval", "100ms", "--count", "2"]) {
            Ok((a, b, r)) => {
                gaps.push((a, b));
                ticker_runs.push(r);
            }
            Err(e) => eprintln!("bench: ticker: {e:#}"),
        }
        eprintln!(
            "bench: attach round {}/{}: ticker, steady",
            round + 1,
            plan.runs
        );
        match ticker_once(t, &mut ticker, &["--duration", STEADY]) {
            Ok((a, b, r)) => steady.push((a, b, r)),
            Err(e) => eprintln!("bench: ticker, steady: {e:#}"),
        }
    }
    big.stop(Duration::from_secs(10));
    small.stop(Duration::from_secs(10));
    many.stop(Duration::from_secs(30));
    ticker.stdin = None;
    ticker.stop(Duration::from_secs(30));

    let big_mb = std::fs::metadata(&t.big)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(f64::NAN);
    let mut all: Vec<(String, Vec<AttachRun>)> = targets
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.to_string(), runs.remove(&i).unwrap_or_default()))
        .collect();
    let phases = gap_phases(gaps.iter().map(|g| &g.0).zip(&ticker_runs));
    all.push((format!("bench/ticker -n {n}"), ticker_runs));
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(name, v)| {
            let f = |g: fn(&AttachRun) -> f64| v.iter().map(g).collect::<Vec<_>>();
            vec![
                name.clone(),
                format!("{}", v.len()),
                fmt_med(&f(|r| r.attach_s), 2),
                fmt_med(&f(|r| r.first_report_s), 2),
                fmt_med(&f(|r| r.total_s), 2),
                fmt_med(&f(|r| r.time.cpu_s), 2),
                fmt_med(&f(|r| r.time.maxrss_kb / 1024.0), 0),
                format!("{:.0}", median(&f(|r| r.live))),
            ]
        })
        .collect();
    md.h2("4. Attach and snapshot");
    md.line(&format!(
        "`leaktrace --pid PID --interval 100ms --count 2` on a running process: \"attached\" is \
         when it prints `Attaching` (binary read, probes attached), \"first report\" when its \
         first report is in the output file (after the snapshot of runtime.allgs and one full \
         read of every goroutine; 100 ms of it is the report interval), \"done\" when it has \
         written the final report and exited. The large binary is {big_mb:.1} MB ({}), with \
         DWARF.",
        if plan.generated_big {
            "bench/big plus 24,000 generated methods"
        } else {
            "bench/big alone: the standard-library-only version, used by --quick; the full run \
             uses one over 50 MB"
        }
    ));
    md.table(
        &[
            "target",
            "runs",
            "attached (s)",
            "first report (s)",
            "done (s)",
            "leaktrace CPU (s)",
            "leaktrace peak RSS (MiB)",
            "live goroutines reported",
        ],
        &rows,
    );
    let traced: Vec<f64> = gaps.iter().map(|g| g.0.max_gap_ms).collect();
    let quiet: Vec<f64> = gaps.iter().map(|g| g.1.max_gap_ms).collect();
    let window: Vec<f64> = gaps.iter().map(|g| g.0.window_ms / 1000.0).collect();
    md.line(&format!(
        "Is the target paused? bench/ticker holds {n} parked goroutines and ticks every 1 ms. \
         Largest gap between two ticks while leaktrace attached, snapshotted and reported \
         (windows of {} s): {} ms; in an equally long window right after, untraced: {} ms \
         (ratio {}). A 1 ms ticker in this VM normally shows gaps of a few ms.",
        fmt_med(&window, 1),
        fmt_med(&traced, 1),
        fmt_med(&quiet, 1),
        ratio(median(&traced), median(&quiet)),
    ));
    md.line(&format!(
        "Where the largest traced gap fell, per run: {phases}. (A gap is not necessarily a \
         pause by leaktrace: on 2 busy CPUs its own CPU use delays the ticker's thread too.)"
    ));
    let f = |g: fn(&(Gap, Gap, AttachRun)) -> f64| steady.iter().map(g).collect::<Vec<_>>();
    md.line(&format!(
        "Steady tracing with default settings (`--pid PID --duration {STEADY}`) of the same \
         ticker holding {n} goroutines, {} runs: leaktrace used {} % of one CPU (CPU time ÷ \
         wall time, attach included), peak RSS {} MiB; the ticker's largest gap was {} ms \
         traced vs {} ms in an equally long untraced window right after. Where the largest \
         traced gap fell, per run: {}.",
        steady.len(),
        fmt_med(
            &f(|s| 100.0 * s.2.time.cpu_s / s.2.time.wall_s.max(0.01)),
            0
        ),
        fmt_med(&f(|s| s.2.time.maxrss_kb / 1024.0), 0),
        fmt_med(&f(|s| s.0.max_gap_ms), 1),
        fmt_med(&f(|s| s.1.max_gap_ms), 1),
        gap_phases(steady.iter().map(|s| (&s.0, &s.2))),
    ));
    Ok(())
}
