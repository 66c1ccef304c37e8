//! Go symbolizer: PC → function, file, line (inlined frames included), read
//! from the `pclntab` the Go runtime itself uses for tracebacks.
//!
//! pclntab survives `-ldflags=-s -w`, so this works on every Go binary. The
//! logic mirrors the runtime (`runtime/symtab.go`, `symtabinl.go`) so that
//! [`GoSymbols::frames`] prints what `runtime.CallersFrames` prints:
//!
//! * functions are found by binary search over `functab` entry PCs;
//! * file and line come from the `pcfile`/`pcln` PC-value tables at the
//!   queried PC, which already describe the innermost inlined position;
//! * inlined frames come from `FUNCDATA_InlTree` indexed by
//!   `PCDATA_InlTreeIndex`; an entry's `parentPc` is a PC in the outer
//!   function whose file/line is the call site.
//!
//! Only Go 1.18+ pclntabs (magic `0xfffffff0`/`0xfffffff1`) are handled.
//! Where this differs from the `gobin` crate, it is because gobin got it wrong
//! for our purposes; see the notes on [`GoSymbols::new`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;

use super::version::GoVersion;
use crate::symbols::Frame;
use crate::target::elf::{ElfFile, VaReader};

/// A physical function: one entry of the pclntab function table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GoFunc {
    /// Raw name from the table (generic shapes are not elided here).
    pub name: String,
    /// Link-time VA of the first instruction.
    pub entry: u64,
    /// Link-time VA of the next function (includes alignment padding).
    pub end: u64,
}

/// How the text base (`runtime.text`, which entry offsets are relative to)
/// was determined. Go 1.26 stopped storing it in the pclntab header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextSource {
    Moduledata,
    PclntabHeader,
    SymtabRuntimeText,
    TextSection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PclnFormat {
    /// Go 1.18–1.19: 40-byte `_func`, 20-byte `inlinedCall`.
    Go118,
    /// Go 1.20+: `_func.startLine` added (44 bytes), 16-byte `inlinedCall`.
    Go120,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NameStyle {
    /// `funcNameForPrint` of 1.21–1.26: everything between the first `[`
    /// and the last `]` becomes `[...]`.
    Simple,
    /// 1.27+: also handles generic methods of generic types, yielding two
    /// `[...]` groups.
    Go127,
}

const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u8 = 3;
/// Deeper than any inlining budget allows; bounds the walk on corrupt data.
const MAX_INLINE_DEPTH: usize = 256;

struct FuncRecord {
    /// Offset of the `_func` from the start of the pclntab.
    off: usize,
    entry: u64,
    name_off: u32,
    pcfile: u32,
    pcln: u32,
    npcdata: u32,
    cu_offset: u32,
    func_id: u8,
    nfuncdata: u8,
}

/// Symbol tables of one Go binary, owning (a shared reference to) its bytes.
pub struct GoSymbols {
    reader: VaReader,
    /// File range of the pclntab (from the pcHeader to the end of its
    /// section or segment).
    pcln: Range<usize>,
    pcln_va: u64,
    format: PclnFormat,
    quantum: u64,
    nfunc: usize,
    funcname_off: usize,
    cu_off: usize,
    filetab_off: usize,
    pctab_off: usize,
    functab_off: usize,
    /// Entry VA of every function plus the end sentinel (`nfunc + 1`).
    entries: Vec<u64>,
    text: u64,
    text_source: TextSource,
    /// VA of `go:func.*`, which funcdata offsets are relative to. Without it
    /// inline trees cannot be read and only physical frames are produced.
    gofunc: Option<u64>,
    wrapper_func_id: Option<u8>,
    name_style: NameStyle,
    by_name: OnceLock<HashMap<Box<str>, u32>>,
    notes: Vec<String>,
}

impl std::fmt::Debug for GoSymbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoSymbols")
            .field("pclntab", &format_args!("{:#x}", self.pcln_va))
            .field("nfunc", &self.nfunc)
            .field("text", &format_args!("{:#x}", self.text))
            .field("text_source", &self.text_source)
            .field("gofunc", &self.gofunc)
            .finish()
    }
}

#[derive(Debug)]
struct Header {
    format: PclnFormat,
    quantum: u8,
    nfunc: usize,
    text_start: u64,
    funcname_off: usize,
    cu_off: usize,
    filetab_off: usize,
    pctab_off: usize,
    functab_off: usize,
}

/// Moduledata word indices that differ by version (8-byte words from the
/// start of `runtime.moduledata`).
struct ModuledataLayout {
    rodata: usize,
    gofunc: usize,
    textsectmap: usize,
}

struct Moduledata {
    text: u64,
    gofunc: Option<u64>,
    /// `(vaddr, end, baseaddr)`; only consulted when there is more than one.
    textsects: Vec<(u64, u64, u64)>,
}

impl GoSymbols {
    /// Locates and indexes the pclntab of `elf`.
    ///
    /// Deliberately not built on `gobin` 0.6's pclntab reader, which (checked
    /// against real binaries) adds `startLine` to the line numbers Go 1.20+
    /// stores absolute, reads Go 1.18/1.19's 20-byte inline-tree entries
    /// with a 16-byte stride, and ends PC-value tables at a zero PC delta
    /// rather than at Go's terminator (a zero value delta). Its lookups are
    /// also iterator-based where frames() needs one PC.
    pub fn new(elf: &ElfFile, version: &GoVersion) -> Result<GoSymbols, String> {
        let reader = elf.va_reader();
        let (pcln, pcln_va) = find_pclntab(elf)?;
        let data = &reader.data()[pcln.clone()];
        let h = parse_header(data)?;
        let mut notes = Vec::new();

        let md = find_moduledata(elf, &reader, pcln_va, &h, version, &mut notes);
        let (text, text_source) = if let Some(md) = &md {
            (md.text, TextSource::Moduledata)
        } else if h.text_start != 0 {
            (h.text_start, TextSource::PclntabHeader)
        } else if let Some(sym) = elf.symbol("runtime.text") {
            (sym, TextSource::SymtabRuntimeText)
        } else if let Some(sec) = elf.section(".text") {
            notes.push(
                "runtime.text not recorded anywhere readable; assuming it is the start of .text \
                 (wrong for externally linked binaries)"
                    .to_owned(),
            );
            (sec.addr, TextSource::TextSection)
        } else {
            return Err("cannot determine where Go's text starts (no moduledata, no .text)".into());
        };
        if let (Some(md), true) = (&md, h.text_start != 0)
            && md.text != h.text_start
        {
            notes.push(format!(
                "pclntab header says text starts at {:#x} but moduledata says {:#x}; using moduledata",
                h.text_start, md.text
            ));
        }
        let gofunc = md
            .as_ref()
            .and_then(|m| m.gofunc)
            .or_else(|| elf.symbol("go:func.*"))
            .or_else(|| elf.symbol("go.func.*"));
        if gofunc.is_none() {
            notes.push(
                "runtime.moduledata not found: inlined calls are reported as their outermost \
                 function"
                    .to_owned(),
            );
        }
        let textsects = md.map(|m| m.textsects).unwrap_or_default();

        let mut entries = Vec::with_capacity(h.nfunc + 1);
        for i in 0..=h.nfunc {
            let off = i
                .checked_mul(8)
                .and_then(|o| o.checked_add(h.functab_off))
                .ok_or("functab offset overflows")?;
            let entryoff = read_u32(data, off).ok_or("functab is truncated")?;
            let va = text_off(text, &textsects, entryoff);
            if entries.last().is_some_and(|&prev| va < prev) {
                return Err(format!("functab is not sorted at entry {i}"));
            }
            entries.push(va);
        }
        let first_ok = entries.first().is_some_and(|&e| {
            elf.segments()
                .iter()
                .any(|s| s.is_executable() && s.file_offset(e).is_some())
        });
        if !first_ok {
            return Err(format!(
                "pclntab functions do not start in executable code (text base {text:#x} from {text_source:?})"
            ));
        }

        let minor = (version.major == 1).then_some(version.minor);
        let wrapper_func_id = match minor {
            Some(18..=21) => Some(21),
            Some(22..=24) => Some(22),
            Some(25..=27) => Some(23),
            _ => None,
        };
        let name_style = if version.at_least(27) {
            NameStyle::Go127
        } else {
            NameStyle::Simple
        };

        Ok(GoSymbols {
            reader,
            pcln,
            pcln_va,
            format: h.format,
            quantum: u64::from(h.quantum),
            nfunc: h.nfunc,
            funcname_off: h.funcname_off,
            cu_off: h.cu_off,
            filetab_off: h.filetab_off,
            pctab_off: h.pctab_off,
            functab_off: h.functab_off,
            entries,
            text,
            text_source,
            gofunc,
            wrapper_func_id,
            name_style,
            by_name: OnceLock::new(),
            notes,
        })
    }

    /// Number of functions in the table.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// VA of the pcHeader.
    pub fn pclntab_va(&self) -> u64 {
        self.pcln_va
    }

    /// VA of `runtime.text` and where it came from.
    pub fn text(&self) -> (u64, TextSource) {
        (self.text, self.text_source)
    }

    /// Whether inlined frames can be expanded (the inline trees are
    /// reachable).
    pub fn has_inline_info(&self) -> bool {
        self.gofunc.is_some()
    }

    /// Degradations worth telling the user about, one line each.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Function by exact (raw) name, e.g. `runtime.newproc1`.
    pub fn function(&self, name: &str) -> Option<GoFunc> {
        let idx = *self.name_index().get(name)?;
        self.go_func(idx as usize)
    }

    /// The physical (outermost) function whose code contains `pc`.
    pub fn function_at(&self, pc: u64) -> Option<GoFunc> {
        self.go_func(self.func_index(pc)?)
    }

    /// Every function, in address order.
    pub fn functions(&self) -> impl Iterator<Item = GoFunc> + '_ {
        (0..self.nfunc).filter_map(|i| self.go_func(i))
    }

    /// Frames at `pc`, innermost first, as `runtime.CallersFrames` yields
    /// them: inlined calls expanded, names printed the way the runtime
    /// prints them, and compiler-generated wrappers left out (Go's own
    /// tracebacks hide them too, unless they called a panic, which a single
    /// PC cannot tell). Empty for a PC outside Go code, or one whose only
    /// frames are wrappers.
    ///
    /// Pass a return address minus one, like Go's traceback does.
    pub fn frames(&self, pc: u64) -> Vec<Frame> {
        self.frames_impl(pc, true)
    }

    /// [`GoSymbols::frames`], telling "not Go code" (`None`) apart from
    /// "only wrapper frames, hidden" (`Some(empty)`). Since Go 1.22 every
    /// `go f(x)` goroutine has a wrapper (`main.main.gowrap1`) as its
    /// outermost frame, so a stack walk meets hidden frames routinely.
    pub fn try_frames(&self, pc: u64) -> Option<Vec<Frame>> {
        self.func_index(pc)?;
        Some(self.frames_impl(pc, true))
    }

    /// The innermost frame at `pc` without hiding wrappers; what
    /// `runtime.FuncForPC(pc)` reports (name and `FileLine(pc)`). Use this
    /// for a goroutine's `startpc`, which is usually a wrapper.
    pub fn innermost_frame(&self, pc: u64) -> Option<Frame> {
        self.frames_impl(pc, false).into_iter().next()
    }

    fn frames_impl(&self, pc: u64, elide_wrappers: bool) -> Vec<Frame> {
        let mut out = Vec::new();
        let Some(idx) = self.func_index(pc) else {
            return out;
        };
        let Some(f) = self.func_record(idx) else {
            return out;
        };
        let tree = self.inline_tree(&f);
        let mut cur = pc;
        let mut ix = if tree.is_some() {
            self.pcvalue(&f, self.pcdata_off(&f, PCDATA_INL_TREE_INDEX), cur)
        } else {
            -1
        };
        for _ in 0..MAX_INLINE_DEPTH {
            let call = match (ix, tree) {
                (i, Some(tree)) if i >= 0 => self.inlined_call(tree, i as u32),
                _ => None,
            };
            let (name_off, func_id) = match &call {
                Some(c) => (c.name_off, c.func_id),
                None => (f.name_off, f.func_id),
            };
            if !(elide_wrappers && Some(func_id) == self.wrapper_func_id) {
                let (file, line) = self.file_line(&f, cur);
                out.push(Frame {
                    function: self.print_name(self.runtime_name_at(name_off)).into(),
                    file: file.into(),
                    line,
                });
            }
            let Some(c) = call else { break };
            let Some(next) = f.entry.checked_add(u64::from(c.parent_pc)) else {
                break;
            };
            cur = next;
            ix = self.pcvalue(&f, self.pcdata_off(&f, PCDATA_INL_TREE_INDEX), cur);
        }
        out
    }

    fn name_index(&self) -> &HashMap<Box<str>, u32> {
        self.by_name.get_or_init(|| {
            let mut map = HashMap::with_capacity(self.nfunc);
            for i in 0..self.nfunc {
                let Some(f) = self.func_record(i) else {
                    continue;
                };
                if let Some(name) = self.name_at(f.name_off) {
                    map.entry(Box::from(name)).or_insert(i as u32);
                }
            }
            map
        })
    }

    fn func_index(&self, pc: u64) -> Option<usize> {
        let (&first, &end) = (self.entries.first()?, self.entries.last()?);
        if pc < first || pc >= end {
            return None;
        }
        let i = self.entries.partition_point(|&e| e <= pc);
        let i = i.checked_sub(1)?;
        (i < self.nfunc).then_some(i)
    }

    fn go_func(&self, idx: usize) -> Option<GoFunc> {
        let f = self.func_record(idx)?;
        Some(GoFunc {
            name: self.name_at(f.name_off)?.to_owned(),
            entry: *self.entries.get(idx)?,
            end: *self.entries.get(idx + 1)?,
        })
    }

    fn data(&self) -> &[u8] {
        &self.reader.data()[self.pcln.clone()]
    }

    fn func_record(&self, idx: usize) -> Option<FuncRecord> {
        let data = self.data();
        let funcoff = read_u32(data, self.functab_off + idx * 8 + 4)? as usize;
        let off = self.functab_off.checked_add(funcoff)?;
        let (func_id_at, nfuncdata_at, size) = match self.format {
            PclnFormat::Go118 => (36, 39, 40),
            PclnFormat::Go120 => (40, 43, 44),
        };
        let rec = data.get(off..off.checked_add(size)?)?;
        Some(FuncRecord {
            off,
            entry: *self.entries.get(idx)?,
            name_off: read_u32(rec, 4)?,
            pcfile: read_u32(rec, 20)?,
            pcln: read_u32(rec, 24)?,
            npcdata: read_u32(rec, 28)?,
            cu_offset: read_u32(rec, 32)?,
            func_id: *rec.get(func_id_at)?,
            nfuncdata: *rec.get(nfuncdata_at)?,
        })
    }

    fn func_size(&self) -> usize {
        match self.format {
            PclnFormat::Go118 => 40,
            PclnFormat::Go120 => 44,
        }
    }

    /// `pctab` offset of PCDATA table `table`, or 0 (= no table) when the
    /// function has fewer tables.
    fn pcdata_off(&self, f: &FuncRecord, table: u32) -> u32 {
        if table >= f.npcdata {
            return 0;
        }
        read_u32(self.data(), f.off + self.func_size() + table as usize * 4).unwrap_or(0)
    }

    /// VA of FUNCDATA `i`, like `runtime.funcdata`.
    fn funcdata(&self, f: &FuncRecord, i: u8) -> Option<u64> {
        if i >= f.nfuncdata {
            return None;
        }
        let at = f.off + self.func_size() + f.npcdata as usize * 4 + usize::from(i) * 4;
        let off = read_u32(self.data(), at)?;
        if off == u32::MAX {
            return None;
        }
        self.gofunc?.checked_add(u64::from(off))
    }

    fn inline_tree(&self, f: &FuncRecord) -> Option<u64> {
        self.funcdata(f, FUNCDATA_INL_TREE)
    }

    fn inlined_call(&self, tree: u64, ix: u32) -> Option<InlinedCall> {
        let size: u64 = match self.format {
            PclnFormat::Go118 => 20,
            PclnFormat::Go120 => 16,
        };
        let at = tree.checked_add(u64::from(ix).checked_mul(size)?)?;
        let b = self.reader.read(at, size as usize)?;
        Some(match self.format {
            // parent i16, funcID u8, pad, file i32, line i32, func_ i32, parentPc i32
            PclnFormat::Go118 => InlinedCall {
                func_id: b[2],
                name_off: read_u32(b, 12)?,
                parent_pc: read_u32(b, 16)?,
            },
            // funcID u8, pad[3], nameOff i32, parentPc i32, startLine i32
            PclnFormat::Go120 => InlinedCall {
                func_id: b[0],
                name_off: read_u32(b, 4)?,
                parent_pc: read_u32(b, 8)?,
            },
        })
    }

    /// `runtime.pcvalue`: the value of the PC-value table at `off` for
    /// `target`, or -1 when there is no table or `target` is past its end.
    fn pcvalue(&self, f: &FuncRecord, off: u32, target: u64) -> i32 {
        if off == 0 {
            return -1;
        }
        let data = self.data();
        let Some(mut p) = self
            .pctab_off
            .checked_add(off as usize)
            .and_then(|start| data.get(start..))
        else {
            return -1;
        };
        let mut pc = f.entry;
        let mut val: i32 = -1;
        loop {
            // Go's `step`: a zero value delta ends the table, except as the
            // very first byte (a table whose first value is 0).
            let Some((uvdelta, n)) = read_varint(p) else {
                return -1;
            };
            if uvdelta == 0 && pc != f.entry {
                return -1;
            }
            p = &p[n..];
            let vdelta = ((uvdelta >> 1) as i32) ^ -((uvdelta & 1) as i32);
            val = val.wrapping_add(vdelta);
            let Some((pcdelta, n)) = read_varint(p) else {
                return -1;
            };
            p = &p[n..];
            pc = pc.wrapping_add(u64::from(pcdelta) * self.quantum);
            if target < pc {
                return val;
            }
        }
    }

    /// `runtime.funcline1`: `("?", 0)` whenever Go's would be.
    fn file_line(&self, f: &FuncRecord, pc: u64) -> (String, u32) {
        let fileno = self.pcvalue(f, f.pcfile, pc);
        let line = self.pcvalue(f, f.pcln, pc);
        if fileno < 0 || line < 0 {
            return ("?".to_owned(), 0);
        }
        let file = self
            .file_name(f.cu_offset, fileno as u32)
            .unwrap_or("?")
            .to_owned();
        (file, line as u32)
    }

    fn file_name(&self, cu_offset: u32, fileno: u32) -> Option<&str> {
        let data = self.data();
        let slot = (cu_offset as usize).checked_add(fileno as usize)?;
        let fileoff = read_u32(data, self.cu_off.checked_add(slot.checked_mul(4)?)?)?;
        if fileoff == u32::MAX {
            return None;
        }
        c_str(data, self.filetab_off.checked_add(fileoff as usize)?)
    }

    fn name_at(&self, name_off: u32) -> Option<&str> {
        c_str(
            self.data(),
            self.funcname_off.checked_add(name_off as usize)?,
        )
    }

    /// The name the runtime prints: its `funcName` treats offset 0 as "no
    /// name", although the linker puts the first function's name there.
    fn runtime_name_at(&self, name_off: u32) -> &str {
        if name_off == 0 {
            return "";
        }
        self.name_at(name_off).unwrap_or("?")
    }

    fn print_name(&self, raw: &str) -> String {
        match self.name_style {
            NameStyle::Simple => name_for_print_simple(raw),
            NameStyle::Go127 => name_for_print_go127(raw),
        }
    }
}

struct InlinedCall {
    func_id: u8,
    name_off: u32,
    parent_pc: u32,
}

/// `funcNameForPrint` before 1.27. (Go 1.18–1.20 already wrote `[...]` into
/// the table, so applying this to them changes nothing.)
fn name_for_print_simple(name: &str) -> String {
    let Some(i) = name.find('[') else {
        return name.to_owned();
    };
    match name.rfind(']') {
        Some(j) if j > i => format!("{}[...]{}", &name[..i], &name[j + 1..]),
        _ => name.to_owned(),
    }
}

/// `funcNameForPrint` of Go 1.27, which also shortens generic methods of
/// generic types: `pkg.T[shape].M[shape]` → `pkg.T[...].M[...]`.
fn name_for_print_go127(name: &str) -> String {
    let Some(i) = name.find('[') else {
        return name.to_owned();
    };
    let j = match name.rfind(']') {
        Some(j) if j > i => j,
        _ => return name.to_owned(),
    };
    let interior = &name[i + 1..j];
    if !interior.contains('[') {
        return format!("{}[...]{}", &name[..i], &name[j + 1..]);
    }
    let mut depth = 1i32;
    let (mut rbr, mut lbr) = (None, None);
    for (k, c) in interior.char_indices() {
        if c == '[' {
            depth += 1;
            if depth != 1 {
                continue;
            }
            lbr = Some(k);
            break;
        }
        if c == ']' {
            depth -= 1;
            if depth < 0 {
                break;
            }
            if depth != 0 {
                continue;
            }
            rbr = Some(k);
        }
    }
    if depth == 1 {
        match (rbr, lbr) {
            (Some(r), Some(l)) if l > r => {
                return format!(
                    "{}[...]{}[...]{}",
                    &name[..i],
                    &interior[r + 1..l],
                    &name[j + 1..]
                );
            }
            (None, None) => return format!("{}[...]{}", &name[..i], &name[j + 1..]),
            _ => {}
        }
    }
    name.to_owned()
}

/// Go 1.26+ (`runtime.textOff`): with several text sections (huge arm64
/// binaries), an entry offset is translated through `textsectmap`.
fn text_off(text: u64, sects: &[(u64, u64, u64)], off: u32) -> u64 {
    let off = u64::from(off);
    if sects.len() > 1 {
        for (i, &(vaddr, end, base)) in sects.iter().enumerate() {
            if (off >= vaddr && off < end) || (i == sects.len() - 1 && off == end) {
                return base.wrapping_add(off.wrapping_sub(vaddr));
            }
        }
    }
    text.wrapping_add(off)
}

/// Whether `elf` contains a Go 1.18+ pclntab (by section or by scanning).
pub fn has_pclntab(elf: &ElfFile) -> bool {
    find_pclntab(elf).is_ok()
}

fn find_pclntab(elf: &ElfFile) -> Result<(Range<usize>, u64), String> {
    let bytes = elf.bytes();
    // PIE builds before Go 1.26 put it in .data.rel.ro.gopclntab.
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(sec) = elf.section(name)
            && let Some(data) = elf.section_data(sec)
            && parse_header(data).is_ok()
        {
            let start = sec.offset as usize;
            return Ok((start..start + data.len(), sec.addr));
        }
    }
    // Section headers can be stripped by external tools; the pcHeader is
    // pointer-aligned inside a non-executable segment.
    for seg in elf.segments().iter().filter(|s| !s.is_executable()) {
        let (start, end) = (seg.offset as usize, (seg.offset + seg.filesz) as usize);
        let Some(region) = bytes.get(start..end) else {
            continue;
        };
        for at in (0..region.len().saturating_sub(72)).step_by(8) {
            let magic = &region[at..at + 4];
            if (magic == [0xf0, 0xff, 0xff, 0xff] || magic == [0xf1, 0xff, 0xff, 0xff])
                && parse_header(&region[at..]).is_ok()
            {
                return Ok((start + at..end, seg.vaddr.wrapping_add(at as u64)));
            }
        }
    }
    Err("no Go pclntab found (not a Go binary, or built with Go older than 1.18)".into())
}

fn parse_header(data: &[u8]) -> Result<Header, String> {
    if data.len() < 72 {
        return Err("pclntab too short".into());
    }
    let magic = read_u32(data, 0).ok_or("pclntab too short")?;
    let format = match magic {
        0xffff_fff1 => PclnFormat::Go120,
        0xffff_fff0 => PclnFormat::Go118,
        0xffff_fffa | 0xffff_fffb => {
            return Err("pclntab of Go 1.17 or older; leaktrace needs Go 1.19+".into());
        }
        m => return Err(format!("unknown pclntab magic {m:#x}")),
    };
    let (pad1, pad2, quantum, ptr_size) = (data[4], data[5], data[6], data[7]);
    if pad1 != 0 || pad2 != 0 || !matches!(quantum, 1 | 2 | 4) {
        return Err("pclntab header is corrupt".into());
    }
    if ptr_size != 8 {
        return Err(format!(
            "{}-bit pclntab; leaktrace supports 64-bit targets only",
            ptr_size * 8
        ));
    }
    let word = |i: usize| read_u64(data, 8 + i * 8).ok_or("pclntab header is truncated");
    let as_off = |v: u64| usize::try_from(v).ok().filter(|&v| v < data.len());
    let nfunc = usize::try_from(word(0)?).map_err(|_| "bad nfunc")?;
    let offs = [word(3)?, word(4)?, word(5)?, word(6)?, word(7)?];
    let [
        Some(funcname_off),
        Some(cu_off),
        Some(filetab_off),
        Some(pctab_off),
        Some(functab_off),
    ] = offs.map(as_off)
    else {
        return Err("pclntab table offsets point outside it".into());
    };
    let ordered = funcname_off <= cu_off
        && cu_off <= filetab_off
        && filetab_off <= pctab_off
        && pctab_off <= functab_off;
    let functab_fits = nfunc
        .checked_add(1)
        .and_then(|n| n.checked_mul(8))
        .and_then(|n| n.checked_add(functab_off))
        .is_some_and(|end| end <= data.len());
    if nfunc == 0 || !ordered || !functab_fits {
        return Err("pclntab header is inconsistent".into());
    }
    Ok(Header {
        format,
        quantum,
        nfunc,
        text_start: word(2)?,
        funcname_off,
        cu_off,
        filetab_off,
        pctab_off,
        functab_off,
    })
}

fn moduledata_layout(version: &GoVersion) -> Option<ModuledataLayout> {
    if version.major != 1 {
        return None;
    }
    Some(match version.minor {
        18 | 19 => ModuledataLayout {
            rodata: 37,
            gofunc: 38,
            textsectmap: 39,
        },
        // 1.20 added covctrs/ecovctrs.
        20..=25 => ModuledataLayout {
            rodata: 39,
            gofunc: 40,
            textsectmap: 41,
        },
        // 1.26 added epclntab after gofunc.
        26 => ModuledataLayout {
            rodata: 39,
            gofunc: 40,
            textsectmap: 42,
        },
        // 1.27 added typedesclen, itaboffset and itabsize.
        27 => ModuledataLayout {
            rodata: 42,
            gofunc: 43,
            textsectmap: 45,
        },
        _ => return None,
    })
}

/// Finds `runtime.firstmoduledata` by scanning data for a pointer to the
/// pcHeader and checking that the following slices point at its tables.
/// Go writes link-time pointer values into the file even for PIE (the
/// dynamic relocations carry the same addends), so this works there too.
fn find_moduledata(
    elf: &ElfFile,
    reader: &VaReader,
    pcln_va: u64,
    h: &Header,
    version: &GoVersion,
    notes: &mut Vec<String>,
) -> Option<Moduledata> {
    let bytes = elf.bytes();
    let mut regions: Vec<(usize, usize)> = Vec::new();
    // Go 1.26+ gives moduledata its own section.
    if let Some(sec) = elf.section(".go.module") {
        regions.push(file_range(sec.offset, sec.size));
    }
    for sec in elf.sections() {
        if sec.is_alloc() && sec.is_writable() && sec.has_file_data() && sec.name != ".go.module" {
            regions.push(file_range(sec.offset, sec.size));
        }
    }
    if regions.is_empty() {
        for seg in elf.segments().iter().filter(|s| s.is_writable()) {
            regions.push(file_range(seg.offset, seg.filesz));
        }
    }
    let needle = pcln_va.to_le_bytes();
    let word = |base: usize, i: usize| read_u64(bytes, base + i * 8);
    for (start, end) in regions {
        let start = start.next_multiple_of(8);
        let Some(region) = bytes.get(start..end.min(bytes.len())) else {
            continue;
        };
        for at in (0..region.len().saturating_sub(8)).step_by(8) {
            if region[at..at + 8] != needle {
                continue;
            }
            let base = start + at;
            let at_off = |off: usize| Some(pcln_va.wrapping_add(off as u64));
            let matches = word(base, 1) == at_off(h.funcname_off)
                && word(base, 4) == at_off(h.cu_off)
                && word(base, 7) == at_off(h.filetab_off)
                && word(base, 10) == at_off(h.pctab_off)
                && word(base, 16) == at_off(h.functab_off)
                && word(base, 17) == Some(h.nfunc as u64 + 1);
            if !matches {
                continue;
            }
            let text = word(base, 22)?;
            let Some(layout) = moduledata_layout(version) else {
                notes.push(format!(
                    "moduledata layout of {version} is unknown; inlined frames are not expanded"
                ));
                return Some(Moduledata {
                    text,
                    gofunc: None,
                    textsects: Vec::new(),
                });
            };
            // rodata points into the read-only segment; checking it catches
            // a wrong layout before gofunc sends us astray.
            let rodata_ok = word(base, layout.rodata).is_some_and(|r| {
                elf.segments()
                    .iter()
                    .any(|s| !s.is_executable() && !s.is_writable() && s.file_offset(r).is_some())
            });
            let gofunc =
                word(base, layout.gofunc).filter(|&g| rodata_ok && reader.read(g, 1).is_some());
            if gofunc.is_none() {
                notes.push(format!(
                    "moduledata at {:#x} does not look like {}'s layout; inlined frames are not expanded",
                    elf.file_offset_to_va(base as u64).unwrap_or(0),
                    version.minor_key()
                ));
            }
            let mut textsects = Vec::new();
            if let (Some(ptr), Some(len)) = (
                word(base, layout.textsectmap),
                word(base, layout.textsectmap + 1),
            ) && (2..=64).contains(&len)
            {
                for i in 0..len {
                    let at = ptr.wrapping_add(i * 24);
                    match (
                        reader.read_u64(at),
                        reader.read_u64(at.wrapping_add(8)),
                        reader.read_u64(at.wrapping_add(16)),
                    ) {
                        (Some(v), Some(e), Some(b)) => textsects.push((v, e, b)),
                        _ => {
                            textsects.clear();
                            break;
                        }
                    }
                }
            }
            return Some(Moduledata {
                text,
                gofunc,
                textsects,
            });
        }
    }
    None
}

fn file_range(offset: u64, size: u64) -> (usize, usize) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    (
        start,
        start.saturating_add(usize::try_from(size).unwrap_or(usize::MAX)),
    )
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Unsigned LEB128 as Go writes it (at most 5 bytes for a uint32).
fn read_varint(p: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for (i, &b) in p.iter().enumerate().take(5) {
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn c_str(data: &[u8], at: usize) -> Option<&str> {
    let rest = data.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_names_like_the_runtime() {
        assert_eq!(name_for_print_simple("main.main"), "main.main");
        assert_eq!(name_for_print_simple("main.G[go.shape.int]"), "main.G[...]");
        assert_eq!(
            name_for_print_simple("main.(*Box[go.shape.string]).Get.func1"),
            "main.(*Box[...]).Get.func1"
        );
        assert_eq!(name_for_print_simple("a]b[c"), "a]b[c");
        assert_eq!(
            name_for_print_go127("main.Box[go.shape.int].Map[go.shape.string]"),
            "main.Box[...].Map[...]"
        );
        assert_eq!(
            name_for_print_go127("main.G[go.shape.[]int]"),
            "main.G[...]"
        );
        assert_eq!(name_for_print_go127("main.G[...]"), "main.G[...]");
        assert_eq!(name_for_print_go127("x[a]]b[c]"), "x[a]]b[c]");
    }

    #[test]
    fn varint() {
        assert_eq!(read_varint(&[0x05]), Some((5, 1)));
        assert_eq!(read_varint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read_varint(&[0x80]), None);
        assert_eq!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), None);
    }

    #[test]
    fn header_rejects_garbage() {
        assert!(parse_header(&[]).is_err());
        let mut h = vec![0u8; 72];
        h[..4].copy_from_slice(&0xffff_fff1u32.to_le_bytes());
        h[6] = 1;
        h[7] = 8;
        assert!(parse_header(&h).is_err(), "nfunc = 0");
        h[..4].copy_from_slice(&0xffff_fffbu32.to_le_bytes());
        assert!(parse_header(&h).unwrap_err().contains("1.17"));
    }
}
