//! One tracing session, the same for every runtime: inspect → attach →
//! snapshot → (events, refresh, report)* → final report → detach.
//!
//! Every way out (duration, COUNT, Ctrl-C, SIGTERM, the target exiting) is a
//! [`Stop`] that leaves the loop through its end, where the final report is
//! written and the probes are dropped, which detaches them; an error drops
//! them on its way out too.
mod stops;

use std::{fs::File, io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use tokio::time::{Instant, sleep_until};

use self::stops::{End, Stop, Stops};
use crate::{
    aggregate::verdict::Rules,
    cli::{Args, Color, Format},
    probes::{
        Probes,
        ring::{RecordBatch, RingReader},
    },
    report::{
        build::{ReportBuilder, Shape},
        model::{EventTotals, TargetInfo},
        output::{Form, Output, TextStyle},
    },
    runtime::{Runtime, TaskView},
    target::{
        launch::{HeldChild, try_reap},
        process::{Process, TargetError, open_sockets},
    },
    threads::Threads,
};

/// How the target came to be traced.
pub enum Target {
    Pid(Process),
    Command(HeldChild),
}

impl Target {
    fn pid(&self) -> u32 {
        match self {
            Self::Pid(p) => p.pid,
            Self::Command(c) => c.pid,
        }
    }

    /// The path the kernel resolves to the target's inode, and its name for
    /// people.
    fn exe(&self) -> (PathBuf, String) {
        match self {
            Self::Pid(p) => (p.exe_link.clone(), p.exe_display.clone()),
            Self::Command(c) => (c.program.clone(), c.program.display().to_string()),
        }
    }
}

pub async fn run(args: &Args, mut rt: Box<dyn Runtime>, mut target: Target) -> Result<i32> {
    let pid = target.pid();
    let (attach_path, exe_display) = target.exe();
    let is_child = matches!(target, Target::Command(_));
    let mut stops = Stops::new(args, pid)?;

    let mut probes = Probes::load(&rt.probe_globals())?;
    let attached = rt
        .attach(&mut probes, &attach_path, pid)
        .map_err(|e| attach_failure(pid, e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let logger = probes.take_logger();
    let mut ring = RingReader::spawn(probes.take_ring()?, logger, rt.record_size(), tx);
    let mut warnings = attached.warnings;
    let mut threads = Threads::start(&mut probes, pid, &mut warnings);
    // Probes go in by file offset, so a `-c` child runs only now.
    if let Target::Command(child) = &mut target {
        child.release()?;
    }
    let desc = rt.describe();
    let detail = attached
        .detail
        .map(|d| format!(", {d}"))
        .unwrap_or_default();
    eprintln!(
        "Attaching to pid {pid} ({exe_display}, {}){detail}, {} probes; Ctrl-C for the final report.",
        desc.version, probes.attached
    );
    for w in &warnings {
        eprintln!("warning: {w}");
    }

    let mut notes = Vec::new();
    if !is_child && !args.no_snapshot {
        match rt.snapshot(pid) {
            Ok(note) => notes.extend(note),
            Err(e) => {
                let msg = format!(
                    "could not read the {} that existed before attach ({e:#}); showing only {} \
                     seen by the probes since",
                    rt.kind().tasks,
                    rt.kind().tasks
                );
                eprintln!("warning: {msg}");
                warnings.push(msg);
            }
        }
    }
    let kind = rt.kind();
    let target_info = TargetInfo {
        pid,
        exe: exe_display,
        runtime: kind,
        runtime_version: desc.version,
        symbols: desc.symbols,
        warnings,
    };
    let rules = Rules {
        older_s: args.older.as_secs_f64(),
        suspect_count: args.suspect_count,
        stuck_s: args.stuck.as_secs_f64(),
        noun: kind.task,
        ..Rules::default()
    };
    let shape = Shape {
        top: args.top,
        system: args.system,
        window_ns: args.window.as_nanos().min(u128::from(u64::MAX)) as u64,
    };
    let mut out = output(args)?;
    let mut refresh = Refresh {
        builder: ReportBuilder::new(shape, target_info, rules, notes),
        views: Vec::new(),
        read_error: None,
        is_child,
        pid,
    };
    let sample_every = sample_every(args);
    stops.start(args);

    let mut next_sample = Instant::now();
    let end = loop {
        tokio::select! {
            Some(batch) = rx.recv() => apply(rt.as_mut(), &batch),
            _ = sleep_until(next_sample) => {
                let t0 = Instant::now();
                while let Ok(batch) = rx.try_recv() {
                    apply(rt.as_mut(), &batch);
                }
                refresh.run(rt.as_mut(), &mut probes, threads.as_mut());
                // Reading a huge task table costs leaktrace CPU (never the
                // target's time): keep that under a fifth of one core.
                next_sample = Instant::now() + sample_every.max(t0.elapsed() * 5);
            }
            stop = stops.next() => match stop {
                Stop::Report => {
                    // Read the tasks now, not at the last sample: `live`
                    // includes what was spawned since.
                    while let Ok(batch) = rx.try_recv() {
                        apply(rt.as_mut(), &batch);
                    }
                    refresh.run(rt.as_mut(), &mut probes, threads.as_mut());
                    next_sample = Instant::now() + sample_every;
                    out.write(&refresh.report(false, rt.as_ref(), &probes))?;
                }
                Stop::End(end) => break end,
            },
        }
    };

    // Final report: take every record still in the ring, then read the
    // target one last time if it is still there.
    ring.finish();
    while let Ok(batch) = rx.try_recv() {
        apply(rt.as_mut(), &batch);
    }
    let mut code = 0;
    if end == End::TargetExited {
        code = target_exited(&mut refresh.builder.notes, pid, is_child);
    } else {
        refresh.run(rt.as_mut(), &mut probes, threads.as_mut());
        if is_child {
            stop_child(&mut refresh.builder.notes, pid);
        }
    }
    if let Some(e) = refresh.read_error.take() {
        refresh
            .builder
            .notes
            .push(format!("reading the {} failed: {e}", kind.tasks));
    }
    out.write(&refresh.report(true, rt.as_ref(), &probes))?;
    drop(probes);
    Ok(code)
}

/// The latest task views and what reports are built from.
struct Refresh {
    builder: ReportBuilder,
    views: Vec<TaskView>,
    /// Why the last read of the tasks failed (said once, at the end).
    read_error: Option<String>,
    is_child: bool,
    pid: u32,
}

impl Refresh {
    /// Read the threads and the tasks now, and sample the trends.
    fn run(&mut self, rt: &mut dyn Runtime, probes: &mut Probes, threads: Option<&mut Threads>) {
        if let Some(t) = threads {
            self.builder.threads = Some(t.sample());
        }
        let result = rt.refresh(probes, self.pid);
        for note in rt.take_notes() {
            eprintln!("note: {note}");
            self.builder.notes.push(note);
        }
        match result {
            Ok(Some(views)) => {
                self.views = views;
                self.builder.record(&self.views, open_sockets(self.pid));
            }
            Ok(None) => {}
            // With -c the program may not have started yet; otherwise say
            // why once, in the final report.
            Err(e) if !self.is_child => self.read_error = Some(format!("{e:#}")),
            Err(_) => {}
        }
    }

    fn report(
        &self,
        is_final: bool,
        rt: &dyn Runtime,
        probes: &Probes,
    ) -> crate::report::model::Report {
        let events = EventTotals::new(rt.counts(), probes.lost());
        let lifetimes = rt.lifetimes().into_iter().collect();
        self.builder
            .build(is_final, events, &self.views, &lifetimes)
    }
}

fn apply(rt: &mut dyn Runtime, batch: &RecordBatch) {
    for record in batch.records() {
        rt.apply(record);
    }
}

/// Trends need several samples even in a short window.
fn sample_every(args: &Args) -> Duration {
    args.report_interval()
        .max(Duration::from_millis(100))
        .min(Duration::from_millis(500))
}

/// The note and exit code for a target that exited under us.
fn target_exited(notes: &mut Vec<String>, pid: u32, is_child: bool) -> i32 {
    let status = if is_child { try_reap(pid) } else { None };
    notes.push(match status {
        Some(s) => format!("the command exited with status {s}; state as of the last sample"),
        None => "the target exited; state as of the last sample".to_string(),
    });
    status.unwrap_or(0)
}

/// We started it; tracing is over, so is its run. (On Ctrl-C the terminal
/// already sent it SIGINT.)
fn stop_child(notes: &mut Vec<String>, pid: u32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    notes.push("leaktrace stopped, so it sent SIGTERM to the command it started".into());
}

/// An attach that failed because the target exited meanwhile says that,
/// not whatever the kernel answered for a vanished process.
fn attach_failure(pid: u32, e: anyhow::Error) -> anyhow::Error {
    if process_gone(pid) {
        TargetError::ExitedDuringAttach(pid).into()
    } else {
        e
    }
}

fn process_gone(pid: u32) -> bool {
    Process::open(pid).map(|p| !p.is_alive()).unwrap_or(true)
}

fn output(args: &Args) -> Result<Output> {
    let out: Box<dyn std::io::Write> = match &args.output {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    let form = match args.format {
        Format::Json => Form::Json,
        Format::Text => Form::Text(TextStyle {
            color: match args.color {
                Color::Always => true,
                Color::Never => false,
                Color::Auto => args.output.is_none() && std::io::stdout().is_terminal(),
            },
            stacks: args.stacks,
        }),
    };
    Ok(Output::new(out, form))
}
