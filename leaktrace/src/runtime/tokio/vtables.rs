//! Find every tokio task vtable in a binary and name it by its future type.
//!
//! Each `(T, S)` pair a program spawns gets one static
//! `tokio::runtime::task::raw::Vtable`: 7 function pointers (poll, schedule,
//! dealloc, try_read_output, drop_join_handle_slow, drop_abort_handle,
//! shutdown) then `trailer_offset`, `scheduler_offset`, `id_offset`. Every
//! task header points at its vtable (+16), so the vtable set is what makes a
//! heap word recognisable as a task, and the vtable's `poll` is what names
//! the task's future.
//!
//! The vtables are found by shape, which works in stripped binaries too: in
//! a PIE the pointer slots are zeros in the file, each covered by an
//! `R_*_RELATIVE` relocation whose addend is the target, and the three
//! offsets are plain integers with no relocation.
//!
//! Naming, best first ([`NameSource`]): the v0-mangled `raw::poll::<T, S>`
//! symbol; DWARF's `poll<T, S>` subprogram name (kept even with
//! `debug = "line-tables-only"`); with legacy mangling and no DWARF, the
//! `drop_in_place<…task::core::Stage<T>>` drop glue the vtable functions
//! call; else only the vtable address.
use std::collections::{HashMap, HashSet};
use std::fmt;

use iced_x86::{Decoder, DecoderOptions, FlowControl};
use object::{Object as _, ObjectSymbol as _, SymbolKind};

use super::panic_locations::{CodeView, SourceHint};
use crate::{
    symbols::dwarf::{self, Slice},
    target::elf::{ElfFile, Machine},
};

/// The vtable's function slots, in declaration order.
pub const SLOTS: [&str; 7] = [
    "poll",
    "schedule",
    "dealloc",
    "try_read_output",
    "drop_join_handle_slow",
    "drop_abort_handle",
    "shutdown",
];
pub const POLL: usize = 0;
pub const DEALLOC: usize = 2;
pub const SHUTDOWN: usize = 6;

/// The task `Header` (state, queue_next, vtable, owner_id) is 32 bytes on
/// 64-bit without `tokio_unstable` tracing: `Core.scheduler` follows it.
const MIN_SCHEDULER_OFFSET: u64 = 32;
/// `Core` is scheduler + id + stage: the offsets are small. The trailer
/// follows the future, which tokio boxes beyond 16 KiB.
const MAX_ID_OFFSET: u64 = 4096;
const MAX_TRAILER_OFFSET: u64 = 1 << 20;

const R_X86_64_RELATIVE: u32 = 8;
const R_AARCH64_RELATIVE: u32 = 1027;

/// How a vtable's future type was learned; ordered worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NameSource {
    /// Nothing names it: stripped, or the drop glue was inlined.
    Address,
    /// Only a source file: from the panic `Location`s its poll code
    /// references (stripped binaries; see `panic_locations`).
    PanicLocation,
    /// Heuristic: from `drop_in_place<…Stage<T>>`-style symbols that the
    /// vtable's functions call (legacy mangling carries T only there).
    DropGlue,
    /// `DW_AT_name` of the `poll<T, S>` subprogram.
    Dwarf,
    /// The v0-mangled `raw::poll::<T, S>` symbol.
    V0Symbol,
}

impl NameSource {
    pub fn label(self) -> &'static str {
        match self {
            Self::Address => "vtable address",
            Self::PanicLocation => "panic locations",
            Self::DropGlue => "drop-glue symbol",
            Self::Dwarf => "DWARF",
            Self::V0Symbol => "v0 symbol",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskName {
    /// The future type `T`, as the source spells it (async fns appear as
    /// `path::to::f::{closure#0}` (v0), `{async_fn_env#0}` (DWARF) or
    /// `{{closure}}` (legacy drop glue)). `None` for [`NameSource::Address`].
    pub future: Option<String>,
    /// The scheduler type `S`, when the source has it.
    pub scheduler: Option<String>,
    pub source: NameSource,
    /// For [`NameSource::Address`]: why nothing better was available.
    pub reason: Option<String>,
    /// For [`NameSource::DropGlue`]: other futures whose drop code the
    /// linker folded into the same function, so the name may be any of
    /// them (sorted; `future` is the first).
    pub also: Vec<String>,
    /// For [`NameSource::PanicLocation`]: the source files its code
    /// panics in.
    pub hint: Option<SourceHint>,
}

/// One task vtable. Addresses are link-time (add the load bias for PIE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskVtable {
    pub va: u64,
    /// Indexed like [`SLOTS`].
    pub fns: [u64; 7],
    pub trailer_offset: u64,
    pub scheduler_offset: u64,
    pub id_offset: u64,
    pub name: TaskName,
}

impl TaskVtable {
    pub fn poll(&self) -> u64 {
        self.fns[POLL]
    }

    /// A short label for reports: the async fn or block (`path::f`), the
    /// wrapped closure for `spawn_blocking`, else `vtable@0x…`.
    pub fn display_name(&self) -> String {
        match &self.name.future {
            Some(t) if self.name.also.is_empty() => short_future_name(t),
            // Say so rather than pick one silently.
            Some(t) => format!(
                "{} (or {}: folded drop code)",
                short_future_name(t),
                self.name
                    .also
                    .iter()
                    .map(|a| short_future_name(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            // File only: the vtable keeps telling tasks apart.
            None => match &self.name.hint {
                Some(h) => format!("vtable@{:#x} in {}", self.va, h.file),
                None => format!("vtable@{:#x}", self.va),
            },
        }
    }

    /// `Core.scheduler` is one pointer: an `Arc<Handle>` (multi-thread or
    /// current-thread runtime) or `Arc<local::Shared>` (LocalSet), whose
    /// tasks are all bound to an owner list at spawn. Blocking tasks'
    /// `BlockingSchedule` holds a whole `scheduler::Handle` enum, so their
    /// id sits further on. Works without any symbol.
    pub fn has_bound_scheduler(&self) -> bool {
        self.id_offset - self.scheduler_offset == 8
    }

    /// `spawn_blocking` tasks (and the runtime's worker launchers) are not
    /// counted by `num_alive_tasks()`; neither are they the program's
    /// leaks in the usual sense.
    pub fn is_blocking(&self) -> bool {
        let in_name = |s: &Option<String>, pat: &str| s.as_deref().is_some_and(|s| s.contains(pat));
        in_name(&self.name.scheduler, "BlockingSchedule")
            || in_name(&self.name.future, "blocking::task::BlockingTask<")
    }
}

impl TaskVtable {
    /// Runs on a blocking-pool thread (`spawn_blocking`, the worker
    /// launchers): never bound to an owner list, so not counted by
    /// `num_alive_tasks()`. Told by layout, so stripped binaries too.
    pub fn runs_on_blocking_pool(&self) -> bool {
        !self.has_bound_scheduler() || self.is_blocking()
    }

    /// The runtime's own blocking-pool work: a multi-thread runtime's
    /// worker launchers (`Launch::launch`, and the hand-over of
    /// `block_in_place`), which run as long as the runtime. Known by name
    /// only: in a binary without names they count as the program's
    /// blocking tasks.
    pub fn is_runtime_own(&self) -> bool {
        let own = |n: &str| short_future_name(n).starts_with("tokio::runtime::scheduler::");
        self.runs_on_blocking_pool()
            && self.name.future.as_deref().is_some_and(own)
            && self.name.also.iter().all(|a| own(a))
    }
}

impl fmt::Display for TaskVtable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:#x}, named by {}]",
            self.display_name(),
            self.va,
            self.name.source.label()
        )
    }
}

/// `tokio_fixture::oneshot_waiter::{closure#0}` → `tokio_fixture::oneshot_waiter`;
/// `Pin<Box<F>>` (a large future tokio boxed) and `BlockingTask<F>` → F's
/// short name.
pub fn short_future_name(t: &str) -> String {
    let mut s = t.trim().to_owned();
    for wrapper in [
        "core::pin::Pin<alloc::boxed::Box",
        "tokio::runtime::blocking::task::BlockingTask",
    ] {
        if let Some(rest) = s.strip_prefix(wrapper)
            && rest.starts_with('<')
            && let Some(first) = split_generic_args(rest).and_then(|a| a.into_iter().next())
        {
            s = first;
        }
    }
    // Async fns and blocks are closures of the fn that defines them; the
    // fn's path is the name a reader knows.
    while let Some((head, last)) = s.rsplit_once("::") {
        let closure_like =
            last.starts_with('{') && (last.contains("closure") || last.contains("async"));
        if !closure_like {
            break;
        }
        s = head.to_owned();
    }
    s
}

/// The top-level generic arguments of the first `<…>` in `s`.
pub fn split_generic_args(s: &str) -> Option<Vec<String>> {
    let open = s.find('<')?;
    let mut depth = 0usize;
    let mut args = Vec::new();
    let mut cur = String::new();
    for c in s[open..].chars() {
        match c {
            '<' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            '>' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    args.push(cur.trim().to_owned());
                    return Some(args);
                }
            }
            ',' if depth == 1 => {
                args.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    None
}

/// Every task vtable in `elf`, named as well as the binary allows.
pub fn find_vtables(elf: &ElfFile) -> Vec<TaskVtable> {
    // The symbols may come from a separate debug file; code and data from
    // the program itself.
    let symtab = elf.symtab_file().bytes();
    let Ok(parsed) = object::read::elf::ElfFile64::<object::Endianness>::parse(symtab) else {
        return Vec::new();
    };
    let relocs = Relocs::read(elf);
    let exec: Vec<(u64, u64)> = elf
        .sections()
        .iter()
        .filter(|s| s.is_executable() && s.is_alloc())
        // Sizes come from the file: a section that claims to run past the
        // end of the address space ends there (found by fuzzing).
        .map(|s| (s.addr, s.addr.saturating_add(s.size)))
        .collect();
    let in_text = |v: u64| exec.iter().any(|&(a, b)| v >= a && v < b);

    let mut found = Vec::new();
    for section in elf.sections() {
        if !section.is_alloc() || section.is_executable() || !section.has_file_data() {
            continue;
        }
        // Only what the file holds: a section whose size runs past the end
        // of the file (or of the address space) is not scanned, since the
        // size comes from the file (found by fuzzing: first an overflow,
        // then a walk of 2^61 addresses).
        let Some(data) = elf.section_data(section) else {
            continue;
        };
        let Some(end) = section.addr.checked_add(data.len() as u64) else {
            continue;
        };
        let Some(mut va) = section.addr.checked_next_multiple_of(8) else {
            continue;
        };
        while va.checked_add(80).is_some_and(|e| e <= end) {
            if let Some(vt) = vtable_at(elf, &relocs, va, &in_text) {
                found.push(vt);
                va += 80;
            } else {
                va += 8;
            }
        }
    }
    if found.is_empty() {
        return found;
    }
    let symbols = Symbols::read(&parsed);
    // With symbols, a shape match whose poll is not tokio's is a stray
    // pattern in data, not a vtable.
    if !symbols.is_empty() {
        found.retain(|v| {
            symbols
                .names_at(v.poll())
                .map(|names| {
                    names
                        .iter()
                        .any(|n| n.demangled.starts_with("tokio::runtime::task::"))
                })
                .unwrap_or(true)
        });
    }
    let dwarf_names = if elf.has_dwarf() {
        let polls: HashSet<u64> = found
            .iter()
            .flat_map(|v| poll_entries(elf, v.poll()))
            .collect();
        dwarf_poll_names(elf, &polls).unwrap_or_default()
    } else {
        HashMap::new()
    };
    let machine = elf.machine();
    for vt in &mut found {
        vt.name = name_vtable(elf, machine, vt, &symbols, &dwarf_names);
    }
    if machine == Machine::X86_64 && found.iter().any(|v| v.name.source == NameSource::Address) {
        let word = |va: u64| relocs.word(elf, va).map(|(w, _)| w);
        let code = CodeView::new(elf, &word);
        for vt in found
            .iter_mut()
            .filter(|v| v.name.source == NameSource::Address)
        {
            if let Some(hint) = code.source_of(vt.poll()) {
                vt.name.source = NameSource::PanicLocation;
                vt.name.hint = Some(hint);
            }
        }
    }
    found
}

fn vtable_at(
    elf: &ElfFile,
    relocs: &Relocs,
    va: u64,
    in_text: &impl Fn(u64) -> bool,
) -> Option<TaskVtable> {
    let mut fns = [0u64; 7];
    for (i, f) in fns.iter_mut().enumerate() {
        let (v, relocated) = relocs.word(elf, va + 8 * i as u64)?;
        // In a PIE every code pointer is relocated; in a non-PIE none is.
        if !in_text(v) || (relocs.pie && !relocated) {
            return None;
        }
        *f = v;
    }
    let mut offs = [0u64; 3];
    for (i, o) in offs.iter_mut().enumerate() {
        let (v, relocated) = relocs.word(elf, va + 56 + 8 * i as u64)?;
        if relocated {
            return None;
        }
        *o = v;
    }
    TaskVtable::from_words(va, fns, offs)
}

impl TaskVtable {
    /// A vtable at `va` from its seven function pointers and its three
    /// offsets (trailer, scheduler, id), if the offsets are what tokio's
    /// are: 8-aligned, ordered, and within the bounds above. Everything
    /// that reads task cells relies on that. Public for the fuzz target
    /// (`fuzz/fuzz_targets/heap_cells.rs`).
    #[doc(hidden)]
    pub fn from_words(va: u64, fns: [u64; 7], offs: [u64; 3]) -> Option<TaskVtable> {
        let [trailer_offset, scheduler_offset, id_offset] = offs;
        let aligned = offs.iter().all(|o| o % 8 == 0);
        let ordered = (MIN_SCHEDULER_OFFSET..MAX_ID_OFFSET).contains(&scheduler_offset)
            && id_offset > scheduler_offset
            && id_offset < MAX_ID_OFFSET
            && trailer_offset > id_offset
            && trailer_offset < MAX_TRAILER_OFFSET;
        (aligned && ordered).then_some(TaskVtable {
            va,
            fns,
            trailer_offset,
            scheduler_offset,
            id_offset,
            name: TaskName {
                future: None,
                scheduler: None,
                source: NameSource::Address,
                reason: None,
                also: Vec::new(),
                hint: None,
            },
        })
    }
}

/// Link-time words of the data sections as the loader will see them.
pub(super) struct Relocs {
    /// RELA `R_*_RELATIVE`: target → addend (the file holds zeros there).
    rela: HashMap<u64, u64>,
    /// RELR-packed relative relocations: the file holds the value.
    relr: HashSet<u64>,
    pie: bool,
}

impl Relocs {
    pub(super) fn read(elf: &ElfFile) -> Self {
        let relative = match elf.machine() {
            Machine::Aarch64 => R_AARCH64_RELATIVE,
            _ => R_X86_64_RELATIVE,
        };
        let mut rela = HashMap::new();
        let mut relr = HashSet::new();
        for s in elf.sections() {
            let Some(data) = elf.section_data(s) else {
                continue;
            };
            if s.name.starts_with(".rela") {
                for e in data.chunks_exact(24) {
                    let word =
                        |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().unwrap_or([0; 8]));
                    if (word(8) & 0xffff_ffff) as u32 == relative {
                        rela.insert(word(0), word(16));
                    }
                }
            } else if s.name == ".relr.dyn" {
                decode_relr(data, &mut relr);
            }
        }
        Self {
            rela,
            relr,
            pie: elf.is_pie(),
        }
    }

    pub(super) fn word(&self, elf: &ElfFile, va: u64) -> Option<(u64, bool)> {
        if let Some(&addend) = self.rela.get(&va) {
            return Some((addend, true));
        }
        let raw = elf.read_u64_va(va)?;
        Some((raw, self.relr.contains(&va)))
    }
}

/// SHT_RELR: an even entry is an address (relocated, then the base for the
/// next bitmap); an odd entry is a bitmap over the following 63 words.
fn decode_relr(data: &[u8], out: &mut HashSet<u64>) {
    let mut base = 0u64;
    for e in data.chunks_exact(8) {
        let entry = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
        if entry & 1 == 0 {
            out.insert(entry);
            base = entry.wrapping_add(8);
        } else {
            let mut bits = entry >> 1;
            let mut at = base;
            while bits != 0 {
                if bits & 1 != 0 {
                    out.insert(at);
                }
                bits >>= 1;
                at = at.wrapping_add(8);
            }
            base = base.wrapping_add(63 * 8);
        }
    }
}

struct Symbol {
    demangled: String,
    size: u64,
}

/// Function symbols by address (several names can share one address).
struct Symbols {
    by_addr: HashMap<u64, Vec<Symbol>>,
}

impl Symbols {
    fn read(parsed: &object::read::elf::ElfFile64<'_, object::Endianness>) -> Self {
        let mut by_addr: HashMap<u64, Vec<Symbol>> = HashMap::new();
        for sym in parsed.symbols() {
            if sym.kind() != SymbolKind::Text || sym.is_undefined() {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            let demangled = match rustc_demangle::try_demangle(name) {
                Ok(d) => format!("{d:#}"),
                Err(_) => continue,
            };
            by_addr.entry(sym.address()).or_default().push(Symbol {
                demangled,
                size: sym.size(),
            });
        }
        Self { by_addr }
    }

    fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    fn names_at(&self, addr: u64) -> Option<&[Symbol]> {
        self.by_addr.get(&addr).map(Vec::as_slice)
    }
}

fn name_vtable(
    elf: &ElfFile,
    machine: Machine,
    vt: &TaskVtable,
    symbols: &Symbols,
    dwarf: &HashMap<u64, String>,
) -> TaskName {
    let from_generic = |text: &str, source| {
        let args = split_generic_args(text)?;
        let mut args = args.into_iter();
        let future = args.next().filter(|t| !t.is_empty())?;
        Some(TaskName {
            future: Some(future),
            scheduler: args.next(),
            source,
            reason: None,
            also: Vec::new(),
            hint: None,
        })
    };
    if let Some(names) = symbols.names_at(vt.poll()) {
        // v0 keeps the instance's generic arguments in the symbol.
        for n in names {
            if let Some(rest) = n
                .demangled
                .strip_prefix("tokio::runtime::task::raw::poll::")
                && let Some(name) = from_generic(rest, NameSource::V0Symbol)
            {
                return name;
            }
        }
    }
    for entry in poll_entries(elf, vt.poll()) {
        if let Some(text) = dwarf.get(&entry)
            && let Some(name) = from_generic(text, NameSource::Dwarf)
        {
            return name;
        }
    }
    if symbols.is_empty() {
        return address_only(
            "no .symtab and no DWARF (stripped binary): nothing names the future type",
        );
    }
    if machine == Machine::X86_64
        && let Some(name) = drop_glue_name(elf, vt, symbols)
    {
        return name;
    }
    address_only(if machine == Machine::X86_64 {
        "legacy-mangled symbols without DWARF, and no drop glue of the task's \
         Cell/Stage is called out of line (inlined, e.g. by fat LTO)"
    } else {
        "legacy-mangled symbols without DWARF (drop-glue recovery is x86_64 only)"
    })
}

/// The vtable's `poll` and, when it is a thunk (`jmp Harness<T,S>::poll`,
/// what rustc emits without LTO), the thunk's target: line-tables-only
/// DWARF has a subprogram for the target but none for the 5-byte thunk.
fn poll_entries(elf: &ElfFile, poll: u64) -> Vec<u64> {
    let mut out = vec![poll];
    if elf.machine() != Machine::X86_64 {
        return out;
    }
    let mut at = poll;
    for _ in 0..2 {
        let Some(code) = elf.read_va(at, 16) else {
            break;
        };
        let insn = Decoder::with_ip(64, code, at, DecoderOptions::NONE).decode();
        if !(insn.is_jmp_near() && insn.flow_control() == FlowControl::UnconditionalBranch) {
            break;
        }
        at = insn.near_branch_target();
        out.push(at);
    }
    out
}

fn address_only(reason: &str) -> TaskName {
    TaskName {
        future: None,
        scheduler: None,
        source: NameSource::Address,
        reason: Some(reason.into()),
        also: Vec::new(),
        hint: None,
    }
}

/// Search the code reachable from the vtable's own functions (dealloc and
/// shutdown drop the future; poll drops it on completion) for a direct call
/// of the drop glue of the task's `Cell<T,S>`, `CoreStage<T>` or
/// `Stage<T>`. Only tokio's per-task generic functions are followed, so the
/// walk never strays into code shared by other task types.
fn drop_glue_name(elf: &ElfFile, vt: &TaskVtable, symbols: &Symbols) -> Option<TaskName> {
    const MAX_DEPTH: usize = 3;
    const MAX_FN_BYTES: u64 = 16 * 1024;
    let mut queue: std::collections::VecDeque<(u64, usize)> =
        [vt.fns[DEALLOC], vt.fns[SHUTDOWN], vt.fns[POLL]]
            .into_iter()
            .map(|a| (a, 0))
            .collect();
    let mut seen = HashSet::new();
    while let Some((addr, depth)) = queue.pop_front() {
        if !seen.insert(addr) {
            continue;
        }
        let Some(size) = symbols
            .names_at(addr)
            .and_then(|n| n.iter().map(|s| s.size).max())
            .filter(|&s| s > 0)
        else {
            continue;
        };
        let Some(code) = elf.read_va(addr, size.min(MAX_FN_BYTES) as usize) else {
            continue;
        };
        let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
        while decoder.can_decode() {
            let insn = decoder.decode();
            let direct = matches!(
                insn.flow_control(),
                FlowControl::Call | FlowControl::UnconditionalBranch
            ) && (insn.is_call_near() || insn.is_jmp_near());
            if !direct {
                continue;
            }
            let target = insn.near_branch_target();
            let Some(names) = symbols.names_at(target) else {
                continue;
            };
            let mut found: Vec<TaskName> = names
                .iter()
                .filter_map(|n| task_drop_glue(&n.demangled))
                .collect();
            found.sort_by(|a, b| a.future.cmp(&b.future));
            found.dedup_by(|a, b| a.future == b.future);
            if !found.is_empty() {
                let mut name = found.remove(0);
                name.also = found.into_iter().filter_map(|n| n.future).collect();
                return Some(name);
            }
            let generic_task_fn = names.iter().any(|n| {
                n.demangled
                    .starts_with("tokio::runtime::task::harness::Harness<")
                    || n.demangled.starts_with("tokio::runtime::task::core::Core<")
                    || n.demangled.starts_with("tokio::runtime::task::raw::")
            });
            if generic_task_fn && depth + 1 < MAX_DEPTH {
                queue.push_back((target, depth + 1));
            }
        }
    }
    None
}

/// `core::ptr::drop_in_place<tokio::runtime::task::core::Stage<T>>` → T
/// (and S for `Cell<T,S>`).
fn task_drop_glue(demangled: &str) -> Option<TaskName> {
    let inner = demangled.strip_prefix("core::ptr::drop_in_place<")?;
    let inner = inner.strip_prefix("alloc::boxed::Box<").unwrap_or(inner);
    let rest = ["Cell<", "CoreStage<", "Stage<"]
        .iter()
        .find_map(|k| {
            inner
                .strip_prefix("tokio::runtime::task::core::")?
                .strip_prefix(k)
                .map(|_| ())
        })
        .map(|()| inner)?;
    let args = split_generic_args(rest)?;
    let mut args = args.into_iter();
    Some(TaskName {
        future: Some(args.next()?),
        scheduler: args.next(),
        source: NameSource::DropGlue,
        reason: None,
        also: Vec::new(),
        hint: None,
    })
}

/// `poll<T, S>` names of the subprograms at the given addresses. The DIE
/// with the address may only point (abstract_origin/specification) at the
/// one with the name.
fn dwarf_poll_names(elf: &ElfFile, polls: &HashSet<u64>) -> Option<HashMap<u64, String>> {
    // Every section: `Dwarf::unit` also parses the unit's line program
    // header and fails without .debug_line.
    let sections = dwarf::sections(elf, dwarf::all).ok()?;
    let dwarf = dwarf::borrow(&sections);
    let mut out = HashMap::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entries = unit.entries();
        while let Ok(Some((_, die))) = entries.next_dfs() {
            if die.tag() != gimli::DW_TAG_subprogram {
                continue;
            }
            let Ok(Some(gimli::AttributeValue::Addr(_) | gimli::AttributeValue::DebugAddrIndex(_))) =
                die.attr_value(gimli::DW_AT_low_pc)
            else {
                continue;
            };
            let Some(low_pc) = die
                .attr_value(gimli::DW_AT_low_pc)
                .ok()
                .flatten()
                .and_then(|v| dwarf.attr_address(&unit, v).ok().flatten())
            else {
                continue;
            };
            if !polls.contains(&low_pc) {
                continue;
            }
            if let Some(name) = die_name(&dwarf, &unit, die.offset(), 0)
                && name.starts_with("poll<")
            {
                out.insert(low_pc, name);
            }
        }
    }
    Some(out)
}

fn die_name(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    offset: gimli::UnitOffset,
    hops: usize,
) -> Option<String> {
    let die = unit.entry(offset).ok()?;
    if let Ok(Some(v)) = die.attr_value(gimli::DW_AT_name)
        && let Ok(s) = dwarf.attr_string(unit, v)
    {
        return Some(s.to_string_lossy().into_owned());
    }
    if hops >= 3 {
        return None;
    }
    for at in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
        if let Ok(Some(gimli::AttributeValue::UnitRef(r))) = die.attr_value(at) {
            return die_name(dwarf, unit, r, hops + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_args_and_short_names() {
        let v0 = "<tokio_fixture::oneshot_waiter::{closure#0}, alloc::sync::Arc<tokio::runtime::scheduler::multi_thread::handle::Handle>>";
        let args = split_generic_args(v0).unwrap();
        assert_eq!(args[0], "tokio_fixture::oneshot_waiter::{closure#0}");
        assert_eq!(
            args[1],
            "alloc::sync::Arc<tokio::runtime::scheduler::multi_thread::handle::Handle>"
        );
        assert_eq!(short_future_name(&args[0]), "tokio_fixture::oneshot_waiter");
        assert_eq!(
            short_future_name("core::pin::Pin<alloc::boxed::Box<app::big::{{closure}}>>"),
            "app::big"
        );
        assert_eq!(
            short_future_name(
                "tokio::runtime::scheduler::multi_thread::worker::{impl#0}::launch::{closure_env#0}"
            ),
            "tokio::runtime::scheduler::multi_thread::worker::{impl#0}::launch"
        );
        assert_eq!(short_future_name("app::f::{async_block_env#3}"), "app::f");
        assert_eq!(split_generic_args("poll<a, b"), None);
        assert_eq!(split_generic_args("no generics"), None);
    }

    /// Folded drop code names several futures: all of them are shown.
    #[test]
    fn ambiguous_names_say_so() {
        let mut vt = TaskVtable {
            va: 0x1000,
            fns: [0; 7],
            trailer_offset: 80,
            scheduler_offset: 32,
            id_offset: 40,
            name: TaskName {
                future: Some("app::pending_forever::{{closure}}".into()),
                scheduler: None,
                source: NameSource::DropGlue,
                reason: None,
                also: vec!["app::poll_bench::{{closure}}".into()],
                hint: None,
            },
        };
        assert_eq!(
            vt.display_name(),
            "app::pending_forever (or app::poll_bench: folded drop code)"
        );
        vt.name.also.clear();
        assert_eq!(vt.display_name(), "app::pending_forever");
    }

    #[test]
    fn drop_glue_names() {
        let n = task_drop_glue(
            "core::ptr::drop_in_place<tokio::runtime::task::core::Cell<app::job::{{closure}},alloc::sync::Arc<tokio::runtime::scheduler::current_thread::Handle>>>",
        )
        .unwrap();
        assert_eq!(n.future.as_deref(), Some("app::job::{{closure}}"));
        assert!(n.scheduler.unwrap().contains("current_thread"));
        let n = task_drop_glue(
            "core::ptr::drop_in_place<tokio::runtime::task::core::Stage<app::job::{{closure}}>>",
        )
        .unwrap();
        assert_eq!(n.scheduler, None);
        assert!(task_drop_glue("core::ptr::drop_in_place<app::job::{{closure}}>").is_none());
    }

    #[test]
    fn relr_decoding() {
        let mut set = HashSet::new();
        // 0x1000 relocated, then bitmap 0b101 (after the shift) over
        // 0x1008.. → 0x1008 and 0x1018.
        let entries = [0x1000u64, (0b101 << 1) | 1];
        let data: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        decode_relr(&data, &mut set);
        let mut v: Vec<_> = set.into_iter().collect();
        v.sort();
        assert_eq!(v, vec![0x1000, 0x1008, 0x1018]);
    }
}
