//! Go's table of live goroutines, fed by probe events and the attach-time
//! snapshot, refreshed from memory by the reader.
use std::collections::{HashMap, HashSet};

use super::events::{TaskEvent, TaskEventKind};
use crate::runtime::LifetimeStats;

/// What we know about one live task without reading the target's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveTask {
    pub key: u64,
    /// 0 until a park/exit event or a memory read tells us.
    pub id: u64,
    /// 0 when not known yet (the reader fills it from memory).
    pub created_pc: u64,
    pub start_pc: u64,
    pub parent_id: u64,
    /// Return addresses of the creator's callers at the `go` statement
    /// (see `GoEvent::via_pcs`); zeros when not seen (snapshot, or the
    /// chain could not be followed).
    pub via_pcs: [u64; 2],
    /// None: the task existed before leaktrace attached.
    pub spawned_ns: Option<u64>,
    /// Last park seen by a probe.
    pub parked_ns: Option<u64>,
    /// A memory read found the task finished but its exit event has not
    /// arrived yet; if it is still like this at the next refresh, it is
    /// dropped as a correction.
    pub seen_dead: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub spawn: u64,
    pub park: u64,
    pub exit: u64,
}

#[derive(Debug, Default)]
pub struct LiveTable {
    tasks: HashMap<u64, LiveTask>,
    pub counts: EventCounts,
    /// Tasks a memory read found dead although no exit event arrived (lost
    /// events or a path the probes do not cover); removed and counted.
    pub corrected: u64,
    /// How long the goroutines that finished lived, per `go` statement
    /// (gopc), for those seen from spawn to exit.
    lifetimes: HashMap<u64, LifetimeStats>,
    /// Per `go` statement (gopc), from every spawn since attach, exited
    /// goroutines included: how many, and the distinct creator callers
    /// seen. What tells a spawn helper (one `go` statement, many callers)
    /// from a plain `go`.
    sites: HashMap<u64, SiteSpawns>,
    /// (gopc, callers) pairs not seen before, for the reader to symbolize.
    new_callers: Vec<(u64, [u64; 2])>,
}

/// Creation sites whose lifetimes are kept; a program with more distinct
/// `go` statements than this is not judged on lifetimes for the rest.
const MAX_LIFETIME_SITES: usize = 8192;
#[derive(Debug, Default)]
struct SiteSpawns {
    spawns: u64,
    callers: HashSet<[u64; 2]>,
}

/// Distinct caller pairs kept per `go` statement: two distinct callers
/// already make a helper; the rest only guard against one caller reached
/// through many paths.
const MAX_CALLERS_PER_SITE: usize = 64;

impl LiveTable {
    /// Events must be applied in ring order: for one key, spawn < park… <
    /// exit < (reuse) spawn, which the ring buffer's reservation order keeps.
    pub fn apply(&mut self, ev: &TaskEvent) {
        match ev.kind {
            TaskEventKind::Spawn {
                created_pc,
                start_pc,
                parent_id,
                via_pcs,
            } => {
                self.counts.spawn += 1;
                if created_pc != 0 {
                    self.note_spawn(created_pc, via_pcs);
                }
                self.tasks.insert(
                    ev.key,
                    LiveTask {
                        key: ev.key,
                        id: ev.id,
                        created_pc,
                        start_pc,
                        parent_id,
                        via_pcs,
                        spawned_ns: Some(ev.ts_ns),
                        parked_ns: None,
                        seen_dead: false,
                    },
                );
            }
            TaskEventKind::Park { .. } => {
                self.counts.park += 1;
                // A task spawned before attach and missed by the snapshot
                // still shows up here; the reader fills in its origin.
                let task = self.tasks.entry(ev.key).or_insert_with(|| LiveTask {
                    key: ev.key,
                    ..LiveTask::default()
                });
                if ev.id != 0 {
                    task.id = ev.id;
                }
                task.parked_ns = Some(ev.ts_ns);
            }
            TaskEventKind::Exit => {
                self.counts.exit += 1;
                if let Some(task) = self.tasks.remove(&ev.key)
                    && let Some(born) = task.spawned_ns
                    && task.created_pc != 0
                {
                    let full = self.lifetimes.len() >= MAX_LIFETIME_SITES;
                    if let Some(stats) = match self.lifetimes.get_mut(&task.created_pc) {
                        Some(s) => Some(s),
                        None if !full => Some(self.lifetimes.entry(task.created_pc).or_default()),
                        None => None,
                    } {
                        stats.record(ev.ts_ns.saturating_sub(born));
                    }
                }
            }
        }
    }

    fn note_spawn(&mut self, gopc: u64, via_pcs: [u64; 2]) {
        let full = self.sites.len() >= MAX_LIFETIME_SITES;
        let site = match self.sites.get_mut(&gopc) {
            Some(s) => s,
            None if !full => self.sites.entry(gopc).or_default(),
            None => return,
        };
        site.spawns += 1;
        if via_pcs[0] != 0
            && site.callers.len() < MAX_CALLERS_PER_SITE
            && site.callers.insert(via_pcs)
        {
            self.new_callers.push((gopc, via_pcs));
        }
    }

    /// Goroutines started per `go` statement since attach.
    pub fn spawns_by_site(&self) -> impl Iterator<Item = (u64, u64)> {
        self.sites.iter().map(|(&gopc, s)| (gopc, s.spawns))
    }

    /// Caller pairs seen for the first time since the last call.
    pub fn take_new_callers(&mut self) -> Vec<(u64, [u64; 2])> {
        std::mem::take(&mut self.new_callers)
    }

    /// A task found in the target's memory at attach. Probe events that
    /// arrived meanwhile win: they are newer.
    pub fn insert_existing(&mut self, task: LiveTask) {
        self.tasks.entry(task.key).or_insert(task);
    }

    /// Forget a task a memory read found finished.
    pub fn remove_dead(&mut self, key: u64) {
        if self.tasks.remove(&key).is_some() {
            self.corrected += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn tasks_mut(&mut self) -> impl Iterator<Item = &mut LiveTask> {
        self.tasks.values_mut()
    }

    pub fn get(&self, key: u64) -> Option<&LiveTask> {
        self.tasks.get(&key)
    }

    /// Lifetimes of finished goroutines by `go` statement (gopc).
    pub fn lifetimes(&self) -> impl Iterator<Item = (u64, &LifetimeStats)> {
        self.lifetimes.iter().map(|(&pc, s)| (pc, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, key: u64, id: u64, kind: TaskEventKind) -> TaskEvent {
        TaskEvent {
            ts_ns: ts,
            key,
            id,
            kind,
        }
    }
    const SPAWN: TaskEventKind = TaskEventKind::Spawn {
        created_pc: 0x10,
        start_pc: 0x20,
        parent_id: 1,
        via_pcs: [0x30, 0x40],
    };

    #[test]
    fn lifecycle_and_reuse_of_a_g() {
        let mut t = LiveTable::default();
        t.apply(&ev(1, 0xa, 0, SPAWN));
        t.apply(&ev(2, 0xa, 7, TaskEventKind::Park { reason: 15 }));
        assert_eq!(t.get(0xa).unwrap().id, 7);
        assert_eq!(t.get(0xa).unwrap().parked_ns, Some(2));
        t.apply(&ev(3, 0xa, 7, TaskEventKind::Exit));
        assert!(t.is_empty());
        // The runtime reuses the g for a new goroutine.
        t.apply(&ev(4, 0xa, 0, SPAWN));
        assert_eq!(t.get(0xa).unwrap().spawned_ns, Some(4));
        assert_eq!(t.get(0xa).unwrap().parked_ns, None);
        assert_eq!(
            t.counts,
            EventCounts {
                spawn: 2,
                park: 1,
                exit: 1
            }
        );
    }

    #[test]
    fn distinct_callers_are_reported_once_each() {
        let mut t = LiveTable::default();
        let spawn = |via_pcs| TaskEventKind::Spawn {
            created_pc: 0x10,
            start_pc: 0x20,
            parent_id: 1,
            via_pcs,
        };
        t.apply(&ev(1, 0xa, 0, spawn([0x30, 0x40])));
        t.apply(&ev(2, 0xb, 0, spawn([0x30, 0x40])));
        t.apply(&ev(3, 0xc, 0, spawn([0x50, 0])));
        t.apply(&ev(4, 0xd, 0, spawn([0, 0])));
        assert_eq!(
            t.take_new_callers(),
            vec![(0x10, [0x30, 0x40]), (0x10, [0x50, 0])]
        );
        assert_eq!(t.get(0xc).unwrap().via_pcs, [0x50, 0]);
        t.apply(&ev(5, 0xe, 0, spawn([0x50, 0])));
        assert!(t.take_new_callers().is_empty());
        assert_eq!(t.spawns_by_site().collect::<Vec<_>>(), vec![(0x10, 5)]);
    }

    #[test]
    fn snapshot_never_overrides_newer_probe_data() {
        let mut t = LiveTable::default();
        t.apply(&ev(5, 0xb, 0, SPAWN));
        t.insert_existing(LiveTask {
            key: 0xb,
            id: 99,
            ..LiveTask::default()
        });
        assert_eq!(t.get(0xb).unwrap().spawned_ns, Some(5));
        t.insert_existing(LiveTask {
            key: 0xc,
            id: 3,
            ..LiveTask::default()
        });
        assert_eq!(t.len(), 2);
        t.remove_dead(0xc);
        t.remove_dead(0xc);
        assert_eq!(t.corrected, 1);
    }
}
