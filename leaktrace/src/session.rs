//! One tracing session: inspect → attach → snapshot → (events, refresh,
//! report)* → final report → detach.
//!
//! Every way out (duration, COUNT, Ctrl-C, SIGTERM, the target exiting) is a
//! [`Stop`] that leaves the loop of `run_go` / `run_tokio` through their end,
//! where the final report is written and the probes are dropped, which
//! detaches them; an error drops them on its way out too.
use std::{
    collections::HashMap,
    fs::File,
    io::{IsTerminal, Write},
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use leaktrace_common::{GoConfig, TokioEvent};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc::UnboundedReceiver,
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    aggregate::{
        groups::{Group, GroupKey, group},
        live::LiveTable,
        threads::ThreadTable,
        trend::Trends,
        verdict::{Rules, Verdict, judge},
    },
    cli::{Args, Color, Format},
    probes::{Probes, ring::RingReader, threads::ThreadProbes},
    report::{
        json,
        model::{BlockedSpan, EventTotals, GroupReport, Report, TargetInfo, ThreadsReport},
        text::{self, TextStyle},
    },
    runtime::{
        TaskView,
        go::{
            attach::{find_allgs, place_probes},
            binary::GoBinary,
            events::{decode, probe_config},
            reader::GoReader,
        },
        monotonic_ns,
        tokio::tracer::TokioTracer,
    },
    symbols::Frame,
    target::{
        launch::{HeldChild, try_reap},
        process::{Process, TargetError, load_bias as bias_from_maps},
    },
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
}

/// Why the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Duration,
    Count,
    Interrupted,
    Terminated,
    TargetExited,
}

/// Which runtime the target uses, and what leaktrace knows about it.
pub enum Runtime {
    Go(Box<GoBinary>),
    Tokio(Box<TokioTracer>),
}

pub async fn run(args: &Args, runtime: Runtime, target: Target) -> Result<i32> {
    match runtime {
        Runtime::Go(bin) => run_go(args, &bin, target).await,
        Runtime::Tokio(tracer) => run_tokio(args, *tracer, target).await,
    }
}

/// What ends a session or asks for a report, in one place for every runtime.
struct Stops {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    exit_fd: AsyncFd<OwnedFd>,
    deadline: Option<Instant>,
    reporter: tokio::time::Interval,
    reports: u64,
    count: Option<u64>,
}

enum Stop {
    Report,
    End(End),
}

impl Stops {
    /// Signals first: Ctrl-C during a slow attach or snapshot must still end
    /// in a final report, not in the default handler.
    fn new(args: &Args, pid: u32) -> Result<Self> {
        let sigint = signal(SignalKind::interrupt())?;
        let sigterm = signal(SignalKind::terminate())?;
        // Watch for the target's exit (works for any pid, child or not).
        let exit_fd =
            pidfd(pid).map_err(|_| anyhow::Error::from(TargetError::ExitedDuringAttach(pid)))?;
        let mut reporter = interval(args.report_interval().max(Duration::from_millis(100)));
        reporter.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            sigint,
            sigterm,
            exit_fd,
            deadline: None,
            reporter,
            reports: 0,
            count: args.report_count(),
        })
    }

    /// Call once attached: the clock for --duration and reports starts here.
    fn start(&mut self, args: &Args) {
        self.deadline = args.duration.map(|d| Instant::now() + d);
        self.reporter.reset();
    }

    async fn next(&mut self) -> Stop {
        let deadline = self.deadline;
        tokio::select! {
            _ = self.reporter.tick() => {
                self.reports += 1;
                if self.count.is_some_and(|c| self.reports >= c) {
                    Stop::End(End::Count)
                } else {
                    Stop::Report
                }
            }
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => Stop::End(End::Duration),
            _ = self.sigint.recv() => Stop::End(End::Interrupted),
            _ = self.sigterm.recv() => Stop::End(End::Terminated),
            _ = self.exit_fd.readable() => Stop::End(End::TargetExited),
        }
    }
}

/// Trends, verdicts and output, shared by every runtime.
struct Reporting<'a> {
    args: &'a Args,
    out: Box<dyn Write>,
    style: TextStyle,
    target: TargetInfo,
    rules: Rules,
    trends: Trends<SiteKey>,
    started: Instant,
    notes: Vec<String>,
    /// The latest thread sample, when threads are tracked.
    threads: Option<ThreadsReport>,
}

impl<'a> Reporting<'a> {
    fn new(args: &'a Args, target: TargetInfo, notes: Vec<String>) -> Result<Self> {
        let noun = if target.runtime == "go" {
            "goroutine"
        } else {
            "task"
        };
        Ok(Self {
            args,
            out: output(args)?,
            style: TextStyle {
                color: match args.color {
                    Color::Always => true,
                    Color::Never => false,
                    Color::Auto => args.output.is_none() && std::io::stdout().is_terminal(),
                },
                stacks: args.stacks,
            },
            target,
            rules: Rules {
                older_s: args.older.as_secs_f64(),
                suspect_count: args.suspect_count,
                noun,
                ..Rules::default()
            },
            trends: Trends::new(600),
            started: Instant::now(),
            notes,
            threads: None,
        })
    }

    /// Trends need several samples even in a short window.
    fn sample_every(&self) -> Duration {
        self.args
            .report_interval()
            .max(Duration::from_millis(100))
            .min(Duration::from_millis(500))
    }

    fn older_ns(&self) -> u64 {
        (self.rules.older_s * 1e9) as u64
    }

    /// One sample for the trends, per creation site and function: members
    /// move between running and waiting (a pool at work), so following one
    /// state's group would see a fixed pool "grow" each time its workers
    /// come back to wait.
    fn record(&mut self, views: &[TaskView]) {
        let now = monotonic_ns();
        let mut sites: HashMap<SiteKey, (u32, u32)> = HashMap::new();
        for g in group(views, now, self.older_ns()) {
            let e = sites.entry(site_of(&g.key)).or_default();
            e.0 = e.0.saturating_add(g.count.min(u32::MAX as u64) as u32);
            e.1 = e.1.saturating_add(g.old);
        }
        self.trends.record(
            now,
            sites.into_iter().map(|(k, (total, old))| (k, total, old)),
        );
    }

    fn emit(&mut self, is_final: bool, events: EventTotals, views: &[TaskView]) -> Result<()> {
        let report = self.build(is_final, events, views);
        match self.args.format {
            Format::Json => json::write(self.out.as_mut(), &report),
            Format::Text => text::write(self.out.as_mut(), &report, &self.style),
        }
    }

    fn build(&self, is_final: bool, events: EventTotals, views: &[TaskView]) -> Report {
        let args = self.args;
        let live = views.iter().filter(|v| !v.system).count() as u64;
        let system = views.len() as u64 - live;
        let shown = views.iter().filter(|v| args.system || !v.system);
        let groups = group(shown, monotonic_ns(), self.older_ns());
        let mut window_s: f64 = 0.0;
        let mut reports: Vec<GroupReport> = Vec::new();
        let mut omitted = 0;
        for g in groups {
            let m = self.trends.movement(&site_of(&g.key));
            window_s = window_s.max(m.window_s);
            let (verdict, why) = judge(&g, &m, &self.rules);
            // --older: a blocked group none of whose members has been old
            // that long is noise unless it is a verdict.
            let young = g.key.state.is_waiting() && g.aged == 0 && verdict == Verdict::Ok;
            if young || reports.len() >= args.top {
                omitted += 1;
                continue;
            }
            reports.push(group_report(g, m.growth_per_s, verdict, why));
        }
        Report {
            is_final,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            target: self.target.clone(),
            events,
            live,
            system,
            window_s,
            groups: reports,
            groups_omitted: omitted,
            notes: self.notes.clone(),
            threads: self.threads.clone(),
        }
    }

    /// The note and exit code for a target that exited under us.
    fn target_exited(&mut self, pid: u32, is_child: bool) -> i32 {
        let status = if is_child { try_reap(pid) } else { None };
        self.notes.push(match status {
            Some(s) => format!("the command exited with status {s}; state as of the last sample"),
            None => "the target exited; state as of the last sample".to_string(),
        });
        status.unwrap_or(0)
    }

    /// We started it; tracing is over, so is its run. (On Ctrl-C the
    /// terminal already sent it SIGINT.)
    fn stop_child(&mut self, pid: u32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        self.notes
            .push("leaktrace stopped, so it sent SIGTERM to the command it started".into());
    }
}

fn exe_of(target: &Target) -> (PathBuf, String) {
    match target {
        Target::Pid(p) => (p.exe_link.clone(), p.exe_display.clone()),
        Target::Command(c) => (c.program.clone(), c.program.display().to_string()),
    }
}

async fn run_go(args: &Args, bin: &GoBinary, mut target: Target) -> Result<i32> {
    let pid = target.pid();
    let (attach_path, exe_display) = exe_of(&target);
    let mut stops = Stops::new(args, pid)?;
    let mut warnings = bin.warnings();
    let placement = place_probes(bin)?;
    warnings.extend(placement.warnings);

    let mut probes = Probes::attach_go(
        &attach_path,
        pid,
        probe_config(&bin.layout),
        &placement.plan,
    )
    .map_err(|e| attach_failure(pid, e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let logger = probes.take_logger();
    let mut ring = RingReader::spawn(probes.take_ring()?, logger, tx);

    let mut table = LiveTable::default();
    let mut notes = Vec::new();
    let is_child = matches!(target, Target::Command(_));
    let mut threads = Threads::start(&mut probes, pid, &mut warnings);
    if let Target::Command(child) = &mut target {
        child.release()?;
    }
    eprintln!(
        "Attaching to pid {pid} ({exe_display}, {}), {} probes; Ctrl-C for the final report.",
        bin.version.raw, probes.attached
    );
    for w in &warnings {
        eprintln!("warning: {w}");
    }

    let mut bias = if is_child { None } else { load_bias(pid, bin) };
    let mut reader = GoReader::new(bin, pid, bias.unwrap_or(0));
    let snapshot_ns = monotonic_ns();
    if !is_child && !args.no_snapshot {
        match snapshot(bin, &mut reader, &mut table) {
            Ok(n) => notes.push(format!(
                "{n} goroutines (the runtime's included) existed at attach: their blocked \
                 durations are lower bounds (≥)"
            )),
            Err(e) => {
                let msg = format!(
                    "could not read the goroutines that existed before attach ({e:#}); showing only \
                     goroutines seen by the probes since"
                );
                eprintln!("warning: {msg}");
                warnings.push(msg);
            }
        }
    }
    let target_info = TargetInfo {
        pid,
        exe: exe_display,
        runtime: "go",
        runtime_version: bin.version.raw.clone(),
        symbols: bin.symbol_source(),
        warnings,
    };
    let mut rep = Reporting::new(args, target_info, notes)?;
    let sample_every = rep.sample_every();
    stops.start(args);
    let events = |table: &LiveTable, probes: &Probes| EventTotals {
        spawn: table.counts.spawn,
        exit: table.counts.exit,
        park: table.counts.park,
        lost: probes.lost(),
        corrected: table.corrected,
        ..EventTotals::default()
    };

    let mut views: Vec<TaskView> = Vec::new();
    let mut next_sample = Instant::now();
    let end = loop {
        tokio::select! {
            Some(mut batch) = rx.recv() => {
                apply(&mut table, &mut batch);
            }
            _ = sleep_until(next_sample) => {
                while let Ok(mut batch) = rx.try_recv() {
                    apply(&mut table, &mut batch);
                }
                if bias.is_none() {
                    bias = load_bias(pid, bin);
                    if let Some(b) = bias {
                        reader.set_bias(b);
                    }
                }
                let t0 = Instant::now();
                if bias.is_some() {
                    views = reader.views(&mut table, snapshot_ns);
                    rep.record(&views);
                }
                if let Some(t) = threads.as_mut() {
                    t.sample(&mut rep);
                }
                // Reading a huge goroutine table costs leaktrace CPU (never the
                // target's time): keep that under a fifth of one core.
                next_sample = Instant::now() + sample_every.max(t0.elapsed() * 5);
            }
            stop = stops.next() => match stop {
                Stop::Report => rep.emit(false, events(&table, &probes), &views)?,
                Stop::End(end) => break end,
            },
        }
    };

    // Final report: take every record still in the ring, then read the
    // target one last time if it is still there.
    ring.finish();
    while let Ok(mut batch) = rx.try_recv() {
        apply(&mut table, &mut batch);
    }
    let mut code = 0;
    if end == End::TargetExited {
        code = rep.target_exited(pid, is_child);
    } else {
        if bias.is_none()
            && let Some(b) = load_bias(pid, bin)
        {
            bias = Some(b);
            reader.set_bias(b);
        }
        if bias.is_some() {
            views = reader.views(&mut table, snapshot_ns);
            rep.record(&views);
        }
        if let Some(t) = threads.as_mut() {
            t.sample(&mut rep);
        }
        if is_child {
            rep.stop_child(pid);
        }
    }
    rep.emit(true, events(&table, &probes), &views)?;
    drop(probes);
    Ok(code)
}

/// tokio: probes for spawn, completion and cancellation (plus polls and
/// wakes with `--detailed`) keep the table; each refresh re-reads the known
/// task headers, and heap scans find what the probes cannot see.
async fn run_tokio(args: &Args, mut tracer: TokioTracer, mut target: Target) -> Result<i32> {
    let pid = target.pid();
    let (attach_path, exe_display) = exe_of(&target);
    let mut stops = Stops::new(args, pid)?;
    let is_child = matches!(target, Target::Command(_));
    let plan = tracer.plan(args.detailed);
    // Probes go in by file offset, so before a `-c` child runs; they stay
    // silent until `arm` tells them the vtables' run-time addresses.
    let mut probes = Probes::load(GoConfig::default())?;
    probes
        .attach("tokio_task", &plan.points, &attach_path, pid)
        .map_err(|e| attach_failure(pid, e))?;
    tracer.probes_attached(&plan, monotonic_ns());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<TokioEvent>>();
    let logger = probes.take_logger();
    let mut ring = RingReader::spawn(probes.take_ring()?, logger, tx);
    let mut warnings = tracer.warnings();
    warnings.extend(plan.notes.iter().cloned());
    let mut threads = Threads::start(&mut probes, pid, &mut warnings);
    if let Target::Command(child) = &mut target {
        child.release()?;
    }
    eprintln!(
        "Attaching to pid {pid} ({exe_display}, {}), {} task types, {} probes; Ctrl-C for the final report.",
        tracer.version(),
        tracer.bin.vtables.len(),
        probes.attached
    );
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let target_info = TargetInfo {
        pid,
        exe: exe_display,
        runtime: "rust-tokio",
        runtime_version: tracer.version(),
        symbols: tracer.symbol_source(),
        warnings,
    };
    let mut rep = Reporting::new(args, target_info, Vec::new())?;
    let sample_every = rep.sample_every();
    stops.start(args);
    let mut views: Vec<TaskView> = Vec::new();
    let mut next_sample = Instant::now();
    let mut armed = false;
    let mut scan_error = None;
    let detailed = plan.polls;
    let events = |tracer: &TokioTracer, probes: &Probes| {
        let t = tracer.totals;
        EventTotals {
            spawn: t.spawn,
            exit: t.complete,
            park: 0,
            lost: probes.lost(),
            corrected: t.corrected,
            poll: detailed.then_some(t.poll),
            wake: detailed.then_some(t.wake),
            shutdown: Some(t.shutdown),
        }
    };
    let mut sample = |tracer: &mut TokioTracer,
                      probes: &mut Probes,
                      rx: &mut UnboundedReceiver<Vec<TokioEvent>>,
                      views: &mut Vec<TaskView>,
                      rep: &mut Reporting| {
        if let Some(t) = threads.as_mut() {
            t.sample(rep);
        }
        if !armed {
            match tracer.arm(pid).and_then(|v| match v {
                Some(vtables) => arm_probes(probes, &vtables).map(|()| true),
                None => Ok(false),
            }) {
                Ok(a) => armed = a,
                Err(e) if !is_child => scan_error = Some(format!("{e:#}")),
                Err(_) => {}
            }
        }
        while let Ok(batch) = rx.try_recv() {
            batch.iter().for_each(|ev| tracer.apply(ev));
        }
        let result = tracer.views(pid, monotonic_ns());
        for note in tracer.notes.drain(..) {
            eprintln!("note: {note}");
            rep.notes.push(note);
        }
        match result {
            Ok(v) => {
                *views = v;
                rep.record(views);
            }
            // With -c the program may not have started yet; otherwise say
            // why once, in the final report.
            Err(e) if !is_child => scan_error = Some(format!("{e:#}")),
            Err(_) => {}
        }
    };
    let end = loop {
        tokio::select! {
            Some(batch) = rx.recv() => batch.iter().for_each(|ev| tracer.apply(ev)),
            _ = sleep_until(next_sample) => {
                let t0 = Instant::now();
                sample(&mut tracer, &mut probes, &mut rx, &mut views, &mut rep);
                // Reads and scans cost leaktrace CPU: keep it under a fifth of a core.
                next_sample = Instant::now() + sample_every.max(t0.elapsed() * 5);
            }
            stop = stops.next() => match stop {
                Stop::Report => rep.emit(false, events(&tracer, &probes), &views)?,
                Stop::End(end) => break end,
            },
        }
    };
    ring.finish();
    let mut code = 0;
    if end == End::TargetExited {
        while let Ok(batch) = rx.try_recv() {
            batch.iter().for_each(|ev| tracer.apply(ev));
        }
        code = rep.target_exited(pid, is_child);
    } else {
        sample(&mut tracer, &mut probes, &mut rx, &mut views, &mut rep);
        if is_child {
            rep.stop_child(pid);
        }
    }
    if let Some(e) = scan_error {
        rep.notes.push(format!("reading the tasks failed: {e}"));
    }
    rep.emit(true, events(&tracer, &probes), &views)?;
    drop(probes);
    Ok(code)
}

/// Tell the tokio probes which vtables are tasks' (run-time addresses).
fn arm_probes(probes: &mut Probes, vtables: &[(u64, u64)]) -> Result<()> {
    let map = probes
        .ebpf_mut()
        .map_mut("TOKIO_VTABLES")
        .ok_or_else(|| anyhow::anyhow!("TOKIO_VTABLES map missing from the probes object"))?;
    let mut map = aya::maps::HashMap::<_, u64, u64>::try_from(map)?;
    for &(va, id_offset) in vtables {
        map.insert(va, id_offset, 0)?;
    }
    Ok(())
}

fn apply(table: &mut LiveTable, batch: &mut Vec<leaktrace_common::GoEvent>) {
    for ev in batch.drain(..) {
        if let Some(ev) = decode(&ev) {
            table.apply(&ev);
        }
    }
}

fn snapshot(bin: &GoBinary, reader: &mut GoReader, table: &mut LiveTable) -> Result<usize> {
    let at = find_allgs(bin)?;
    let show_progress = std::io::stderr().is_terminal();
    if show_progress {
        eprint!(
            "reading existing goroutines from runtime.allgs ({})…\r",
            at.how
        );
    }
    let tasks = reader.snapshot(&at)?;
    if show_progress {
        eprint!("\x1b[2K");
    }
    let n = tasks.len();
    for t in tasks {
        table.insert_existing(t);
    }
    Ok(n)
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

/// Where a PIE is loaded, once the process really runs it.
fn load_bias(pid: u32, bin: &GoBinary) -> Option<u64> {
    let proc = Process::open(pid).ok()?;
    if !proc.runs(&bin.path) {
        return None;
    }
    if !bin.is_pie {
        return Some(0);
    }
    bias_from_maps(&proc.exe_mappings().ok()?, &bin.elf.load_segments())
}

/// What a trend follows: where tasks are created and what they run.
type SiteKey = (Frame, Frame);

fn site_of(k: &GroupKey) -> SiteKey {
    (k.created_by.clone(), k.start.clone())
}

fn group_report(g: Group, growth_per_s: f64, verdict: Verdict, why: String) -> GroupReport {
    GroupReport {
        count: g.count,
        state: g.key.state.label().to_string(),
        created_by: g.key.created_by,
        start: g.key.start,
        blocked_at: g.key.blocked_at,
        blocked_s: g.blocked_s.map(|(min, max)| BlockedSpan {
            min,
            max,
            at_least: g.blocked_at_least,
            min_at_least: g.min_at_least,
            max_at_least: g.max_at_least,
        }),
        growth_per_s,
        verdict,
        why,
        stack: g.stack,
        sample_ids: g.sample_ids,
    }
}

fn output(args: &Args) -> Result<Box<dyn Write>> {
    Ok(match &args.output {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(std::io::stdout()),
    })
}

/// A pidfd becomes readable when the process exits.
fn pidfd(pid: u32) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd keeps the descriptor open for the AsyncFd's life.
    unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the pidfd with tokio: {e}"))
}

/// OS threads of the target, tracked beside its tasks: a thread pool that
/// only grows is a leak tasks cannot show.
struct Threads {
    probes: ThreadProbes,
    table: ThreadTable,
}

impl Threads {
    /// Attach, then list the threads already there (in that order, so none
    /// falls in between). Thread tracking is an addition: failing to start
    /// it is a warning, not an error.
    fn start(probes: &mut Probes, pid: u32, warnings: &mut Vec<String>) -> Option<Self> {
        let started = ThreadProbes::attach(probes, pid).and_then(|tp| {
            let table = ThreadTable::seed(pid).context("listing the target's threads")?;
            Ok(Self { probes: tp, table })
        });
        match started {
            Ok(t) => Some(t),
            Err(e) => {
                warnings.push(format!("threads are not tracked: {e:#}"));
                None
            }
        }
    }

    /// One sample: take the records waiting, then the table's view now.
    fn sample(&mut self, rep: &mut Reporting) {
        self.probes.drain(&mut self.table);
        rep.threads = Some(self.table.report(monotonic_ns()));
    }
}
