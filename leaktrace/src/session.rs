//! One tracing session: inspect → attach → snapshot → (events, refresh,
//! report)* → final report → detach.
//!
//! Every way out (duration, COUNT, Ctrl-C, SIGTERM, the target exiting, an
//! error) leaves through the end of [`run`], where the final report is
//! written and the probes are dropped, which detaches them.
use std::{
    fs::File,
    io::{IsTerminal, Write},
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    aggregate::{
        groups::{Group, GroupKey, group},
        live::LiveTable,
        trend::Trends,
        verdict::{Rules, Verdict, judge},
    },
    cli::{Args, Color, Format},
    probes::{GoProbes, ring::RingReader},
    report::{
        json,
        model::{BlockedSpan, EventTotals, GroupReport, Report, TargetInfo},
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
    },
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

pub async fn run(args: &Args, bin: &GoBinary, mut target: Target) -> Result<i32> {
    let pid = target.pid();
    let (attach_path, exe_display): (PathBuf, String) = match &target {
        Target::Pid(p) => (p.exe_link.clone(), p.exe_display.clone()),
        Target::Command(c) => (c.program.clone(), c.program.display().to_string()),
    };
    // Before anything slow: Ctrl-C during attach or the snapshot must still
    // end in a final report, not in the default handler.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut warnings = bin.warnings();
    let placement = place_probes(bin)?;
    warnings.extend(placement.warnings);

    let gone = || -> anyhow::Error { TargetError::ExitedDuringAttach(pid).into() };
    // Watch for the target's exit (works for any pid, child or not).
    let exit_fd = pidfd(pid).map_err(|_| gone())?;
    let mut probes = GoProbes::attach(
        &attach_path,
        pid,
        probe_config(&bin.layout),
        &placement.plan,
    )
    .map_err(|e| if process_gone(pid) { gone() } else { e })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let logger = probes.take_logger();
    let mut ring = RingReader::spawn(probes.take_ring()?, logger, tx);
    let started = Instant::now();

    let mut table = LiveTable::default();
    let mut notes = Vec::new();
    let is_child = matches!(target, Target::Command(_));
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

    let rules = Rules {
        older_s: args.older.as_secs_f64(),
        suspect_count: args.suspect_count,
        ..Rules::default()
    };
    let report_every = args.report_interval().max(Duration::from_millis(100));
    // Trends need several samples even in a short window.
    let sample_every = report_every.min(Duration::from_millis(500));
    let mut trends: Trends<GroupKey> = Trends::new(600);
    let mut next_sample = Instant::now();
    let mut reporter = interval(report_every);
    reporter.set_missed_tick_behavior(MissedTickBehavior::Delay);
    reporter.tick().await;
    let deadline = args.duration.map(|d| started + d);
    let mut out = output(args)?;
    let style = TextStyle {
        color: match args.color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => args.output.is_none() && std::io::stdout().is_terminal(),
        },
        stacks: args.stacks,
    };
    let target_info = TargetInfo {
        pid,
        exe: exe_display,
        runtime: "go",
        runtime_version: bin.version.raw.clone(),
        symbols: bin.symbol_source(),
        warnings,
    };

    let mut views: Vec<TaskView> = Vec::new();
    let mut reports = 0u64;
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
                    record(&mut trends, &views, &rules);
                }
                // Reading a huge goroutine table costs leaktrace CPU (never the
                // target's time): keep that under a fifth of one core.
                next_sample = Instant::now() + sample_every.max(t0.elapsed() * 5);
            }
            _ = reporter.tick() => {
                reports += 1;
                if args.report_count().is_some_and(|c| reports >= c) {
                    break End::Count;
                }
                let report = build(false, started, &target_info, &table, probes.lost(), &views, &trends, &rules, args, &notes);
                emit(&mut out, args, &report, &style)?;
            }
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => break End::Duration,
            _ = sigint.recv() => break End::Interrupted,
            _ = sigterm.recv() => break End::Terminated,
            _ = exit_fd.readable() => break End::TargetExited,
        }
    };

    // Final report: take every record still in the ring, then read the
    // target one last time if it is still there.
    ring.finish();
    while let Ok(mut batch) = rx.try_recv() {
        apply(&mut table, &mut batch);
    }
    let mut code = 0;
    match end {
        End::TargetExited => {
            let status = if is_child { try_reap(pid) } else { None };
            notes.push(match status {
                Some(s) => {
                    format!("the command exited with status {s}; state as of the last sample")
                }
                None => "the target exited; state as of the last sample".to_string(),
            });
            if let Some(s) = status {
                code = s;
            }
        }
        _ => {
            if bias.is_none()
                && let Some(b) = load_bias(pid, bin)
            {
                bias = Some(b);
                reader.set_bias(b);
            }
            if bias.is_some() {
                views = reader.views(&mut table, snapshot_ns);
                record(&mut trends, &views, &rules);
            }
            if is_child {
                // We started it; tracing is over, so is its run. (On Ctrl-C
                // the terminal already sent it SIGINT.)
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                notes
                    .push("leaktrace stopped, so it sent SIGTERM to the command it started".into());
            }
        }
    }
    let report = build(
        true,
        started,
        &target_info,
        &table,
        probes.lost(),
        &views,
        &trends,
        &rules,
        args,
        &notes,
    );
    emit(&mut out, args, &report, &style)?;
    drop(probes);
    Ok(code)
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

fn process_gone(pid: u32) -> bool {
    Process::open(pid).map(|p| !p.is_alive()).unwrap_or(true)
}

/// Where a PIE is loaded, once the process really runs it: with `-c` the
/// child is still leaktrace until it execs, and its maps would give
/// leaktrace's own load address.
fn load_bias(pid: u32, bin: &GoBinary) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let proc = Process::open(pid).ok()?;
    let (running, ours) = (
        std::fs::metadata(&proc.exe_link).ok()?,
        std::fs::metadata(&bin.path).ok()?,
    );
    if (running.dev(), running.ino()) != (ours.dev(), ours.ino()) {
        return None;
    }
    if !bin.is_pie {
        return Some(0);
    }
    bias_from_maps(&proc.exe_mappings().ok()?, &bin.elf.load_segments())
}

fn record(trends: &mut Trends<GroupKey>, views: &[TaskView], rules: &Rules) {
    let older_ns = (rules.older_s * 1e9) as u64;
    let groups = group(views, monotonic_ns(), older_ns);
    trends.record(
        monotonic_ns(),
        groups
            .into_iter()
            .map(|g| (g.key, g.count.min(u32::MAX as u64) as u32, g.aged)),
    );
}

#[allow(clippy::too_many_arguments)]
fn build(
    is_final: bool,
    started: Instant,
    target: &TargetInfo,
    table: &LiveTable,
    lost: u64,
    views: &[TaskView],
    trends: &Trends<GroupKey>,
    rules: &Rules,
    args: &Args,
    notes: &[String],
) -> Report {
    let older_ns = (rules.older_s * 1e9) as u64;
    let live = views.iter().filter(|v| !v.system).count() as u64;
    let system = views.len() as u64 - live;
    let shown: Vec<TaskView> = views
        .iter()
        .filter(|v| args.system || !v.system)
        .cloned()
        .collect();
    let groups = group(&shown, monotonic_ns(), older_ns);
    let mut window_s: f64 = 0.0;
    let mut reports: Vec<GroupReport> = Vec::new();
    let mut omitted = 0;
    for g in groups {
        let m = trends.movement(&g.key);
        window_s = window_s.max(m.window_s);
        let (verdict, why) = judge(&g, &m, rules);
        // --older: a blocked group none of whose members has been blocked
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
        elapsed_s: started.elapsed().as_secs_f64(),
        target: target.clone(),
        events: EventTotals {
            spawn: table.counts.spawn,
            exit: table.counts.exit,
            park: table.counts.park,
            lost,
            corrected: table.corrected,
        },
        live,
        system,
        window_s,
        groups: reports,
        groups_omitted: omitted,
        notes: notes.to_vec(),
    }
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

fn emit(out: &mut Box<dyn Write>, args: &Args, report: &Report, style: &TextStyle) -> Result<()> {
    match args.format {
        Format::Json => json::write(out.as_mut(), report),
        Format::Text => text::write(out.as_mut(), report, style),
    }
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
