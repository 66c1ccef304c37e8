//! Every way a session ends gives a final report and leaves no probe behind:
//! Ctrl-C, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, the target exiting, COUNT
//! reached; for Go and tokio. A closed stdout or stderr never makes
//! leaktrace panic, and a `-c` command dies with a killed leaktrace.
mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use leaktrace_e2e::{BuildMode, Fixture};

fn start_leaktrace(pid: u32, extra: &[&str]) -> Child {
    Command::new(leaktrace_bin())
        .args(["--format", "json", "--pid", &pid.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leaktrace")
}

fn finish(child: Child) -> (Option<i32>, Vec<Report>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut child = child;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "leaktrace did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        parse_reports(&String::from_utf8_lossy(&out.stdout)),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Let the session get going; what it holds in the kernel.
fn wait_attached(child: &mut Child) -> Vec<(&'static str, String)> {
    // Attaching waits for the kernel's uprobe lock, which another session
    // detaching (tests run in parallel) holds for a while: wait until the
    // set of held objects stops changing, not a fixed time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    let mut stable = 0;
    while stable < 5 {
        assert!(
            Instant::now() < deadline,
            "leaktrace never finished attaching: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().expect("wait").is_none(),
            "leaktrace exited early"
        );
        let held = held_bpf_objects(child.id());
        let attached = held.iter().filter(|o| o.0 == "prog").count() >= 3
            && held.iter().any(|o| o.0 == "link");
        stable = if attached && held == last {
            stable + 1
        } else {
            0
        };
        last = held;
    }
    last
}

/// Ctrl-C, SIGTERM and the target's exit, each on a fresh target from
/// `start` holding at least `min_live` tasks.
fn check_signals_and_target_exit(start: &dyn Fn() -> Fixture, min_live: u64) {
    for (how, sig) in [
        ("Ctrl-C", libc::SIGINT),
        ("SIGTERM", libc::SIGTERM),
        ("SIGHUP", libc::SIGHUP),
        ("SIGQUIT", libc::SIGQUIT),
        ("SIGPIPE", libc::SIGPIPE),
    ] {
        let fx = start();
        let mut lt = start_leaktrace(fx.pid(), &[]);
        let held = wait_attached(&mut lt);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(lt.id() as i32, sig) };
        let (code, reports, stderr) = finish(lt);
        assert_eq!(code, Some(0), "{how}: {stderr}");
        let last = reports
            .last()
            .unwrap_or_else(|| panic!("{how}: no report: {stderr}"));
        assert_eq!(last.0["final"], true, "{how}");
        assert!(last.live() >= min_live, "{how}: {}", last.summary());
        assert_eq!(
            still_loaded(&held),
            Vec::<String>::new(),
            "{how}: probes left loaded"
        );
        assert!(fx.is_running(), "{how}: the target must survive leaktrace");
        println!(
            "{how}: final report ({} live), exit 0, its {} BPF programs/links gone, target still running",
            last.live(),
            held.len()
        );
    }

    // The target exits while traced: a final report that says so.
    let fx = start();
    let mut lt = start_leaktrace(fx.pid(), &[]);
    let held = wait_attached(&mut lt);
    fx.terminate(Duration::from_secs(10))
        .expect("stop the fixture");
    let (code, reports, stderr) = finish(lt);
    assert_eq!(code, Some(0), "{stderr}");
    let last = reports.last().expect("a report");
    assert_eq!(last.0["final"], true);
    let notes = last.0["notes"].to_string();
    assert!(notes.contains("exited"), "{notes}");
    assert_eq!(
        still_loaded(&held),
        Vec::<String>::new(),
        "probes left after the target exited"
    );
    println!("target exit: final report noting it, exit 0, probes detached");
}

#[test]
fn every_exit_path_prints_a_final_report_and_detaches() {
    if !ebpf_available("every_exit_path_prints_a_final_report_and_detaches") {
        return;
    }
    let go = one_go("1.26");
    let bin = build("chan_send", &go, BuildMode::Plain);
    check_signals_and_target_exit(&|| Fixture::start(&bin, ["-n", "50", "-hold", "60s"]), 50);

    // COUNT periodic reports, the last one final.
    let fx = Fixture::start(&bin, ["-n", "50", "-hold", "60s"]);
    let mut lt = start_leaktrace(fx.pid(), &["0.5", "3"]);
    std::thread::sleep(Duration::from_millis(300));
    let held = held_bpf_objects(lt.id());
    let _ = lt.try_wait();
    let (code, reports, stderr) = finish(lt);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(reports.len(), 3, "{stderr}");
    assert!(reports[..2].iter().all(|r| r.0["final"] == false) && reports[2].0["final"] == true);
    // Each says how old its data is (read just before it was written).
    for r in &reports {
        let age = r.0["data_age_s"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}", r.0));
        assert!(age >= 0.0, "{}", r.0);
    }
    assert_eq!(still_loaded(&held), Vec::<String>::new());
    println!("INTERVAL COUNT: 3 reports, the last one final, probes detached");
}

/// The same for a tokio program: its uprobes (spawn, completion, every
/// vtable's shutdown) and the thread tracepoints all go.
#[test]
fn tokio_exit_paths_print_a_final_report_and_detach() {
    if !ebpf_available("tokio_exit_paths_print_a_final_report_and_detach") {
        return;
    }
    let bin = tokio_fixture("release");
    let start = || {
        let fx = Fixture::start(&bin, ["pending", "--n", "20", "--hold", "60"]);
        fx.wait_for_line("alive_tasks ", Duration::from_secs(30));
        fx
    };
    check_signals_and_target_exit(&start, 20);
}

/// stdout and stderr whose reader is gone (EPIPE, SIGPIPE), or closed
/// (EBADF): leaktrace exits with its documented status, never a panic (101).
#[test]
fn closed_output_never_panics() {
    if !ebpf_available("closed_output_never_panics") {
        return;
    }
    use std::os::fd::{FromRawFd, OwnedFd};
    let go = one_go("1.26");
    let bin = build("chan_send", &go, BuildMode::Plain);
    let fx = Fixture::start(&bin, ["-n", "20", "-hold", "60s"]);
    let pid = fx.pid().to_string();
    // A pipe whose read end is closed at once.
    let broken = || {
        let mut fds = [0; 2];
        // SAFETY: valid out-array; both fds are owned below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds we own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(r);
        Stdio::from(w)
    };
    let status = |stdout: Stdio, stderr: Stdio, extra: &[&str]| {
        Command::new(leaktrace_bin())
            .args(["--format", "json", "--pid", &pid])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .expect("run leaktrace")
            .code()
    };

    // Both gone: the first write (its attach line) ends the session, the
    // final report cannot be written: status 4, nothing printed.
    assert_eq!(status(broken(), broken(), &["--duration", "20s"]), Some(4));
    println!("stdout and stderr broken pipes: exit 4");

    // Only stderr gone: SIGPIPE at the attach line ends the session with a
    // final report on stdout, exit 0.
    let out = tempfile_path("closed-stderr.jsonl");
    let file = std::fs::File::create(&out).expect("report file");
    assert_eq!(
        status(Stdio::from(file), broken(), &["--duration", "20s"]),
        Some(0)
    );
    let reports = parse_reports(&std::fs::read_to_string(&out).unwrap_or_default());
    let _ = std::fs::remove_file(&out);
    let last = reports.last().expect("a final report on stdout");
    assert_eq!(last.0["final"], true);
    assert!(last.live() >= 20, "{}", last.summary());
    println!(
        "stderr broken pipe: final report on stdout ({} live), exit 0",
        last.live()
    );

    // Closed descriptors (EBADF): writes go nowhere, the run is normal.
    let mut closed = Command::new(leaktrace_bin());
    closed
        .args(["--format", "json", "--pid", &pid, "--duration", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: closing the child's own stdout/stderr between fork and exec
    // (async-signal-safe).
    unsafe {
        use std::os::unix::process::CommandExt;
        closed.pre_exec(|| {
            libc::close(1);
            libc::close(2);
            Ok(())
        });
    }
    let code = closed.status().expect("run leaktrace").code();
    assert_eq!(code, Some(0));
    println!("stdout and stderr closed: exit 0");
    assert!(fx.is_running(), "the target must survive");
}

/// SIGKILL cannot be caught: the `-c` command must not run on untraced.
#[test]
fn a_killed_leaktrace_takes_its_command_with_it() {
    if !ebpf_available("a_killed_leaktrace_takes_its_command_with_it") {
        return;
    }
    let go = one_go("1.26");
    let bin = build("chan_send", &go, BuildMode::Plain);
    let bin_s = bin.to_string_lossy().into_owned();
    let mut lt = Traced::start(&["--format", "json", "-c", &bin_s, "-n", "5", "-hold", "60s"]);
    lt.wait_stderr("Attaching to pid", 1, Duration::from_secs(30));
    let pid: u32 = lt.wait_stdout("pid ", 1)[4..].trim().parse().expect("pid");
    lt.signal(libc::SIGKILL);
    let _ = lt.finish();
    // Gone, or a zombie waiting for its new parent to reap it.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while running() {
        assert!(
            Instant::now() < deadline,
            "the command (pid {pid}) runs on after leaktrace was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("leaktrace SIGKILLed: its command {pid} ended with it");
}

/// Ctrl-C while leaktrace reads 100,000 goroutines that existed before
/// attach: acted on at once (the read goes on on its own thread and is
/// dropped), so the final report says the read was cut, not what it found
/// a second later; exit 0 and every probe detached.
#[test]
fn a_signal_cuts_a_long_read_short() {
    if !ebpf_available("a_signal_cuts_a_long_read_short") {
        return;
    }
    let go = one_go("1.26");
    let bin = go_exec(&go, BuildMode::Plain);
    let fx = Fixture::start(&bin, ["-n", "100000"]);
    let truth: u64 = fx.wait_for_line("numgoroutine ", Duration::from_secs(60))
        ["numgoroutine ".len()..]
        .parse()
        .unwrap();
    let pid = fx.pid().to_string();
    let mut lt = Traced::start(&["--format", "json", "--pid", &pid]);
    // Printed once the probes are in, just before the snapshot starts.
    lt.wait_stderr("Attaching to pid", 1, Duration::from_secs(60));
    let held = held_bpf_objects(lt.pid());
    lt.signal(libc::SIGINT);
    let (code, reports, stderr) = lt.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let last = reports
        .last()
        .unwrap_or_else(|| panic!("no report: {stderr}"));
    assert_eq!(last.0["final"], true);
    let notes = last.0["notes"].to_string();
    assert!(
        notes.contains("stopped while reading the goroutines that existed before attach")
            || last.0["data_age_s"].is_null(),
        "the signal waited for the read ({truth} goroutines): {}",
        last.0
    );
    assert!(
        last.live() < truth,
        "no data was read after the signal: {}",
        last.summary()
    );
    assert!(
        last.0["events"]["spawn"].is_u64() && last.0["events"]["park"].is_null(),
        "the usual keys (parks are counted with --detailed only): {}",
        last.0["events"]
    );
    assert_eq!(
        still_loaded(&held),
        Vec::<String>::new(),
        "probes left loaded"
    );
    assert!(fx.is_running());
    println!(
        "Ctrl-C during the snapshot of {truth} goroutines: final report without waiting ({}), exit 0, {} BPF objects gone",
        last.0["notes"],
        held.len()
    );
}
