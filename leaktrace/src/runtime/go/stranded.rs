//! Stranded goroutines, refresh after refresh: runs the reachability walk
//! ([`super::reachability`]) when goroutines have been blocked on channels
//! for a while, and marks on their views what two walks in a row agreed
//! on. Partial deadlocks are found this way while the rest of the program
//! runs, which `all goroutines are asleep` never sees.

use std::collections::HashMap;
use std::time::Instant;

use super::{
    binary::GoBinary,
    heap::{Heap, HeapLayout},
    reachability::{Goroutine, walk},
    reader::GHeader,
    wait_reason::gstatus,
};
use crate::runtime::task::{Stranded, TaskState, TaskView};
use crate::target::memory::Memory;

/// Goroutines blocked on a channel for less than this are not candidates:
/// most channel waits end within a second, and a walk is not free.
const MIN_BLOCKED_NS: u64 = 1_000_000_000;
/// Heap bytes one walk may read (and hold in its cache).
const BUDGET: u64 = 128 << 20;
/// After a walk ran out of budget, wait this long before the next one: the
/// heap will not have shrunk by the next refresh.
const BACKOFF_S: u64 = 60;
/// Members of one deadlock park within this of each other (see `apply`).
const CYCLE_WINDOW_NS: u64 = 10_000_000;
/// Beyond this many goroutines a walk is not tried: it rereads every `g`
/// and stack before the heap, which the heap budget does not cover.
const MAX_GOROUTINES: usize = 50_000;

/// One park of one goroutine: a goroutine is only called stranded when
/// the same park was found stranded twice (reads race with the program).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Park {
    goid: u64,
    sp: u64,
    pc: u64,
}

pub struct StrandedCheck {
    /// Read from DWARF the first time a walk is wanted, not at attach: it
    /// is another pass over `.debug_info`, and many sessions never need it.
    layout: Option<Result<HeapLayout, String>>,
    /// `.data` and `.bss`, link-time addresses.
    globals: Vec<(u64, u64)>,
    previous: HashMap<u64, (Park, Stranded)>,
    paused_until: Option<Instant>,
    note: Option<String>,
    said_unavailable: bool,
    said_too_many: bool,
}

impl StrandedCheck {
    pub fn new(bin: &GoBinary) -> Self {
        let globals = [".data", ".bss"]
            .iter()
            .filter_map(|n| bin.elf.section(n))
            .map(|s| (s.addr, s.size))
            .collect();
        StrandedCheck {
            layout: None,
            globals,
            previous: HashMap::new(),
            paused_until: None,
            note: None,
            said_unavailable: false,
            said_too_many: false,
        }
    }

    pub fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }

    /// Mark the stranded among `views` (read just now). `g_len` bytes of
    /// each `g` are read again for its stack bounds.
    pub fn apply(
        &mut self,
        mem: &Memory,
        bias: u64,
        bin: &GoBinary,
        views: &mut [TaskView],
        now_ns: u64,
    ) {
        let candidate = |v: &TaskView| {
            !v.system()
                && !v.waits_on.is_empty()
                && v.waits_on.iter().all(|w| w.chan != 0)
                && matches!(v.state(), TaskState::Waiting(r) if is_channel_wait(r))
                && v.blocked_since
                    .is_some_and(|s| now_ns.saturating_sub(s.ns()) >= MIN_BLOCKED_NS)
        };
        if !views.iter().any(candidate) {
            self.previous.clear();
            return;
        }
        let layout = match self
            .layout
            .get_or_insert_with(|| HeapLayout::from_binary(bin))
        {
            Ok(l) => l,
            Err(why) => {
                if !self.said_unavailable {
                    self.said_unavailable = true;
                    self.note = Some(format!(
                        "partial deadlocks are not looked for: {why}; the heap walk needs \
                         runtime.mheap_ and the heap's types"
                    ));
                }
                return;
            }
        };
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if views.len() > MAX_GOROUTINES {
            if !self.said_too_many {
                self.said_too_many = true;
                self.note = Some(format!(
                    "partial deadlocks are not looked for while the program has more than \
                     {MAX_GOROUTINES} goroutines ({} now): the heap walk reads every one's stack",
                    views.len()
                ));
            }
            self.previous.clear();
            return;
        }
        let keys: Vec<u64> = views.iter().map(|v| v.key).collect();
        let mut headers: Vec<Option<GHeader>> = vec![None; keys.len()];
        mem.read_each(&keys, bin.layout.sizeof_g as usize, &mut |i, b| {
            headers[i] = b.and_then(|b| GHeader::parse(b, &bin.layout));
        });
        let mut goroutines = Vec::with_capacity(views.len());
        let mut parks: HashMap<u64, Park> = HashMap::new();
        for (v, h) in views.iter().zip(&headers) {
            let Some(h) = h else { continue };
            // Go 1.27 marks the goroutines its goroutineleak profile found
            // `leaked`; they are still parked where they were.
            let parked = matches!(h.state(), gstatus::WAITING | gstatus::LEAKED)
                && h.sched_sp >= h.stack_lo
                && h.sched_sp < h.stack_hi;
            let is_candidate = candidate(v) && parked;
            // A goroutine that may be running: all of its stack, since the
            // saved stack pointer is stale.
            let stack = if parked || h.state() == gstatus::RUNNABLE {
                (h.sched_sp.max(h.stack_lo), h.stack_hi)
            } else {
                (h.stack_lo, h.stack_hi)
            };
            if is_candidate {
                parks.insert(
                    v.key,
                    Park {
                        goid: h.goid,
                        sp: h.sched_sp,
                        pc: h.sched_pc,
                    },
                );
            }
            goroutines.push(Goroutine {
                g: v.key,
                stack,
                waits_on: if is_candidate {
                    v.waits_on.iter().map(|w| w.chan).collect()
                } else {
                    Vec::new()
                },
            });
        }
        let globals: Vec<(u64, u64)> = self
            .globals
            .iter()
            .map(|&(a, len)| (a + bias, len))
            .collect();
        let started = Instant::now();
        let mut heap = Heap::new(mem, layout, bias, BUDGET);
        if !heap.readable() {
            self.previous.clear();
            return;
        }
        let found = match walk(&mut heap, &globals, &goroutines) {
            Ok(w) => w,
            Err(over) => {
                self.previous.clear();
                self.paused_until =
                    Some(Instant::now() + std::time::Duration::from_secs(BACKOFF_S));
                self.note = Some(format!(
                    "partial deadlocks not checked: the heap reachable from the running \
                     goroutines is over {} MiB (stopped after {} MiB); next try in {BACKOFF_S}s",
                    BUDGET >> 20,
                    over.0 >> 20
                ));
                return;
            }
        };
        log::debug!(
            "reachability: {} candidates, {} stranded, {} cycles, {} objects, {} KiB in {:?}",
            parks.len(),
            found.stranded.len(),
            found.cycles.len(),
            found.objects_marked,
            found.bytes_read >> 10,
            started.elapsed()
        );
        let mut now: HashMap<u64, (Park, Stranded)> = found
            .stranded
            .iter()
            .filter_map(|g| Some((*g, (*parks.get(g)?, Stranded::Unreachable))))
            .collect();
        // When each blocked, as the park probe saw it (`--detailed`), and
        // when each was created, as the spawn probe saw it.
        let parked_at: HashMap<u64, u64> = views
            .iter()
            .filter_map(|v| Some((v.key, v.blocked_since?.exact()?)))
            .collect();
        let spawned_at: HashMap<u64, u64> = views
            .iter()
            .filter_map(|v| Some((v.key, v.alive_since.exact()?)))
            .collect();
        let together = |at: &HashMap<u64, u64>, cycle: &[u64]| {
            let times: Option<Vec<u64>> = cycle.iter().map(|g| at.get(g).copied()).collect();
            times.is_some_and(|t| {
                t.iter()
                    .max()
                    .zip(t.iter().min())
                    .is_some_and(|(hi, lo)| hi - lo <= CYCLE_WINDOW_NS)
            })
        };
        for cycle in &found.cycles {
            // "Holds the channel" comes from a conservative scan, and a
            // stack reused from a goroutine that died keeps that one's
            // pointers in slots not yet written: leaked goroutines of
            // separate calls can seem to hold each other's channels. Goroutines
            // that block each other block together, so a cycle is only
            // called a deadlock when every member was seen parking within
            // CYCLE_WINDOW_NS of the others; or, the park probe not armed
            // (no `--detailed`), seen created within it of the others (one
            // call's goroutines, like the two halves of a transfer). A cycle
            // whose members were made apart is then left unreachable, not
            // called a deadlock: a miss rather than a guess.
            let unparked = cycle.iter().all(|g| !parked_at.contains_key(g));
            let together =
                together(&parked_at, cycle) || (unparked && together(&spawned_at, cycle));
            if !together {
                continue;
            }
            let id = cycle[0];
            for g in cycle {
                if let Some(e) = now.get_mut(g) {
                    e.1 = Stranded::Deadlock(id);
                }
            }
        }
        for v in views.iter_mut() {
            if let (Some((park, what)), Some((before, _))) =
                (now.get(&v.key), self.previous.get(&v.key))
                && park == before
            {
                v.stranded = Some(*what).into();
            }
        }
        self.previous = std::mem::take(&mut now);
    }
}

fn is_channel_wait(reason: &str) -> bool {
    matches!(reason, "chan send" | "chan receive" | "select")
}
