//! Running the tokio fixture (`tests/fixtures/rust`, built by
//! [`crate::tokio_fixture`]) and reading the ground truth it prints: its pid
//! first, then `alive_tasks N` (`num_alive_tasks()`) once its leaks are in
//! place.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A tokio fixture process, killed when dropped.
pub struct TokioProcess {
    child: Child,
    pub pid: u32,
    /// What the runtime itself counts: `num_alive_tasks()`.
    pub alive_tasks: usize,
}

impl Drop for TokioProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TokioProcess {
    /// `tokio-fixture MODE N 120`, returned once it printed its ground
    /// truth.
    pub fn start(bin: &Path, mode: &str, n: usize) -> Self {
        Self::start_with(bin, mode, n, |_| {})
    }

    /// [`TokioProcess::start`], calling `during` once the pid is known (the
    /// fixture's active phase is running then).
    pub fn start_with(bin: &Path, mode: &str, n: usize, during: impl FnOnce(u32)) -> Self {
        let mut child = Command::new(bin)
            .args([mode, &n.to_string(), "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fixture");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let next = |what: &str| {
            rx.recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("fixture {mode}: no {what} line ({e})"))
        };
        let first = next("pid");
        let pid: u32 = first
            .strip_prefix("pid ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("fixture {mode}: first line {first:?}"));
        assert_eq!(pid, child.id());
        let mut running = TokioProcess {
            child,
            pid,
            alive_tasks: usize::MAX,
        };
        during(pid);
        loop {
            let line = next("alive_tasks");
            if let Some(a) = line.strip_prefix("alive_tasks ") {
                running.alive_tasks = a.trim().parse().expect("alive_tasks count");
                return running;
            }
        }
    }
}

/// The 1-based line of the only line of the fixture's `src/main.rs` that
/// contains `needle`.
pub fn tokio_fixture_line(needle: &str) -> u32 {
    let src = crate::build::tokio_fixture_dir().join("src/main.rs");
    let text = std::fs::read_to_string(&src).expect("fixture source");
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{needle:?} in {}: lines {hits:?}",
        src.display()
    );
    hits[0] as u32
}
