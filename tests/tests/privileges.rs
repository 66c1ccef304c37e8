//! Privileges that are true and safe (issue 15, item 3), with a real
//! unprivileged user (created if absent), a copy of leaktrace granted
//! capabilities with `setcap` (libcap2-bin, installed by `cargo xtask
//! setup`), and targets owned by that user and by root:
//!
//! * the capabilities leaktrace names when it has none are exactly the ones
//!   that make it work on the user's own process (live = NumGoroutine);
//! * that copy refuses a process of root's, naming why;
//! * CAP_BPF + CAP_PERFMON alone: the refused uprobe is explained
//!   (CAP_SYS_ADMIN);
//! * a setuid copy refuses to run;
//! * a `-c` command starts with no capabilities (CapEff/CapPrm/CapAmb 0);
//! * a tracefs leaktrace has to mount stays in its own mount namespace.
mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use common::*;
use leaktrace_e2e::{BuildMode, Fixture};

const USER: &str = "leaktrace-e2e";

/// The unprivileged user, created once.
fn user() -> &'static str {
    let exists = Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .output()
            .expect("useradd (passwd)");
        // Another test may have created it meanwhile (exit 9: exists).
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    USER
}

/// `setpriv` arguments running a command as [`USER`], no supplementary
/// groups, optionally with ambient capabilities (`+sys_admin,+bpf`).
fn as_user(ambient: Option<&str>) -> Vec<String> {
    let mut v = vec![
        format!("--reuid={}", user()),
        format!("--regid={}", user()),
        "--clear-groups".into(),
    ];
    if let Some(caps) = ambient {
        v.push(format!("--inh-caps={caps}"));
        v.push(format!("--ambient-caps={caps}"));
    }
    v
}

fn run_as_user(ambient: Option<&str>, program: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(as_user(ambient))
        .arg(program)
        .args(args)
        .output()
        .expect("setpriv")
}

/// `go-exec -n N` running as [`USER`].
fn own_process(bin: &Path, n: &str) -> Fixture {
    Fixture::start(
        "setpriv",
        as_user(None)
            .iter()
            .map(String::as_str)
            .chain([bin.to_str().unwrap(), "-n", n]),
    )
}

/// A private copy of leaktrace the user can run, in its own directory.
fn copy_of_leaktrace(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leaktrace-e2e-priv-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = dir.join("leaktrace");
    std::fs::copy(leaktrace_bin(), &copy).expect("copy leaktrace");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The capabilities in the `setcap CAPS+ep` leaktrace suggests.
fn suggested_caps(message: &str) -> String {
    message
        .split("setcap ")
        .nth(1)
        .and_then(|s| s.split("+ep").next())
        .unwrap_or_else(|| panic!("no setcap suggestion in: {message}"))
        .to_string()
}

#[test]
fn a_capability_granted_copy_traces_its_users_processes_only() {
    if !ebpf_available("a_capability_granted_copy_traces_its_users_processes_only") {
        return;
    }
    let go = one_go("1.26");
    let bin = go_exec(&go, BuildMode::Plain);
    let copy = copy_of_leaktrace("granted");
    let own = own_process(&bin, "20");
    let own_pid = own.pid().to_string();

    // Without capabilities: refused, naming what it needs.
    let bare = run_as_user(None, &copy, &["--pid", &own_pid, "-d", "1s"]);
    assert_eq!(bare.status.code(), Some(2), "{}", text(&bare));
    let caps = suggested_caps(&String::from_utf8_lossy(&bare.stderr));
    println!("without capabilities: exit 2, suggests setcap {caps}+ep");

    // Exactly those: works on the user's own process, counts exact.
    let st = Command::new("setcap")
        .arg(format!("{caps}+ep"))
        .arg(&copy)
        .status()
        .expect("setcap (libcap2-bin)");
    assert!(st.success());
    let truth: u64 = own.wait_for_line("numgoroutine ", Duration::from_secs(30))
        ["numgoroutine ".len()..]
        .parse()
        .unwrap();
    let ok = run_as_user(
        None,
        &copy,
        &["--format", "json", "--pid", &own_pid, "-d", "1s"],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let reports = parse_reports(&String::from_utf8_lossy(&ok.stdout));
    let last = reports.last().unwrap_or_else(|| panic!("{}", text(&ok)));
    assert_eq!(last.live(), truth, "{}", last.summary());
    // The one warning every default Go session has (parks are probed
    // with --detailed only) says nothing about privileges.
    let warnings: Vec<&str> = last.0["target"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| !w.starts_with("go: parks are not probed"))
        .collect();
    assert!(
        warnings.is_empty(),
        "threads and execs are tracked too: {}",
        last.0["target"]
    );
    println!(
        "with exactly {caps}: own process traced, live {} = NumGoroutine",
        last.live()
    );

    // A process of root's: refused, with the reason.
    let roots = Fixture::start(&bin, ["-n", "5"]);
    let refused = run_as_user(
        None,
        &copy,
        &["--pid", &roots.pid().to_string(), "-d", "1s"],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("may not trace process"), "{err}");
    assert!(
        refused.stdout.is_empty(),
        "nothing of root's read: {}",
        text(&refused)
    );
    println!("root's process: refused: {}", err.trim());

    // A -c command runs with the user's rights, not the copy's.
    let child = run_as_user(
        None,
        &copy,
        &["-f", "-c", "/bin/sh", "-c", "grep ^Cap /proc/self/status"],
    );
    let out = String::from_utf8_lossy(&child.stdout);
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{}", text(&child)));
        assert!(
            line.ends_with("0000000000000000"),
            "the command must start with no capabilities: {line}"
        );
    }
    println!("-c command: {}", out.lines().collect::<Vec<_>>().join(", "));
    let _ = std::fs::remove_dir_all(copy.parent().unwrap());
}

#[test]
fn missing_capabilities_and_setuid_are_named() {
    if !ebpf_available("missing_capabilities_and_setuid_are_named") {
        return;
    }
    let go = one_go("1.26");
    let bin = go_exec(&go, BuildMode::Plain);
    let copy = copy_of_leaktrace("named");
    let own = own_process(&bin, "5");
    let pid = own.pid().to_string();

    // What the README once said (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE):
    // the kernel refuses the uprobe, and leaktrace says which one it lacks.
    let o = run_as_user(
        Some("+bpf,+perfmon,+sys_ptrace,+dac_read_search"),
        &copy,
        &["--pid", &pid, "-d", "1s"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("needs CAP_SYS_ADMIN for uprobes"), "{err}");
    println!("CAP_BPF+CAP_PERFMON: {}", err.trim());

    // setuid root: refused before anything.
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).expect("chmod u+s");
    let o = run_as_user(None, &copy, &["--pid", &pid, "-d", "1s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("setuid"),
        "{}",
        text(&o)
    );
    println!("setuid copy: refused");
    let _ = std::fs::remove_dir_all(copy.parent().unwrap());
}

/// With no tracefs mounted, leaktrace mounts one in a mount namespace of
/// its own: threads are tracked, and nothing is left mounted.
#[test]
fn tracefs_is_mounted_privately() {
    if !ebpf_available("tracefs_is_mounted_privately") {
        return;
    }
    let go = one_go("1.26");
    let bin = go_exec(&go, BuildMode::Plain);
    let fx = Fixture::start(&bin, ["-n", "5"]);
    // A namespace of the test's own without tracefs, so the host's stays.
    let script = format!(
        "for m in $(grep ' - tracefs ' /proc/self/mountinfo | cut -d' ' -f5); do umount $m; done; \
         echo before $(grep -c ' - tracefs ' /proc/self/mountinfo); \
         {} --format json --pid {} -d 1s; \
         echo after $(grep -c ' - tracefs ' /proc/self/mountinfo)",
        leaktrace_bin().display(),
        fx.pid()
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("before 0"), "{}", text(&o));
    assert!(out.contains("after 0"), "left mounted: {}", text(&o));
    let reports = parse_reports(&out);
    let last = reports.last().unwrap_or_else(|| panic!("{}", text(&o)));
    assert!(
        last.0["threads"]["live"].as_u64().unwrap_or(0) >= 1,
        "{}",
        last.0
    );
    println!(
        "no tracefs: mounted privately, {} threads tracked, none left mounted",
        last.0["threads"]["live"]
    );
}
