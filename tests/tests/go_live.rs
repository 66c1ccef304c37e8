//! Go live tracing (issue: trace goroutine spawn, park and exit in an
//! unmodified process): real probes on real Go processes, compared with the
//! runtime's own count and goroutine profile.
mod common;

use std::{process::Command, time::Duration};

use common::*;
use leaktrace_e2e::{BuildMode, Fixture, pick};

const VERSIONS: &[&str] = &["1.19", "1.22", "1.24", "1.26"];

/// The first thing to know works: a uprobe on a running Go process delivers
/// events through the ring buffer, and what leaktrace counts is what the
/// runtime counts.
#[test]
fn attaches_uprobes_and_receives_ring_buffer_events() {
    if !ebpf_available("attaches_uprobes_and_receives_ring_buffer_events") {
        return;
    }
    let go = one_go("1.22");
    let bin = build("chan_send", &go, BuildMode::Plain);
    let run = run_command_mode(&bin, &["-leak-for", "2s", "-hold", "20s"], "4s");
    println!("{}", check_leak("chan_send", &go, BuildMode::Plain, &run));
    println!("{}", run.last().summary());
}

/// `-c` on every Go version of the matrix, plain, `-s -w` and PIE builds.
#[test]
fn command_mode_matches_the_runtime_across_versions_and_build_modes() {
    if !ebpf_available("command_mode_matches_the_runtime_across_versions_and_build_modes") {
        return;
    }
    let gos = matrix(VERSIONS);
    for go in &gos {
        for mode in [BuildMode::Plain, BuildMode::Stripped, BuildMode::Pie] {
            let bin = build("chan_send", go, mode);
            let run = run_command_mode(&bin, &["-leak-for", "2s", "-hold", "20s"], "4s");
            println!("{}", check_leak("chan_send", go, mode, &run));
        }
    }
}

/// `--pid` on a process that is already leaking: the snapshot sees what
/// leaked before attach, the probes what leaks after.
#[test]
fn pid_mode_sees_goroutines_that_leaked_before_attach() {
    if !ebpf_available("pid_mode_sees_goroutines_that_leaked_before_attach") {
        return;
    }
    for go in pick(&["1.19", "1.26"]) {
        for mode in [BuildMode::Plain, BuildMode::Stripped] {
            let bin = build("chan_send", &go, mode);
            let fx = Fixture::start(&bin, ["-leak-for", "6s", "-rate", "50", "-hold", "30s"]);
            std::thread::sleep(Duration::from_millis(1500));
            let (reports, stderr) = run_pid_mode(&fx, &["--duration", "3s"]);
            let report = reports.last().expect("a report");
            let truth = fx.truth(Duration::from_secs(30));
            let g = report.groups_at("main.(*Hub).Publish.func1");
            assert_eq!(g.len(), 1, "{}\n{stderr}", report.summary());
            let g = g[0];
            assert_eq!(g["created_by"]["function"], "main.(*Hub).Publish");
            assert_eq!(g["state"], "chan send");
            assert_eq!(g["verdict"], "leak", "{}", report.summary());
            assert!(
                g["blocked_s"]["at_least"].as_bool().unwrap_or(false),
                "pre-attach members have lower-bound durations"
            );
            // Still leaking while we traced: at least what had leaked by the
            // attach, at most the final count.
            let n = g["count"].as_u64().unwrap();
            let final_n = truth.profile.count_blocked_at("main.(*Hub).Publish.func1");
            assert!(
                n >= 50 && n <= final_n,
                "count {n}, runtime's final {final_n}"
            );
            println!(
                "pid mode {} {mode:?}: {} blocked in chan send at attach+3s (runtime later: {final_n}), verdict {}",
                go.full, n, g["verdict"]
            );
        }
    }
}

/// Bad input gets an error that names the fix, never a panic or a hang.
#[test]
fn bad_input_gets_a_clear_error() {
    let bin = leaktrace_bin();
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .args(args)
            .output()
            .expect("run leaktrace");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--pid", "999999999"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no process with pid 999999999") && err.contains("pgrep"),
        "{err}"
    );
    let (code, err) = run(&["-c", "/nonexistent/prog"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no such file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    if ebpf_available("bad_input_gets_a_clear_error (not-Go part)") {
        let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
        let (code, err) = run(&["--pid", &sleeper.id().to_string(), "--duration", "1s"]);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("not a Go binary"), "{err}");
        // Not root: a process of our own (as `nobody`) is readable, but eBPF
        // is not loadable; the message must name sudo and the capabilities.
        let nobody = |prog: &std::path::Path| {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(prog);
            c
        };
        let mut victim = nobody(std::path::Path::new("/bin/sleep"))
            .arg("30")
            .spawn()
            .expect("setpriv sleep");
        // Until setpriv has exec'd sleep, the victim is not dumpable and
        // nobody may read it, which would be a different (right) error.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_link(format!("/proc/{}/exe", victim.id()))
            .is_ok_and(|p| p.to_string_lossy().ends_with("sleep"))
        {
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = nobody(&bin)
            .args(["--pid", &victim.id().to_string()])
            .output()
            .expect("setpriv leaktrace");
        let _ = victim.kill();
        let _ = victim.wait();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("needs root") && err.contains("CAP_BPF"),
            "{err}"
        );
        let (code, err) = run(&["--pid", "1", "--duration", "10xs"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("not a duration"), "{err}");
    }
}

/// The traced program's own output is the same traced and untraced (the
/// probes never change its behaviour), and it exits normally.
#[test]
fn traced_program_behaves_the_same() {
    if !ebpf_available("traced_program_behaves_the_same") {
        return;
    }
    let go = one_go("1.26");
    let bin = build("chan_send", &go, BuildMode::Plain);
    let args = ["-n", "300", "-hold", "0s"];
    let plain = Command::new(&bin).args(args).output().expect("run fixture");
    let traced = Command::new(leaktrace_bin())
        .args(["--format", "json", "--output", "/dev/null", "-c"])
        .arg(&bin)
        .args(args)
        .output()
        .expect("run leaktrace -c");
    assert!(
        plain.status.success() && traced.status.success(),
        "{traced:?}"
    );
    let shape = |out: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .filter(|l| {
                l.starts_with("numgoroutine")
                    || l.starts_with("phase")
                    || l.starts_with("goroutine profile")
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        shape(&plain.stdout),
        shape(&traced.stdout),
        "output differs under tracing"
    );
    println!(
        "traced and untraced outputs agree: {:?}",
        shape(&traced.stdout)
    );
}
