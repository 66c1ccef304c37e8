//! Where an idle tokio task is awaiting: its async state machine, decoded
//! from the target's memory with the binary's type DWARF (`debug = true`).
//!
//! rustc describes every `async fn`/block as a struct
//! (`path::f::{async_fn_env#0}`) with a `DW_TAG_variant_part` whose
//! discriminant is the artificial `__state` member. Each `DW_TAG_variant`
//! holds one member (named `"0"`, `"3"`, … and typed `Unresumed`,
//! `Returned`, `Panicked`, `Suspend<N>`) and that member carries the
//! `DW_AT_decl_file`/`DW_AT_decl_line` of the `.await` (for `Unresumed` the
//! fn's line, for `Returned`/`Panicked` the closing brace). A `Suspend<N>`
//! struct has a `__awaitee` member: the future being awaited, itself a state
//! machine when it is an async fn, which gives an async backtrace.
//!
//! Where the future sits in the task cell comes from DWARF too: the
//! vtable's `raw::poll<T, S>` subprogram leads (through its `harness`
//! variable, or a type of the same unit) to `Cell<T, S>`, and the path from
//! the cell to its `T` passes `Stage<T>`'s variant part, whose tag must say
//! `Running` before `T` means anything.
//!
//! Cost: [`AwaitDecoder::load`] walks only the compile units that hold the
//! vtables' `poll` functions (found through `.debug_aranges`) and follows
//! type references from there; [`AwaitDecoder::stack`] then needs no DWARF:
//! one read of the task cell, plus one per boxed future on the chain.
use std::collections::{HashMap, HashSet};
use std::fmt;

use gimli::{AttributeValue, DebuggingInformationEntry, DwTag};

use super::vtables::{TaskVtable, short_future_name};
use crate::{
    symbols::dwarf::{self, Slice},
    target::elf::ElfFile,
};

/// At most this many frames per stack (recursive async fns are cut there).
const MAX_FRAMES: usize = 16;
/// Nesting of plain structs searched for a future, and of cell members
/// searched for `T`.
const MAX_TYPE_DEPTH: usize = 8;
/// The task cell is read in one piece up to this size.
const MAX_CELL_READ: u64 = 64 * 1024;
/// Types visited from `raw::poll` while looking for `Cell<T, S>`.
const MAX_CELL_SEARCH: usize = 64;

/// One frame of an idle task's await stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwaitPoint {
    /// The async fn's path (`tokio_fixture::mpsc_consumer`), as
    /// [`short_future_name`] spells it; for a future that is not an async fn
    /// (the innermost leaf, or a wrapper such as `Timeout<F>`), its type.
    pub function: String,
    /// Source of the `.await` (empty when unknown, e.g. for non-async frames).
    pub file: String,
    /// Line of the `.await`; for `Unresumed` the fn's own line; 0 when unknown.
    pub line: u32,
    /// The state machine's variant: `Suspend0`, `Suspend1`, …, `Unresumed`
    /// (never polled), `Returned`, `Panicked`. Empty for non-async frames.
    /// When the task's stage is not `Running`, the stage (`Finished`,
    /// `Consumed`) on a single frame naming the task's future.
    pub state: String,
}

impl fmt::Display for AwaitPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.function)?;
        if !self.state.is_empty() {
            write!(f, " [{}]", self.state)?;
        }
        if !self.file.is_empty() {
            write!(f, " at {}:{}", self.file, self.line)?;
        }
        Ok(())
    }
}

/// A discriminant (or any small integer) inside a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    offset: u64,
    size: u8,
}

/// Offset of `node` within the value that refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    offset: u64,
    node: usize,
}

/// One variant of an enum-like tag: `None` is the untagged (niche) variant.
#[derive(Clone, Debug)]
struct Variant {
    value: Option<u64>,
    name: String,
}

/// The variant whose tag is `raw` (compared in the tag's `size` bytes: a
/// negative tag may be recorded sign-extended), else the untagged one.
fn pick<T>(items: &[T], tag: impl Fn(&T) -> &Variant, raw: u64, size: u8) -> Option<usize> {
    let mask = match size {
        8.. => u64::MAX,
        s => (1u64 << (8 * u32::from(s))) - 1,
    };
    items
        .iter()
        .position(|v| tag(v).value.is_some_and(|t| t & mask == raw & mask))
        .or_else(|| items.iter().position(|v| tag(v).value.is_none()))
}

/// `Stage<T>` must be in the variant that holds `T` (`Running`).
#[derive(Clone, Debug)]
struct TagCheck {
    tag: Field,
    variants: Vec<Variant>,
    want: usize,
}

#[derive(Clone, Debug)]
struct StateVariant {
    tag: Variant,
    file: String,
    line: u32,
    /// `__awaitee`, relative to the state machine.
    awaitee: Option<Link>,
}

#[derive(Clone, Debug)]
enum Node {
    /// An `async fn` or block.
    Async {
        function: String,
        state: Field,
        variants: Vec<StateVariant>,
    },
    /// A plain struct with exactly one future inside (`Timeout<F>`,
    /// `Instrumented<F>`): reported as a frame without a line.
    Wrapper { name: String, inner: Link },
    /// A pointer (`Box<F>`, `&mut F`) at `Link::offset` to `inner`.
    Deref { inner: Link },
    /// A future with no state machine inside: ends the stack.
    Leaf { name: String },
}

#[derive(Clone, Debug)]
struct TaskLayout {
    /// The future type's short name, for stacks of finished tasks.
    name: String,
    cell_size: u64,
    checks: Vec<TagCheck>,
    /// `T` from the task header.
    future: Link,
}

/// Decodes idle tasks' await points in one binary; built once.
pub struct AwaitDecoder {
    tasks: Vec<Option<TaskLayout>>,
    nodes: Vec<Node>,
}

impl fmt::Debug for AwaitDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitDecoder")
            .field("vtables", &self.tasks.len())
            .field("decodable", &self.decodable())
            .field("types", &self.nodes.len())
            .finish()
    }
}

impl AwaitDecoder {
    /// `None` when the binary has no type DWARF (line-tables-only, no
    /// debug info, stripped) or no task vtables: the caller warns.
    pub fn load(elf: &ElfFile, vtables: &[TaskVtable]) -> Option<AwaitDecoder> {
        if !elf.has_dwarf() || vtables.is_empty() {
            return None;
        }
        let sections = dwarf::sections(elf, dwarf::all).ok()?;
        let dwarf = dwarf::borrow(&sections);
        let mut dw = Dw::new(dwarf);
        let polls: HashSet<u64> = vtables.iter().map(|v| v.poll()).collect();
        let subprograms = dw.poll_subprograms(&polls);
        if dw.struct_types == 0 {
            return None;
        }
        let mut b = Builder {
            dw,
            nodes: Vec::new(),
            memo: HashMap::new(),
            leaves: HashMap::new(),
        };
        let tasks = vtables
            .iter()
            .map(|v| {
                let sub = *subprograms.get(&v.poll())?;
                b.task_layout(sub)
            })
            .collect();
        Some(AwaitDecoder {
            tasks,
            nodes: b.nodes,
        })
    }

    /// How many vtables (of the slice given to [`Self::load`]) have a
    /// decodable future.
    pub fn decodable(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_some()).count()
    }

    pub fn is_decodable(&self, vtable: usize) -> bool {
        self.tasks.get(vtable).is_some_and(Option::is_some)
    }

    /// The await stack of one idle task, innermost first. `header` is the
    /// task's run-time address; `read(addr, len)` reads the target's memory.
    /// Empty when the vtable is not decodable or the memory unreadable. A
    /// never-polled task gives one `Unresumed` frame; a task whose stage is
    /// not `Running` one frame with the stage as its state.
    pub fn stack(
        &self,
        vtable: usize,
        header: u64,
        read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
    ) -> Vec<AwaitPoint> {
        let Some(Some(task)) = self.tasks.get(vtable) else {
            return Vec::new();
        };
        let mut mem = Window::new(read, header, task.cell_size.min(MAX_CELL_READ));
        let mut out = Vec::new();
        for c in &task.checks {
            let Some(raw) = mem.uint(header.wrapping_add(c.tag.offset), c.tag.size) else {
                return out;
            };
            match pick(&c.variants, |v| v, raw, c.tag.size) {
                Some(i) if i == c.want => {}
                other => {
                    out.push(AwaitPoint {
                        function: task.name.clone(),
                        file: String::new(),
                        line: 0,
                        state: other
                            .map(|i| c.variants[i].name.clone())
                            .unwrap_or_else(|| format!("stage tag {raw}")),
                    });
                    return out;
                }
            }
        }
        let mut at = header;
        let mut link = task.future;
        // Derefs add no frame: bound the steps too.
        for _ in 0..4 * MAX_FRAMES {
            if out.len() >= MAX_FRAMES {
                break;
            }
            let addr = at.wrapping_add(link.offset);
            match &self.nodes[link.node] {
                Node::Async {
                    function,
                    state,
                    variants,
                } => {
                    let Some(raw) = mem.uint(addr.wrapping_add(state.offset), state.size) else {
                        break;
                    };
                    let picked = pick(variants, |v| &v.tag, raw, state.size);
                    let Some(v) = picked.map(|i| &variants[i]) else {
                        out.push(AwaitPoint {
                            function: function.clone(),
                            file: String::new(),
                            line: 0,
                            state: format!("__state {raw}"),
                        });
                        break;
                    };
                    out.push(AwaitPoint {
                        function: function.clone(),
                        file: v.file.clone(),
                        line: v.line,
                        state: v.tag.name.clone(),
                    });
                    let Some(next) = v.awaitee else { break };
                    at = addr;
                    link = next;
                }
                Node::Wrapper { name, inner } => {
                    out.push(AwaitPoint {
                        function: name.clone(),
                        file: String::new(),
                        line: 0,
                        state: String::new(),
                    });
                    at = addr;
                    link = *inner;
                }
                Node::Deref { inner } => {
                    match mem.uint(addr, 8) {
                        Some(p) if p != 0 => at = p,
                        _ => break,
                    }
                    link = *inner;
                }
                Node::Leaf { name } => {
                    out.push(AwaitPoint {
                        function: name.clone(),
                        file: String::new(),
                        line: 0,
                        state: String::new(),
                    });
                    break;
                }
            }
        }
        out.reverse();
        out
    }
}

/// The task cell, read once; anything outside it (boxed futures) is read
/// on demand.
struct Window<'r> {
    read: &'r mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
    base: u64,
    buf: Vec<u8>,
}

impl<'r> Window<'r> {
    fn new(read: &'r mut dyn FnMut(u64, usize) -> Option<Vec<u8>>, base: u64, len: u64) -> Self {
        let buf = read(base, len as usize).unwrap_or_default();
        Self { read, base, buf }
    }

    fn uint(&mut self, addr: u64, size: u8) -> Option<u64> {
        let size = usize::from(size);
        if size == 0 || size > 8 {
            return None;
        }
        let fetched;
        let bytes = match addr
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| self.buf.get(o..o.checked_add(size)?))
        {
            Some(b) => b,
            None => {
                fetched = (self.read)(addr, size)?;
                fetched.get(..size)?
            }
        };
        let mut word = [0u8; 8];
        word[..size].copy_from_slice(bytes);
        Some(u64::from_le_bytes(word))
    }
}

/// A DIE by its `.debug_info` offset: unique across units, so it serves as
/// type identity.
type Die = usize;

/// The attributes this module reads, of one DIE.
#[derive(Clone, Debug)]
struct DieInfo {
    die: Die,
    tag: DwTag,
    name: Option<String>,
    ty: Option<Die>,
    location: Option<u64>,
    byte_size: Option<u64>,
    decl_file: Option<u64>,
    decl_line: Option<u64>,
    discr: Option<Die>,
    discr_value: Option<u64>,
    declaration: bool,
    origin: Option<Die>,
}

/// A namespace's extent in its unit, for qualified type names.
struct Scope {
    start: usize,
    end: usize,
    name: String,
    parent: Option<usize>,
}

/// Lazily parsed units of one `.debug_info`.
struct Dw<'a> {
    dwarf: gimli::Dwarf<Slice<'a>>,
    /// `.debug_info` offset of each unit header, ascending.
    starts: Vec<usize>,
    headers: Vec<gimli::UnitHeader<Slice<'a>>>,
    units: Vec<Option<gimli::Unit<Slice<'a>>>>,
    /// Namespaces of the units walked so far.
    scopes: Vec<Option<Vec<Scope>>>,
    files: HashMap<(usize, u64), String>,
    /// Structure types seen in the walked units: none means no type DWARF.
    struct_types: usize,
}

impl<'a> Dw<'a> {
    fn new(dwarf: gimli::Dwarf<Slice<'a>>) -> Self {
        let mut starts = Vec::new();
        let mut headers = Vec::new();
        let mut it = dwarf.units();
        while let Ok(Some(h)) = it.next() {
            if let Some(o) = h.offset().as_debug_info_offset() {
                starts.push(o.0);
                headers.push(h);
            }
        }
        let n = headers.len();
        Self {
            dwarf,
            starts,
            headers,
            units: (0..n).map(|_| None).collect(),
            scopes: (0..n).map(|_| None).collect(),
            files: HashMap::new(),
            struct_types: 0,
        }
    }

    fn unit_of(&self, die: Die) -> Option<usize> {
        let i = self.starts.partition_point(|&s| s <= die).checked_sub(1)?;
        let h = &self.headers[i];
        (die < self.starts[i] + h.length_including_self()).then_some(i)
    }

    /// Parse unit `cu` if it is not yet; false when it cannot be.
    fn load_unit(&mut self, cu: usize) -> bool {
        if self.units[cu].is_none() {
            self.units[cu] = self.dwarf.unit(self.headers[cu]).ok();
        }
        self.units[cu].is_some()
    }

    fn reference(&self, cu: usize, v: AttributeValue<Slice<'a>>) -> Option<Die> {
        match v {
            AttributeValue::UnitRef(o) => Some(self.starts[cu] + o.0),
            AttributeValue::DebugInfoRef(o) => Some(o.0),
            _ => None,
        }
    }

    fn die_info(&self, cu: usize, e: &DebuggingInformationEntry<'_, '_, Slice<'a>>) -> DieInfo {
        let mut info = DieInfo {
            die: self.starts[cu] + e.offset().0,
            tag: e.tag(),
            name: None,
            ty: None,
            location: None,
            byte_size: None,
            decl_file: None,
            decl_line: None,
            discr: None,
            discr_value: None,
            declaration: false,
            origin: None,
        };
        let Some(unit) = self.units[cu].as_ref() else {
            return info;
        };
        let mut attrs = e.attrs();
        while let Ok(Some(a)) = attrs.next() {
            let v = a.value();
            match a.name() {
                gimli::DW_AT_name => {
                    info.name = self
                        .dwarf
                        .attr_string(unit, v)
                        .ok()
                        .map(|s| s.to_string_lossy().into_owned());
                }
                gimli::DW_AT_type => info.ty = self.reference(cu, v),
                gimli::DW_AT_data_member_location => info.location = v.udata_value(),
                gimli::DW_AT_byte_size => info.byte_size = v.udata_value(),
                gimli::DW_AT_decl_file => {
                    info.decl_file = match v {
                        AttributeValue::FileIndex(i) => Some(i),
                        other => other.udata_value(),
                    }
                }
                gimli::DW_AT_decl_line => info.decl_line = v.udata_value(),
                gimli::DW_AT_discr => info.discr = self.reference(cu, v),
                gimli::DW_AT_discr_value => {
                    info.discr_value = match v {
                        AttributeValue::Sdata(x) => Some(x as u64),
                        other => other.udata_value(),
                    }
                }
                gimli::DW_AT_declaration => {
                    info.declaration = matches!(v, AttributeValue::Flag(true));
                }
                gimli::DW_AT_specification | gimli::DW_AT_abstract_origin => {
                    info.origin = self.reference(cu, v);
                }
                _ => {}
            }
        }
        info
    }

    fn info(&mut self, die: Die) -> Option<DieInfo> {
        let cu = self.unit_of(die)?;
        if !self.load_unit(cu) {
            return None;
        }
        let unit = self.units[cu].as_ref()?;
        let e = unit.entry(gimli::UnitOffset(die - self.starts[cu])).ok()?;
        Some(self.die_info(cu, &e))
    }

    fn children(&mut self, die: Die) -> Vec<DieInfo> {
        let mut out = Vec::new();
        let Some(cu) = self.unit_of(die) else {
            return out;
        };
        if !self.load_unit(cu) {
            return out;
        }
        let Some(unit) = self.units[cu].as_ref() else {
            return out;
        };
        let Ok(mut tree) = unit.entries_tree(Some(gimli::UnitOffset(die - self.starts[cu]))) else {
            return out;
        };
        let Ok(root) = tree.root() else { return out };
        let mut it = root.children();
        while let Ok(Some(child)) = it.next() {
            out.push(self.die_info(cu, child.entry()));
        }
        out
    }

    /// Walk unit `cu` once: its namespaces (for names), its structure
    /// types (counted), and the subprograms whose `low_pc` is in `polls`.
    fn walk(&mut self, cu: usize, polls: &HashSet<u64>, found: &mut HashMap<u64, Die>) {
        if self.scopes[cu].is_some() || !self.load_unit(cu) {
            return;
        }
        let Some(unit) = self.units[cu].as_ref() else {
            return;
        };
        let start = self.starts[cu];
        let mut scopes: Vec<Scope> = Vec::new();
        let mut open: Vec<(isize, usize)> = Vec::new();
        let mut structs = 0;
        let mut depth = 0isize;
        let mut entries = unit.entries();
        while let Ok(Some((delta, e))) = entries.next_dfs() {
            depth += delta;
            let off = e.offset().0;
            while open.last().is_some_and(|&(d, _)| d >= depth) {
                if let Some((_, i)) = open.pop() {
                    scopes[i].end = off;
                }
            }
            match e.tag() {
                gimli::DW_TAG_namespace => {
                    let name = e
                        .attr_value(gimli::DW_AT_name)
                        .ok()
                        .flatten()
                        .and_then(|v| self.dwarf.attr_string(unit, v).ok())
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    scopes.push(Scope {
                        start: off,
                        end: usize::MAX,
                        name,
                        parent: open.last().map(|&(_, i)| i),
                    });
                    open.push((depth, scopes.len() - 1));
                }
                gimli::DW_TAG_structure_type => structs += 1,
                gimli::DW_TAG_subprogram => {
                    if let Some(pc) = e
                        .attr_value(gimli::DW_AT_low_pc)
                        .ok()
                        .flatten()
                        .and_then(|v| self.dwarf.attr_address(unit, v).ok().flatten())
                        && polls.contains(&pc)
                    {
                        found.entry(pc).or_insert(start + off);
                    }
                }
                _ => {}
            }
        }
        self.struct_types += structs;
        self.scopes[cu] = Some(scopes);
    }

    /// The units whose code covers `addrs`, from `.debug_aranges`, else
    /// from each unit's own ranges.
    fn units_covering(&mut self, addrs: &HashSet<u64>) -> Vec<usize> {
        let mut cus = HashSet::new();
        let mut covered = HashSet::new();
        let mut headers = self.dwarf.debug_aranges.headers();
        while let Ok(Some(h)) = headers.next() {
            let mut entries = h.entries();
            while let Ok(Some(e)) = entries.next() {
                let r = e.range();
                let hits: Vec<u64> = addrs
                    .iter()
                    .copied()
                    .filter(|a| (r.begin..r.end).contains(a))
                    .collect();
                if !hits.is_empty()
                    && let Some(cu) = self.unit_of(h.debug_info_offset().0)
                {
                    cus.insert(cu);
                    covered.extend(hits);
                }
            }
        }
        if covered.len() < addrs.len() {
            for cu in 0..self.headers.len() {
                if !self.load_unit(cu) {
                    continue;
                }
                let Some(unit) = self.units[cu].as_ref() else {
                    continue;
                };
                let Ok(mut ranges) = self.dwarf.unit_ranges(unit) else {
                    continue;
                };
                while let Ok(Some(r)) = ranges.next() {
                    if addrs
                        .iter()
                        .any(|a| !covered.contains(a) && (r.begin..r.end).contains(a))
                    {
                        cus.insert(cu);
                        break;
                    }
                }
            }
        }
        let mut cus: Vec<usize> = cus.into_iter().collect();
        cus.sort_unstable();
        cus
    }

    /// The subprogram DIE at each poll address.
    fn poll_subprograms(&mut self, polls: &HashSet<u64>) -> HashMap<u64, Die> {
        let mut found = HashMap::new();
        for cu in self.units_covering(polls) {
            self.walk(cu, polls, &mut found);
        }
        found
    }

    /// `tokio::sync::oneshot::Receiver<u64>` for a struct DIE named
    /// `Receiver<u64>`; other types' names are already complete.
    fn qualified_name(&mut self, die: Die) -> String {
        let Some(info) = self.info(die) else {
            return format!("<type@{die:#x}>");
        };
        let name = info.name.unwrap_or_else(|| "?".into());
        let Some(cu) = self.unit_of(die) else {
            return name;
        };
        self.walk(cu, &HashSet::new(), &mut HashMap::new());
        let Some(scopes) = self.scopes[cu].as_ref() else {
            return name;
        };
        let off = die - self.starts[cu];
        let mut parts = vec![name];
        let mut at = scopes.partition_point(|s| s.start < off).checked_sub(1);
        while let Some(i) = at {
            let s = &scopes[i];
            if s.start < off && off < s.end {
                parts.push(s.name.clone());
            }
            at = s.parent;
        }
        parts.reverse();
        parts.join("::")
    }

    fn file_name(&mut self, die: Die, index: u64) -> String {
        let Some(cu) = self.unit_of(die) else {
            return String::new();
        };
        if let Some(f) = self.files.get(&(cu, index)) {
            return f.clone();
        }
        let name = self.resolve_file(cu, index).unwrap_or_default();
        self.files.insert((cu, index), name.clone());
        name
    }

    fn resolve_file(&mut self, cu: usize, index: u64) -> Option<String> {
        if !self.load_unit(cu) {
            return None;
        }
        let unit = self.units[cu].as_ref()?;
        let header = unit.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let text = |v| {
            self.dwarf
                .attr_string(unit, v)
                .ok()
                .map(|s| s.to_string_lossy().into_owned())
        };
        // Relative to its directory, which may be relative to the unit's
        // compilation directory.
        let mut path = text(file.path_name())?;
        for dir in [
            file.directory(header).and_then(text),
            unit.comp_dir.map(|d| d.to_string_lossy().into_owned()),
        ] {
            if path.starts_with('/') {
                break;
            }
            if let Some(dir) = dir.filter(|d| !d.is_empty()) {
                path = format!("{}/{path}", dir.trim_end_matches('/'));
            }
        }
        Some(path)
    }
}

/// The async fn or block a state machine type belongs to:
/// `a::f::{async_fn_env#0}<u64>` → `a::f` (the env's generic arguments are
/// the fn's; [`short_future_name`] would split inside them).
fn function_name(env: &str) -> String {
    match strip_generics(env) {
        Some(base) if base.rsplit("::").next().is_some_and(|l| l.starts_with('{')) => {
            short_future_name(base)
        }
        _ => short_future_name(env),
    }
}

/// `a::b<c::d<e>>` → `a::b` (an arrow `->` inside is not a bracket).
fn strip_generics(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.last() != Some(&b'>') {
        return None;
    }
    let mut depth = 0usize;
    for i in (0..b.len()).rev() {
        match b[i] {
            b'>' if i == 0 || b[i - 1] != b'-' => depth += 1,
            b'<' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(&s[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Turns DWARF types into [`Node`]s.
struct Builder<'a> {
    dw: Dw<'a>,
    nodes: Vec<Node>,
    /// Type → what it resolves to (`None`: holds no state machine).
    memo: HashMap<Die, Option<Link>>,
    leaves: HashMap<String, usize>,
}

impl Builder<'_> {
    fn task_layout(&mut self, poll: Die) -> Option<TaskLayout> {
        let (cell, cell_t, poll_t) = self.find_cell(poll)?;
        let cell_size = self.dw.info(cell)?.byte_size?;
        let (offset, checks) = self.locate(cell, cell_t, 0)?;
        // The copy of T in the poll's unit is as good as the cell's (same
        // layout); either way it must be, or contain, a state machine.
        let (t, inner) = [poll_t, Some(cell_t)]
            .into_iter()
            .flatten()
            .find_map(|t| Some((t, self.resolve(t, 0)?)))?;
        let name = function_name(&self.dw.qualified_name(t));
        Some(TaskLayout {
            name,
            cell_size,
            checks,
            future: Link {
                offset: offset + inner.offset,
                node: inner.node,
            },
        })
    }

    /// The template parameter named `name` of a type or subprogram.
    fn template_param(&mut self, die: Die, name: &str) -> Option<Die> {
        self.dw
            .children(die)
            .into_iter()
            .find(|c| {
                c.tag == gimli::DW_TAG_template_type_parameter && c.name.as_deref() == Some(name)
            })
            .and_then(|c| c.ty)
    }

    /// `Cell<T, S>` of the vtable whose `raw::poll<T, S>` is `poll`, its
    /// `T`, and the poll's own `T`. The types `poll`'s variables reference
    /// lead there (`harness: Harness<T,S>` → `cell: NonNull<Cell<T,S>>`).
    fn find_cell(&mut self, poll: Die) -> Option<(Die, Die, Option<Die>)> {
        let mut sub = poll;
        let mut poll_t = self.template_param(sub, "T");
        // A concrete out-of-line instance may keep its parameters on the
        // declaration it points to.
        for _ in 0..2 {
            if poll_t.is_some() {
                break;
            }
            sub = self.dw.info(sub)?.origin?;
            poll_t = self.template_param(sub, "T");
        }
        let mut queue: std::collections::VecDeque<Die> = std::collections::VecDeque::new();
        let mut scopes = vec![(poll, 0)];
        while let Some((d, depth)) = scopes.pop() {
            for c in self.dw.children(d) {
                match c.tag {
                    gimli::DW_TAG_variable | gimli::DW_TAG_formal_parameter => {
                        queue.extend(c.ty);
                    }
                    gimli::DW_TAG_lexical_block | gimli::DW_TAG_inlined_subroutine if depth < 4 => {
                        scopes.push((c.die, depth + 1));
                    }
                    _ => {}
                }
            }
        }
        let mut seen = HashSet::new();
        while let Some(ty) = queue.pop_front() {
            if seen.len() >= MAX_CELL_SEARCH {
                break;
            }
            if !seen.insert(ty) {
                continue;
            }
            let Some(info) = self.dw.info(ty) else {
                continue;
            };
            match info.tag {
                gimli::DW_TAG_structure_type => {
                    if info.name.as_deref().is_some_and(|n| n.starts_with("Cell<"))
                        && let Some(t) = self.template_param(ty, "T")
                        && poll_t.is_none_or(|p| self.same_type(p, t))
                    {
                        return Some((ty, t, poll_t));
                    }
                    for c in self.dw.children(ty) {
                        if c.tag == gimli::DW_TAG_member {
                            queue.extend(c.ty);
                        }
                    }
                }
                gimli::DW_TAG_pointer_type | gimli::DW_TAG_typedef | gimli::DW_TAG_const_type => {
                    queue.extend(info.ty);
                }
                _ => {}
            }
        }
        None
    }

    /// The same DIE, or two units' copies of one type.
    fn same_type(&mut self, a: Die, b: Die) -> bool {
        a == b || self.dw.qualified_name(a) == self.dw.qualified_name(b)
    }

    /// Where `target` sits inside type `ty` (by value), and the enum tags
    /// that must hold for it to be there.
    fn locate(&mut self, ty: Die, target: Die, depth: usize) -> Option<(u64, Vec<TagCheck>)> {
        if depth > MAX_TYPE_DEPTH {
            return None;
        }
        let kids = self.dw.children(ty);
        for k in &kids {
            match k.tag {
                gimli::DW_TAG_member => {
                    if let Some(found) = self.locate_member(k, target, depth) {
                        return Some(found);
                    }
                }
                gimli::DW_TAG_variant_part => {
                    let Some(tag) = k.discr.and_then(|d| self.field(d)) else {
                        continue;
                    };
                    let variants = self.variants(k.die);
                    for (i, (_, members)) in variants.iter().enumerate() {
                        for m in members {
                            if let Some((off, mut checks)) = self.locate_member(m, target, depth) {
                                checks.insert(
                                    0,
                                    TagCheck {
                                        tag,
                                        variants: variants.iter().map(|(v, _)| v.clone()).collect(),
                                        want: i,
                                    },
                                );
                                return Some((off, checks));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn locate_member(
        &mut self,
        m: &DieInfo,
        target: Die,
        depth: usize,
    ) -> Option<(u64, Vec<TagCheck>)> {
        let (loc, ty) = (m.location?, m.ty?);
        if ty == target {
            return Some((loc, Vec::new()));
        }
        let (off, mut checks) = self.locate(ty, target, depth + 1)?;
        for c in &mut checks {
            c.tag.offset += loc;
        }
        Some((loc + off, checks))
    }

    /// Offset and size of a discriminant member.
    fn field(&mut self, member: Die) -> Option<Field> {
        let m = self.dw.info(member)?;
        let size = self.dw.info(m.ty?)?.byte_size?;
        Some(Field {
            offset: m.location?,
            size: u8::try_from(size).ok().filter(|s| (1..=8).contains(s))?,
        })
    }

    /// The variants of a variant part: tag value and name (the type of the
    /// variant's member, else the member's name), and the members.
    fn variants(&mut self, part: Die) -> Vec<(Variant, Vec<DieInfo>)> {
        let mut out = Vec::new();
        for v in self.dw.children(part) {
            if v.tag != gimli::DW_TAG_variant {
                continue;
            }
            let members: Vec<DieInfo> = self
                .dw
                .children(v.die)
                .into_iter()
                .filter(|m| m.tag == gimli::DW_TAG_member)
                .collect();
            let name = members
                .first()
                .and_then(|m| {
                    let ty_name = m.ty.and_then(|t| self.dw.info(t)).and_then(|t| t.name);
                    ty_name.or_else(|| m.name.clone())
                })
                .unwrap_or_default();
            out.push((
                Variant {
                    value: v.discr_value,
                    name,
                },
                members,
            ));
        }
        out
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn leaf(&mut self, ty: Die) -> Link {
        let name = self.dw.qualified_name(ty);
        let node = match self.leaves.get(&name) {
            Some(&n) => n,
            None => {
                let n = self.push(Node::Leaf { name: name.clone() });
                self.leaves.insert(name, n);
                n
            }
        };
        Link { offset: 0, node }
    }

    /// What a future type is, if it is or holds a state machine.
    fn resolve(&mut self, ty: Die, depth: usize) -> Option<Link> {
        if let Some(known) = self.memo.get(&ty) {
            return *known;
        }
        if depth > MAX_TYPE_DEPTH {
            return None;
        }
        // Cycles (a future holding a box of itself) end here.
        self.memo.insert(ty, None);
        let link = self.resolve_uncached(ty, depth);
        self.memo.insert(ty, link);
        link
    }

    fn resolve_uncached(&mut self, ty: Die, depth: usize) -> Option<Link> {
        let info = self.dw.info(ty)?;
        match info.tag {
            gimli::DW_TAG_structure_type if !info.declaration => {}
            gimli::DW_TAG_pointer_type => {
                // Only owning or exclusive pointers to a concrete future:
                // `Box<F>`, `Pin<&mut F>`.
                let name = info.name.as_deref().unwrap_or("");
                if !(name.starts_with("alloc::boxed::Box<") || name.starts_with("&mut ")) {
                    return None;
                }
                let inner = self.resolve(info.ty?, depth + 1)?;
                let node = self.push(Node::Deref { inner });
                return Some(Link { offset: 0, node });
            }
            gimli::DW_TAG_typedef => return self.resolve(info.ty?, depth + 1),
            _ => return None,
        }
        let kids = self.dw.children(ty);
        if let Some(part) = kids.iter().find(|k| k.tag == gimli::DW_TAG_variant_part) {
            let discr = part.discr.and_then(|d| self.dw.info(d));
            if discr.as_ref().and_then(|d| d.name.as_deref()) == Some("__state") {
                return self.state_machine(ty, part.die, discr?.die);
            }
            // Other enums (Option<F>, MaybeDone<F>) are not followed.
            return None;
        }
        let members: Vec<&DieInfo> = kids
            .iter()
            .filter(|k| k.tag == gimli::DW_TAG_member && k.location.is_some())
            .collect();
        let mut found = Vec::new();
        for m in &members {
            if let (Some(loc), Some(t)) = (m.location, m.ty)
                && let Some(l) = self.resolve(t, depth + 1)
            {
                found.push(Link {
                    offset: loc + l.offset,
                    node: l.node,
                });
            }
        }
        let [inner] = found[..] else {
            // None, or several futures (join!): not a chain.
            return None;
        };
        if members.len() == 1 {
            // Pin<P>, ManuallyDrop<F>, NonNull: nothing worth a frame.
            return Some(inner);
        }
        let name = self.dw.qualified_name(ty);
        let node = self.push(Node::Wrapper { name, inner });
        Some(Link { offset: 0, node })
    }

    fn state_machine(&mut self, ty: Die, part: Die, discr: Die) -> Option<Link> {
        let state = self.field(discr)?;
        let function = function_name(&self.dw.qualified_name(ty));
        // Registered before its awaitees: a recursive async fn (through a
        // box) refers back to itself.
        let node = self.push(Node::Async {
            function,
            state,
            variants: Vec::new(),
        });
        self.memo.insert(ty, Some(Link { offset: 0, node }));
        let mut out = Vec::new();
        for (tag, members) in self.variants(part) {
            let Some(m) = members.first() else { continue };
            let file = match m.decl_file {
                Some(f) => self.dw.file_name(m.die, f),
                None => String::new(),
            };
            let awaitee = match m.ty {
                Some(vty) => self.awaitee(vty, m.location.unwrap_or(0)),
                None => None,
            };
            out.push(StateVariant {
                tag,
                file,
                line: m.decl_line.and_then(|l| u32::try_from(l).ok()).unwrap_or(0),
                awaitee,
            });
        }
        if let Node::Async { variants, .. } = &mut self.nodes[node] {
            *variants = out;
        }
        Some(Link { offset: 0, node })
    }

    /// The `__awaitee` of a `Suspend<N>` variant struct at `base`.
    fn awaitee(&mut self, variant_ty: Die, base: u64) -> Option<Link> {
        let m =
            self.dw.children(variant_ty).into_iter().find(|c| {
                c.tag == gimli::DW_TAG_member && c.name.as_deref() == Some("__awaitee")
            })?;
        let (loc, ty) = (m.location?, m.ty?);
        let l = self.resolve(ty, 0).unwrap_or_else(|| self.leaf(ty));
        Some(Link {
            offset: base + loc + l.offset,
            node: l.node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_pick_their_variant_or_the_untagged_one() {
        let v = |value, name: &str| Variant {
            value,
            name: name.into(),
        };
        let tagged = [v(Some(0), "Running"), v(Some(1), "Finished")];
        fn id(v: &Variant) -> &Variant {
            v
        }
        assert_eq!(pick(&tagged, id, 1, 4), Some(1));
        assert_eq!(pick(&tagged, id, 7, 4), None);
        let niche = [v(Some(3), "A"), v(None, "Dataful")];
        assert_eq!(pick(&niche, id, 3, 1), Some(0));
        assert_eq!(pick(&niche, id, 9, 1), Some(1));
        // -1 as an i8 tag, recorded sign-extended.
        let signed = [v(Some(u64::MAX), "Neg"), v(Some(0), "Zero")];
        assert_eq!(pick(&signed, id, 0xff, 1), Some(0));
    }

    #[test]
    fn function_names_drop_the_env_generics() {
        assert_eq!(
            function_name("tokio::sync::mpsc::bounded::{impl#0}::recv::{async_fn_env#0}<u64>"),
            "tokio::sync::mpsc::bounded::{impl#0}::recv"
        );
        assert_eq!(
            function_name(
                "tokio::runtime::io::registration::{impl#2}::async_io::{async_fn_env#0}<(a::T, \
                 b::S), t::accept::{async_fn#0}::{closure_env#0}, fn(&mut C) -> P<R>>"
            ),
            "tokio::runtime::io::registration::{impl#2}::async_io"
        );
        assert_eq!(function_name("app::f::{async_block_env#1}"), "app::f");
        assert_eq!(strip_generics("a::B<u8>"), Some("a::B"));
        assert_eq!(strip_generics("a::B"), None);
    }

    #[test]
    fn window_reads_inside_then_outside() {
        let mut calls = Vec::new();
        let mut read = |addr: u64, len: usize| {
            calls.push((addr, len));
            Some((0..len).map(|i| (addr as usize + i) as u8).collect())
        };
        let mut w = Window::new(&mut read, 0x100, 0x20);
        assert_eq!(
            w.uint(0x104, 2),
            Some(u64::from_le_bytes([4, 5, 0, 0, 0, 0, 0, 0]))
        );
        assert_eq!(w.uint(0x11f, 1), Some(0x1f));
        // Straddles the end of the window: read on its own.
        assert_eq!(w.uint(0x11c, 8).map(|v| v as u8), Some(0x1c));
        assert_eq!(w.uint(0x100, 9), None);
        drop(w);
        assert_eq!(calls, vec![(0x100, 0x20), (0x11c, 8)]);
    }
}
