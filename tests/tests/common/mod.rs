//! What every end-to-end test needs: the leaktrace binary, the rule that
//! decides whether eBPF tests may be skipped, running leaktrace against a
//! fixture (`-c` or `--pid`), and the comparison with the fixture's own truth.
#![allow(dead_code)]

pub mod prometheus;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace_e2e::{BuildMode, Expect, Fixture, GoToolchain, GroundTruth, Profile, build_fixture};
use serde_json::Value;

pub fn leaktrace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LEAKTRACE_BIN") {
        return PathBuf::from(p);
    }
    let target = leaktrace_e2e::target_dir();
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("leaktrace");
        if p.is_file() {
            return p;
        }
    }
    panic!("leaktrace binary not found: run `cargo xtask test`, or set LEAKTRACE_BIN");
}

/// End-to-end tests need root (eBPF). Under CI they are mandatory: a missing
/// privilege is a failure with its reason. Locally they skip with one line.
pub fn ebpf_available(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: end-to-end tests must run as root under CI (eBPF needs it); not skipping");
    }
    eprintln!(
        "{test}: skipped: not root, so eBPF probes cannot be loaded (run `sudo cargo xtask test`)"
    );
    false
}

/// One report object from leaktrace's JSON output.
pub struct Report(pub Value);

impl Report {
    pub fn live(&self) -> u64 {
        self.0["live"].as_u64().expect("live")
    }
    pub fn events(&self, key: &str) -> u64 {
        self.0["events"][key].as_u64().expect("events")
    }
    pub fn groups(&self) -> &Vec<Value> {
        self.0["groups"].as_array().expect("groups")
    }
    /// Groups whose blocked-at (or, for running groups, start) function is `f`.
    pub fn groups_at(&self, f: &str) -> Vec<&Value> {
        self.groups()
            .iter()
            .filter(|g| {
                g["blocked_at"]["function"].as_str() == Some(f)
                    || (g["blocked_at"].is_null() && g["start"]["function"].as_str() == Some(f))
            })
            .collect()
    }
    pub fn summary(&self) -> String {
        // Raw values: tokio reports have no `park`, and a summary is what
        // a failing assertion prints, so it must not fail itself.
        let e = &self.0["events"];
        let mut s = format!(
            "live {} (+{} runtime), events spawn {} park {} exit {} lost {}\n",
            self.0["live"], self.0["system"], e["spawn"], e["park"], e["exit"], e["lost"]
        );
        for g in self.groups() {
            s.push_str(&format!(
                "  {} {} {} created_by {} blocked_at {} — {}\n",
                g["count"],
                g["state"],
                g["verdict"],
                g["created_by"]["function"],
                g["blocked_at"]["function"],
                g["why"]
            ));
        }
        s
    }
}

pub fn parse_reports(text: &str) -> Vec<Report> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            Report(serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON report ({e}): {l}")))
        })
        .collect()
}

/// A finished leaktrace run: its reports and the fixture's ground truth.
pub struct Run {
    pub reports: Vec<Report>,
    pub truth: GroundTruth,
    pub stderr: String,
}

impl Run {
    pub fn last(&self) -> &Report {
        self.reports.last().expect("at least one report")
    }
}

/// `leaktrace -c FIXTURE`: probes attached before the fixture runs. The
/// fixture leaks for `leak_for`, goes quiescent and prints its truth; the
/// final report comes after that, at `duration` at the earliest (see
/// [`run_command_with`]). leaktrace passes the fixture's stdout through, so
/// the truth block is read from leaktrace's.
pub fn run_command_mode(fixture: &std::path::Path, fixture_args: &[&str], duration: &str) -> Run {
    run_command_with(fixture, fixture_args, &["--duration", duration])
}

/// After the fixture printed its truth, the final report waits this long,
/// so that at least one refresh sees the quiescent program.
const AFTER_TRUTH: Duration = Duration::from_millis(1500);

/// [`run_command_mode`] with any leaktrace options (`extra`, which must
/// end the run: `--duration`, or `--interval` with `--count`).
///
/// `--duration D` is not handed to leaktrace: the run is ended by SIGINT
/// (leaktrace's Ctrl-C, which prints the final report) once D has passed
/// *and* the fixture printed its truth [`AFTER_TRUTH`] ago. A fixed
/// duration raced the fixture on a loaded machine: its leak phase could
/// still be running at the final report, and leaktrace's count was then
/// compared with a truth taken later (CI saw 41 vs 44).
pub fn run_command_with(fixture: &std::path::Path, fixture_args: &[&str], extra: &[&str]) -> Run {
    use std::io::{BufRead, BufReader};
    let out = tempfile_path("reports.jsonl");
    let at = extra.iter().position(|a| *a == "--duration");
    let duration = at.map(|i| {
        let d = extra.get(i + 1).expect("--duration needs a value");
        parse_duration(d)
    });
    let mut args: Vec<&str> = extra.to_vec();
    if let Some(i) = at {
        args.drain(i..i + 2);
    }
    let started = Instant::now();
    let (mut child, stdout, err_reader) = start_command_mode(fixture, fixture_args, &args, &out);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut truth_at: Option<Instant> = None;
    let mut interrupted = duration.is_none();
    // 60 s is the whole run's limit, as before (wait_exit below).
    let limit = started + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if truth_at.is_none() && line == "--- end ---" {
                    truth_at = Some(Instant::now());
                }
                lines.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let due = match (duration, truth_at) {
            (Some(d), Some(t)) => Instant::now() >= (started + d).max(t + AFTER_TRUTH),
            // No truth yet: wait for it, up to the run's limit.
            _ => Instant::now() >= limit,
        };
        if !interrupted && due {
            interrupted = true;
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        }
    }
    let _ = reader.join();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let stderr = err_reader.join().unwrap_or_default();
    let reports = final_reports(status, &out, &stderr);
    let truth = first_truth_block(&lines).unwrap_or_else(|| {
        panic!(
            "the fixture printed no ground truth:\n{}\n{stderr}",
            lines.join("\n")
        )
    });
    Run {
        reports,
        truth,
        stderr,
    }
}

/// "4s", "500ms", "2m" (the forms the tests pass to `--duration`).
fn parse_duration(s: &str) -> Duration {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        _ => panic!("duration {s:?}: unit ms, s or m"),
    }
}

/// `leaktrace --format json --top 50 EXTRA --output OUT -c FIXTURE ARGS`,
/// its stdout (the fixture's, passed through) and a thread collecting its
/// stderr.
fn start_command_mode(
    fixture: &std::path::Path,
    fixture_args: &[&str],
    extra: &[&str],
    out: &std::path::Path,
) -> (
    Child,
    std::process::ChildStdout,
    std::thread::JoinHandle<String>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(leaktrace_bin())
        .args(["--format", "json", "--top", "50"])
        .args(extra)
        .arg("--output")
        .arg(out)
        .arg("-c")
        .arg(fixture)
        .args(fixture_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting leaktrace");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    (child, stdout, err_reader)
}

/// leaktrace's exit status; killed if it takes longer than `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The reports leaktrace wrote to `out`, which must end with a final one,
/// after a successful exit.
fn final_reports(
    status: std::process::ExitStatus,
    out: &std::path::Path,
    stderr: &str,
) -> Vec<Report> {
    assert!(status.success(), "leaktrace failed ({status}):\n{stderr}");
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let _ = std::fs::remove_file(out);
    let reports = parse_reports(&text);
    assert!(
        reports
            .last()
            .is_some_and(|r| r.0["final"] == Value::Bool(true)),
        "no final report from leaktrace:\n{stderr}"
    );
    reports
}

/// The first `numgoroutine` + profile block in a fixture's output.
pub fn first_truth_block(lines: &[String]) -> Option<GroundTruth> {
    let i = lines.iter().position(|l| l.starts_with("numgoroutine "))?;
    let numgoroutine = lines[i]["numgoroutine ".len()..].trim().parse().ok()?;
    let begin = i + lines[i..]
        .iter()
        .position(|l| l == "--- goroutine profile ---")?;
    let end = begin + lines[begin..].iter().position(|l| l == "--- end ---")?;
    let raw = lines[begin + 1..end].join("\n");
    let profile = Profile::parse(&raw).ok()?;
    Some(GroundTruth {
        numgoroutine,
        profile,
        raw,
    })
}

/// `leaktrace --pid` on an already running fixture.
pub fn run_pid_mode(fixture: &Fixture, extra: &[&str]) -> (Vec<Report>, String) {
    let out = Command::new(leaktrace_bin())
        .args([
            "--format",
            "json",
            "--top",
            "50",
            "--pid",
            &fixture.pid().to_string(),
        ])
        .args(extra)
        .output()
        .expect("running leaktrace");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "leaktrace failed: {stderr}");
    (parse_reports(&String::from_utf8_lossy(&out.stdout)), stderr)
}

pub fn tempfile_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "leaktrace-e2e-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Check a leak fixture's report against its own runtime's truth and its
/// expected diagnosis; returns a one-line summary for the test output.
pub fn check_leak(name: &str, go: &GoToolchain, mode: BuildMode, run: &Run) -> String {
    let expect = Expect::load(name);
    let minor = go.minor();
    let report = run.last();
    let ctx = || {
        format!(
            "{name} {} {mode:?}\n{}\nstderr:\n{}",
            go.full,
            report.summary(),
            run.stderr
        )
    };
    assert_eq!(
        report.live(),
        run.truth.numgoroutine,
        "live goroutines must equal runtime.NumGoroutine(): {}",
        ctx()
    );
    // Parks are probed (and counted) with --detailed only.
    assert!(
        report.events("spawn") > 0 && report.0["events"]["park"].is_null(),
        "no events through the ring buffer: {}",
        ctx()
    );
    for group in expect.leak_groups() {
        let blocked_at = group.blocked_at_for(minor);
        let groups = report.groups_at(&blocked_at);
        assert!(
            !groups.is_empty(),
            "no group blocked at {blocked_at}: {}",
            ctx()
        );
        let g = groups[0];
        let truth_count = run.truth.profile.count_blocked_at(&blocked_at);
        let count: u64 = groups
            .iter()
            .map(|g| g["count"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(
            count,
            truth_count,
            "count blocked at {blocked_at} vs the runtime's profile: {}",
            ctx()
        );
        assert_eq!(
            g["created_by"]["function"],
            group.created_by_for(minor).as_str(),
            "creation site: {}",
            ctx()
        );
        assert_eq!(
            g["state"],
            group.wait_reason_for(minor).as_str(),
            "wait reason: {}",
            ctx()
        );
        let line = run
            .truth
            .profile
            .blocked_at(&blocked_at)
            .next()
            .and_then(|r| r.first_non_stdlib_frame())
            .map(|f| f.line);
        assert_eq!(
            g["blocked_at"]["line"].as_u64(),
            line.map(u64::from),
            "blocked line vs profile: {}",
            ctx()
        );
        assert_eq!(g["verdict"], "leak", "verdict: {}", ctx());
    }
    format!(
        "{name:<15} {:<10} {:<8} live {:>5} == NumGoroutine {:>5}; ring buffer: {} spawn, {} exit, {} lost",
        go.full,
        format!("{mode:?}"),
        report.live(),
        run.truth.numgoroutine,
        report.events("spawn"),
        report.events("exit"),
        report.events("lost")
    )
}

/// Controls: none of the named groups may be called a leak.
pub fn check_control(name: &str, go: &GoToolchain, mode: BuildMode, run: &Run) -> String {
    let expect = Expect::load(name);
    let report = run.last();
    let ctx = || format!("{name} {} {mode:?}\n{}", go.full, report.summary());
    assert_eq!(
        report.live(),
        run.truth.numgoroutine,
        "live vs runtime.NumGoroutine(): {}",
        ctx()
    );
    for g in report.groups() {
        assert_ne!(
            g["verdict"],
            "leak",
            "a control was called a leak: {}",
            ctx()
        );
    }
    for group in &expect.must_not_flag {
        if group.state.as_deref() == Some("running") {
            let at = group.blocked_at_for(go.minor());
            let groups = report.groups_at(&at);
            assert!(!groups.is_empty(), "no group for {at}: {}", ctx());
            for g in groups {
                assert!(
                    g["state"] == "running" || g["state"] == "runnable",
                    "{at} must show as running: {}",
                    ctx()
                );
            }
        }
    }
    format!(
        "{name:<15} {:<10} {:<8} live {:>5} == NumGoroutine {:>5}; no group called a leak",
        go.full,
        format!("{mode:?}"),
        report.live(),
        run.truth.numgoroutine
    )
}

/// The installed toolchains among `versions`; none at all is a failure that
/// names the fix, never a silent pass.
pub fn matrix(versions: &[&str]) -> Vec<GoToolchain> {
    let gos = leaktrace_e2e::pick(versions);
    assert!(
        !gos.is_empty(),
        "no Go toolchain installed: run `cargo xtask setup`"
    );
    gos
}

/// The toolchain `version` ("1.26"), or the newest installed one.
pub fn one_go(version: &str) -> GoToolchain {
    leaktrace_e2e::pick(&[version])
        .pop()
        .or_else(leaktrace_e2e::toolchain::newest)
        .expect("no Go toolchain installed: run `cargo xtask setup`")
}

/// `tests/fixtures/go-exec`: leaks, prints its count, execs on SIGUSR2.
pub fn go_exec(go: &GoToolchain, mode: BuildMode) -> PathBuf {
    leaktrace_e2e::build_go(leaktrace_e2e::GoProgram::Module("go-exec"), go, mode)
}

pub fn build(name: &str, go: &GoToolchain, mode: BuildMode) -> PathBuf {
    build_fixture(name, go, mode)
}

/// A `leaktrace -c` run ended by the test (see [`run_command_until`]).
pub struct CommandRun {
    pub reports: Vec<Report>,
    /// The command's standard output, which leaktrace passes through.
    pub lines: Vec<String>,
    pub stderr: String,
    /// From starting leaktrace to its exit.
    pub took: Duration,
}

impl CommandRun {
    pub fn last(&self) -> &Report {
        self.reports.last().expect("at least one report")
    }

    /// The rest of the first output line that starts with `prefix`.
    pub fn value(&self, prefix: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    }
}

/// `leaktrace [extra] -c FIXTURE ARGS` until the fixture prints a line
/// starting with `until`, then SIGINT to leaktrace for its final report (and
/// leaktrace's SIGTERM to the fixture). Ending on the fixture's own line
/// rather than on a `--duration` puts the final report in the fixture's
/// quiescent phase however slowly the machine runs, and wastes no time. On
/// `timeout` it interrupts all the same; the caller then finds the line
/// missing from `lines`.
pub fn run_command_until(
    fixture: &std::path::Path,
    fixture_args: &[&str],
    extra: &[&str],
    until: &str,
    timeout: Duration,
) -> CommandRun {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc::RecvTimeoutError;
    let out = tempfile_path("reports.jsonl");
    let t0 = Instant::now();
    let (mut child, stdout, err_reader) = start_command_mode(fixture, fixture_args, extra, &out);
    // Lines through a channel: the wait for `until` needs a timeout, and
    // the pipe stays open as long as the fixture (a grandchild) lives.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let interrupt = |child: &Child| {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    };
    let deadline = t0 + timeout;
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let done = line.starts_with(until);
                lines.push(line);
                if done {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => break,
            // leaktrace and the fixture are gone: nothing to interrupt.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    interrupt(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let took = t0.elapsed();
    // Whatever the fixture printed before leaktrace's SIGTERM ended it.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        lines.push(line);
    }
    let fixture_pid = lines
        .first()
        .and_then(|l| l.strip_prefix("pid "))
        .and_then(|p| p.trim().parse::<libc::pid_t>().ok());
    if let Some(pid) = fixture_pid.filter(|_| !status.success()) {
        // leaktrace failed before it could stop what it started.
        // SAFETY: kill(2) on the fixture leaktrace started for this test.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let stderr = err_reader.join().unwrap_or_default();
    let reports = final_reports(status, &out, &stderr);
    CommandRun {
        reports,
        lines,
        stderr,
        took,
    }
}

/// The tokio fixture project (tests/fixtures/rust) built with `profile`
/// (see [`leaktrace_e2e::build::tokio_fixture`]).
pub fn tokio_fixture(profile: &str) -> PathBuf {
    leaktrace_e2e::tokio_fixture(profile, false)
}

/// A leaktrace process running in the background, its stdout and stderr
/// collected line by line as they come, for tests that act on the target
/// while it is traced (signals, exec).
pub struct Traced {
    pub child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Traced {
    /// `leaktrace ARGS`, stdin closed.
    pub fn start(args: &[&str]) -> Traced {
        let mut cmd = Command::new(leaktrace_bin());
        cmd.args(args);
        Traced::spawn(cmd)
    }

    /// Any command (leaktrace under `setpriv`, a copy of it).
    pub fn spawn(mut cmd: Command) -> Traced {
        use std::io::{BufRead, BufReader, Read};
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leaktrace");
        fn collect(r: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(l);
                }
            });
            lines
        }
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Traced {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until stderr holds `n` lines containing `text`; panics after
    /// `timeout` or if leaktrace exits first.
    pub fn wait_stderr(&mut self, text: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(text))
                .count();
            if seen >= n {
                return;
            }
            if let Some(st) = self.child.try_wait().expect("wait") {
                panic!(
                    "leaktrace exited ({st}) before saying {text:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "leaktrace did not say {text:?} within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `n`th stdout line starting with `prefix` (a `-c` command's
    /// output passes through leaktrace's), waiting up to 30 s for it.
    pub fn wait_stdout(&self, prefix: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines: Vec<String> = self
                .stdout()
                .into_iter()
                .filter(|l| l.starts_with(prefix))
                .collect();
            if lines.len() >= n {
                return lines[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line {n} starting with {prefix:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to leaktrace.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for leaktrace to exit (killed after 30 s): its status code and
    /// the JSON reports it printed on stdout.
    pub fn finish(mut self) -> (Option<i32>, Vec<Report>, String) {
        let status = wait_exit(&mut self.child, Duration::from_secs(30));
        // The readers end at EOF; give them a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let stdout = self.stdout().join("\n");
        (status.code(), parse_reports(&stdout), self.stderr())
    }
}

impl Drop for Traced {
    /// A test that failed half-way leaves no leaktrace running.
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `objcopy ARGS` in `dir` (binutils: splitting debug info off a build).
pub fn objcopy(args: &[&str], dir: &std::path::Path) {
    let st = Command::new("objcopy")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("objcopy (binutils) runs");
    assert!(st.success(), "objcopy {args:?} failed");
}

/// The BPF programs and links a running leaktrace holds, by kernel id, read
/// from its own fds (exact, even with other tracers loaded meanwhile).
pub fn held_bpf_objects(pid: u32) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let (kind, key) = if target.contains("bpf-prog") {
            ("prog", "prog_id:")
        } else if target.contains("bpf_link") {
            ("link", "link_id:")
        } else {
            continue;
        };
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix(key)) {
            out.push((kind, id.trim().to_string()));
        }
    }
    out
}

/// Which of those objects the kernel still has.
pub fn still_loaded(objects: &[(&'static str, String)]) -> Vec<String> {
    objects
        .iter()
        .filter(|(kind, id)| {
            Command::new("bpftool")
                .args([kind, "show", "id", id])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(kind, id)| format!("{kind} {id}"))
        .collect()
}
