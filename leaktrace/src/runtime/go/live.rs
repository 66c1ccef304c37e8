//! Go's table of live goroutines, fed by probe events and the attach-time
//! snapshot, refreshed from memory by the reader.
use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
};

use hashbrown::HashTable;

use super::events::{TaskEvent, TaskEventKind};
use crate::runtime::LifetimeStats;

/// What we know about one live task without reading the target's memory:
/// one small fixed row per goroutine (no heap object of its own), since a
/// program may have a million of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveTask {
    /// The g's address; 0 marks a free row.
    pub key: u64,
    /// 0 until a park/exit event or a memory read tells us.
    pub id: u64,
    /// 0: the task existed before leaktrace attached.
    spawned_ns: u64,
    /// Last park seen by a probe; 0: none.
    parked_ns: u64,
    /// The reader's note of the last validated stack walk (see
    /// `GoReader`): a digest of what it was read from, and the walk's
    /// number; 0 when none.
    pub walk_digest: u64,
    pub walk: u32,
    /// Where it came from, an [`Origin`] of the table (0 when not seen:
    /// the snapshot reads the `go` statement from memory instead), in the
    /// low bits ([`ORIGIN`]), and the flags above: the row stays 48 bytes
    /// (56 with three `bool`s; a million goroutines, 8 MB more).
    origin_flags: u32,
}

/// The origin's number in `origin_flags` (`MAX_ORIGINS` fits).
const ORIGIN: u32 = (1 << 24) - 1;
/// A memory read found the task finished but its exit event has not
/// arrived yet; if it is still like this at the next refresh, it is
/// dropped as a correction.
const SEEN_DEAD: u32 = 1 << 29;
/// `spawned_ns` is when a walk of `runtime.allgs` first found it (the
/// spawn probe was shed by the overhead budget): born at most then.
const SPAWN_BOUND: u32 = 1 << 30;
/// `parked_ns` is when a refresh first saw it blocked where it is (the
/// park probe was shed): blocked at most since then.
const PARK_BOUND: u32 = 1 << 31;

/// A task's `go` statement (gopc) and the return addresses of the
/// creator's callers there (see `GoEvent::via_pcs`; zeros when not seen or
/// the chain could not be followed). Interned: a program has few distinct
/// ones, and a row keeps only their number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Origin {
    pub created_pc: u64,
    pub via_pcs: [u64; 2],
}

impl LiveTask {
    /// A task found in memory (the attach-time snapshot).
    pub fn existing(key: u64, id: u64) -> Self {
        Self {
            key,
            id,
            ..Self::default()
        }
    }

    /// A task a walk of `runtime.allgs` found at `now_ns`, while no spawn
    /// probe was armed.
    pub fn found(key: u64, id: u64, now_ns: u64) -> Self {
        Self {
            key,
            id,
            spawned_ns: now_ns.max(1),
            origin_flags: SPAWN_BOUND,
            ..Self::default()
        }
    }

    fn flag(&self, f: u32) -> bool {
        self.origin_flags & f != 0
    }

    fn set_flag(&mut self, f: u32, on: bool) {
        if on {
            self.origin_flags |= f;
        } else {
            self.origin_flags &= !f;
        }
    }

    fn origin(&self) -> u32 {
        self.origin_flags & ORIGIN
    }

    /// See [`SEEN_DEAD`].
    pub fn seen_dead(&self) -> bool {
        self.flag(SEEN_DEAD)
    }

    pub fn set_seen_dead(&mut self, on: bool) {
        self.set_flag(SEEN_DEAD, on);
    }

    /// When the spawn probe saw it. None: it existed before leaktrace
    /// attached, or a walk found it (see [`Self::found_ns`]).
    pub fn spawned_ns(&self) -> Option<u64> {
        (self.spawned_ns != 0 && !self.flag(SPAWN_BOUND)).then_some(self.spawned_ns)
    }

    /// When a walk of `runtime.allgs` found it (born at most then).
    pub fn found_ns(&self) -> Option<u64> {
        (self.spawned_ns != 0 && self.flag(SPAWN_BOUND)).then_some(self.spawned_ns)
    }

    /// When the park probe saw it park. None: not seen, or only a refresh
    /// saw it blocked (see [`Self::seen_parked_ns`]).
    pub fn parked_ns(&self) -> Option<u64> {
        (self.parked_ns != 0 && !self.flag(PARK_BOUND)).then_some(self.parked_ns)
    }

    /// When a refresh first saw it blocked where it is, while the park
    /// probe was shed (blocked at most since then).
    pub fn seen_parked_ns(&self) -> Option<u64> {
        (self.parked_ns != 0 && self.flag(PARK_BOUND)).then_some(self.parked_ns)
    }

    /// A refresh (no park probe armed) found it blocked at a new place at
    /// `now_ns`, or not blocked (`now_ns` 0).
    pub fn set_seen_parked(&mut self, now_ns: u64) {
        self.parked_ns = now_ns;
        self.set_flag(PARK_BOUND, now_ns != 0);
    }

    /// The g was reused behind our back (events lost): what we knew about
    /// its timing and origin belongs to another goroutine.
    pub fn forget_history(&mut self) {
        self.spawned_ns = 0;
        self.parked_ns = 0;
        // Only whether it was seen dead stays: that is about the g.
        self.origin_flags &= SEEN_DEAD;
        self.walk_digest = 0;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub spawn: u64,
    pub park: u64,
    pub exit: u64,
}

#[derive(Debug, Default)]
pub struct LiveTable {
    /// g address → row in `rows`.
    index: RowIndex,
    /// The live tasks, and free rows (key 0) listed in `free`: a slab,
    /// so a million tasks cost one row each and no allocation apiece. It
    /// keeps its largest size (as the index, a hash map, does): free rows
    /// are reused by the next spawns.
    rows: Vec<LiveTask>,
    free: Vec<u32>,
    /// Origins by number (0 is "not seen").
    origins: Origins,
    pub counts: EventCounts,
    /// Tasks a memory read found dead although no exit event arrived (lost
    /// events or a path the probes do not cover); removed and counted.
    pub corrected: u64,
    /// Tasks walks of `runtime.allgs` found without a spawn event (while
    /// the overhead budget had shed the spawn probe).
    pub found: u64,
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

/// g address → row number. Only the number is kept (the key is in the
/// row): 5 bytes a slot with the table's control byte, where a
/// `HashMap<u64, u32>` takes 17; at a million goroutines (2²¹ slots), 10 MB
/// rather than 36. Every entry's row holds its key while it is indexed.
#[derive(Debug, Default)]
struct RowIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

impl RowIndex {
    fn get(&self, rows: &[LiveTask], key: u64) -> Option<u32> {
        self.table
            .find(self.hasher.hash_one(key), |&i| rows[i as usize].key == key)
            .copied()
    }

    /// `key` must not be indexed yet, and `rows[i]` must hold it.
    fn insert(&mut self, rows: &[LiveTask], key: u64, i: u32) {
        let h = &self.hasher;
        self.table
            .insert_unique(h.hash_one(key), i, |&j| h.hash_one(rows[j as usize].key));
    }

    fn remove(&mut self, rows: &[LiveTask], key: u64) -> Option<u32> {
        let entry = self
            .table
            .find_entry(self.hasher.hash_one(key), |&i| rows[i as usize].key == key)
            .ok()?;
        Some(entry.remove().0)
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// The distinct origins seen, numbered from 1.
#[derive(Debug, Default)]
pub struct Origins {
    list: Vec<Origin>,
    ids: HashMap<Origin, u32>,
}

impl Origins {
    fn intern(&mut self, o: Origin) -> u32 {
        if o == Origin::default() {
            return 0;
        }
        if let Some(&id) = self.ids.get(&o) {
            return id;
        }
        // Distinct (go statement, two callers) triples are bounded by the
        // program's code; past this many, new ones are not remembered
        // (their tasks lose lifetimes and `via`, never their count).
        if self.list.len() >= MAX_ORIGINS {
            return 0;
        }
        self.list.push(o);
        let id = self.list.len() as u32;
        self.ids.insert(o, id);
        id
    }

    /// The origin of a row; the default (all zeros) when not seen.
    pub fn of(&self, task: &LiveTask) -> Origin {
        task.origin()
            .checked_sub(1)
            .and_then(|i| self.list.get(i as usize))
            .copied()
            .unwrap_or_default()
    }
}

const MAX_ORIGINS: usize = 1 << 20;
const _: () = assert!(MAX_ORIGINS as u32 <= ORIGIN && MAX_ORIGINS as u32 & SEEN_DEAD == 0);
// One row per live goroutine, a million of them: keep it at six words.
const _: () = assert!(size_of::<LiveTask>() <= 48);

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
                via_pcs,
            } => {
                self.counts.spawn += 1;
                if created_pc != 0 {
                    self.note_spawn(created_pc, via_pcs);
                }
                let origin = self.origins.intern(Origin {
                    created_pc,
                    via_pcs,
                });
                *self.row_mut(ev.key) = LiveTask {
                    key: ev.key,
                    id: ev.id,
                    spawned_ns: ev.ts_ns.max(1),
                    origin_flags: origin,
                    ..LiveTask::default()
                };
            }
            TaskEventKind::Park => {
                self.counts.park += 1;
                // A task spawned before attach and missed by the snapshot
                // still shows up here; the reader fills in its origin.
                let task = self.row_mut(ev.key);
                if ev.id != 0 {
                    task.id = ev.id;
                }
                task.parked_ns = ev.ts_ns.max(1);
                task.set_flag(PARK_BOUND, false);
            }
            TaskEventKind::Exit => {
                self.counts.exit += 1;
                if let Some(task) = self.remove(ev.key)
                    && let Some(born) = task.spawned_ns()
                    && let created_pc = self.origins.of(&task).created_pc
                    && created_pc != 0
                {
                    let full = self.lifetimes.len() >= MAX_LIFETIME_SITES;
                    if let Some(stats) = match self.lifetimes.get_mut(&created_pc) {
                        Some(s) => Some(s),
                        None if !full => Some(self.lifetimes.entry(created_pc).or_default()),
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

    /// The row of `key`, a fresh one (key set, the rest empty) if none.
    fn row_mut(&mut self, key: u64) -> &mut LiveTask {
        let i = match self.index.get(&self.rows, key) {
            Some(i) => i,
            None => {
                let i = match self.free.pop() {
                    Some(i) => i,
                    None => {
                        self.rows.push(LiveTask::default());
                        (self.rows.len() - 1) as u32
                    }
                };
                self.rows[i as usize] = LiveTask {
                    key,
                    ..LiveTask::default()
                };
                self.index.insert(&self.rows, key, i);
                i
            }
        };
        &mut self.rows[i as usize]
    }

    fn remove(&mut self, key: u64) -> Option<LiveTask> {
        let i = self.index.remove(&self.rows, key)?;
        self.free.push(i);
        Some(std::mem::take(&mut self.rows[i as usize]))
    }

    /// A task found in the target's memory at attach. Probe events that
    /// arrived meanwhile win: they are newer.
    pub fn insert_existing(&mut self, task: LiveTask) {
        if self.index.get(&self.rows, task.key).is_none() {
            let key = task.key;
            *self.row_mut(key) = task;
        }
    }

    /// A task a walk of `runtime.allgs` found (spawn probe shed): added
    /// and counted as found if the table did not know it.
    pub fn insert_found(&mut self, task: LiveTask) -> bool {
        if self.index.get(&self.rows, task.key).is_some() {
            return false;
        }
        let key = task.key;
        *self.row_mut(key) = task;
        self.found += 1;
        true
    }

    /// The park probe is being shed: every park time the probe saw becomes
    /// a bound (the goroutine may park again, unseen, at the same place).
    pub fn parks_become_bounds(&mut self) {
        for t in self.tasks_mut() {
            let bound = t.parked_ns != 0;
            t.set_flag(PARK_BOUND, bound);
        }
    }

    /// Forget a task a memory read found finished.
    pub fn remove_dead(&mut self, key: u64) {
        if self.remove(key).is_some() {
            self.corrected += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    pub fn tasks_mut(&mut self) -> impl Iterator<Item = &mut LiveTask> {
        self.rows.iter_mut().filter(|t| t.key != 0)
    }

    /// The live rows, and the origins they refer to, at once.
    pub fn tasks_and_origins(&mut self) -> (impl Iterator<Item = &mut LiveTask>, &Origins) {
        (self.rows.iter_mut().filter(|t| t.key != 0), &self.origins)
    }

    pub fn get(&self, key: u64) -> Option<&LiveTask> {
        self.index
            .get(&self.rows, key)
            .map(|i| &self.rows[i as usize])
    }

    /// Where a task came from (zeros when not seen).
    pub fn origin(&self, task: &LiveTask) -> Origin {
        self.origins.of(task)
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
        via_pcs: [0x30, 0x40],
    };

    #[test]
    fn lifecycle_and_reuse_of_a_g() {
        let mut t = LiveTable::default();
        t.apply(&ev(1, 0xa, 0, SPAWN));
        t.apply(&ev(2, 0xa, 7, TaskEventKind::Park));
        assert_eq!(t.get(0xa).unwrap().id, 7);
        assert_eq!(t.get(0xa).unwrap().parked_ns(), Some(2));
        t.apply(&ev(3, 0xa, 7, TaskEventKind::Exit));
        assert!(t.is_empty());
        // The runtime reuses the g for a new goroutine.
        t.apply(&ev(4, 0xa, 0, SPAWN));
        assert_eq!(t.get(0xa).unwrap().spawned_ns(), Some(4));
        assert_eq!(t.get(0xa).unwrap().parked_ns(), None);
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
        assert_eq!(t.origin(t.get(0xc).unwrap()).via_pcs, [0x50, 0]);
        t.apply(&ev(5, 0xe, 0, spawn([0x50, 0])));
        assert!(t.take_new_callers().is_empty());
        assert_eq!(t.spawns_by_site().collect::<Vec<_>>(), vec![(0x10, 5)]);
    }

    #[test]
    fn snapshot_never_overrides_newer_probe_data() {
        let mut t = LiveTable::default();
        t.apply(&ev(5, 0xb, 0, SPAWN));
        t.insert_existing(LiveTask::existing(0xb, 99));
        assert_eq!(t.get(0xb).unwrap().spawned_ns(), Some(5));
        t.insert_existing(LiveTask::existing(0xc, 3));
        assert_eq!(t.len(), 2);
        t.remove_dead(0xc);
        t.remove_dead(0xc);
        assert_eq!(t.corrected, 1);
        // The freed row is reused, not a new one added.
        t.insert_existing(LiveTask::existing(0xd, 4));
        assert_eq!((t.len(), t.rows.len()), (2, 2));
        assert_eq!(
            t.tasks_mut().map(|r| r.key).collect::<Vec<_>>(),
            vec![0xb, 0xd]
        );
    }
}
