//! What ends a session or asks for a report, in one place: the report
//! interval, COUNT, `--duration`, Ctrl-C, SIGTERM and the target's exit.
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

use crate::{cli::Args, target::process::TargetError};

/// Why the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Duration,
    Count,
    Interrupted,
    Terminated,
    TargetExited,
}

pub enum Stop {
    Report,
    End(End),
}

pub struct Stops {
    sigint: Signal,
    sigterm: Signal,
    exit_fd: AsyncFd<OwnedFd>,
    deadline: Option<Instant>,
    reporter: Interval,
    /// Off for `--duration` alone: its one report is the final one.
    periodic: bool,
    period: Duration,
    reports: u64,
    count: Option<u64>,
}

impl Stops {
    /// Signals first: Ctrl-C during a slow attach or snapshot must still end
    /// in a final report, not in the default handler.
    pub fn new(args: &Args, pid: u32) -> Result<Self> {
        let sigint = signal(SignalKind::interrupt())?;
        let sigterm = signal(SignalKind::terminate())?;
        // Watch for the target's exit (works for any pid, child or not).
        let exit_fd =
            pidfd(pid).map_err(|_| anyhow::Error::from(TargetError::ExitedDuringAttach(pid)))?;
        let period = args.report_interval().max(Duration::from_millis(100));
        let mut reporter = interval(period);
        reporter.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            sigint,
            sigterm,
            exit_fd,
            deadline: None,
            reporter,
            periodic: args.periodic_reports(),
            period,
            reports: 0,
            count: args.report_count(),
        })
    }

    /// Call once attached: the clock for --duration and reports starts here.
    pub fn start(&mut self, args: &Args) {
        self.deadline = args.duration.map(|d| Instant::now() + d);
        self.reporter.reset();
    }

    pub async fn next(&mut self) -> Stop {
        let deadline = self.deadline;
        tokio::select! {
            _ = self.reporter.tick(), if self.periodic => {
                self.reports += 1;
                // A report due with the end (30s at 5s intervals) is the
                // final one, not a copy printed just before it.
                let ends_now = deadline.is_some_and(|d| d <= Instant::now() + self.period / 4);
                if ends_now {
                    Stop::End(End::Duration)
                } else if self.count.is_some_and(|c| self.reports >= c) {
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
