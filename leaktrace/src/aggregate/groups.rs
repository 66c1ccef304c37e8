//! Grouping live tasks by where they were created, what they wait for and
//! where they are stuck.
use std::{collections::HashMap, sync::Arc};

use crate::{
    runtime::{Place, Stranded, TaskState, TaskView},
    symbols::Frame,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub created_by: Frame,
    /// The spawn helper's caller (see `TaskView::via`).
    pub via: Option<Frame>,
    pub start: Frame,
    pub state: TaskState,
    pub blocked_at: Option<Frame>,
}

impl GroupKey {
    /// The group a view belongs to.
    pub fn of(v: &TaskView) -> GroupKey {
        let p = &v.place;
        GroupKey {
            created_by: p.created_by.clone(),
            via: p.via.clone(),
            start: p.start.clone(),
            state: p.state.clone(),
            blocked_at: p.blocked_at.clone(),
        }
    }
}

/// Which group each view belongs to, numbered in order of first sight.
/// Views at one place share its `Arc` (see `Place`), so the key is built
/// and hashed once per place and each view costs a pointer hash: a
/// million views at a few places group in milliseconds.
/// The views are borrowed for the index's life (`'v`), so an address it
/// keeps cannot be reused by another place meanwhile.
#[derive(Default)]
pub struct GroupIndex<'v> {
    by_place: HashMap<*const Place, usize>,
    by_key: HashMap<GroupKey, usize>,
    /// Each group's key, by number.
    pub keys: Vec<GroupKey>,
    views: std::marker::PhantomData<&'v TaskView>,
}

impl<'v> GroupIndex<'v> {
    /// The number of `v`'s group (`keys.len()` before the call when the
    /// group is new).
    pub fn of(&mut self, v: &'v TaskView) -> usize {
        if let Some(&i) = self.by_place.get(&Arc::as_ptr(&v.place)) {
            return i;
        }
        let key = GroupKey::of(v);
        let i = match self.by_key.get(&key) {
            Some(&i) => i,
            None => {
                self.by_key.insert(key.clone(), self.keys.len());
                self.keys.push(key);
                self.keys.len() - 1
            }
        };
        self.by_place.insert(Arc::as_ptr(&v.place), i);
        i
    }
}

#[derive(Clone, Debug)]
pub struct Group {
    pub key: GroupKey,
    pub count: u64,
    pub never_ends: bool,
    pub system: bool,
    /// Blocking-pool tasks (tokio `spawn_blocking`), see `Place::blocking`.
    pub blocking: bool,
    /// The program's main task is in this group.
    pub main: bool,
    /// Members that already existed when leaktrace attached.
    pub before_attach: u32,
    /// Age of the youngest member, in seconds (a lower bound for members
    /// that existed at attach).
    pub youngest_s: f64,
    /// Shortest and longest current block, in seconds (waiting groups only).
    pub blocked_s: Option<(f64, f64)>,
    /// Some durations are only lower bounds (tasks blocked since before attach).
    pub blocked_at_least: bool,
    /// Whether the shortest / the longest duration is such a lower bound.
    pub min_at_least: bool,
    pub max_at_least: bool,
    /// Waiting members that are old (alive or blocked at least `older`).
    pub aged: u32,
    /// Members alive at least `older`, in any state: what trends follow,
    /// because a pool's workers flip between running and waiting while the
    /// pool itself stays the same size.
    pub old: u32,
    /// The most common stack among members, innermost first.
    pub stack: Vec<Frame>,
    /// Members whose stack could not be read consistently.
    pub unstable: u32,
    /// A few member ids, to look up in a goroutine dump.
    pub sample_ids: Vec<u64>,
    /// Members a heap walk proved nothing can wake, and of those, members
    /// of a deadlock (waiting for each other).
    pub stranded: u32,
    pub deadlocked: u32,
}

impl Group {
    /// A group with no members yet: what [`group`] starts from, and tests
    /// build on.
    pub fn new(key: GroupKey, system: bool) -> Self {
        Self {
            key,
            count: 0,
            never_ends: false,
            system,
            blocking: false,
            main: false,
            before_attach: 0,
            youngest_s: f64::INFINITY,
            blocked_s: None,
            blocked_at_least: false,
            min_at_least: false,
            max_at_least: false,
            aged: 0,
            old: 0,
            stack: Vec::new(),
            unstable: 0,
            sample_ids: Vec::new(),
            stranded: 0,
            deadlocked: 0,
        }
    }
}

pub fn group<'v>(
    views: impl IntoIterator<Item = &'v TaskView>,
    now_ns: u64,
    older_ns: u64,
) -> Vec<Group> {
    struct Acc {
        group: Group,
        stacks: HashMap<usize, (Arc<[Frame]>, u32)>,
    }
    let mut accs: Vec<Acc> = Vec::new();
    let mut index = GroupIndex::default();
    for v in views {
        let i = index.of(v);
        if i == accs.len() {
            accs.push(Acc {
                group: Group {
                    blocking: v.place.blocking,
                    ..Group::new(index.keys[i].clone(), v.place.system)
                },
                stacks: HashMap::new(),
            });
        }
        let a = &mut accs[i];
        // Identical stacks are shared (interned), so the pointer identifies
        // the content without hashing every frame.
        a.stacks
            .entry(Arc::as_ptr(&v.place.stack) as *const Frame as usize)
            .or_insert_with(|| (v.place.stack.clone(), 0))
            .1 += 1;
        let g = &mut a.group;
        g.count += 1;
        g.never_ends |= v.place.never_ends;
        g.main |= v.main();
        g.before_attach += v.alive_since.before_attach() as u32;
        g.youngest_s = g
            .youngest_s
            .min(now_ns.saturating_sub(v.alive_since.ns()) as f64 / 1e9);
        g.unstable += v.stack_unstable() as u32;
        g.stranded += v.stranded.get().is_some() as u32;
        g.deadlocked += matches!(v.stranded.get(), Some(Stranded::Deadlock(_))) as u32;
        if g.sample_ids.len() < 5 && v.id != 0 {
            g.sample_ids.push(v.id);
        }
        if v.state().is_waiting()
            && let Some(since) = v.blocked_since
        {
            let d = now_ns.saturating_sub(since.ns()) as f64 / 1e9;
            let lb = since.is_lower_bound();
            match g.blocked_s {
                None => {
                    g.blocked_s = Some((d, d));
                    (g.min_at_least, g.max_at_least) = (lb, lb);
                }
                Some((lo, hi)) => {
                    if d < lo || (d == lo && !lb) {
                        g.min_at_least = lb;
                    }
                    if d > hi || (d == hi && lb) {
                        g.max_at_least = lb;
                    }
                    g.blocked_s = Some((lo.min(d), hi.max(d)));
                }
            }
            g.blocked_at_least |= lb;
        }
        if v.state().is_waiting() {
            // Old = alive (or blocked) at least `older`. Lifetime, not the
            // current block, so a leaked goroutine that wakes on a ticker
            // and parks again still ages. Already there at attach: old,
            // whatever its true age (counting it only once `older` passed
            // after attach would fake a burst of growth). Without a block
            // start (tokio without poll probes) the lifetime alone decides.
            let born = v
                .blocked_since
                .map_or(v.alive_since.ns(), |b| b.ns().min(v.alive_since.ns()));
            if now_ns.saturating_sub(born) >= older_ns || v.alive_since.before_attach() {
                g.aged += 1;
            }
        }
        if now_ns.saturating_sub(v.alive_since.ns()) >= older_ns || v.alive_since.before_attach() {
            g.old += 1;
        }
    }
    let mut groups: Vec<Group> = accs
        .into_iter()
        .map(|mut a| {
            if let Some((stack, _)) = a
                .stacks
                .into_values()
                .max_by(|x, y| x.1.cmp(&y.1).then_with(|| y.0.len().cmp(&x.0.len())))
            {
                a.group.stack = stack.to_vec();
            }
            a.group
        })
        .collect();
    sort(&mut groups);
    groups
}

/// By count, descending, like Go's debug=1 profile; ties in a stable order.
pub fn sort(groups: &mut [Group]) {
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.key.created_by.function.cmp(&b.key.created_by.function))
            .then_with(|| {
                let f = |g: &Group| g.key.via.as_ref().map(|f| (f.function.clone(), f.line));
                f(a).cmp(&f(b))
            })
            .then_with(|| a.key.state.cmp(&b.key.state))
            .then_with(|| {
                let f = |g: &Group| {
                    g.key
                        .blocked_at
                        .as_ref()
                        .map(|f| (f.function.clone(), f.line))
                };
                f(a).cmp(&f(b))
            })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Since;

    fn frame(f: &str, line: u32) -> Frame {
        Frame {
            function: f.into(),
            file: "main.go".into(),
            line,
        }
    }

    fn view(id: u64, state: TaskState, since: Option<Since>) -> TaskView {
        TaskView {
            key: id,
            id,
            place: Arc::new(Place {
                never_ends: false,
                system: false,
                blocking: false,
                created_by: frame("main.serve", 10),
                via: None,
                start: frame("main.serve.func1", 11),
                stack: vec![frame("runtime.gopark", 1), frame("main.serve.func1", 12)].into(),
                blocked_at: state.is_waiting().then(|| frame("main.serve.func1", 12)),
                state,
                main: false,
                stack_unstable: false,
            }),
            blocked_since: since,
            alive_since: since.unwrap_or(Since::Exact(0)),
            waits_on: Default::default(),
            stranded: Default::default(),
        }
    }

    #[test]
    fn groups_by_site_and_state_with_durations() {
        let s = 1_000_000_000;
        let views = vec![
            view(
                1,
                TaskState::Waiting("chan send".into()),
                Some(Since::Exact(0)),
            ),
            view(
                2,
                TaskState::Waiting("chan send".into()),
                Some(Since::AtMost(8 * s)),
            ),
            view(
                3,
                TaskState::Waiting("chan send".into()),
                Some(Since::Exact(9 * s)),
            ),
            view(4, TaskState::Running, None),
        ];
        let groups = group(&views, 10 * s, 2 * s);
        assert_eq!(groups.len(), 2);
        let g = &groups[0];
        assert_eq!(g.count, 3);
        assert_eq!(g.blocked_s, Some((1.0, 10.0)));
        assert!(g.blocked_at_least);
        assert!(
            !g.min_at_least && !g.max_at_least,
            "both ends are exact here"
        );
        assert_eq!(g.aged, 2, "lower bounds count as aged; 1s-old does not");
        // A goroutine alive 10s that re-parks on a ticker every 100ms is old.
        let mut ticker = view(
            5,
            TaskState::Waiting("select".into()),
            Some(Since::Exact(10 * s - s / 10)),
        );
        ticker.alive_since = Since::Exact(0);
        assert_eq!(group(&[ticker], 10 * s, 2 * s)[0].aged, 1);
        // Found by a walk after attach (spawn probe shed): old only once it
        // has been seen for `older`, never just for being a bound.
        let found = |at: u64| {
            let mut v = view(
                6,
                TaskState::Waiting("sleep".into()),
                Some(Since::Found(at)),
            );
            v.alive_since = Since::Found(at);
            v
        };
        let young = group(&[found(10 * s - s / 100)], 10 * s, 2 * s);
        assert_eq!(
            (young[0].aged, young[0].old, young[0].before_attach),
            (0, 0, 0)
        );
        let old = group(&[found(7 * s)], 10 * s, 2 * s);
        assert_eq!((old[0].aged, old[0].old), (1, 1));
        assert_eq!(g.key.blocked_at.as_ref().unwrap().line, 12);
        assert_eq!(groups[1].key.state, TaskState::Running);
        assert_eq!(groups[1].blocked_s, None);
    }
}
