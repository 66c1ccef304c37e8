//! What ends tracing or asks for a report: for everyone, Ctrl-C, SIGTERM,
//! SIGHUP, SIGQUIT, SIGPIPE and `--duration` ([`Signals`]); per process, its report interval and
//! COUNT ([`Schedule`]) and its exit ([`pidfd`]).
use std::{
    os::fd::{FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::Result;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior, interval, sleep_until},
};

use crate::cli::Args;

/// Why tracing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Duration,
    Count,
    Interrupted,
    Terminated,
    /// SIGHUP: the terminal went away.
    HungUp,
    /// SIGQUIT (Ctrl-\\): would dump core by default; a final report instead.
    Quit,
    /// SIGPIPE: a pipe we write to lost its reader (a report is still
    /// tried; if that is the pipe, leaktrace exits with `EXIT_OUTPUT_CLOSED`).
    BrokenPipe,
    /// The report output failed (closed stdout, full disk): no report can
    /// be written any more.
    OutputFailed,
    TargetExited,
    /// `-f`: the command leaktrace started has exited; what it left running
    /// is reported as it is now.
    CommandExited,
    /// `-f`: the process executed another program (a new trace follows it).
    Exec,
}

impl End {
    /// A person or the system wants leaktrace to stop now: slow work in
    /// progress (an attach, a read of the tasks) is not waited for. A
    /// planned end (`--duration`, COUNT, the command's exit) lets it finish,
    /// so the final report has its data; so does SIGPIPE, which a closed
    /// stderr raises while the report's output may be fine. An exec cuts
    /// it too: the memory being read is another program's now.
    pub(super) fn cuts_work(self) -> bool {
        matches!(
            self,
            Self::Interrupted
                | Self::Terminated
                | Self::HungUp
                | Self::Quit
                | Self::OutputFailed
                | Self::Exec
        )
    }
}

/// Ctrl-C, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE and the `--duration`
/// deadline: every signal whose default action would end leaktrace without
/// a final report (only SIGKILL and SIGSTOP cannot be caught).
pub(super) struct Signals {
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
    sigquit: Signal,
    sigpipe: Signal,
    pub deadline: Option<Instant>,
}

impl Signals {
    /// Installed before anything slow: Ctrl-C during a long attach or
    /// snapshot must still end in a final report, not in the default
    /// handler. The `--duration` clock starts here.
    pub(super) fn new(args: &Args) -> Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
            sighup: signal(SignalKind::hangup())?,
            sigquit: signal(SignalKind::quit())?,
            sigpipe: signal(SignalKind::pipe())?,
            deadline: args.duration.map(|d| Instant::now() + d),
        })
    }

    pub(super) async fn next(&mut self) -> End {
        let deadline = self.deadline;
        tokio::select! {
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => End::Duration,
            _ = self.sigint.recv() => End::Interrupted,
            _ = self.sigterm.recv() => End::Terminated,
            _ = self.sighup.recv() => End::HungUp,
            _ = self.sigquit.recv() => End::Quit,
            _ = self.sigpipe.recv() => End::BrokenPipe,
        }
    }
}

pub(super) enum Tick {
    Report,
    End(End),
}

/// One process's periodic reports.
pub(super) struct Schedule {
    reporter: Interval,
    /// Off for `--duration` alone: its one report is the final one.
    periodic: bool,
    period: Duration,
    reports: u64,
    count: Option<u64>,
    deadline: Option<Instant>,
}

impl Schedule {
    /// Starts now (once the process is attached).
    pub(super) fn new(args: &Args, deadline: Option<Instant>) -> Self {
        let period = args.report_interval().max(Duration::from_millis(100));
        let mut reporter = interval(period);
        reporter.set_missed_tick_behavior(MissedTickBehavior::Delay);
        reporter.reset();
        Self {
            reporter,
            periodic: args.periodic_reports(),
            period,
            reports: 0,
            count: args.report_count(),
            deadline,
        }
    }

    /// Time between two periodic reports.
    pub(super) fn period(&self) -> Duration {
        self.period
    }

    /// The next report, or the end after COUNT of them. Pending forever
    /// when reports are not periodic.
    pub(super) async fn next(&mut self) -> Tick {
        if !self.periodic {
            return std::future::pending().await;
        }
        self.reporter.tick().await;
        self.reports += 1;
        // A report due with the end (30s at 5s intervals) is the final
        // one, not a copy printed just before it.
        if self
            .deadline
            .is_some_and(|d| d <= Instant::now() + self.period / 4)
        {
            Tick::End(End::Duration)
        } else if self.count.is_some_and(|c| self.reports >= c) {
            Tick::End(End::Count)
        } else {
            Tick::Report
        }
    }
}

/// A pidfd becomes readable when the process exits (any pid, child or not).
pub(super) fn pidfd(pid: u32) -> Result<AsyncFd<OwnedFd>> {
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
