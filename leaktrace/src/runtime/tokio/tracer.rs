//! tokio tasks as the rest of leaktrace sees them: every refresh scans the
//! target's heap for live task cells (read-only, the process never stops)
//! and turns each into a [`TaskView`].
//!
//! No probes yet: spawn and completion are seen as differences between
//! scans, so a task's age is known to within one refresh, and tasks that live
//! shorter than that are never seen. Reports say so.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};

use super::{
    binary::{RustBinary, TokioError, detect},
    heap_scan::{cell_align, exe_load_bias, scan},
};
use crate::{
    runtime::{Since, TaskView},
    symbols::Frame,
    target::{elf::ElfFile, process::Process},
};

pub struct TokioTracer {
    pub bin: RustBinary,
    elf: ElfFile,
    path: PathBuf,
    /// Task id → when a scan first saw it, and whether that was the first
    /// scan (so the task may be older).
    first_seen: HashMap<u64, (u64, bool)>,
    scans: u64,
    /// Where the program is loaded; found once, it never moves.
    bias: Option<u64>,
    /// Task cells rejected as torn or moved during the last scan.
    pub last_unstable: usize,
}

impl TokioTracer {
    pub fn open(path: &Path) -> Result<Self, TokioError> {
        let elf = ElfFile::open(path)
            .map_err(|e| TokioError::NotTokio(format!("cannot read {}: {e}", path.display())))?;
        let bin = detect(&elf)?;
        Ok(Self {
            bin,
            elf,
            path: path.to_path_buf(),
            first_seen: HashMap::new(),
            scans: 0,
            bias: None,
            last_unstable: 0,
        })
    }

    pub fn version(&self) -> String {
        let tokio = self.bin.tokio_version.map_or_else(
            || "tokio (version unknown)".to_string(),
            |v| format!("tokio {v}"),
        );
        match &self.bin.rustc {
            Some(rustc) => format!("{tokio}, {}", rustc.trim_start_matches("rustc version ")),
            None => tokio,
        }
    }

    pub fn symbol_source(&self) -> &'static str {
        if self.bin.has_dwarf {
            "dwarf"
        } else if self.bin.has_symtab {
            "symtab"
        } else {
            "none"
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        let mut w = vec![
            "tokio: tasks are found by scanning the heap at each refresh (no probes yet): a \
             task's age is known to within one refresh, and tasks shorter than that are not seen"
                .to_string(),
        ];
        w.extend(self.bin.naming_warning());
        w.extend(self.bin.version_note());
        w
    }

    /// Every live task now.
    pub fn views(&mut self, pid: u32, now_ns: u64) -> Result<Vec<TaskView>> {
        let bias = match self.bias {
            Some(b) => b,
            None => {
                let proc = Process::open(pid)?;
                if !proc.runs(&self.path) {
                    bail!("process {pid} is not running {} (yet)", self.path.display());
                }
                let b =
                    exe_load_bias(pid, &self.elf).context("finding where the program is loaded")?;
                *self.bias.insert(b)
            }
        };
        let align = cell_align(self.bin.tokio_version);
        let heap =
            scan(pid, &self.bin.vtables, bias, align).context("scanning the heap for tasks")?;
        let first_scan = self.scans == 0;
        self.scans += 1;
        self.last_unstable = heap.unstable;
        let mut seen = HashMap::with_capacity(heap.tasks.len());
        let mut views = Vec::with_capacity(heap.tasks.len());
        for task in &heap.tasks {
            let (t, at_first_scan) = *self
                .first_seen
                .get(&task.id)
                .unwrap_or(&(now_ns, first_scan));
            seen.insert(task.id, (t, at_first_scan));
            let since = if at_first_scan {
                Since::AtMost(t)
            } else {
                Since::Exact(t)
            };
            let vtable = &self.bin.vtables[task.vtable];
            let name = Frame {
                function: vtable.display_name().into(),
                file: "".into(),
                line: 0,
            };
            let state = task.state.task_state();
            views.push(TaskView {
                key: task.header,
                id: task.id,
                never_ends: task.state.lost_waker(),
                // Blocking-pool tasks: the runtime's, and not what
                // num_alive_tasks() counts.
                system: !task.counted_by_tokio(),
                created_by: name.clone(),
                start: name,
                stack: Arc::from(Vec::new()),
                blocked_at: None,
                blocked_since: state.is_waiting().then_some(since),
                alive_since: since,
                state,
                stack_unstable: false,
            });
        }
        self.first_seen = seen;
        Ok(views)
    }
}
