//! A traced process that executes another program is followed into it
//! (issue 15, item 1): `--pid` and `-c` notice the exec (`sched_process_exec`),
//! end the old program's trace with its last state, and trace the new one
//! from scratch: a Go program's live count then equals its own
//! `runtime.NumGoroutine()`; a program that is neither Go nor tokio is
//! traced for its threads and the report says so.
mod common;

use std::time::Duration;

use common::*;
use leaktrace_e2e::{BuildMode, Fixture};

const GEN2: u64 = 40;

fn numgoroutine(line: &str) -> u64 {
    line["numgoroutine ".len()..].trim().parse().expect("count")
}

/// Trace `fx` with `--pid`, make it exec (SIGUSR2), wait for the new
/// program's own count (the stdout line starting with `new_program_count`,
/// when it is a Go program), then Ctrl-C: the reports.
fn trace_across_exec(fx: &Fixture, new_program_count: Option<&str>) -> (Vec<Report>, String) {
    let gen1 = numgoroutine(&fx.wait_for_line("numgoroutine ", Duration::from_secs(30)));
    let pid = fx.pid().to_string();
    let mut lt = Traced::start(&["--format", "json", "--pid", &pid, "0.5"]);
    lt.wait_stderr("Attaching to pid", 1, Duration::from_secs(30));
    // A report of the first program first (an exec before any read would
    // leave its trace nothing to say).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !lt.stdout().iter().any(|l| l.starts_with('{')) {
        assert!(
            std::time::Instant::now() < deadline,
            "no report: {}",
            lt.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling the fixture we started.
    unsafe { libc::kill(fx.pid() as i32, libc::SIGUSR2) };
    lt.wait_stderr(&format!("pid {pid} exec'd"), 1, Duration::from_secs(30));
    lt.wait_stderr("Attaching to pid", 2, Duration::from_secs(30));
    let truth = new_program_count
        .map(|prefix| numgoroutine(&fx.wait_for_line(prefix, Duration::from_secs(30))));
    // Two more reports after the new program settled.
    std::thread::sleep(Duration::from_millis(1200));
    lt.signal(libc::SIGINT);
    let (code, reports, stderr) = lt.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let last = reports
        .last()
        .unwrap_or_else(|| panic!("no report: {stderr}"));
    assert_eq!(last.0["final"], true, "{stderr}");
    // The old program's trace ended with its own final report, labelled.
    let before = reports
        .iter()
        .position(|r| r.0["notes"].to_string().contains("executed a new program"))
        .unwrap_or_else(|| panic!("no report of the state before the exec: {stderr}"));
    assert_eq!(reports[before].0["final"], true);
    assert_eq!(
        reports[before].live(),
        gen1,
        "{}",
        reports[before].summary()
    );
    // Every report after it describes the new program and says why.
    for r in &reports[before + 1..] {
        let notes = r.0["notes"].to_string();
        assert!(notes.contains(&format!("pid {pid} exec'd")), "{notes}");
        assert!(r.0["data_age_s"].as_f64().is_some(), "{}", r.0);
    }
    if let Some(n) = truth {
        assert_eq!(
            last.live(),
            n,
            "live must equal the new program's runtime.NumGoroutine(): {}",
            last.summary()
        );
    }
    (reports, stderr)
}

#[test]
fn a_go_program_that_re_execs_itself_is_followed() {
    if !ebpf_available("a_go_program_that_re_execs_itself_is_followed") {
        return;
    }
    let go = one_go("1.26");
    for mode in [BuildMode::Plain, BuildMode::Pie] {
        let bin = go_exec(&go, mode);
        let fx = Fixture::start(&bin, ["-n", "30", "-n2", "40", "-exec", "self"]);
        let (reports, _) = trace_across_exec(&fx, Some("numgoroutine "));
        let last = reports.last().unwrap();
        let leak = last.groups_at("main.sendForever");
        assert_eq!(leak.len(), 1, "{}", last.summary());
        assert_eq!(leak[0]["count"], GEN2);
        assert!(
            last.groups_at("main.waitForever").is_empty(),
            "a stale group"
        );
        println!(
            "{mode:?}: re-exec followed; {} reports, last live {} = NumGoroutine",
            reports.len(),
            last.live(),
        );
    }
}

#[test]
fn a_go_program_that_execs_another_go_program_is_followed() {
    if !ebpf_available("a_go_program_that_execs_another_go_program_is_followed") {
        return;
    }
    let go = one_go("1.22");
    let bin = go_exec(&go, BuildMode::Plain);
    // Built by another toolchain: everything is read anew.
    let other = build("chan_send", &one_go("1.26"), BuildMode::Stripped);
    let other_s = other.to_string_lossy();
    let fx = Fixture::start(
        &bin,
        [
            "-n", "30", "-exec", &other_s, "--", "-n", "25", "-hold", "60s",
        ],
    );
    let (reports, _) = trace_across_exec(&fx, Some("numgoroutine "));
    let last = reports.last().unwrap();
    assert_eq!(last.0["target"]["exe"], other_s.as_ref(), "{}", last.0);
    assert!(
        last.0["target"]["runtime_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("go1.26")),
        "{}",
        last.0["target"]
    );
    let leak = last.groups_at("main.(*Hub).Publish.func1");
    assert_eq!(leak.len(), 1, "{}", last.summary());
    assert_eq!(leak[0]["count"], 25, "{}", last.summary());
    println!(
        "go1.22 program exec'd a go1.26 stripped one: followed, live {} = its NumGoroutine",
        last.live()
    );
}

#[test]
fn exec_into_a_program_that_is_not_go_is_said() {
    if !ebpf_available("exec_into_a_program_that_is_not_go_is_said") {
        return;
    }
    let go = one_go("1.26");
    let bin = go_exec(&go, BuildMode::Plain);
    let fx = Fixture::start(&bin, ["-n", "30", "-exec", "/bin/sleep", "--", "60"]);
    let (reports, stderr) = trace_across_exec(&fx, None);
    let last = reports.last().unwrap();
    assert_eq!(last.0["target"]["runtime"], "none", "{}", last.0);
    assert_eq!(last.live(), 0);
    assert!(last.groups().is_empty(), "{}", last.summary());
    let notes = last.0["notes"].to_string();
    assert!(notes.contains("neither Go nor tokio"), "{notes}");
    assert!(notes.contains("sleep"), "{notes}");
    // Its one thread is still tracked.
    assert_eq!(last.0["threads"]["live"], 1, "{}\n{stderr}", last.0);
    println!("exec into /bin/sleep: {notes}");
}

/// `-c`: the command's own start is not taken for an exec, and after a
/// re-exec leaktrace still reaps it and returns its status.
#[test]
fn a_command_that_re_execs_itself_is_followed() {
    if !ebpf_available("a_command_that_re_execs_itself_is_followed") {
        return;
    }
    let go = one_go("1.26");
    let bin = go_exec(&go, BuildMode::Plain);
    let out = tempfile_path("exec-c.jsonl");
    let out_s = out.to_string_lossy().into_owned();
    let bin_s = bin.to_string_lossy().into_owned();
    let mut lt = Traced::start(&[
        "--format", "json", "--output", &out_s, "-c", &bin_s, "-n", "30", "-n2", "40", "-hold",
        "3s",
    ]);
    let pid: i32 = lt.wait_stdout("pid ", 1)[4..].parse().unwrap();
    lt.wait_stdout("numgoroutine ", 1);
    // SAFETY: signalling the command leaktrace started for us.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    let n = numgoroutine(&lt.wait_stdout("numgoroutine ", 2));
    lt.wait_stderr("Attaching to pid", 2, Duration::from_secs(30));
    // Generation 2 ends by itself after -hold: its exit ends the session.
    let (code, _, stderr) = lt.finish();
    assert_eq!(code, Some(0), "the command's own status: {stderr}");
    let reports = parse_reports(&std::fs::read_to_string(&out).unwrap_or_default());
    let _ = std::fs::remove_file(&out);
    let last = reports
        .last()
        .unwrap_or_else(|| panic!("no report: {stderr}"));
    assert_eq!(last.0["final"], true);
    assert_eq!(last.live(), n, "{}\n{stderr}", last.summary());
    assert_eq!(
        stderr.matches("exec'd").count(),
        1,
        "the command's start is not an exec: {stderr}"
    );
    println!(
        "-c re-exec: one exec noticed, final live {} = NumGoroutine, exit 0",
        last.live()
    );
}

/// `-f`: a followed Go program that re-execs itself from one of its threads
/// (not the leader, as Go does) is followed into its new image too.
#[test]
fn follow_mode_sees_a_go_re_exec() {
    if !ebpf_available("follow_mode_sees_a_go_re_exec") {
        return;
    }
    let go = one_go("1.26");
    let bin = go_exec(&go, BuildMode::Plain);
    let out = tempfile_path("exec-f.jsonl");
    let out_s = out.to_string_lossy().into_owned();
    let bin_s = bin.to_string_lossy().into_owned();
    let lt = Traced::start(&[
        "--format", "json", "--output", &out_s, "-f", "-c", &bin_s, "-n", "30", "-n2", "40",
        "-hold", "3s",
    ]);
    let pid: i32 = lt.wait_stdout("pid ", 1)[4..].parse().unwrap();
    lt.wait_stdout("numgoroutine ", 1);
    // SAFETY: signalling the command leaktrace started for us.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    let n = numgoroutine(&lt.wait_stdout("numgoroutine ", 2));
    let (code, _, stderr) = lt.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let reports = parse_reports(&std::fs::read_to_string(&out).unwrap_or_default());
    let _ = std::fs::remove_file(&out);
    let finals: Vec<&Report> = reports.iter().filter(|r| r.0["final"] == true).collect();
    assert_eq!(finals.len(), 2, "one trace per image: {stderr}");
    let last = finals[1];
    assert_eq!(last.live(), n, "{}\n{stderr}", last.summary());
    assert_eq!(
        last.groups_at("main.sendForever").len(),
        1,
        "{}",
        last.summary()
    );
    println!(
        "-f: re-exec followed, second image's final live {} = NumGoroutine",
        last.live()
    );
}
