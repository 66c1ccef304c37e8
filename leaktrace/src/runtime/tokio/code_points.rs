//! Spawn and completion points of a binary without symbols, found through
//! the task vtables and the code around them (x86-64).
//!
//! Spawn, `OwnedTasks<S>::bind_inner(&self, task, notified)`: every
//! `bind_new_task<T>` copy builds the task cell (`Cell::new`, which stores
//! the vtable's address: a RIP-relative `lea` of it) and then calls
//! `bind_inner`. So from each code reference to a vtable, the first direct
//! calls after it (or, where `Cell::new` is its own function, after each
//! call to it) are searched for a function of `bind_inner`'s shape: it
//! stores the list's id in the header's `owner_id` (`[rsi + 0x18]`) and
//! reads the header's vtable (`[rsi + 0x10]`) to hash the task id, both
//! through its second argument.
//!
//! Completion, `<S as Schedule>::release(&self, task: &Task<S>)`: every
//! `Harness<T, S>::complete` copy, which both the vtable's `poll` and its
//! `shutdown` reach, calls it as `release(&core.scheduler, &task)`: `rdi`
//! is the header plus the vtable's `scheduler_offset`, `rsi` the address
//! of a stack slot holding the header (or, after LTO's argument promotion,
//! the header itself). The call is direct or through a GOT slot.
//!
//! The targets are trusted only as a set the task types share: `bind_inner`
//! has one copy per runtime flavor (multi-thread, current-thread), and
//! `release` one per scheduler type (those two and LocalSet's), so all the
//! task types together may lead to at most `MAX_TARGETS` (4) of each, else
//! none is probed and the notes say why. Checked against the symbol-based
//! plan on unstripped builds of the same source (release, v0 mangling, fat
//! LTO: the same addresses; `tests/tests/tokio_binary.rs`), and end to end
//! on the stripped build (`tests/tests/tokio_live.rs`).
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::panic_locations::fde_ranges;
use super::vtables::{POLL, SHUTDOWN, TaskVtable};
use crate::target::elf::ElfFile;

/// `Header { state, queue_next, vtable, owner_id }`: the same in every
/// supported tokio (≥ 1.23) on 64-bit.
const HEADER_VTABLE: u64 = 0x10;
const HEADER_OWNER_ID: u64 = 0x18;
/// Instructions of `bind_inner` searched for its two header accesses
/// (they are its first few, after the prologue).
const BIND_SHAPE_WINDOW: usize = 40;
/// Direct calls after a vtable reference (or after a call to the function
/// that holds it) that may be `bind_inner`.
const CALLS_AFTER: usize = 3;
/// Callers of one `Cell::new` copy followed (each `bind_new_task<T>` is
/// monomorphised per future, so a copy has one or two).
const MAX_CALLERS: usize = 16;
/// Calls followed from a vtable's poll/shutdown to `Harness::complete`:
/// `raw::poll` → `Harness::poll` → `complete` is two, a `poll_inner` in
/// between three.
const COMPLETE_DEPTH: usize = 3;
const MAX_WALK: usize = 64;
/// Instructions before a call searched for its argument set-up.
const ARG_WINDOW: usize = 8;
/// More distinct targets than this: the task types do not agree, and the
/// search is not trusted.
const MAX_TARGETS: usize = 4;
const MAX_FN_BYTES: u64 = 256 * 1024;

/// What the search found; addresses are link-time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodePoints {
    /// `bind_inner` copies, each with the number of task vtables that led
    /// to it.
    pub spawns: BTreeMap<u64, usize>,
    /// `Schedule::release` copies, likewise.
    pub releases: BTreeMap<u64, usize>,
    /// Task vtables searched (the bound ones).
    pub vtables: usize,
    /// How the search went, for the attach notes.
    pub notes: Vec<String>,
}

impl fmt::Display for CodePoints {
    /// `bind_inner 0x91c30 ×13, 0x91dd0 ×13; release 0xa8480 ×11 (of 27 task types)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |m: &BTreeMap<u64, usize>| {
            if m.is_empty() {
                return "none".to_string();
            }
            m.iter()
                .map(|(va, n)| format!("{va:#x} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "bind_inner {}; release {} (of {} task types)",
            list(&self.spawns),
            list(&self.releases),
            self.vtables
        )
    }
}

/// Searches `elf`'s code for the spawn and completion points of the bound
/// task vtables in `vtables`. `word` reads a pointer-sized word as the
/// loader will have it (GOT slots are relocated).
pub fn find(
    elf: &ElfFile,
    vtables: &[TaskVtable],
    word: &dyn Fn(u64) -> Option<u64>,
) -> CodePoints {
    let bound: Vec<&TaskVtable> = vtables.iter().filter(|v| v.has_bound_scheduler()).collect();
    let mut out = CodePoints {
        vtables: bound.len(),
        ..CodePoints::default()
    };
    if bound.is_empty() {
        return out;
    }
    let code = Code::index(elf, &bound);
    let spawns: Vec<(u64, BTreeSet<u64>)> = bound
        .iter()
        .map(|vt| (vt.va, code.bind_inner_for(vt.va)))
        .collect();
    let releases: Vec<(u64, BTreeSet<u64>)> = bound
        .iter()
        .map(|vt| (vt.va, code.releases_for(vt, word)))
        .collect();
    out.spawns = agreed(&spawns, "OwnedTasks::bind_inner", &mut out.notes);
    out.releases = agreed(&releases, "Schedule::release", &mut out.notes);
    let missed = |found: &[(u64, BTreeSet<u64>)]| -> Vec<String> {
        found
            .iter()
            .filter(|f| f.1.is_empty())
            .map(|f| format!("vtable@{:#x}", f.0))
            .collect()
    };
    // (Where nothing was found at all, the plan's own note says so.)
    let no_spawn = if out.spawns.is_empty() {
        Vec::new()
    } else {
        missed(&spawns)
    };
    let no_release = if out.releases.is_empty() {
        Vec::new()
    } else {
        missed(&releases)
    };
    if !out.spawns.is_empty() || !out.releases.is_empty() {
        // One copy per scheduler type serves all its task types, so a task
        // type whose own code did not show the pattern (inlined, or a
        // future that never returns) is still seen if it shares the
        // scheduler; LocalSet tasks are bound by another list
        // (`LocalOwnedTasks`, no `bind_inner`): their spawns come from heap
        // scans, as with symbols.
        let mut note = format!("spawn and completion points found by code shape: {out}");
        if !no_spawn.is_empty() {
            note += &format!("; not led to bind_inner: {}", no_spawn.join(", "));
        }
        if !no_release.is_empty() {
            note += &format!("; not led to release: {}", no_release.join(", "));
        }
        if !no_spawn.is_empty() || !no_release.is_empty() {
            note += " (covered where they share a scheduler type with the others; LocalSet \
                     spawns are found by heap scans)";
        }
        out.notes.push(note);
    }
    out
}

/// The targets and how many task types lead to each, if few enough to be
/// what the task types share. `found`: each vtable's targets.
fn agreed(
    found: &[(u64, BTreeSet<u64>)],
    what: &str,
    notes: &mut Vec<String>,
) -> BTreeMap<u64, usize> {
    let mut targets: BTreeMap<u64, usize> = BTreeMap::new();
    for t in found.iter().flat_map(|f| &f.1) {
        *targets.entry(*t).or_default() += 1;
    }
    if targets.len() > MAX_TARGETS {
        notes.push(format!(
            "{what}: the {} task types lead to {} different functions by code shape, not the \
             few of one per scheduler type: not probed",
            found.len(),
            targets.len()
        ));
        return BTreeMap::new();
    }
    targets
}

/// The binary's functions (from `.eh_frame`), the code references to the
/// vtables, and the direct calls to the functions that hold them.
struct Code<'a> {
    elf: &'a ElfFile,
    fdes: Vec<(u64, u64)>,
    /// vtable → (function start, instruction address) of each reference.
    refs: HashMap<u64, Vec<(u64, u64)>>,
    /// (target, function start, call address) of the calls to functions
    /// in `refs`, sorted.
    calls: Vec<(u64, u64, u64)>,
}

impl<'a> Code<'a> {
    fn index(elf: &'a ElfFile, bound: &[&TaskVtable]) -> Self {
        let vas: HashSet<u64> = bound.iter().map(|v| v.va).collect();
        let mut code = Code {
            elf,
            fdes: fde_ranges(elf),
            refs: HashMap::new(),
            calls: Vec::new(),
        };
        let functions = code.disjoint();
        for &(start, end) in &functions {
            for insn in code.decode(start, end) {
                if insn.mnemonic() == Mnemonic::Lea
                    && insn.is_ip_rel_memory_operand()
                    && vas.contains(&insn.ip_rel_memory_address())
                {
                    code.refs
                        .entry(insn.ip_rel_memory_address())
                        .or_default()
                        .push((start, insn.ip()));
                }
            }
        }
        // A second pass for the calls to the functions that hold the
        // references (`Cell::new` copies) only: every call of a large
        // binary would be millions of entries.
        let holders: HashSet<u64> = code.refs.values().flatten().map(|r| r.0).collect();
        for &(start, end) in &functions {
            for insn in code.decode(start, end) {
                if insn.is_call_near() && holders.contains(&insn.near_branch_target()) {
                    code.calls
                        .push((insn.near_branch_target(), start, insn.ip()));
                }
            }
        }
        code.calls.sort_unstable();
        code
    }

    /// The functions to read in full, without overlaps: whatever the
    /// file's `.eh_frame` claims, the code is decoded at most once.
    fn disjoint(&self) -> Vec<(u64, u64)> {
        let mut covered = 0;
        let mut out = Vec::new();
        for &(start, end) in &self.fdes {
            if start >= covered {
                let end = end.min(start.saturating_add(MAX_FN_BYTES));
                out.push((start, end));
                covered = end;
            }
        }
        out
    }

    fn decode(&self, start: u64, end: u64) -> Vec<Instruction> {
        let end = end.min(start.saturating_add(MAX_FN_BYTES));
        let Some(bytes) = end
            .checked_sub(start)
            .and_then(|n| self.elf.read_va(start, n as usize))
        else {
            return Vec::new();
        };
        Decoder::with_ip(64, bytes, start, DecoderOptions::NONE)
            .into_iter()
            .collect()
    }

    /// The function (FDE) containing `pc`.
    fn function(&self, pc: u64) -> Option<(u64, u64)> {
        let i = self.fdes.partition_point(|&(start, _)| start <= pc);
        let (start, end) = *self.fdes.get(i.checked_sub(1)?)?;
        (pc < end).then_some((start, end))
    }

    /// The first [`CALLS_AFTER`] direct call targets after `ip` in its
    /// function.
    fn calls_after(&self, ip: u64) -> Vec<u64> {
        let Some((start, end)) = self.function(ip) else {
            return Vec::new();
        };
        self.decode(start, end)
            .iter()
            .filter(|i| i.ip() > ip && i.is_call_near())
            .take(CALLS_AFTER)
            .map(Instruction::near_branch_target)
            .collect()
    }

    fn bind_inner_for(&self, vtable: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for &(start, ip) in self.refs.get(&vtable).into_iter().flatten() {
            let direct: Vec<u64> = self
                .calls_after(ip)
                .into_iter()
                .filter(|&t| self.is_bind_inner(t))
                .collect();
            if !direct.is_empty() {
                out.extend(direct.into_iter().take(1));
                continue;
            }
            // The reference is in `Cell::new`: its callers call bind_inner.
            let i = self.calls.partition_point(|c| c.0 < start);
            for &(_, _, call) in self.calls[i..]
                .iter()
                .take_while(|c| c.0 == start)
                .take(MAX_CALLERS)
            {
                out.extend(
                    self.calls_after(call)
                        .into_iter()
                        .find(|&t| self.is_bind_inner(t)),
                );
            }
        }
        out
    }

    /// `bind_inner`'s shape: near its entry, a store to the second
    /// argument's `owner_id` and a load of its `vtable`.
    fn is_bind_inner(&self, addr: u64) -> bool {
        let Some((start, end)) = self.function(addr).filter(|f| f.0 == addr) else {
            return false;
        };
        let mut task = vec![Register::RSI];
        let (mut stores_owner, mut loads_vtable) = (false, false);
        for insn in self.decode(start, end).iter().take(BIND_SHAPE_WINDOW) {
            if insn.mnemonic() != Mnemonic::Mov {
                continue;
            }
            let at = |op: u32, disp: u64| {
                insn.op_kind(op) == OpKind::Memory
                    && task.contains(&insn.memory_base())
                    && insn.memory_index() == Register::None
                    && insn.memory_displacement64() == disp
            };
            stores_owner |= at(0, HEADER_OWNER_ID) && insn.op1_kind() == OpKind::Register;
            loads_vtable |= at(1, HEADER_VTABLE);
            // A copy of the argument (`mov rbx, rsi`) is the argument too.
            if insn.op0_kind() == OpKind::Register
                && insn.op1_kind() == OpKind::Register
                && task.contains(&insn.op1_register())
            {
                task.push(insn.op0_register());
            }
        }
        stores_owner && loads_vtable
    }

    /// The `release` targets both this vtable's `poll` and its `shutdown`
    /// reach (through `Harness::complete`).
    fn releases_for(&self, vt: &TaskVtable, word: &dyn Fn(u64) -> Option<u64>) -> BTreeSet<u64> {
        let from = |entry: u64| -> BTreeSet<u64> {
            let mut seen = HashSet::new();
            let mut frontier = vec![entry];
            let mut found = BTreeSet::new();
            for _ in 0..=COMPLETE_DEPTH {
                let mut next = Vec::new();
                for f in frontier {
                    if seen.len() >= MAX_WALK || !seen.insert(f) {
                        continue;
                    }
                    let Some((start, end)) = self.function(f).filter(|x| x.0 == f) else {
                        continue;
                    };
                    let insns = self.decode(start, end);
                    found.extend(release_calls(&insns, vt.scheduler_offset, word));
                    next.extend(
                        insns
                            .iter()
                            .filter(|i| i.is_call_near() || i.is_jmp_near())
                            .map(Instruction::near_branch_target)
                            .filter(|t| !(start..end).contains(t)),
                    );
                }
                frontier = next;
            }
            found
        };
        let poll = from(vt.fns[POLL]);
        let shutdown = from(vt.fns[SHUTDOWN]);
        poll.intersection(&shutdown).copied().collect()
    }
}

/// Calls in `insns` made as `release(&header.scheduler, &task)`.
fn release_calls(
    insns: &[Instruction],
    scheduler_offset: u64,
    word: &dyn Fn(u64) -> Option<u64>,
) -> Vec<u64> {
    let mut out = Vec::new();
    for (n, call) in insns.iter().enumerate() {
        let target = if call.is_call_near() {
            call.near_branch_target()
        } else if call.is_call_near_indirect() && call.is_ip_rel_memory_operand() {
            match word(call.ip_rel_memory_address()) {
                Some(t) => t,
                None => continue,
            }
        } else {
            continue;
        };
        let before = &insns[n.saturating_sub(ARG_WINDOW)..n];
        // The set-up only: no call or branch in between.
        let before = match before.iter().rposition(|i| {
            i.is_call_near()
                || i.is_call_near_indirect()
                || i.is_jcc_short_or_near()
                || i.is_jmp_short_or_near()
        }) {
            Some(p) => &before[p + 1..],
            None => before,
        };
        // `lea rdi, [H + scheduler_offset]` (`&self`), or, where LTO
        // passes the `Arc` itself, `mov rdi, [H + scheduler_offset]`: the
        // header is in H.
        let Some((header, promoted)) = before.iter().rev().find_map(|i| {
            (matches!(i.mnemonic(), Mnemonic::Lea | Mnemonic::Mov)
                && i.op0_kind() == OpKind::Register
                && i.op0_register() == Register::RDI
                && i.op1_kind() == OpKind::Memory
                && i.memory_index() == Register::None
                && !matches!(i.memory_base(), Register::RIP | Register::RSP)
                && i.memory_displacement64() == scheduler_offset)
                .then(|| (i.memory_base(), i.mnemonic() == Mnemonic::Mov))
        }) else {
            continue;
        };
        // `rsi`: a stack slot the header was stored to, or the header.
        let task_arg = before.iter().rev().any(|i| {
            if i.op0_kind() != OpKind::Register || i.op0_register() != Register::RSI {
                return false;
            }
            match i.mnemonic() {
                Mnemonic::Mov => i.op1_kind() == OpKind::Register && i.op1_register() == header,
                Mnemonic::Lea if !promoted => {
                    i.memory_base() == Register::RSP
                        && before.iter().any(|s| {
                            s.mnemonic() == Mnemonic::Mov
                                && s.op0_kind() == OpKind::Memory
                                && s.memory_base() == Register::RSP
                                && s.memory_displacement64() == i.memory_displacement64()
                                && s.op1_kind() == OpKind::Register
                                && s.op1_register() == header
                        })
                }
                _ => false,
            }
        });
        if task_arg {
            out.push(target);
        }
    }
    out
}
