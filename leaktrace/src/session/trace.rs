//! Tracing one process, the same for every runtime: attach → snapshot →
//! (events, refresh, report)* → final report → detach. The supervisor
//! (`session/mod.rs`) decides when tracing ends for everyone (Ctrl-C,
//! SIGTERM, `--duration`); the process's own exit and COUNT end it here.
use std::{cell::RefCell, collections::HashMap, path::PathBuf, rc::Rc, time::Duration};

use anyhow::Result;
use tokio::{
    sync::watch,
    time::{Instant, sleep_until},
};

use super::stops::{End, Schedule, Tick, pidfd};
use crate::{
    aggregate::verdict::{Rules, Verdict},
    cli::Args,
    probes::{
        Probes,
        ring::{RecordBatch, RingReader},
    },
    report::{
        build::{Ignore, Moment, ReportBuilder, Shape},
        model::{EventTotals, Report, TargetInfo},
        output::Output,
    },
    runtime::{Runtime, TaskView},
    target::{
        launch::{HeldChild, try_reap},
        process::{Process, TargetError, open_sockets},
    },
    threads::Threads,
};

/// How the process came to be traced.
pub enum Target {
    /// `--pid`: already running.
    Pid(Process),
    /// `-c`: our child, held before exec until the probes are in.
    Command(HeldChild),
    /// `-f`: a descendant stopped right after its exec (SIGSTOP by the
    /// follow probe) until the probes are in; continued with SIGCONT.
    Exec(Process),
}

impl Target {
    pub fn pid(&self) -> u32 {
        match self {
            Self::Pid(p) | Self::Exec(p) => p.pid,
            Self::Command(c) => c.pid,
        }
    }

    /// The path the kernel resolves to the target's inode, and its name for
    /// people.
    fn exe(&self) -> (PathBuf, String) {
        match self {
            Self::Pid(p) | Self::Exec(p) => (p.exe_link.clone(), p.exe_display.clone()),
            Self::Command(c) => (c.program.clone(), c.program.display().to_string()),
        }
    }

    /// Started by us or held at its first instruction: nothing existed
    /// before the probes, so there is nothing to snapshot.
    fn is_fresh(&self) -> bool {
        !matches!(self, Self::Pid(_))
    }

    /// Let it run, now that the probes are in.
    fn release(&mut self) -> Result<()> {
        match self {
            Self::Command(c) => c.release(),
            Self::Exec(p) => {
                // SAFETY: continuing a process we stopped at its exec.
                unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGCONT) };
                Ok(())
            }
            Self::Pid(_) => Ok(()),
        }
    }
}

/// What every traced process shares.
pub(super) struct Ctx {
    pub args: Args,
    pub out: RefCell<Output>,
    /// When `--duration` ends (the same for every process).
    pub deadline: Option<Instant>,
    /// The command line, said in each report when several processes are
    /// traced.
    pub show_cmdline: bool,
}

/// How one process's tracing ended.
#[derive(Clone, Debug)]
pub(super) struct Outcome {
    /// Its exit status when we could learn it (our own child).
    pub status: Option<i32>,
    /// The worst verdict in its final report.
    pub worst: Verdict,
}

pub(super) async fn trace(
    ctx: Rc<Ctx>,
    mut rt: Box<dyn Runtime>,
    mut target: Target,
    mut stop: watch::Receiver<Option<End>>,
) -> Result<Outcome> {
    let args = &ctx.args;
    let pid = target.pid();
    let (attach_path, exe_display) = target.exe();
    let fresh = target.is_fresh();
    let is_child = matches!(target, Target::Command(_));
    let exit_fd =
        pidfd(pid).map_err(|_| anyhow::Error::from(TargetError::ExitedDuringAttach(pid)))?;

    let mut probes = Probes::load(&rt.probe_globals())?;
    let attached = rt
        .attach(&mut probes, &attach_path, pid)
        .map_err(|e| attach_failure(pid, e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let logger = probes.take_logger();
    let mut ring = RingReader::spawn(probes.take_ring()?, logger, rt.record_size(), tx);
    let mut warnings = attached.warnings;
    let mut threads = Threads::start(&mut probes, pid, &mut warnings);
    // Read while it is held: a short program may be gone by the first report.
    let cmdline = ctx.show_cmdline.then(|| cmdline(pid)).flatten();
    // Probes go in by file offset, so a held process runs only now.
    target.release()?;
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

    let kind = rt.kind();
    let mut notes = Vec::new();
    if !fresh && !args.no_snapshot {
        match rt.snapshot(pid) {
            Ok(note) => notes.extend(note),
            Err(e) => {
                let msg = format!(
                    "could not read the {} that existed before attach ({e:#}); showing only {} \
                     seen by the probes since",
                    kind.tasks, kind.tasks
                );
                eprintln!("warning: {msg}");
                warnings.push(msg);
            }
        }
    }
    let target_info = TargetInfo {
        pid,
        exe: exe_display,
        cmdline,
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
        hang_s: args.hang.as_secs_f64(),
    };
    let mut builder = ReportBuilder::new(shape, target_info, rules, notes);
    builder.ignore = Ignore {
        top: args.ignore_top.clone(),
        current: args.ignore_current,
    };
    let mut refresh = Refresh {
        builder,
        views: Vec::new(),
        read_error: None,
        fresh,
        pid,
    };
    let sample_every = sample_every(args);
    let mut schedule = Schedule::new(args, ctx.deadline);

    let mut next_sample = Instant::now();
    let end = loop {
        if let Some(end) = *stop.borrow_and_update() {
            break end;
        }
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
            tick = schedule.next() => match tick {
                Tick::Report => {
                    // Read the tasks now, not at the last sample: `live`
                    // includes what was spawned since.
                    while let Ok(batch) = rx.try_recv() {
                        apply(rt.as_mut(), &batch);
                    }
                    refresh.run(rt.as_mut(), &mut probes, threads.as_mut());
                    next_sample = Instant::now() + sample_every;
                    let report = refresh.report(false, Moment::Live, rt.as_ref(), &probes);
                    ctx.out.borrow_mut().write(&report)?;
                }
                Tick::End(end) => break end,
            },
            _ = exit_fd.readable() => break End::TargetExited,
            changed = stop.changed() => {
                if changed.is_err() {
                    break End::Interrupted;
                }
            }
        }
    };

    // Told to stop just as the process ended (with -f, the command often
    // exits right after its last test binary): that is its exit.
    let end = if end != End::TargetExited && end != End::Exec && !process_alive(pid) {
        End::TargetExited
    } else {
        end
    };

    // Final report: take every record still in the ring, then read the
    // target one last time if it is still there.
    ring.finish();
    while let Ok(batch) = rx.try_recv() {
        apply(rt.as_mut(), &batch);
    }
    let mut status = None;
    let mut moment = Moment::Live;
    if end == End::TargetExited {
        status = is_child.then(|| try_reap(pid)).flatten();
        let exited = match status {
            Some(s) => format!("the command exited with status {s}"),
            None => "the target exited".to_string(),
        };
        match rt.at_exit() {
            Some(at) => {
                refresh.views = at.views;
                moment = Moment::AtExit {
                    crashed: at.crashed,
                };
                // The walk's summary says how the program ended.
                refresh.builder.notes.push(at.note);
            }
            None => refresh
                .builder
                .notes
                .push(format!("{exited}; state as of the last sample")),
        }
    } else if end == End::Exec {
        // Its memory is another program's now: nothing to read.
        refresh.builder.notes.push(
            "the process executed a new program; this is its state as of the last sample before"
                .to_string(),
        );
    } else {
        refresh.run(rt.as_mut(), &mut probes, threads.as_mut());
        if is_child {
            // We started it; tracing is over, so is its run. (On Ctrl-C
            // the terminal already sent it SIGINT.)
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            refresh
                .builder
                .notes
                .push("leaktrace stopped, so it sent SIGTERM to the command it started".into());
        }
    }
    if let Some(e) = refresh.read_error.take() {
        refresh
            .builder
            .notes
            .push(format!("reading the {} failed: {e}", kind.tasks));
    }
    let report = refresh.report(true, moment, rt.as_ref(), &probes);
    ctx.out.borrow_mut().write(&report)?;
    drop(probes);
    Ok(Outcome {
        status,
        worst: report
            .groups
            .iter()
            .map(|g| g.verdict)
            .min_by_key(|v| verdict_rank(*v))
            .unwrap_or(Verdict::Ok),
    })
}

/// Leak first.
pub(super) fn verdict_rank(v: Verdict) -> u8 {
    match v {
        Verdict::Leak => 0,
        Verdict::Suspect => 1,
        Verdict::Ok => 2,
    }
}

/// The latest task views and what reports are built from.
struct Refresh {
    builder: ReportBuilder,
    views: Vec<TaskView>,
    /// Why the last read of the tasks failed (said once, at the end).
    read_error: Option<String>,
    /// Held before its first instruction: a failed read may just be early.
    fresh: bool,
    pid: u32,
}

impl Refresh {
    /// Read the threads and the tasks now, and sample the trends.
    fn run(&mut self, rt: &mut dyn Runtime, probes: &mut Probes, threads: Option<&mut Threads>) {
        if let Some(t) = threads {
            self.builder.threads = Some(t.sample());
        }
        let result = rt.refresh(probes, self.pid, &mut self.views);
        for note in rt.take_notes() {
            eprintln!("note: {note}");
            self.builder.notes.push(note);
        }
        match result {
            Ok(true) => self.builder.record(&self.views, open_sockets(self.pid)),
            Ok(false) => {}
            // A process we started may not run its program yet; otherwise
            // say why once, in the final report.
            Err(e) if !self.fresh => self.read_error = Some(format!("{e:#}")),
            Err(_) => {}
        }
    }

    fn report(&self, is_final: bool, moment: Moment, rt: &dyn Runtime, probes: &Probes) -> Report {
        let events = EventTotals::new(rt.counts(), probes.lost());
        let lifetimes: HashMap<_, _> = rt.lifetimes().into_iter().collect();
        self.builder
            .build(is_final, moment, events, &self.views, &lifetimes)
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

/// `/proc/PID/cmdline`, arguments joined by spaces, bounded.
fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut s: String = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if s.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    Some(s)
}

/// Whether `pid` still runs (a zombie does not).
fn process_alive(pid: u32) -> bool {
    Process::open(pid).is_ok_and(|p| p.is_alive())
}

/// An attach that failed because the target exited meanwhile says that,
/// not whatever the kernel answered for a vanished process.
fn attach_failure(pid: u32, e: anyhow::Error) -> anyhow::Error {
    if !process_alive(pid) {
        TargetError::ExitedDuringAttach(pid).into()
    } else {
        e
    }
}
