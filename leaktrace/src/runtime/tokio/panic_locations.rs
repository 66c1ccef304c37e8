//! A source file for the tasks of stripped binaries, from the panic
//! `Location` records their poll code references.
//!
//! Stripping removes every name, but not the `core::panic::Location`
//! statics (`{ file: &str, line: u32, col: u32 }`) that code passes to its
//! panics: every async fn's state machine panics with the fn's own location
//! when polled after completion, and `unwrap`, indexing and overflow checks
//! carry theirs. So the code a task's `poll` runs (the vtable's `poll`, and
//! the functions it calls directly, a few levels deep) names the source
//! files of the future it drives. The standard library's and dependencies'
//! own files (tokio's above all) are set aside; what is left is the
//! program's. Function extents come from `.eh_frame`, which stripped
//! binaries keep for unwinding.
//!
//! This is a hint, not a type name: the code of one future inlines its
//! callees, so a file may be that of an async fn the task awaits. The
//! report says "in FILE (panic locations)" and keeps the vtable address.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use gimli::{BaseAddresses, EhFrame, LittleEndian, UnwindSection};
use iced_x86::{Decoder, DecoderOptions, FlowControl};

use crate::target::elf::ElfFile;

/// Direct calls followed from `poll`: Harness::poll → poll_inner →
/// Core::poll → the future's poll is three, and the future's own code is
/// usually one more.
const MAX_DEPTH: usize = 5;
/// Functions decoded per vtable, and bytes per function: bounds the work
/// whatever `.eh_frame` claims.
const MAX_FUNCTIONS: usize = 96;
const MAX_FN_BYTES: u64 = 64 * 1024;
/// A `Location`'s file name is a path; longer is not one.
const MAX_FILE_LEN: u64 = 1024;

/// Where a task's code panics, by file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceHint {
    /// The program's own file found at the smallest call depth from `poll`
    /// (ties: the one referenced most there).
    pub file: String,
    /// The smallest line seen in that file at that depth.
    pub line: u32,
    /// Other own files the same code references, sorted.
    pub also: Vec<String>,
}

/// The call-graph walk's view of the binary: code bytes, the words of
/// data (relocated as the loader would), and function extents.
pub struct CodeView<'a> {
    elf: &'a ElfFile,
    /// A pointer-sized word at a link-time address, as loaded (the RELA
    /// addend when the file holds zeros there).
    word: &'a dyn Fn(u64) -> Option<u64>,
    fdes: Vec<(u64, u64)>,
    /// Functions already decoded (`None`: no extent or no bytes).
    decoded: RefCell<HashMap<u64, Option<Rc<Function>>>>,
}

/// One function's own locations (the program's files only) and the
/// functions it calls or jumps to directly.
#[derive(Default)]
struct Function {
    locations: Vec<(String, u32)>,
    calls: Vec<u64>,
}

impl<'a> CodeView<'a> {
    pub fn new(elf: &'a ElfFile, word: &'a dyn Fn(u64) -> Option<u64>) -> Self {
        CodeView {
            elf,
            word,
            fdes: fde_ranges(elf),
            decoded: RefCell::new(HashMap::new()),
        }
    }

    /// The function (FDE) that starts at or contains `pc`.
    fn extent(&self, pc: u64) -> Option<(u64, u64)> {
        let i = self.fdes.partition_point(|&(start, _)| start <= pc);
        let (_, end) = *self.fdes.get(i.checked_sub(1)?)?;
        (pc < end).then_some((pc, end.min(pc.saturating_add(MAX_FN_BYTES))))
    }

    /// The `Location` at `va`, if the words there look like one whose file
    /// is a Rust source path.
    fn location(&self, va: u64) -> Option<(String, u32)> {
        let ptr = (self.word)(va)?;
        let len = (self.word)(va.checked_add(8)?)?;
        if !(4..=MAX_FILE_LEN).contains(&len) {
            return None;
        }
        let lc = self.elf.read_u64_va(va.checked_add(16)?)?;
        let (line, col) = (lc as u32, (lc >> 32) as u32);
        if !(1..=10_000_000).contains(&line) || !(1..=100_000).contains(&col) {
            return None;
        }
        let bytes = self.elf.read_va(ptr, len as usize)?;
        let file = std::str::from_utf8(bytes).ok()?;
        file.ends_with(".rs").then(|| (file.to_string(), line))
    }

    /// What the function at `addr` references and calls, decoded once per
    /// binary: the task types' polls share most of tokio's code, which
    /// would otherwise be decoded again for every vtable.
    fn function(&self, addr: u64) -> Option<Rc<Function>> {
        if let Some(f) = self.decoded.borrow().get(&addr) {
            return f.clone();
        }
        let f = self.decode(addr).map(Rc::new);
        self.decoded.borrow_mut().insert(addr, f.clone());
        f
    }

    fn decode(&self, addr: u64) -> Option<Function> {
        let (start, end) = self.extent(addr)?;
        let code = self.elf.read_va(start, (end - start) as usize)?;
        let mut f = Function::default();
        let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
        while decoder.can_decode() {
            let insn = decoder.decode();
            if insn.is_ip_rel_memory_operand()
                && let Some((file, line)) = self.location(insn.ip_rel_memory_address())
                && !is_dependency(&file)
            {
                f.locations.push((file, line));
            }
            let direct = matches!(
                insn.flow_control(),
                FlowControl::Call | FlowControl::UnconditionalBranch
            ) && (insn.is_call_near() || insn.is_jmp_near());
            let target = insn.near_branch_target();
            // A jump inside the function is control flow, not a call.
            if direct && !(start..end).contains(&target) && !f.calls.contains(&target) {
                f.calls.push(target);
            }
        }
        Some(f)
    }

    /// The source files `poll`'s code references through panic locations.
    pub fn source_of(&self, poll: u64) -> Option<SourceHint> {
        let mut queue: VecDeque<(u64, usize)> = VecDeque::from([(poll, 0)]);
        let mut seen = HashSet::new();
        // (depth, file, line) of every own location found.
        let mut found: Vec<(usize, String, u32)> = Vec::new();
        while let Some((addr, depth)) = queue.pop_front() {
            if seen.len() >= MAX_FUNCTIONS || !seen.insert(addr) {
                continue;
            }
            let Some(f) = self.function(addr) else {
                continue;
            };
            found.extend(
                f.locations
                    .iter()
                    .map(|(file, line)| (depth, file.clone(), *line)),
            );
            if depth < MAX_DEPTH {
                queue.extend(f.calls.iter().map(|&c| (c, depth + 1)));
            }
        }
        choose(found)
    }
}

fn choose(found: Vec<(usize, String, u32)>) -> Option<SourceHint> {
    let depth = found.iter().map(|f| f.0).min()?;
    let mut at_depth: Vec<(&str, u32)> = found
        .iter()
        .filter(|f| f.0 == depth)
        .map(|f| (f.1.as_str(), f.2))
        .collect();
    at_depth.sort();
    // The file referenced most at that depth (a tie: the first by name).
    let mut best: Option<(&str, usize, u32)> = None;
    for chunk in at_depth.chunk_by(|a, b| a.0 == b.0) {
        let (file, line) = chunk[0];
        if best.is_none_or(|(_, n, _)| chunk.len() > n) {
            best = Some((file, chunk.len(), line));
        }
    }
    let (file, _, line) = best?;
    let mut also: Vec<String> = found
        .iter()
        .map(|f| f.1.clone())
        .filter(|f| f != file)
        .collect();
    also.sort();
    also.dedup();
    Some(SourceHint {
        file: file.to_string(),
        line,
        also,
    })
}

/// The standard library's files (`/rustc/<hash>/library/…`, or
/// `library/…` with remapped paths) and crates from a registry or a git
/// checkout (tokio's own among them): not the program's.
pub fn is_dependency(file: &str) -> bool {
    file.starts_with("/rustc/")
        || file.starts_with("library/")
        || file.contains("/.cargo/registry/")
        || file.contains("/.cargo/git/")
        || file.contains("/cargo/registry/")
        || file.contains("/rust/deps/")
        || file.starts_with("/usr/share/cargo/registry/")
}

/// Every FDE's `[start, end)`, sorted by start.
pub(super) fn fde_ranges(elf: &ElfFile) -> Vec<(u64, u64)> {
    let Some(section) = elf.section(".eh_frame") else {
        return Vec::new();
    };
    let Some(data) = elf.section_data(section) else {
        return Vec::new();
    };
    let mut bases = BaseAddresses::default().set_eh_frame(section.addr);
    if let Some(text) = elf.section(".text") {
        bases = bases.set_text(text.addr);
    }
    let eh = EhFrame::new(data, LittleEndian);
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        if let gimli::CieOrFde::Fde(partial) = entry
            && let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o))
        {
            let start = fde.initial_address();
            out.push((start, start.saturating_add(fde.len())));
        }
    }
    out.sort_unstable();
    out
}
