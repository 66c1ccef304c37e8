//! Which blocked goroutines nothing can ever wake: the channels they wait
//! on cannot be reached from any goroutine that may still run, nor from
//! any global variable. The idea of Go 1.27's `goroutineleak` profile (a
//! GC mark that does not start from goroutines blocked on channels), done
//! from outside with read-only memory reads instead of inside a GC cycle.
//!
//! The walk is conservative the way a stack scan is: every aligned word
//! that points into a heap object marks it, so anything the program could
//! reach is marked, and more. Only what stays unmarked is claimed:
//!
//! 1. Roots: `.data` and `.bss`, and every goroutine that is not a
//!    candidate (running, runnable, in a system call, blocked on I/O, a
//!    timer, a lock, or anything but a channel) — its live stack and its
//!    `g` (deferred calls, the closure of a goroutine not started yet).
//!    A running goroutine's whole stack is read, since its saved stack
//!    pointer is stale.
//! 2. Candidates: goroutines blocked in a channel operation whose channels
//!    were read. Their stacks and `g`s are not roots, and a candidate's
//!    `g` reached through `allgs` or a wait queue is not walked.
//! 3. Mark from the roots. A candidate waiting on a marked channel may be
//!    woken by whoever reaches it: its stack and `g` become roots, and the
//!    mark goes on, until nothing changes. The candidates left are stranded.
//!
//! Among the stranded, a goroutine whose own stack (or an object its stack
//! points to directly) holds the channel another one waits on is the one
//! that would have to wake it; cycles of that relation, over distinct
//! channels, are deadlocks among them: each waits for another that waits.
//!
//! What is not seen: a reference held only in a CPU register of a running
//! goroutine at the instant of the read, in memory outside the Go heap
//! (cgo, `mmap`), or by a finalizer. Reads race with the program too, so a
//! goroutine is only reported once two walks in a row found it stranded in
//! the same park (see [`super::stranded`]).

use std::collections::{HashMap, HashSet};

use super::heap::{Heap, Object, OverBudget, words};

/// One goroutine, as the walk needs it.
#[derive(Clone, Debug)]
pub struct Goroutine {
    /// Address of its `runtime.g`.
    pub g: u64,
    /// The part of its stack that may hold live values.
    pub stack: (u64, u64),
    /// Channels it waits on (addresses of their `hchan`); empty for a
    /// goroutine that is a root.
    pub waits_on: Vec<u64>,
}

/// What a walk found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Candidates nothing can reach, by `g` address.
    pub stranded: HashSet<u64>,
    /// Groups of stranded goroutines waiting on each other, each sorted by
    /// `g` address.
    pub cycles: Vec<Vec<u64>>,
    pub objects_marked: u64,
    pub bytes_read: u64,
}

/// At most this many stranded goroutines are examined for cycles (their
/// stacks are read once more each).
const MAX_CYCLE_SEARCH: usize = 2048;
/// Objects one stranded goroutine's stack points to that are searched for
/// the channels of the others.
const HELD_OBJECTS: usize = 64;

/// `globals`: address ranges of `.data` and `.bss`; `goroutines`: every
/// live goroutine, roots and candidates.
pub fn walk(
    heap: &mut Heap<'_>,
    globals: &[(u64, u64)],
    goroutines: &[Goroutine],
) -> Result<Walk, OverBudget> {
    let mut m = Marker {
        marked: HashSet::new(),
        work: Vec::new(),
        skip: goroutines
            .iter()
            .filter(|g| !g.waits_on.is_empty())
            .map(|g| g.g)
            .collect(),
    };
    for &(start, len) in globals {
        if let Some(bytes) = heap.read_range(start, len)? {
            m.scan(heap, &bytes);
        }
    }
    let mut candidates: Vec<&Goroutine> = Vec::new();
    for g in goroutines {
        if g.waits_on.is_empty() {
            m.root(heap, g)?;
        } else {
            candidates.push(g);
        }
    }
    loop {
        m.drain(heap)?;
        let (woken, still): (Vec<&Goroutine>, Vec<&Goroutine>) = candidates
            .into_iter()
            .partition(|g| g.waits_on.iter().any(|&c| m.reaches(heap, c)));
        candidates = still;
        if woken.is_empty() {
            break;
        }
        for g in woken {
            m.skip.remove(&g.g);
            m.root(heap, g)?;
        }
    }
    let stranded: HashSet<u64> = candidates.iter().map(|g| g.g).collect();
    let cycles = if candidates.len() <= MAX_CYCLE_SEARCH {
        cycles(heap, &candidates)?
    } else {
        Vec::new()
    };
    Ok(Walk {
        stranded,
        cycles,
        objects_marked: m.marked.len() as u64,
        bytes_read: heap.bytes_read,
    })
}

struct Marker {
    marked: HashSet<u64>,
    work: Vec<Object>,
    /// `g`s of candidates: never walked.
    skip: HashSet<u64>,
}

impl Marker {
    fn mark(&mut self, heap: &mut Heap<'_>, p: u64) {
        let Some(o) = heap.object_of(p) else {
            return;
        };
        if self.skip.contains(&o.base) {
            return;
        }
        if self.marked.insert(o.base) && o.scan {
            self.work.push(o);
        }
    }

    fn scan(&mut self, heap: &mut Heap<'_>, bytes: &[u8]) {
        for w in words(bytes) {
            self.mark(heap, w);
        }
    }

    fn drain(&mut self, heap: &mut Heap<'_>) -> Result<(), OverBudget> {
        while let Some(o) = self.work.pop() {
            if let Some(bytes) = heap.read(o)? {
                self.scan(heap, &bytes);
            }
        }
        Ok(())
    }

    /// A goroutine that may run: its stack and its `g` are roots.
    fn root(&mut self, heap: &mut Heap<'_>, g: &Goroutine) -> Result<(), OverBudget> {
        let (lo, hi) = g.stack;
        if hi > lo
            && let Some(bytes) = heap.read_range(lo, hi - lo)?
        {
            self.scan(heap, &bytes);
        }
        self.mark(heap, g.g);
        Ok(())
    }

    /// Whether the object holding `chan` is marked. A channel that is not
    /// in the heap as far as can be told counts as reachable: nothing is
    /// claimed on what could not be checked.
    fn reaches(&self, heap: &mut Heap<'_>, chan: u64) -> bool {
        match heap.object_of(chan) {
            Some(o) => self.marked.contains(&o.base),
            None => true,
        }
    }
}

/// Cycles of "holds the channel the other waits on" among the stranded.
fn cycles(heap: &mut Heap<'_>, stranded: &[&Goroutine]) -> Result<Vec<Vec<u64>>, OverBudget> {
    let waiting_on: HashMap<u64, Vec<usize>> =
        stranded
            .iter()
            .enumerate()
            .fold(HashMap::new(), |mut m, (i, g)| {
                for &c in &g.waits_on {
                    m.entry(c).or_default().push(i);
                }
                m
            });
    // edges[i]: the goroutines `i` waits for (they hold its channel).
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); stranded.len()];
    for (j, holder) in stranded.iter().enumerate() {
        for c in held(heap, holder, &waiting_on)? {
            // A goroutine waiting on the same channel is no help to the
            // others waiting there (the workers of an idle pool).
            if holder.waits_on.contains(&c) {
                continue;
            }
            for &i in &waiting_on[&c] {
                if i != j {
                    edges[i].push(j);
                }
            }
        }
    }
    let mut out: Vec<Vec<u64>> = strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() >= 2)
        .map(|c| {
            let mut gs: Vec<u64> = c.into_iter().map(|i| stranded[i].g).collect();
            gs.sort_unstable();
            gs
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The channels of `wanted` that `g` holds on its stack or in an object its
/// stack points to directly.
fn held(
    heap: &mut Heap<'_>,
    g: &Goroutine,
    wanted: &HashMap<u64, Vec<usize>>,
) -> Result<HashSet<u64>, OverBudget> {
    let mut found = HashSet::new();
    let (lo, hi) = g.stack;
    let Some(stack) = heap.read_range(lo, hi.saturating_sub(lo))? else {
        return Ok(found);
    };
    let mut objects: Vec<Object> = Vec::new();
    for w in words(&stack) {
        if wanted.contains_key(&w) {
            found.insert(w);
        } else if objects.len() < HELD_OBJECTS
            && let Some(o) = heap.object_of(w)
            && o.scan
            && !objects.contains(&o)
        {
            objects.push(o);
        }
    }
    for o in objects {
        if let Some(bytes) = heap.read(o)? {
            found.extend(words(&bytes).filter(|w| wanted.contains_key(w)));
        }
    }
    Ok(found)
}

/// Tarjan's strongly connected components, iteratively (a deep recursion
/// on a long chain of goroutines must not overflow the stack).
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    let mut next = 0usize;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (node, next edge to follow)
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut e)) = call.last_mut() {
            if let Some(&w) = edges[v].get(*e) {
                *e += 1;
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            call.pop();
            if let Some(&(parent, _)) = call.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(comp);
            }
        }
    }
    out
}
