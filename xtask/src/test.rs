//! `cargo xtask test`: lints, unit tests, and end-to-end tests that load the
//! real eBPF object and attach it to real Go processes. Afterwards it checks
//! that no probe and no fixture process was left behind.
//!
//! Then each fuzz target runs for 30 s (`cargo xtask fuzz --smoke`).
//!
//! `cargo xtask test --unit`: lints and the library's unit tests only
//! (`cargo test --release -p leaktrace --lib`): no setup, no root, no Go
//! toolchain, no fixture build.
use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Run the corpus on every Go release 1.21–1.27 (and Debian's 1.19).
    #[arg(long)]
    pub all_go: bool,
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Only the library's unit tests (`cargo test --release -p leaktrace
    /// --lib`), after the lints: seconds, no root, no Go, no fixture builds.
    #[arg(long, conflicts_with = "all_go")]
    pub unit: bool,
    /// Only tests whose name contains this.
    pub filter: Option<String>,
}

pub fn run(o: &Options) -> Result<()> {
    let root = util::workspace_root();
    if o.unit {
        if !o.no_lint {
            lint(&root)?;
        }
        let mut cmd = util::cargo();
        cmd.current_dir(&root)
            .args(["test", "--release", "-p", "leaktrace", "--lib"]);
        if let Some(f) = &o.filter {
            cmd.args(["--", f]);
        }
        return util::run(&mut cmd);
    }
    let installed = setup::run(&setup::Options { all_go: o.all_go })?;
    if !o.no_lint {
        lint(&root)?;
    }
    let bin = util::build_leaktrace()?;
    let go_roots: Vec<String> = installed
        .go
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut cmd = util::cargo();
    cmd.current_dir(&root)
        // The default members: leaktrace's unit tests and every file under
        // tests/tests (leaktrace-e2e), which take their Go toolchains from
        // LEAKTRACE_GO_ROOTS. Every test binary runs even after one fails:
        // a CI log then shows every failure at once.
        .args(["test", "--release", "--no-fail-fast"])
        .env("LEAKTRACE_BIN", &bin)
        .env("LEAKTRACE_GO_ROOTS", go_roots.join(","));
    if o.all_go {
        cmd.env("LEAKTRACE_GO_ALL", "1");
    }
    cmd.args(["--", "--show-output"]);
    if let Some(f) = &o.filter {
        cmd.arg(f);
    }
    let tests = util::run(&mut cmd);
    let leftovers = check_leftovers();
    // The fuzz targets, 30 s each (`cargo xtask fuzz` runs them longer):
    // a parser that crashes on some input fails CI like a test. Skipped
    // with a filter, which asks for particular tests.
    let fuzz = if o.filter.is_none() {
        crate::fuzz::run(&crate::fuzz::Options {
            seconds: 30,
            smoke: true,
            targets: Vec::new(),
        })
    } else {
        Ok(())
    };
    tests?;
    leftovers?;
    fuzz
}

/// `cargo fmt --check` and clippy on every target, warnings denied.
fn lint(root: &Path) -> Result<()> {
    util::run(
        util::cargo()
            .current_dir(root)
            .args(["fmt", "--all", "--check"]),
    )?;
    util::run(util::cargo().current_dir(root).args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Programs are named go_*, tokio_task and thread_*; none may stay loaded, and no
/// fixture process may outlive the suite.
fn check_leftovers() -> Result<()> {
    let mut problems = Vec::new();
    if let Ok(out) = Command::new("bpftool").args(["prog", "show"]).output() {
        let text = String::from_utf8_lossy(&out.stdout);
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| {
                [
                    "go_spawn",
                    "go_park",
                    "go_exit",
                    "go_final",
                    "tokio_task",
                    "thread_newtask",
                    "thread_rename",
                    "thread_exit",
                ]
                .iter()
                .any(|n| l.contains(n))
            })
            .collect();
        if !ours.is_empty() {
            problems.push(format!("eBPF programs still loaded: {ours:?}"));
        } else {
            eprintln!("xtask test: no leaktrace eBPF program left loaded (bpftool prog show)");
        }
    }
    if let Ok(out) = Command::new("bpftool").args(["link", "show"]).output() {
        let n = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("perf_event") || l.contains("uprobe"))
            .count();
        eprintln!("xtask test: {n} uprobe/perf_event BPF links present after the suite");
        if n > 0 {
            problems.push(format!(
                "{n} perf_event/uprobe BPF links left (bpftool link show)"
            ));
        }
    }
    let fixtures = util::target_dir().join("fixtures");
    if let Ok(out) = Command::new("pgrep")
        .args(["-f", &fixtures.display().to_string()])
        .output()
    {
        let pids = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !pids.is_empty() {
            problems.push(format!("fixture processes left running: {pids}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("the suite left things behind: {}", problems.join("; "))
    }
}
