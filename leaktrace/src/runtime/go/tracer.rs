//! Go behind the seam: the probes' records keep the live table, each
//! refresh reads every goroutine in it from memory, and at attach the
//! goroutines that already existed are read from `runtime.allgs`.
use std::{io::IsTerminal, path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use leaktrace_common::{go::GoEvent, stats::slot};

use super::{
    allgs_locate::AllgsLocation,
    attach::{find_allgs, place_probes},
    binary::{GoBinary, InspectError},
    events::{decode, probe_config},
    final_walk::{ExitWay, FinalWalk, FinalWalkOptions},
    live::LiveTable,
    reader::{GoReader, PlainSites},
    stranded::StrandedCheck,
};
use crate::{
    probes::{Global, Probes, ring::decode_record},
    runtime::{
        AtExit, Attached, BudgetProbe, Counter, Description, LifetimeStats, Lifetimes, NotArmed,
        PlannedProbe, Runtime, RuntimeKind, Shown, TaskCounts, TaskView,
    },
    symbols::{Frame, debuginfo::Search},
    target::{
        clock::monotonic_ns,
        memory::Memory,
        process::{Process, load_bias},
    },
};

pub const GO: RuntimeKind = RuntimeKind {
    name: "go",
    task: "goroutine",
    tasks: "goroutines",
    ended: "exited",
    origin: "created by",
    ids: "goroutines",
    spawned: None,
};

pub struct GoRuntime {
    bin: Arc<GoBinary>,
    table: LiveTable,
    /// Set at attach, when the pid is known.
    reader: Option<GoReader>,
    /// Where a PIE is loaded, once the process really runs it.
    bias: Option<u64>,
    /// When the probes went live: what existed before is dated "at most" this.
    snapshot_ns: u64,
    /// The exit probe: the goroutines at the moment the program exits.
    final_walk: Option<FinalWalk>,
    /// Goroutines nothing can wake: partial deadlocks while the rest runs.
    stranded: StrandedCheck,
    /// The exit walk's ring size, when not its default.
    exit_ring_bytes: Option<u32>,
    /// `--detailed`: the park probe is armed (exact blocked-since times).
    detailed: bool,
    /// The overhead budget's shedding step (see [`go_budget_probes`]).
    step: u8,
    /// Walk `runtime.allgs` at the next refresh even with the spawn probe
    /// armed: it was just re-attached, and goroutines born before it was
    /// in are in no event.
    rescan_pending: bool,
    /// Goroutines created per second as the walks of `allgs` saw it (goid
    /// deltas), and the last walk's time and highest goid.
    walk_rate: Option<f64>,
    last_walk: Option<(u64, u64)>,
    /// Where `runtime.allgs` is, once looked up for those walks.
    allgs_at: Option<AllgsLocation>,
    /// Said once when a rescan of `allgs` was cut at leaktrace's bound.
    rescan_note: Option<String>,
    said_rescan_capped: bool,
}

/// What is approximate without the park probe (a macro: `concat!` takes
/// it, for the shed and the not-armed wording).
macro_rules! without_park {
    () => {
        "blocked durations are known to a refresh (≥), and a goroutine that woke and \
         blocked again at the same place between two refreshes counts as blocked since the \
         first"
    };
}

/// The Go probes the budget may shed, costliest first: park fires at every
/// block (often tens of times per goroutine), spawn and exit once per
/// goroutine each. Park is one of them only with `--detailed` (armed by
/// choice); spawn and exit are then the second step, else the first.
fn go_budget_probes(detailed: bool) -> Vec<(&'static str, BudgetProbe)> {
    let park = (
        "go_park",
        BudgetProbe {
            name: "park",
            slot: slot::GO_PARK,
            shed_at: 1,
            when_shed: concat!("park probe shed: ", without_park!()),
        },
    );
    let step = u8::from(detailed) + 1;
    let lifecycle = [
        (
            "go_spawn",
            BudgetProbe {
                name: "spawn",
                slot: slot::GO_SPAWN,
                shed_at: step,
                when_shed: "spawn and exit probes shed: goroutines are found by walking \
                            runtime.allgs at each refresh, so spawned and exited counts are \
                            lower bounds, ages are known to a refresh (≥), goroutines shorter \
                            than a refresh are unseen and lifetimes are not recorded",
            },
        ),
        (
            "go_exit",
            BudgetProbe {
                name: "exit",
                slot: slot::GO_EXIT,
                shed_at: step,
                when_shed: "",
            },
        ),
    ];
    detailed
        .then_some(park)
        .into_iter()
        .chain(lifecycle)
        .collect()
}

impl GoRuntime {
    pub fn open(path: &Path, debug: &Search) -> Result<Self, InspectError> {
        let bin = GoBinary::open_with(path, debug)?;
        Ok(Self {
            stranded: StrandedCheck::new(&bin),
            bin: Arc::new(bin),
            table: LiveTable::default(),
            reader: None,
            bias: None,
            snapshot_ns: 0,
            final_walk: None,
            exit_ring_bytes: None,
            detailed: false,
            step: 0,
            rescan_pending: false,
            walk_rate: None,
            last_walk: None,
            allgs_at: None,
            rescan_note: None,
            said_rescan_capped: false,
        })
    }

    /// The exit walk's ring takes `bytes` (the host agent's budget).
    pub fn with_exit_ring(self, bytes: Option<u32>) -> Self {
        Self {
            exit_ring_bytes: bytes,
            ..self
        }
    }

    /// `--detailed`: arm the park probe too.
    pub fn with_detailed(self, detailed: bool) -> Self {
        Self { detailed, ..self }
    }

    /// The budget has shed the spawn probe: goroutines are found in allgs.
    fn spawn_shed(&self) -> bool {
        go_budget_probes(self.detailed)
            .iter()
            .any(|(_, p)| p.name == "spawn" && self.step >= p.shed_at)
    }

    /// The load bias, found once the process runs the binary (with `-c`,
    /// not before its exec).
    fn locate(&mut self, pid: u32) -> Option<u64> {
        if self.bias.is_none() {
            self.bias = bias_of(pid, &self.bin);
            if let (Some(b), Some(reader)) = (self.bias, self.reader.as_mut()) {
                reader.set_bias(b);
            }
        }
        self.bias
    }
}

impl Runtime for GoRuntime {
    fn kind(&self) -> RuntimeKind {
        GO
    }

    fn describe(&self) -> Description {
        Description {
            version: self.bin.version.raw.clone(),
            symbols: self.bin.symbol_source(),
        }
    }

    fn probe_globals(&self) -> Vec<Global> {
        vec![Global::of("GO_CONFIG", &probe_config(&self.bin.layout))]
    }

    fn plan(&self) -> Result<Vec<PlannedProbe>> {
        Ok(place_probes(&self.bin, self.detailed)?.probes)
    }

    fn attach(&mut self, probes: &mut Probes, exe: &Path, pid: u32) -> Result<Attached> {
        let placement = place_probes(&self.bin, self.detailed)?;
        for program in ["go_spawn", "go_park", "go_exit"] {
            let points: Vec<_> = placement
                .probes
                .iter()
                .filter(|p| p.program == program)
                .map(|p| p.point.clone())
                .collect();
            if points.is_empty() {
                // go_park without --detailed.
                continue;
            }
            probes.attach(program, &points, exe, pid)?;
        }
        let mut reader = GoReader::new(self.bin.clone(), pid, 0);
        // No park probe by default: the refreshes date blocks (≥).
        reader.parks_by_memory = !self.detailed;
        self.reader = Some(reader);
        self.snapshot_ns = monotonic_ns();
        let mut warnings = self.bin.warnings();
        warnings.extend(placement.warnings);
        if !self.detailed {
            warnings.push(
                concat!(
                    "go: parks are not probed (--detailed probes each one for exact blocked-since \
                     times): ",
                    without_park!()
                )
                .to_string(),
            );
        }
        // Before a `-c` child runs, like the other probes.
        let mut walk_options = FinalWalkOptions::default();
        if let Some(bytes) = self.exit_ring_bytes {
            walk_options.ring_bytes = bytes;
        }
        match find_allgs(&self.bin)
            .and_then(|at| FinalWalk::attach(&self.bin, exe, pid, &at, walk_options))
        {
            Ok(walk) => self.final_walk = Some(walk),
            Err(e) => warnings.push(format!(
                "no goroutine snapshot at exit ({e:#}): a final report after the program exits \
                 shows the last refresh"
            )),
        }
        Ok(Attached {
            warnings,
            detail: None,
        })
    }

    fn record_size(&self) -> usize {
        size_of::<GoEvent>()
    }

    fn apply(&mut self, record: &[u8]) {
        if let Some(ev) = decode_record::<GoEvent>(record).and_then(|ev| decode(&ev)) {
            self.table.apply(&ev);
        }
    }

    fn snapshot(&mut self, pid: u32) -> Result<Option<String>> {
        self.locate(pid)
            .context("the process does not run the binary leaktrace inspected")?;
        let at = find_allgs(&self.bin)?;
        let reader = self.reader.as_mut().context("snapshot before attach")?;
        let show_progress = std::io::stderr().is_terminal();
        if show_progress {
            crate::say_partial!(
                "reading existing goroutines from runtime.allgs ({})…\r",
                at.how
            );
        }
        let (n, capped) = reader.snapshot(&at, pid, &mut self.table)?;
        if show_progress {
            crate::say_partial!("\x1b[2K");
        }
        let existed = format!(
            "{n} goroutines (the runtime's included) existed at attach: their blocked \
             durations are lower bounds (≥)"
        );
        Ok(Some(match capped {
            Some(c) => format!("{existed}; {c}"),
            None => existed,
        }))
    }

    fn refresh(
        &mut self,
        probes: &mut Probes,
        pid: u32,
        views: &mut Vec<TaskView>,
    ) -> Result<bool> {
        if self.locate(pid).is_none() {
            return Ok(false);
        }
        let walk_allgs = self.spawn_shed() || std::mem::take(&mut self.rescan_pending);
        let Some(reader) = self.reader.as_mut() else {
            return Ok(false);
        };
        if walk_allgs {
            // No spawn probe: new goroutines are found in allgs.
            let at = match self.allgs_at.take() {
                Some(at) => at,
                None => find_allgs(&self.bin)?,
            };
            let walk = reader.rescan(&at, pid, &mut self.table);
            self.allgs_at = Some(at);
            let walk = walk?;
            if let Some(note) = &walk.note
                && !std::mem::replace(&mut self.said_rescan_capped, true)
            {
                self.rescan_note = Some(note.clone());
            }
            let now = monotonic_ns();
            if let Some((then, goid)) = self.last_walk
                && now > then
            {
                let created = walk.max_goid.saturating_sub(goid) as f64;
                self.walk_rate = Some(created / ((now - then) as f64 / 1e9));
            }
            self.last_walk = Some((now, walk.max_goid));
        }
        reader.views(&mut self.table, self.snapshot_ns, views);
        update_plain_sites(probes, reader.plain_sites(&self.table));
        let bias = self.bias.unwrap_or(0);
        self.stranded
            .apply(&Memory::new(pid), bias, &self.bin, views, monotonic_ns());
        Ok(true)
    }

    fn counts(&self) -> TaskCounts {
        // Parks are counted by the park probe only (`--detailed`): without
        // it there is no count, rather than a zero.
        let mut extra: Vec<Counter> = self
            .detailed
            .then_some(Counter {
                name: "park",
                label: "parks",
                value: self.table.counts.park,
                shown: Shown::Headline,
            })
            .into_iter()
            .collect();
        if self.table.found > 0 {
            extra.push(Counter {
                name: "found",
                label: "goroutines found by walking allgs (spawn probe shed)",
                value: self.table.found,
                shown: Shown::Detail,
            });
        }
        TaskCounts {
            spawn: self.table.counts.spawn,
            exit: self.table.counts.exit,
            corrected: self.table.corrected,
            extra,
        }
    }

    fn budget_probes(&self) -> Vec<BudgetProbe> {
        go_budget_probes(self.detailed)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    fn not_armed(&self) -> Vec<NotArmed> {
        if self.detailed {
            return Vec::new();
        }
        vec![NotArmed {
            name: "park",
            armed_by: "--detailed",
            approximate: without_park!(),
        }]
    }

    fn shed(&mut self, probes: &mut Probes, step: u8) -> Result<()> {
        if self.detailed && step >= 1 && self.step == 0 {
            self.table.parks_become_bounds();
        }
        let mut shed = Vec::new();
        for (program, p) in go_budget_probes(self.detailed) {
            let was = self.step >= p.shed_at;
            let now = step >= p.shed_at;
            if now && !was {
                shed.push(program);
            } else if was && !now {
                probes.reattach_program(program)?;
                if p.name == "spawn" {
                    self.rescan_pending = true;
                }
            }
        }
        probes.detach_programs(&shed);
        self.step = step;
        if !self.spawn_shed() {
            self.walk_rate = None;
            self.last_walk = None;
        }
        if let Some(reader) = self.reader.as_mut() {
            reader.parks_by_memory = !self.detailed || step >= 1;
        }
        Ok(())
    }

    fn memory_rates(&self) -> Vec<(&'static str, f64)> {
        // Every goroutine created also exits, in the long run: the walks
        // count creations (goid deltas) and the exit rate follows them.
        self.walk_rate
            .map(|r| vec![("spawn", r), ("exit", r)])
            .unwrap_or_default()
    }

    fn take_notes(&mut self) -> Vec<String> {
        self.reader
            .as_mut()
            .and_then(GoReader::take_chan_note)
            .into_iter()
            .chain(self.stranded.take_note())
            .chain(self.rescan_note.take())
            .collect()
    }

    fn at_exit(&mut self) -> Option<AtExit> {
        let mut snap = self.final_walk.as_mut()?.take()?;
        snap.symbolize(&self.bin);
        // A fatal signal, or runtime.exit reached from a fatal panic or
        // runtime error: the exiting goroutine's stack says so, or, when the
        // scheduler itself gave up (all goroutines asleep, no goroutine
        // current), the status 2 Go exits with after a fatal error.
        let crashed = matches!(
            snap.exit,
            ExitWay::Signal { .. } | ExitWay::Exit { code: 2 }
        ) || snap.goroutines.iter().filter(|g| g.is_current()).any(|g| {
            g.frames.iter().any(|f| {
                matches!(
                    &*f.function,
                    "runtime.fatalpanic" | "runtime.fatalthrow" | "runtime.throw" | "runtime.fatal"
                )
            })
        });
        let mut views = snap.views(&self.bin, Some(&self.table));
        // Who called a spawn helper is known from the spawn events only.
        if let Some(reader) = self.reader.as_mut() {
            for v in &mut views {
                if let Some(task) = self.table.get(v.key).filter(|t| t.id == 0 || t.id == v.id) {
                    let origin = self.table.origin(task);
                    let via = reader.via_of(origin, origin.created_pc, &v.place.created_by);
                    Arc::make_mut(&mut v.place).via = via;
                }
            }
        }
        Some(AtExit {
            views,
            note: snap.summary(),
            crashed,
        })
    }

    fn lifetimes(&self) -> Vec<(Frame, Lifetimes)> {
        let Some(reader) = self.reader.as_ref() else {
            return Vec::new();
        };
        // Several gopcs can be one source line (inlining); merge by frame.
        let mut by_site: std::collections::HashMap<Frame, LifetimeStats> = Default::default();
        for (gopc, stats) in self.table.lifetimes() {
            by_site
                .entry(reader.created_by(gopc))
                .or_default()
                .merge(stats);
        }
        by_site.into_iter().map(|(f, s)| (f, s.summary())).collect()
    }
}

/// Tell the spawn probe which `go` statements it may stop walking. A full
/// map or a failed update only costs walks, never data.
fn update_plain_sites(probes: &mut Probes, changes: PlainSites) {
    if changes.add.is_empty() && changes.remove.is_empty() {
        return;
    }
    let Some(map) = probes.ebpf_mut().map_mut("GO_PLAIN_SITES") else {
        return;
    };
    let Ok(mut map) = aya::maps::HashMap::<_, u64, u64>::try_from(map) else {
        return;
    };
    for gopc in changes.remove {
        let _ = map.remove(&gopc);
    }
    for gopc in changes.add {
        let _ = map.insert(gopc, 1, 0);
    }
}

/// Where a PIE is loaded, once the process really runs it.
fn bias_of(pid: u32, bin: &GoBinary) -> Option<u64> {
    let proc = Process::open(pid).ok()?;
    if !proc.runs(&bin.path) {
        return None;
    }
    if !bin.is_pie {
        return Some(0);
    }
    load_bias(&proc.exe_mappings().ok()?, &bin.elf.load_segments())
}
