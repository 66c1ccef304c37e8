//! Running a fixture process and reading its ground truth.
//!
//! ```no_run
//! use leaktrace_e2e::*;
//! use std::time::Duration;
//! let go = pick(&["1.22"]).remove(0);
//! let bin = build_fixture("chan_send", &go, BuildMode::Plain);
//! let fx = Fixture::start(&bin, ["-leak-for", "2s", "-hold", "30s"]);
//! // ... attach leaktrace to fx.pid() ...
//! let truth = fx.truth(Duration::from_secs(20));
//! let leaked = truth.profile.count_blocked_at("main.(*Hub).Publish.func1");
//! ```
//!
//! The process is killed (SIGKILL) and reaped when the [`Fixture`] is
//! dropped, including while a failing test unwinds. It also gets
//! `PR_SET_PDEATHSIG = SIGKILL`, so it dies if the test process dies without
//! unwinding. Linux delivers that signal when the *thread* that spawned the
//! child exits: start the fixture on the thread that keeps it (the test's
//! own thread), or use [`FixtureCommand::die_with_parent_thread`]`(false)`.

use crate::profile::Profile;
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Protocol lines (see `tests/fixtures/README.md`).
pub const PID_LINE: &str = "pid ";
pub const QUIESCENT_LINE: &str = "phase quiescent";
pub const NUMGOROUTINE_LINE: &str = "numgoroutine ";
pub const PROFILE_BEGIN: &str = "--- goroutine profile ---";
pub const PROFILE_END: &str = "--- end ---";

/// One ground-truth block: what the runtime itself says.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    /// `runtime.NumGoroutine()` just before the profile was taken.
    pub numgoroutine: u64,
    pub profile: Profile,
    /// The block's lines as printed (without the `---` markers).
    pub raw: String,
}

#[derive(Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
    stdout_closed: bool,
    /// Next stdout line `wait_for_line` looks at.
    cursor: usize,
}

struct Shared {
    out: Mutex<Output>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Output> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process `cmd` starts gets SIGKILL when the thread that spawns it
/// exits (a test that dies without unwinding leaves nothing running).
pub fn die_with_parent_thread(cmd: &mut Command) {
    // SAFETY: getpid is always safe to call.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before prctl took effect.
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// How to start a fixture; see [`Fixture::command`].
pub struct FixtureCommand {
    binary: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    pdeathsig: bool,
    ready_timeout: Duration,
}

impl FixtureCommand {
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    /// Kill the fixture when the spawning thread exits (default true).
    pub fn die_with_parent_thread(mut self, yes: bool) -> Self {
        self.pdeathsig = yes;
        self
    }
    /// How long `start` waits for the `pid` line (default 30s).
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Spawns the process and waits for its `pid` line (after which its
    /// signal handlers are installed). Panics on failure.
    pub fn start(self) -> Fixture {
        let what = self.binary.display().to_string();
        self.try_start()
            .unwrap_or_else(|e| panic!("starting fixture {what}: {e:#}"))
    }

    pub fn try_start(self) -> Result<Fixture> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.pdeathsig {
            die_with_parent_thread(&mut cmd);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        let shared = Arc::new(Shared {
            out: Mutex::new(Output::default()),
            cv: Condvar::new(),
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            spawn_reader(stdout, shared.clone(), true),
            spawn_reader(stderr, shared.clone(), false),
        ];
        let name = self
            .binary
            .file_name()
            .map_or_else(|| "fixture".into(), |n| n.to_string_lossy().into_owned());
        let fx = Fixture {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            shared,
            readers: Mutex::new(readers),
            name,
            quiescent: Mutex::new(None),
        };
        let line = fx.try_wait_for_line(PID_LINE, self.ready_timeout)?;
        let printed: u32 = line[PID_LINE.len()..]
            .trim()
            .parse()
            .context("bad pid line")?;
        if printed != fx.pid {
            bail!(
                "fixture printed pid {printed} but was spawned as {}",
                fx.pid
            );
        }
        Ok(fx)
    }
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    shared: Arc<Shared>,
    is_stdout: bool,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(
            if is_stdout {
                "fixture-stdout"
            } else {
                "fixture-stderr"
            }
            .into(),
        )
        .spawn(move || {
            let mut r = BufReader::with_capacity(1 << 20, stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if buf.last() == Some(&b'\n') {
                            buf.pop();
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        let mut o = shared.lock();
                        if is_stdout {
                            o.stdout.push(line);
                        } else {
                            o.stderr.push(line);
                        }
                        drop(o);
                        shared.cv.notify_all();
                    }
                }
            }
            if is_stdout {
                shared.lock().stdout_closed = true;
                shared.cv.notify_all();
            }
        })
        .expect("spawning reader thread")
}

/// A running fixture process. Killed and reaped on drop.
pub struct Fixture {
    pid: u32,
    child: Mutex<Option<Child>>,
    shared: Arc<Shared>,
    readers: Mutex<Vec<JoinHandle<()>>>,
    name: String,
    quiescent: Mutex<Option<GroundTruth>>,
}

impl Fixture {
    /// Spawns `binary args...` and waits for its `pid` line. Panics on
    /// failure.
    pub fn start<I, S>(binary: impl AsRef<Path>, args: I) -> Fixture
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Fixture::command(binary).args(args).start()
    }

    /// A builder for options beyond `start`.
    pub fn command(binary: impl AsRef<Path>) -> FixtureCommand {
        FixtureCommand {
            binary: binary.as_ref().to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            pdeathsig: true,
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Binary file name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.shared.lock().stdout.clone()
    }

    /// Every stderr line so far (the fixtures log there).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.shared.lock().stderr.clone()
    }

    /// Waits for the next stdout line (after the last one returned by this
    /// method) that starts with `prefix`, and returns it. Panics on
    /// timeout or if the process closes stdout.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> String {
        self.try_wait_for_line(prefix, timeout)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    pub fn try_wait_for_line(&self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut o = self.shared.lock();
        loop {
            while o.cursor < o.stdout.len() {
                let i = o.cursor;
                o.cursor += 1;
                if o.stdout[i].starts_with(prefix) {
                    return Ok(o.stdout[i].clone());
                }
            }
            if o.stdout_closed {
                bail!(
                    "{}: stdout closed before a line starting with {prefix:?}",
                    self.name
                );
            }
            o = self.wait(o, deadline).with_context(|| {
                format!(
                    "{}: no line starting with {prefix:?} within {timeout:?}",
                    self.name
                )
            })?;
        }
    }

    fn wait<'a>(
        &self,
        o: MutexGuard<'a, Output>,
        deadline: Instant,
    ) -> Result<MutexGuard<'a, Output>> {
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out");
        }
        let (o, _) = self
            .shared
            .cv
            .wait_timeout(o, deadline - now)
            .unwrap_or_else(|e| e.into_inner());
        Ok(o)
    }

    /// The ground truth printed when the fixture went quiescent (waits for
    /// it; cached, so calling it again returns the same block). Independent
    /// of `wait_for_line`'s position. Panics on timeout.
    pub fn truth(&self, timeout: Duration) -> GroundTruth {
        self.try_truth(timeout)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    pub fn try_truth(&self, timeout: Duration) -> Result<GroundTruth> {
        if let Some(t) = self
            .quiescent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(t);
        }
        let deadline = Instant::now() + timeout;
        let start = {
            let mut o = self.shared.lock();
            loop {
                if let Some(i) = o.stdout.iter().position(|l| l == QUIESCENT_LINE) {
                    break i + 1;
                }
                if o.stdout_closed {
                    bail!("{}: stdout closed before {QUIESCENT_LINE:?}", self.name);
                }
                o = self
                    .wait(o, deadline)
                    .with_context(|| format!("{}: not quiescent within {timeout:?}", self.name))?;
            }
        };
        let t = self.block_from(start, deadline)?;
        *self.quiescent.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
        Ok(t)
    }

    /// Asks for fresh ground truth (SIGUSR1) and returns the first block
    /// that starts after the request. Panics on timeout.
    pub fn request_truth(&self, timeout: Duration) -> GroundTruth {
        self.try_request_truth(timeout)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    pub fn try_request_truth(&self, timeout: Duration) -> Result<GroundTruth> {
        let from = self.shared.lock().stdout.len();
        self.signal(libc::SIGUSR1)?;
        self.block_from(from, Instant::now() + timeout)
    }

    /// Parses the first complete truth block whose `numgoroutine` line is
    /// at index >= `from`, waiting for it.
    fn block_from(&self, from: usize, deadline: Instant) -> Result<GroundTruth> {
        let mut o = self.shared.lock();
        loop {
            if let Some(t) = parse_block(&o.stdout[from.min(o.stdout.len())..]) {
                return t.with_context(|| format!("{}: bad ground truth block", self.name));
            }
            if o.stdout_closed {
                bail!(
                    "{}: stdout closed before a complete ground truth block",
                    self.name
                );
            }
            o = self
                .wait(o, deadline)
                .with_context(|| format!("{}: no ground truth block in time", self.name))?;
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid (not yet reaped: reaping
        // happens only in terminate/drop, which take the child).
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        if rc != 0 {
            bail!(
                "kill({}, {sig}): {}",
                self.pid,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match c.as_mut() {
            Some(ch) => matches!(ch.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit (SIGKILL after
    /// that). Returns the exit status.
    pub fn terminate(&self, timeout: Duration) -> Result<ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = guard.as_mut().context("already reaped")?;
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        let _ = self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        Ok(child.wait()?)
    }

    /// The last lines of stdout and stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let o = self.shared.lock();
        let tail = |v: &[String], n: usize| v[v.len().saturating_sub(n)..].join("\n");
        format!(
            "--- {} (pid {}) stdout, last lines ---\n{}\n--- stderr, last lines ---\n{}",
            self.name,
            self.pid,
            tail(&o.stdout, 30),
            tail(&o.stderr, 30)
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(guard);
        for h in self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = h.join();
        }
    }
}

/// Finds the first `numgoroutine` line in `lines` and parses the block
/// after it; `None` while the block is incomplete.
fn parse_block(lines: &[String]) -> Option<Result<GroundTruth>> {
    let start = lines
        .iter()
        .position(|l| l.starts_with(NUMGOROUTINE_LINE))?;
    let end = start + lines[start..].iter().position(|l| l == PROFILE_END)?;
    Some((|| {
        let n = lines[start][NUMGOROUTINE_LINE.len()..]
            .trim()
            .parse()
            .with_context(|| format!("bad line {:?}", lines[start]))?;
        if lines.get(start + 1).map(String::as_str) != Some(PROFILE_BEGIN) {
            bail!("expected {PROFILE_BEGIN:?} after {:?}", lines[start]);
        }
        let raw = lines[start + 2..end].join("\n");
        let profile = Profile::parse(&raw)?;
        Ok(GroundTruth {
            numgoroutine: n,
            profile,
            raw,
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BuildMode, build_fixture};

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    /// Builds chan_send with the oldest toolchain found; skipped (passes
    /// with a note) on a machine without Go.
    fn chan_send() -> Option<PathBuf> {
        let Some(go) = crate::toolchain::go_toolchains().into_iter().next() else {
            eprintln!("no Go toolchain: skipping");
            return None;
        };
        Some(build_fixture("chan_send", &go, BuildMode::Plain))
    }

    #[test]
    fn lifecycle_truth_request_and_kill_on_drop() {
        let Some(bin) = chan_send() else { return };
        let pid;
        {
            let fx = Fixture::start(&bin, ["-leak-for", "500ms", "-hold", "60s"]);
            pid = fx.pid();
            assert!(alive(pid));
            let t = fx.truth(Duration::from_secs(30));
            let n = t.profile.count_blocked_at("main.(*Hub).Publish.func1");
            assert!(n >= 5, "{n}\n{}", t.raw);
            assert_eq!(t.numgoroutine, t.profile.total);
            // Fresh truth on request: same leak, nothing new (quiescent).
            let t2 = fx.request_truth(Duration::from_secs(30));
            assert_eq!(t2.profile.count_blocked_at("main.(*Hub).Publish.func1"), n);
            let t3 = fx.request_truth(Duration::from_secs(30));
            assert_eq!(t3.numgoroutine, t2.numgoroutine);
            // truth() is cached and independent of later blocks.
            assert_eq!(fx.truth(Duration::from_secs(1)).raw, t.raw);
            assert!(fx.wait_for_line(QUIESCENT_LINE, Duration::from_secs(1)) == QUIESCENT_LINE);
            assert!(fx.is_running());
        }
        assert!(!alive(pid), "fixture {pid} survived drop");
    }

    #[test]
    fn killed_when_a_test_panics() {
        let Some(bin) = chan_send() else { return };
        let pid = Arc::new(Mutex::new(0));
        let p = pid.clone();
        let r = std::panic::catch_unwind(move || {
            let fx = Fixture::start(&bin, ["-hold", "60s"]);
            *p.lock().unwrap() = fx.pid();
            panic!("test failure while the fixture runs");
        });
        assert!(r.is_err());
        let pid = *pid.lock().unwrap();
        assert!(pid > 0 && !alive(pid), "fixture {pid} survived a panic");
    }

    #[test]
    fn terminate_exits_cleanly() {
        let Some(bin) = chan_send() else { return };
        let fx = Fixture::start(&bin, ["-leak-for", "100ms", "-hold", "60s"]);
        fx.truth(Duration::from_secs(30));
        let st = fx.terminate(Duration::from_secs(10)).unwrap();
        assert!(st.success(), "{st:?}");
        assert!(!fx.is_running());
        let err = fx
            .try_wait_for_line("never printed", Duration::from_secs(5))
            .unwrap_err();
        assert!(format!("{err:#}").contains("stdout closed"), "{err:#}");
    }

    #[test]
    fn block_parsing() {
        let lines: Vec<String> = [
            "pid 1",
            "phase quiescent",
            "numgoroutine 3",
            "--- goroutine profile ---",
            "goroutine profile: total 3",
            "3 @ 0x1 0x2",
            "#\t0x1\tmain.f+0x1\t/m.go:3",
            "",
            "--- end ---",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(parse_block(&lines[..8]).is_none(), "incomplete block");
        let t = parse_block(&lines).unwrap().unwrap();
        assert_eq!(t.numgoroutine, 3);
        assert_eq!(t.profile.total, 3);
        assert_eq!(t.profile.count_blocked_at("main.f"), 3);
    }
}
