//! Where reports go besides the text or JSON output: the `--pprof` and
//! `--folded` files, rewritten at each report, and the latest report of
//! each traced process for the HTTP endpoint (`serve.rs`).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cli::Args,
    report::{
        agent_metrics::{AgentStatus, agent_metrics},
        folded::folded,
        metrics::{Traced, metrics},
        model::Report,
        pprof::profile,
    },
    target::usage::own_usage,
};

pub(super) struct Exports {
    pprof: Option<PathBuf>,
    folded: Option<PathBuf>,
    pub(super) latest: Latest,
}

impl Exports {
    /// Checked before anything is attached: a file that cannot be written
    /// fails now, with the fix, not after the first interval.
    pub(super) fn new(args: &Args) -> Result<Self> {
        for path in [&args.pprof, &args.folded].into_iter().flatten() {
            let dir = parent(path);
            if !dir.is_dir() {
                bail!(
                    "cannot write {}: the directory {} does not exist; create it or choose \
                     another path",
                    path.display(),
                    dir.display()
                );
            }
        }
        Ok(Self {
            pprof: args.pprof.clone(),
            folded: args.folded.clone(),
            latest: Latest::default(),
        })
    }

    /// A process's new report: kept for the endpoint, and the files
    /// rewritten with every process's latest report. A file that cannot be
    /// written (a full disk) is said on stderr and keeps its previous
    /// report; tracing goes on, and the endpoint still serves this one.
    pub(super) fn publish(&self, report: &Report, probes_armed: usize) {
        if let Err(e) = self.try_publish(report, probes_armed) {
            eprintln!("leaktrace: warning: {e:#}; the file keeps the previous report");
        }
    }

    fn try_publish(&self, report: &Report, probes_armed: usize) -> Result<()> {
        let mut latest = self.latest.lock();
        latest.insert(
            report.target.pid,
            Entry {
                report: report.clone(),
                probes_armed: probes_armed as u64,
            },
        );
        let reports: Vec<&Report> = latest.values().map(|e| &e.report).collect();
        if let Some(path) = &self.pprof {
            write_atomic(path, &profile(&reports)?)?;
        }
        if let Some(path) = &self.folded {
            write_atomic(path, folded(&reports).as_bytes())?;
        }
        Ok(())
    }
}

struct Entry {
    report: Report,
    probes_armed: u64,
}

/// The latest report of each traced process (a final one stays until
/// leaktrace exits, except with `--all`, which forgets a process once its
/// trace ended), shared with the HTTP server's tasks; and with `--all`,
/// the agent's status.
#[derive(Clone, Default)]
pub(super) struct Latest {
    reports: Arc<Mutex<BTreeMap<u32, Entry>>>,
    agent: Arc<Mutex<Option<AgentStatus>>>,
}

impl Latest {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Entry>> {
        self.reports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `--all`: a process no longer traced leaves `/metrics` and the
    /// profiles.
    pub(super) fn forget(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    pub(super) fn set_agent(&self, status: AgentStatus) {
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    pub(super) fn metrics(&self) -> String {
        let latest = self.lock();
        let traced: Vec<Traced<'_>> = latest
            .values()
            .map(|e| Traced {
                report: &e.report,
                probes_armed: e.probes_armed,
            })
            .collect();
        let mut text = metrics(&traced);
        drop(latest);
        if let Some(status) = &*self.agent.lock().unwrap_or_else(|e| e.into_inner()) {
            text.push_str(&agent_metrics(status, own_usage()));
        }
        text
    }

    /// The goroutine profile of one process, or of all of them; `Err` says
    /// why there is none.
    pub(super) fn pprof(&self, pid: Option<u32>) -> Result<Vec<u8>, String> {
        let latest = self.lock();
        if latest.is_empty() {
            return Err("no report yet: the first comes after one report interval".into());
        }
        let reports: Vec<&Report> = match pid {
            Some(pid) => match latest.get(&pid) {
                Some(e) => vec![&e.report],
                None => {
                    let traced: Vec<String> = latest.keys().map(u32::to_string).collect();
                    return Err(format!(
                        "pid {pid} is not traced here; traced: {}",
                        traced.join(", ")
                    ));
                }
            },
            None => latest.values().map(|e| &e.report).collect(),
        };
        profile(&reports).map_err(|e| format!("{e:#}"))
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Readers never see half a file: write a temporary file beside it, then
/// rename it over the old one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent(path).join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // Nothing half-written is left behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}
