//! The processes the benchmarks start. Output lines are read by threads
//! and time-stamped as they arrive (attach times are measured from them),
//! and a process dropped while running is killed, so an error never leaves
//! a target or a tracer behind to disturb the next measurement.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::report::num_after;
use crate::util;

/// Lines of one output stream, read by a thread and time-stamped on arrival.
pub(super) struct Lines {
    rx: Receiver<(Instant, String)>,
    all: Vec<String>,
}

impl Lines {
    fn new(r: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            all: Vec::new(),
        }
    }

    /// The first line (from now on) that `pred` accepts, and when it came.
    pub(super) fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, line)) => {
                    self.all.push(line.clone());
                    if pred(&line) {
                        return Ok((t, line));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("timed out after {timeout:?} waiting for {what}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("stream ended before {what}; last lines: {}", self.tail())
                }
            }
        }
    }

    /// Everything until the stream ends (or `timeout`).
    pub(super) fn drain(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Ok((_, line)) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.all.push(line);
        }
        self.all.join("\n")
    }

    pub(super) fn tail(&self) -> String {
        let n = self.all.len();
        self.all[n.saturating_sub(5)..].join(" | ")
    }
}

/// A child process with its output streams; killed if dropped while running,
/// so no benchmark process outlives an error.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) out: Lines,
    pub(super) err: Lines,
    label: String,
}

impl Proc {
    pub(super) fn spawn(cmd: &mut Command, label: &str) -> Result<Self> {
        eprintln!("bench: + {}", util::show(cmd));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", util::show(cmd)))?;
        let out = Lines::new(child.stdout.take().context("stdout")?);
        let err = Lines::new(child.stderr.take().context("stderr")?);
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            label: label.to_string(),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn send_line(&mut self, s: &str) -> Result<()> {
        let w = self.stdin.as_mut().context("stdin closed")?;
        w.write_all(s.as_bytes())?;
        w.write_all(b"\n")?;
        w.flush()?;
        Ok(())
    }

    pub(super) fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    pub(super) fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not finish within {timeout:?}; killed", self.label);
            }
            sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL if it is still there after `grace`.
    pub(super) fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("TERM");
            if self.wait(grace).is_err() {
                eprintln!("bench: {} ignored SIGTERM; killed", self.label);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(super) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Run to completion with a time limit; (status, stdout, stderr).
pub(super) fn capture(
    cmd: &mut Command,
    label: &str,
    timeout: Duration,
) -> Result<(ExitStatus, String, String)> {
    let mut p = Proc::spawn(cmd, label)?;
    p.stdin = None;
    let status = p.wait(timeout)?;
    let out = p.out.drain(Duration::from_secs(5));
    let err = p.err.drain(Duration::from_secs(5));
    Ok((status, out, err))
}

/// The pid of the only child of `pid` (leaktrace under /usr/bin/time).
pub(super) fn only_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Run `leaktrace` under GNU time, which reports leaktrace's own peak RSS
/// and CPU (leaktrace has no children of its own in --pid mode).
pub(super) fn timed(bin: &Path, time_file: &Path) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f")
        .arg("maxrss_kb %M user_s %U sys_s %S wall_s %e vcs %w")
        .arg("-o")
        .arg(time_file)
        .arg(bin);
    c
}

#[derive(Clone, Copy, Default)]
pub(super) struct TimeReport {
    pub(super) maxrss_kb: f64,
    pub(super) cpu_s: f64,
    pub(super) wall_s: f64,
    pub(super) vcs: f64,
}

pub(super) fn read_time(path: &Path) -> Result<TimeReport> {
    let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let get = |k: &str| num_after(&t, k).with_context(|| format!("{k} missing in {t:?}"));
    Ok(TimeReport {
        maxrss_kb: get("maxrss_kb ")?,
        cpu_s: get("user_s ")? + get("sys_s ")?,
        wall_s: get("wall_s ")?,
        vcs: get("vcs ")?,
    })
}

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
