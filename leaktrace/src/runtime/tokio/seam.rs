//! tokio behind the seam: probes for spawn, completion and cancellation
//! (plus polls and wakes with `--detailed`) keep the tracer's table; each
//! refresh re-reads the known task headers, and heap scans find what the
//! probes cannot see (which is also how tasks alive at attach are found).
use std::path::Path;

use anyhow::Result;
use leaktrace_common::{
    stats::slot,
    tokio::{TokioEvent, TokioEventKind},
};

use super::{binary::TokioError, spawn_sites::SpawnSites, tracer::TokioTracer};
use crate::{
    probes::{Global, Probes, ring::decode_record},
    runtime::{
        Attached, BudgetProbe, Counter, Description, Lifetimes, NotArmed, Options, PlannedProbe,
        Runtime, RuntimeKind, Shown, TaskCounts, TaskView,
    },
    symbols::Frame,
    target::clock::monotonic_ns,
};

pub const TOKIO: RuntimeKind = RuntimeKind {
    name: "rust-tokio",
    task: "task",
    tasks: "tasks",
    ended: "completed",
    origin: "future",
    ids: "task ids",
    spawned: Some("spawned by"),
};

pub struct TokioRuntime {
    tracer: TokioTracer,
    options: Options,
    /// The attached plan probes polls (so poll/wake counts mean something).
    polls: bool,
    /// The probes know the vtables' run-time addresses (known once the
    /// program is mapped); until then they stay silent.
    armed: bool,
}

impl TokioRuntime {
    pub fn open(path: &Path, options: Options) -> Result<Self, TokioError> {
        Ok(Self {
            tracer: TokioTracer::open_with(path, &options.debuginfo)?,
            options,
            polls: false,
            armed: false,
        })
    }

    /// Tell the probes which vtables are tasks' (run-time addresses).
    fn arm(&mut self, probes: &mut Probes, pid: u32) -> Result<()> {
        if !self.armed
            && let Some(vtables) = self.tracer.arm(pid)?
        {
            probes.fill_hash_map("TOKIO_VTABLES", &vtables)?;
            self.armed = true;
        }
        Ok(())
    }
}

fn event_name(cookie: u64) -> &'static str {
    match TokioEventKind::from_raw(cookie as u8) {
        Some(TokioEventKind::Spawn) => "spawn",
        Some(TokioEventKind::Complete) => "complete",
        Some(TokioEventKind::Shutdown) => "shutdown",
        Some(TokioEventKind::Poll) => "poll",
        Some(TokioEventKind::Wake) => "wake",
        None => "unknown",
    }
}

impl Runtime for TokioRuntime {
    fn kind(&self) -> RuntimeKind {
        TOKIO
    }

    fn describe(&self) -> Description {
        Description {
            version: self.tracer.version(),
            symbols: self.tracer.symbol_source(),
        }
    }

    fn probe_globals(&self) -> Vec<Global> {
        Vec::new()
    }

    fn plan(&self) -> Result<Vec<PlannedProbe>> {
        Ok(self
            .tracer
            .plan(self.options.detailed)
            .points
            .into_iter()
            .map(|point| PlannedProbe {
                program: "tokio_task",
                event: event_name(point.cookie),
                point,
                function: None,
            })
            .collect())
    }

    fn attach(&mut self, probes: &mut Probes, exe: &Path, pid: u32) -> Result<Attached> {
        let plan = self.tracer.plan(self.options.detailed);
        probes.attach("tokio_task", &plan.points, exe, pid)?;
        self.tracer.sites = Some(SpawnSites::attach(probes)?);
        self.tracer.probes_attached(&plan, monotonic_ns());
        self.polls = plan.polls;
        let mut warnings = self.tracer.warnings();
        warnings.extend(plan.notes.iter().cloned());
        Ok(Attached {
            warnings,
            detail: Some(format!("{} task types", self.tracer.bin.vtables.len())),
        })
    }

    fn record_size(&self) -> usize {
        size_of::<TokioEvent>()
    }

    fn apply(&mut self, record: &[u8]) {
        if let Some(ev) = decode_record::<TokioEvent>(record) {
            self.tracer.apply(&ev);
        }
    }

    /// Tasks alive at attach are found by the first refresh's heap scan.
    fn snapshot(&mut self, _pid: u32) -> Result<Option<String>> {
        Ok(None)
    }

    fn refresh(
        &mut self,
        probes: &mut Probes,
        pid: u32,
        views: &mut Vec<TaskView>,
    ) -> Result<bool> {
        self.arm(probes, pid)?;
        *views = self.tracer.views(pid, monotonic_ns())?;
        Ok(true)
    }

    fn counts(&self) -> TaskCounts {
        let t = self.tracer.totals;
        let mut extra = Vec::new();
        if self.polls {
            extra.push(Counter {
                name: "poll",
                label: "polls",
                value: t.poll,
                shown: Shown::Detail,
            });
            extra.push(Counter {
                name: "wake",
                label: "wakes",
                value: t.wake,
                shown: Shown::Detail,
            });
        }
        extra.push(Counter {
            name: "shutdown",
            label: "cancelled",
            value: t.shutdown,
            shown: Shown::JsonOnly,
        });
        if let Some(sites) = &self.tracer.sites {
            // What naming spawn sites costs leaktrace (never the target's
            // time): stacks unwound, their total unwind time, stacks lost.
            for (name, value) in [
                ("spawn_stacks", sites.unwound),
                (
                    "spawn_unwind_ns",
                    sites.unwind_time.as_nanos().min(u128::from(u64::MAX)) as u64,
                ),
                ("spawn_stacks_lost", sites.lost()),
            ] {
                extra.push(Counter {
                    name,
                    label: name,
                    value,
                    shown: Shown::JsonOnly,
                });
            }
        }
        TaskCounts {
            spawn: t.spawn,
            exit: t.complete,
            corrected: t.corrected,
            extra,
        }
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.tracer.notes)
    }

    /// Counted and estimated, never shed: one program serves every tokio
    /// point (the cookie says which event), so shedding polls and wakes
    /// would need links of their own (not done yet).
    fn budget_probes(&self) -> Vec<BudgetProbe> {
        let detailed = [
            ("poll", TokioEventKind::Poll),
            ("wake", TokioEventKind::Wake),
        ];
        [
            ("spawn", TokioEventKind::Spawn),
            ("complete", TokioEventKind::Complete),
            ("shutdown", TokioEventKind::Shutdown),
        ]
        .into_iter()
        .chain(detailed.into_iter().filter(|_| self.options.detailed))
        .map(|(name, kind)| BudgetProbe {
            name,
            slot: slot::TOKIO_BASE + (kind as u32 & 7),
            shed_at: 0,
            when_shed: "",
        })
        .collect()
    }

    fn not_armed(&self) -> Vec<NotArmed> {
        if self.options.detailed {
            return Vec::new();
        }
        ["poll", "wake"]
            .map(|name| NotArmed {
                name,
                armed_by: "--detailed",
                approximate: "idle durations are known to a refresh (≥)",
            })
            .to_vec()
    }

    fn lifetimes(&self) -> Vec<(Frame, Lifetimes)> {
        self.tracer.lifetimes()
    }
}
