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

use super::{
    standin::{self, StandIn},
    stops::{End, Schedule, Tick, pidfd},
    work::{Totals, Work, off_thread},
};
use crate::{
    aggregate::verdict::{Rules, Verdict},
    budget::Budget,
    cli::Args,
    probes::{
        Probes,
        ring::{self, RingReader},
    },
    report::{
        build::{Ignore, Moment, ReportBuilder, Shape},
        model::{EventTotals, Report, TargetInfo},
        output::Output,
    },
    runtime::{Runtime, TaskCounts, TaskView},
    target::{
        launch::{HeldChild, try_reap},
        privileges::{Credentials, explain_attach_failure},
        process::{Process, TargetError},
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
    /// `--pid` or `-c`: the traced process executed a new program, which
    /// runs on (never held); `child` when leaktrace started it.
    Reexec { proc: Process, child: bool },
}

impl Target {
    pub fn pid(&self) -> u32 {
        match self {
            Self::Pid(p) | Self::Exec(p) | Self::Reexec { proc: p, .. } => p.pid,
            Self::Command(c) => c.pid,
        }
    }

    /// The path the kernel resolves to the target's inode, and its name for
    /// people.
    fn exe(&self) -> (PathBuf, String) {
        match self {
            Self::Pid(p) | Self::Exec(p) | Self::Reexec { proc: p, .. } => {
                (p.exe_link.clone(), p.exe_display.clone())
            }
            Self::Command(c) => (c.program.clone(), c.program.display().to_string()),
        }
    }

    /// Started by us or held at its first instruction: nothing existed
    /// before the probes, so there is nothing to snapshot.
    fn is_fresh(&self) -> bool {
        matches!(self, Self::Command(_) | Self::Exec(_))
    }

    /// leaktrace started it: its status is ours to reap, and it ends with
    /// the session.
    fn is_child(&self) -> bool {
        matches!(self, Self::Command(_) | Self::Reexec { child: true, .. })
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
            Self::Pid(_) | Self::Reexec { .. } => Ok(()),
        }
    }
}

/// What every traced process shares.
pub(super) struct Ctx {
    pub args: Args,
    pub out: RefCell<Output>,
    /// `--pprof`, `--folded`, `--listen`: each report goes there too.
    pub exports: super::exports::Exports,
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
    rt: Box<dyn Runtime>,
    mut target: Target,
    mut stop: watch::Receiver<Option<End>>,
    history: Vec<String>,
) -> Result<Outcome> {
    let args = &ctx.args;
    let pid = target.pid();
    let (attach_path, exe_display) = target.exe();
    let fresh = target.is_fresh();
    let is_child = target.is_child();
    let exit_fd =
        pidfd(pid).map_err(|_| anyhow::Error::from(TargetError::ExitedDuringAttach(pid)))?;

    let globals = rt.probe_globals();
    let ring = super::ring_bytes(args);
    let max_overhead = args.max_overhead;
    let attach = off_thread(&mut stop, move || -> Result<_> {
        let mut rt = rt;
        let mut probes = Probes::load_sized(&globals, ring)?;
        // Before the target's probes: it probes leaktrace itself.
        let hit = crate::probes::calibrate::hit_cost(&mut probes);
        let attached = rt
            .attach(&mut probes, &attach_path, pid)
            .map_err(|e| attach_failure(pid, e))?;
        let mut budget = Budget::new(rt.as_ref(), max_overhead, hit, pid);
        budget.start(rt.as_mut(), &mut probes)?;
        Ok((Work { rt, probes, budget }, attached))
    })
    .await;
    let (mut w, attached) = match attach {
        Ok(attached) => attached?,
        Err(end) => {
            // Nothing read yet, so no report; a process held for us runs
            // on (a `-c` command never started: its pipe closes).
            crate::say!("leaktrace: stopped ({end:?}) while attaching to pid {pid}; no report");
            if matches!(target, Target::Exec(_)) {
                target.release()?;
            }
            return Ok(Outcome {
                status: None,
                worst: Verdict::Ok,
            });
        }
    };
    let (tx, mut rx) = ring::record_channel(w.probes.overflow_counter());
    let logger = w.probes.take_logger();
    let mut ring = RingReader::spawn(w.probes.take_ring()?, logger, w.rt.record_size(), tx);
    let mut warnings = attached.warnings;
    let mut threads = Threads::start(&mut w.probes, pid, &mut warnings);
    // Read while it is held: a short program may be gone by the first report.
    let cmdline = ctx.show_cmdline.then(|| cmdline(pid)).flatten();
    // Probes go in by file offset, so a held process runs only now.
    target.release()?;
    let desc = w.rt.describe();
    let probes_attached = w.probes.attached;
    let detail = attached
        .detail
        .map(|d| format!(", {d}"))
        .unwrap_or_default();
    crate::say!(
        "Attaching to pid {pid} ({exe_display}, {}){detail}, {} probes; Ctrl-C for the final report.",
        desc.version,
        probes_attached
    );
    for w in &warnings {
        crate::say!("warning: {w}");
    }

    let kind = w.rt.kind();
    // What happened to the process before this trace (an exec) stays said.
    let mut notes = history;
    let mut cut = None;
    let mut work = None;
    // Kept for a report made without the runtime (a snapshot cut short):
    // the same JSON keys as every other report.
    let totals = w.totals();
    if !fresh && !args.no_snapshot {
        match off_thread(&mut stop, move || {
            let result = w.rt.snapshot(pid);
            (w, result)
        })
        .await
        {
            Ok((back, result)) => {
                work = Some(back);
                match result {
                    Ok(note) => notes.extend(note),
                    Err(e) => {
                        let msg = format!(
                            "could not read the {} that existed before attach ({e:#}); showing \
                             only {} seen by the probes since",
                            kind.tasks, kind.tasks
                        );
                        crate::say!("warning: {msg}");
                        warnings.push(msg);
                    }
                }
            }
            Err(end) => {
                notes.push(format!(
                    "stopped while reading the {} that existed before attach: no data",
                    kind.tasks
                ));
                cut = Some(end);
            }
        }
    } else {
        work = Some(w);
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
        views_away: false,
        stand_in: None,
        read_at: None,
        read_done: None,
        reports: 0,
        read_error: None,
        fresh,
        pid,
        totals: work.as_ref().map_or(totals, Work::totals),
    };
    let sample_every = sample_every(args);
    let mut schedule = Schedule::new(args, ctx.deadline);

    let mut next_sample = Instant::now();
    let mut output_failed = None;
    let end = loop {
        if let Some(end) = cut {
            break end;
        }
        if let Some(end) = *stop.borrow_and_update() {
            break end;
        }
        let Some(w) = work.as_mut() else {
            break End::Interrupted;
        };
        tokio::select! {
            Some(batch) = rx.recv() => w.apply(&batch),
            _ = sleep_until(w.budget_due()) => w.check_budget(),
            _ = sleep_until(next_sample) => {
                let t0 = Instant::now();
                while let Ok(batch) = rx.try_recv() {
                    w.apply(&batch);
                }
                cut = refresh.run(&mut work, &mut stop, threads.as_mut()).await.err();
                // Reading a huge task table costs leaktrace CPU (never the
                // target's time): keep that under a fifth of one core.
                next_sample = Instant::now() + sample_every.max(t0.elapsed() * 5);
            }
            tick = schedule.next() => match tick {
                Tick::Report => {
                    // Read the tasks now, not at the last sample: `live`
                    // includes what was spawned since. Except for the
                    // first report when the attach's first read has just
                    // ended (it makes the tick late): reading a million
                    // goroutines again would delay it by ~0.4 s for data
                    // a few milliseconds fresher (its age is reported).
                    while let Ok(batch) = rx.try_recv() {
                        w.apply(&batch);
                    }
                    let just_read = refresh.reports == 0
                        && refresh.read_done.is_some_and(|t| {
                            t.elapsed() < (schedule.period() / 2).min(FIRST_REPORT_FRESH)
                        });
                    if !just_read {
                        cut = refresh.run(&mut work, &mut stop, threads.as_mut()).await.err();
                        if cut.is_some() {
                            continue;
                        }
                    }
                    refresh.reports += 1;
                    next_sample = Instant::now() + sample_every;
                    let report = refresh.report(false, Moment::Live);
                    refresh.keep(&report);
                    if let Err(e) = ctx.out.borrow_mut().write(&report) {
                        output_failed = Some(e);
                        break End::OutputFailed;
                    }
                    ctx.exports.publish(&report, probes_attached);
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
        if let Some(w) = work.as_mut() {
            w.apply(&batch);
        }
    }
    if let Some(s) = refresh.stand_in.as_ref().filter(|_| refresh.views_away) {
        refresh.builder.notes.push(format!(
            "stopped during a read of the {}: this is the state as of an earlier read, {:.1} s \
             before the end",
            kind.tasks,
            s.age().as_secs_f64()
        ));
    }
    let mut status = None;
    let mut moment = Moment::Live;
    let mut sent_sigterm = false;
    if end == End::TargetExited {
        status = is_child.then(|| try_reap(pid)).flatten();
        let exited = match status {
            Some(s) => format!("the command exited with status {s}"),
            None => "the target exited".to_string(),
        };
        match work.as_mut().and_then(|w| w.rt.at_exit()) {
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
        if cut.is_none() {
            // The last read is not cut short: the signal was acted on.
            let (_keep, mut never) = watch::channel(None);
            refresh
                .run(&mut work, &mut never, threads.as_mut())
                .await
                .ok();
        }
        if is_child {
            // We started it; tracing is over, so is its run. (On Ctrl-C
            // the terminal already sent it SIGINT.)
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            sent_sigterm = true;
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
    if let Some(w) = &work {
        refresh.totals = w.totals();
    }
    let report = refresh.report(true, moment);
    if output_failed.is_none() {
        output_failed = ctx.out.borrow_mut().write(&report).err();
    }
    ctx.exports.publish(&report, probes_attached);
    drop(work);
    if sent_sigterm {
        // Give the command its graceful shutdown: leaktrace's exit kills
        // whatever is left of it (PR_SET_PDEATHSIG, `target/launch.rs`).
        let _ = tokio::time::timeout(CHILD_GRACE, exit_fd.readable()).await;
    }
    if let Some(e) = output_failed {
        return Err(e.into());
    }
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

/// How long a `-c` command sent SIGTERM at the end may take to exit before
/// leaktrace leaves (and its exit kills the command).
const CHILD_GRACE: Duration = Duration::from_secs(5);

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
    /// One list, refilled in place by each read (see `standin`).
    views: Vec<TaskView>,
    /// A read was cut short and took `views` with it: reports stand on
    /// `stand_in`.
    views_away: bool,
    /// A report from an earlier read, for a final report whose read was
    /// cut short.
    stand_in: Option<StandIn>,
    /// When `views` were read, and the event totals then: a report says its
    /// data's age, and its `live` adds the spawns and exits since.
    read_at: Option<(Instant, TaskCounts)>,
    /// When the last read of the tasks ended.
    read_done: Option<Instant>,
    /// Periodic reports written.
    reports: u64,
    /// Why the last read of the tasks failed (said once, at the end).
    read_error: Option<String>,
    /// Held before its first instruction: a failed read may just be early.
    fresh: bool,
    pid: u32,
    /// Event totals as of the last time the runtime was at hand.
    totals: Totals,
}

impl Refresh {
    /// Read the threads, then the tasks (on a blocking thread, taking the
    /// work there and back), and sample the trends. `Err(end)`: `stop`
    /// came first; the work stays away (`None`) and the views are the
    /// previous read's.
    async fn run(
        &mut self,
        work: &mut Option<Work>,
        stop: &mut watch::Receiver<Option<End>>,
        threads: Option<&mut Threads>,
    ) -> Result<(), End> {
        if let Some(t) = threads {
            self.builder.threads = Some(t.sample());
        }
        let Some(mut w) = work.take() else {
            return Ok(());
        };
        let pid = self.pid;
        self.keep_stand_in();
        let views = std::mem::take(&mut self.views);
        let (w, read) = match off_thread(stop, move || {
            let read = w.read(pid, views);
            (w, read)
        })
        .await
        {
            Ok(done) => done,
            Err(end) => {
                self.views_away = true;
                return Err(end);
            }
        };
        self.totals = w.totals();
        *work = Some(w);
        // Refilled, or as they were if the read failed.
        self.views = read.views;
        for note in read.notes {
            crate::say!("note: {note}");
            self.builder.notes.push(note);
        }
        match read.result {
            Ok(true) => {
                self.read_at = Some(read.started);
                self.read_done = Some(Instant::now());
                self.builder.record(&self.views, read.sockets);
            }
            Ok(false) => {}
            // A process we started may not run its program yet; otherwise
            // say why once, in the final report.
            Err(e) if !self.fresh => self.read_error = Some(format!("{e:#}")),
            Err(_) => {}
        }
        Ok(())
    }

    /// Before a read refills the views: keep a report of them to stand in
    /// for a final report if the read is cut short, unless a recent one is
    /// kept (see `standin::STAND_IN_EVERY`).
    fn keep_stand_in(&mut self) {
        let Some((read, _)) = self.read_at else {
            return;
        };
        if self.stand_in.as_ref().is_some_and(|s| s.fresh_for(read)) {
            return;
        }
        let report = self.report(true, Moment::Live);
        self.keep(&report);
    }

    /// Keep a live report made from the current views as the stand-in.
    fn keep(&mut self, report: &Report) {
        if let Some((read, _)) = self.read_at
            && !self.views_away
        {
            self.stand_in = Some(StandIn::new(
                report.clone(),
                read,
                self.totals.counts.clone(),
            ));
        }
    }

    fn report(&self, is_final: bool, moment: Moment) -> Report {
        // The views went with a read cut short: an earlier read's report
        // stands in (with none, the empty list says no read completed).
        let stand_in = self.stand_in.as_ref().filter(|_| self.views_away);
        let views: &[TaskView] = if stand_in.is_some() { &[] } else { &self.views };
        let Totals {
            counts,
            lifetimes,
            lost,
            overhead,
        } = self.totals.clone();
        let lifetimes: HashMap<_, _> = lifetimes.into_iter().collect();
        let mut report = self.builder.build(
            is_final,
            moment,
            EventTotals::new(counts.clone(), lost),
            views,
            &lifetimes,
        );
        report.overhead = overhead;
        if let Some(s) = stand_in {
            return s.report(standin::Now {
                is_final,
                counts,
                report,
            });
        }
        match (moment, &self.read_at) {
            // The exit walk is the state at the exit, just now.
            (Moment::AtExit { .. }, _) => report.data_age_s = Some(0.0),
            (Moment::Live, Some((at, then))) => {
                report.data_age_s = Some(at.elapsed().as_secs_f64());
                report.live = live_since(report.live, then, &counts);
            }
            (Moment::Live, None) => {}
        }
        report
    }
}

/// The live count a read found, moved on by the spawns and exits the
/// probes saw since it. (Corrections happen during reads: already in it.)
pub(super) fn live_since(read: u64, then: &TaskCounts, now: &TaskCounts) -> u64 {
    let spawned = now.spawn.saturating_sub(then.spawn);
    let ended = now.exit.saturating_sub(then.exit);
    (read + spawned).saturating_sub(ended)
}

/// The first report uses the attach's first read when it ended at most
/// this long ago (and within half a report interval).
const FIRST_REPORT_FRESH: Duration = Duration::from_millis(250);

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
        explain_attach_failure(&Credentials::current(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_counts_the_events_since_the_read() {
        let counts = |spawn, exit, corrected| TaskCounts {
            spawn,
            exit,
            corrected,
            extra: Vec::new(),
        };
        let then = counts(100, 40, 2);
        // 30 spawned and 5 exited since a read that found 60.
        assert_eq!(live_since(60, &then, &counts(130, 45, 9)), 85);
        assert_eq!(live_since(60, &then, &then), 60, "nothing since");
        assert_eq!(
            live_since(3, &then, &counts(100, 50, 2)),
            0,
            "never below 0"
        );
    }
}
