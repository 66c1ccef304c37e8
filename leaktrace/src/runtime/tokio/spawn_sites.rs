//! Where each task was spawned: the spawn probe (`bind_inner`) sends the
//! spawning thread's registers and the top of its stack with the event
//! (`TOKIO_SPAWN_STACKS`), and the stack is unwound here with the
//! program's `.eh_frame` to the first frame outside tokio and the standard
//! library: the program's call of `tokio::spawn` (`spawned by
//! app::admin::listen (admin.rs:88)`).
//!
//! tokio keeps no spawn location without `tokio_unstable` (its
//! `SpawnLocation` is zero-sized), so the stack is the only source. Names
//! and lines come from DWARF (the binary's or its separate debug file's),
//! else `.symtab` (the function only); a stripped binary without debug info
//! has neither, and its tasks keep their future type alone.
use std::{
    collections::HashMap,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use leaktrace_common::tokio::TokioSpawnStack;
use lru::LruCache;

use crate::{
    probes::{Probes, ring::decode_record},
    symbols::{
        Frame,
        native::{
            Module, is_std_or_tokio,
            unwind::{self, CfiTables, CodeMap, StackCopy},
        },
    },
    target::elf::ElfFile,
};

/// The spawn path inside tokio is under ten frames; the program's frame
/// comes right after it.
const MAX_FRAMES: usize = 32;
/// Return addresses whose spawn site is remembered: a program's spawn call
/// sites number in the hundreds; 2¹⁴ bounds what a target showing ever new
/// pcs can make leaktrace keep (least recently used out).
const MAX_PCS: NonZeroUsize = NonZeroUsize::new(1 << 14).expect("non-zero");

pub struct SpawnSites {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// The executable, once its load address is known.
    module: Option<Module>,
    /// Return address → the first frame outside tokio there (`None`: all
    /// tokio's, or nothing names it). The same few call sites spawn every
    /// task, so each is symbolized once. The pcs come from the target's
    /// stacks: an LRU of at most [`MAX_PCS`].
    by_pc: LruCache<u64, Option<Frame>>,
    /// Task id → its spawn site, from stacks not yet claimed by their spawn
    /// event (sent just before it).
    pending: HashMap<u64, Frame>,
    /// Stacks unwound, and the time it took (unwinding and naming).
    pub unwound: u64,
    pub unwind_time: Duration,
    /// Stacks unwound to no frame outside tokio.
    pub unnamed: u64,
}

impl SpawnSites {
    /// Take the spawn-stack ring of the loaded probes.
    pub fn attach(probes: &mut Probes) -> Result<Self> {
        let ebpf = probes.ebpf_mut();
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("{name} map missing from the probes object"))
        };
        Ok(Self {
            ring: RingBuf::try_from(take("TOKIO_SPAWN_STACKS")?)?,
            lost: PerCpuArray::try_from(take("TOKIO_STACKS_LOST")?)?,
            module: None,
            by_pc: LruCache::new(MAX_PCS),
            pending: HashMap::new(),
            unwound: 0,
            unwind_time: Duration::ZERO,
            unnamed: 0,
        })
    }

    /// The program is mapped at `bias`: stacks can be unwound from now on.
    pub fn locate(&mut self, elf: &ElfFile, bias: u64) {
        if self.module.is_none() {
            self.module = elf.share().ok().map(|e| Module::main(e, bias));
        }
    }

    /// Spawns sent without their stack (the stack ring was full).
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// The spawn site of task `id`, whose spawn event has just arrived (its
    /// stack was committed before it).
    pub fn take(&mut self, id: u64) -> Option<Frame> {
        if !self.pending.contains_key(&id) {
            self.drain();
        }
        self.pending.remove(&id)
    }

    /// Unwind every stack waiting in the ring.
    fn drain(&mut self) {
        loop {
            // Copied out first: the ring item borrows the ring.
            let rec = match self.ring.next() {
                None => break,
                Some(item) => decode_record::<TokioSpawnStack>(&item).map(Box::new),
            };
            let Some(rec) = rec else { continue };
            let t0 = Instant::now();
            let site = self.site(&rec);
            self.unwind_time += t0.elapsed();
            self.unwound += 1;
            match site {
                Some(site) => {
                    self.pending.insert(rec.id, site);
                }
                None => self.unnamed += 1,
            }
        }
        // Stacks whose event never came (its record was lost): keep the
        // map from growing without bound.
        if self.pending.len() > 100_000 {
            self.pending.clear();
        }
    }

    fn site(&mut self, rec: &TokioSpawnStack) -> Option<Frame> {
        let module = self.module.as_ref()?;
        let len = (rec.stack_len as usize).min(rec.stack.len());
        let stack = StackCopy {
            ip: rec.ip,
            sp: rec.sp,
            bp: rec.bp,
            bytes: &rec.stack[..len],
        };
        let pcs = unwind::unwind(&stack, &mut Exe(module), MAX_FRAMES);
        log::debug!(
            "spawn stack of task {}: {} bytes, pcs {:x?}",
            rec.id,
            len,
            pcs.iter()
                .map(|pc| pc.wrapping_sub(module.bias()))
                .collect::<Vec<_>>()
        );
        // The first is `bind_inner` itself; return addresses point after
        // their call.
        for &pc in pcs.iter().skip(1) {
            if !module.holds(pc) {
                return None;
            }
            let site = self
                .by_pc
                .get_or_insert(pc, || {
                    module
                        .frames(pc.wrapping_sub(1).wrapping_sub(module.bias()))
                        .into_iter()
                        .find(|f| !is_std_or_tokio(f))
                })
                .clone();
            if site.is_some() {
                return site;
            }
        }
        None
    }
}

/// The executable as the unwinder sees it.
struct Exe<'a>(&'a Module);

impl CodeMap for Exe<'_> {
    fn cfi_for(&mut self, pc: u64) -> Option<(CfiTables<'_>, u64)> {
        self.0
            .holds(pc)
            .then(|| self.0.cfi())
            .flatten()
            .map(|t| (t, self.0.bias()))
    }

    fn is_code(&mut self, pc: u64) -> bool {
        self.0.holds(pc)
    }
}
