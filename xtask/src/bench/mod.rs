//! `cargo xtask bench`: what leaktrace costs the process it traces, and how
//! far it scales. Everything is measured side by side in one run, and each
//! figure is set against a baseline taken in the same run, because this
//! machine is small (2 cores) and often busy with other builds: runs are
//! interleaved (A, B, C, A, B, C, …) so that background load hits every
//! configuration alike, and the median of several runs is reported.
//!
//! Sections (see `bench/RESULTS.md` for what each one found):
//! 1. churn: a Go program spawning, parking and ending goroutines, untraced,
//!    under `leaktrace -c`, and under bpftrace on the same runtime functions
//!    (at their entries, and at exactly leaktrace's probe points), plus a
//!    per-probe breakdown;
//! 2. http: a Go net/http server on loopback under wrk, untraced and traced;
//! 3. throughput: the event rate leaktrace keeps up with, and what happens
//!    above it;
//! 4. attach: time to the first report on a large binary and on 100,000
//!    goroutines, and whether the target stalls meanwhile (1 ms ticker);
//! 5. memory: leaktrace's peak RSS per live goroutine and time to the first
//!    report at 100,000 and 1,000,000 goroutines, candidates side by side;
//! 6. tokio: per-task and per-poll cost on tests/fixtures/rust's spawn and
//!    poll benchmarks, default and detailed mode, against bpftrace at the
//!    same functions;
//! 7. budget: the target's measured CPU overhead on paced churn at
//!    `--max-overhead` off, 1, 2 and 5 %, beside leaktrace's own estimate.
//!
//! Each section is one file here (churn.rs … tokio.rs); this file holds the
//! plan and the command line and writes the results; the helpers the
//! sections share each have a small module of their own.
//!
//! `--only` runs some sections and, if the output file exists, replaces just
//! those sections in it, so the rest of a full run's results stays.
//!
//! Benchmarks are not tests: nothing here asserts a timing.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

// Shared helpers, one job each.
mod elf;
mod machine;
mod markdown;
mod probes;
mod proc;
mod report;
mod stats;
mod tools;

// The sections, in RESULTS.md's order.
mod attach;
mod budget;
mod churn;
mod detach;
mod http;
mod memory;
mod throughput;
mod tokio;

use machine::{command_out, git_describe, loadavg, machine_section};
use markdown::{Markdown, splice_sections};
use tools::{build_tools, install_tools};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Churn,
    Http,
    Throughput,
    Attach,
    Memory,
    Tokio,
    Budget,
    Detach,
}

impl Section {
    /// Its number in RESULTS.md (`## N. …`), by which `--only` finds it.
    fn number(self) -> usize {
        self as usize + 1
    }
}

#[derive(clap::Args)]
pub struct Options {
    /// About six minutes instead of twenty: fewer goroutines and tokio tasks,
    /// shorter and fewer runs, the standard-library-only large binary, no
    /// 1M-goroutine run.
    #[arg(long)]
    pub quick: bool,
    /// Runs of each measurement, whose median is reported (default 5, or 3 with --quick).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Another leaktrace binary (e.g. a build with a proposed fix), measured
    /// side by side with the workspace's in the churn, http, throughput,
    /// memory and tokio sections and named by its file name. Repeatable.
    #[arg(long)]
    pub candidate: Vec<PathBuf>,
    /// Only these sections (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Where to write the results (relative paths are from the workspace root).
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
}

/// Sizes of one benchmark run.
struct Plan {
    quick: bool,
    runs: usize,
    churn_n: u64,
    http_secs: u32,
    tp_secs: u32,
    /// Goroutines per second offered in the throughput section (0: unpaced).
    tp_rates: Vec<u64>,
    /// Extra parked goroutines during unpaced throughput runs.
    tp_live: Vec<u64>,
    /// How long leaktrace is stopped in the runs that overflow the ring.
    tp_stalls: Vec<Duration>,
    tp_runs: usize,
    attach_goroutines: u64,
    generated_big: bool,
    one_million: bool,
}

impl Plan {
    fn new(o: &Options) -> Self {
        let runs = o.runs.unwrap_or(if o.quick { 3 } else { 5 }).max(1);
        if o.quick {
            Self {
                quick: true,
                runs,
                churn_n: 100_000,
                http_secs: 4,
                tp_secs: 2,
                tp_rates: vec![50_000, 0],
                tp_live: vec![100_000],
                tp_stalls: vec![Duration::from_secs(1)],
                tp_runs: 1,
                attach_goroutines: 100_000,
                generated_big: false,
                one_million: false,
            }
        } else {
            Self {
                quick: false,
                runs,
                churn_n: 300_000,
                http_secs: 10,
                tp_secs: 3,
                tp_rates: vec![25_000, 50_000, 100_000, 0],
                tp_live: vec![10_000, 100_000],
                tp_stalls: vec![Duration::from_millis(200), Duration::from_secs(1)],
                tp_runs: runs.min(3),
                attach_goroutines: 100_000,
                generated_big: true,
                one_million: true,
            }
        }
    }
}

/// Everything the sections run.
struct Tools {
    leaktrace: PathBuf,
    /// (name, binary): other leaktrace builds measured alongside.
    candidates: Vec<(String, PathBuf)>,
    go: PathBuf,
    churn: PathBuf,
    /// `churn` with ELF symbols added at leaktrace's probe points, so that
    /// bpftrace (which cannot probe at an offset here) can use the same points.
    churn_points: Option<churn::Points>,
    http: PathBuf,
    ticker: PathBuf,
    chan_send: PathBuf,
    big: PathBuf,
    scratch: PathBuf,
}

pub fn run(o: &Options) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the benchmark attaches eBPF probes and reads other processes' memory: run it as root \
             (sudo -E cargo xtask bench)"
        );
    }
    let plan = Plan::new(o);
    // Sections 1–6 measure what the probes cost, so no probe may be shed
    // (`--max-overhead`, default 2 %) under their load; §7 passes the flag
    // itself. Binaries without the budget ignore the variable.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("LEAKTRACE_MAX_OVERHEAD", "off") };
    let sections: Vec<Section> = if o.only.is_empty() {
        vec![
            Section::Churn,
            Section::Http,
            Section::Throughput,
            Section::Attach,
            Section::Memory,
            Section::Tokio,
            Section::Budget,
            Section::Detach,
        ]
    } else {
        o.only.clone()
    };
    let started = Instant::now();
    let mut md = Markdown::default();
    let load_before = loadavg();

    let installed = setup::run(&setup::Options::default())?;
    let mut did = install_tools(&sections)?;
    let go = installed
        .go
        .last()
        .context("no Go toolchain (cargo xtask setup)")?
        .clone();
    let leaktrace = util::build_leaktrace()?;
    let mut candidates = Vec::new();
    for c in &o.candidate {
        if !c.is_file() {
            bail!("--candidate {}: no such file", c.display());
        }
        let name = c
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| c.display().to_string());
        candidates.push((format!("candidate {name}"), c.clone()));
    }
    let tools = build_tools(&plan, &sections, &go, leaktrace, candidates, &mut did)?;

    md.h1("leaktrace benchmarks");
    md.line(&format!(
        "Written by `cargo xtask bench{}` on {}. Regenerate with the same command; \
         bench/ANALYSIS.md explains the figures and what would improve them.",
        if plan.quick { " --quick" } else { "" },
        command_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default()
    ));
    machine_section(&mut md, &plan, &tools, &did, &load_before)?;

    let mut chunks = Vec::new();
    for &s in &sections {
        let t = Instant::now();
        let load = loadavg();
        let mut sec = Markdown::default();
        let r = match s {
            Section::Churn => churn::section(&mut sec, &plan, &tools),
            Section::Http => http::section(&mut sec, &plan, &tools),
            Section::Throughput => throughput::section(&mut sec, &plan, &tools),
            Section::Attach => attach::section(&mut sec, &plan, &tools),
            Section::Memory => memory::section(&mut sec, &plan, &tools),
            Section::Tokio => tokio::section(&mut sec, &plan, &tools),
            Section::Budget => budget::section(&mut sec, &plan, &tools),
            Section::Detach => detach::section(&mut sec, &plan, &tools),
        };
        if let Err(e) = r {
            sec.line(&format!("**This section failed:** {e:#}"));
            eprintln!("bench: section {s:?} failed: {e:#}");
        }
        sec.line(&format!(
            "_Section took {:.0} s; load average at its start: {load}._",
            t.elapsed().as_secs_f64()
        ));
        // A section that failed before its heading still needs one, or
        // `--only` could not find it again.
        if !sec.text.starts_with("## ") {
            sec.text = format!("## {}. {s:?}\n\n{}", s.number(), sec.text);
        }
        chunks.push((s, sec.text));
    }

    let out = if o.out.is_absolute() {
        o.out.clone()
    } else {
        util::workspace_root().join(&o.out)
    };
    let earlier = (!o.only.is_empty())
        .then(|| std::fs::read_to_string(&out).ok())
        .flatten()
        .filter(|t| t.starts_with("# leaktrace benchmarks"));
    let text = if let Some(earlier) = earlier {
        let note = format!(
            "_Regenerated alone by `cargo xtask bench{} --only {}` on {}, {} runs per figure, \
             leaktrace at {}; the rest of this file is from the run named at the top._\n\n",
            if plan.quick { " --quick" } else { "" },
            sections
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(","),
            command_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            plan.runs,
            git_describe(),
        );
        splice_sections(&earlier, &chunks, &note)
    } else {
        for (_, c) in &chunks {
            md.text.push_str(c);
        }
        md.h2("Load");
        md.line(&format!(
            "Load average (1, 5, 15 min) before: {load_before}; after: {}. Whole run: {:.0} s.",
            loadavg(),
            started.elapsed().as_secs_f64()
        ));
        md.text
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}
