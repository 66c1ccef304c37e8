//! `cargo xtask test`: lints, unit tests, and end-to-end tests that load the
//! real eBPF object and attach it to real Go processes. Afterwards it checks
//! that no probe and no fixture process was left behind.
use std::process::Command;

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
    /// Only tests whose name contains this.
    pub filter: Option<String>,
}

pub fn run(o: &Options) -> Result<()> {
    let installed = setup::run(&setup::Options { all_go: o.all_go })?;
    let root = util::workspace_root();
    if !o.no_lint {
        util::run(
            util::cargo()
                .current_dir(&root)
                .args(["fmt", "--all", "--check"]),
        )?;
        util::run(util::cargo().current_dir(&root).args([
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    let bin = util::build_leaktrace()?;
    let go_roots: Vec<String> = installed
        .go
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut cmd = util::cargo();
    cmd.current_dir(&root)
        // Every test binary runs even after one fails: a CI log then shows
        // every failure at once.
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
    tests?;
    leftovers
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
