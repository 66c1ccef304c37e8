//! The Go heap of a running process, read from outside: which heap object
//! an address falls in, whether that object can hold pointers, and its
//! bytes. What [`super::reachability`] walks.
//!
//! The runtime finds the span of an address in two steps, and so do we:
//! `mheap_.arenas[l1][l2]` is the `heapArena` of each 64 MiB of address
//! space, and its `spans[page]` the `mspan` owning each 8 KiB page. A span
//! in use is `npages` pages of objects of `elemsize` bytes each, so the
//! object holding `p` starts at `start + (p - start) / elemsize * elemsize`.
//! A span class with its low bit set is `noscan`: its objects hold no
//! pointers, so they are marked but never read.
//!
//! Offsets come from the binary's DWARF (`runtime.mheap`, `runtime.heapArena`,
//! `runtime.mspan`), the address of `runtime.mheap_` from its symbol table;
//! the constants below are linux/amd64's, the only target leaktrace runs on.
//! Every read is bounded by a byte budget: a walk that would read more stops
//! and says so rather than reading a large heap for seconds.

use std::collections::HashMap;

use super::{binary::GoBinary, layout::read_dwarf_structs};
use crate::target::memory::Memory;

/// `heapArenaBytes` on 64-bit Linux.
const ARENA_SHIFT: u32 = 26;
/// `arenaL2Bits`: 48 address bits minus the arena size (`arenaL1Bits` is 0).
const ARENA_L2_ENTRIES: u64 = 1 << (48 - ARENA_SHIFT);
/// `arenaBaseOffset` on amd64: arena indices count from -2^47.
const ARENA_BASE_OFFSET: u64 = 0xffff_8000_0000_0000;
const PAGE_SHIFT: u32 = 13;
const PAGES_PER_ARENA: u64 = 1 << (ARENA_SHIFT - PAGE_SHIFT);
/// `mSpanInUse`: a span of allocated objects (not free, not a stack).
const SPAN_IN_USE: u8 = 1;
/// Spans up to this size are read whole the first time one of their
/// objects is needed: small objects come many per span.
const READ_WHOLE_SPAN: u64 = 64 << 10;
/// No object is read beyond this size (a `[]byte` of gigabytes is noscan
/// anyway; a pointer array this large is not walked, and the walk says so).
pub const MAX_OBJECT: u64 = 64 << 20;

/// Where the heap's index lives in this binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapLayout {
    /// Link-time address of `runtime.mheap_.arenas`.
    arenas_va: u64,
    arena_spans: u32,
    span_start: u32,
    span_npages: u32,
    span_elemsize: u32,
    span_state: u32,
    span_class: u32,
}

impl HeapLayout {
    /// From the binary's symbol table and DWARF, or why not.
    pub fn from_binary(bin: &GoBinary) -> Result<HeapLayout, String> {
        if !bin.has_dwarf {
            return Err("the binary has no DWARF (built with -ldflags=-w)".into());
        }
        let mheap = bin
            .elf
            .symbol("runtime.mheap_")
            .ok_or("the binary has no symbol runtime.mheap_ (built with -ldflags=-s)")?;
        let s = read_dwarf_structs(
            &bin.elf,
            &["runtime.mheap", "runtime.heapArena", "runtime.mspan"],
        )?;
        let field = |st: &str, f: &str| -> Result<u32, String> {
            s.get(st)
                .and_then(|d| d.fields.get(f).copied())
                .ok_or_else(|| format!("DWARF has no {st}.{f}"))
        };
        Ok(HeapLayout {
            arenas_va: mheap + u64::from(field("runtime.mheap", "arenas")?),
            arena_spans: field("runtime.heapArena", "spans")?,
            span_start: field("runtime.mspan", "startAddr")?,
            span_npages: field("runtime.mspan", "npages")?,
            span_elemsize: field("runtime.mspan", "elemsize")?,
            span_state: field("runtime.mspan", "state")?,
            span_class: field("runtime.mspan", "spanclass")?,
        })
    }

    fn span_read_len(&self) -> usize {
        [
            self.span_start,
            self.span_npages,
            self.span_elemsize,
            self.span_state,
            self.span_class,
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as usize
            + 8
    }
}

/// One heap object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Object {
    pub base: u64,
    pub size: u64,
    /// It may hold pointers (its span is not `noscan`).
    pub scan: bool,
    span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Span {
    start: u64,
    end: u64,
    elemsize: u64,
    scan: bool,
}

/// The budget ran out: the walk read this many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget(pub u64);

/// A read-only view of the target's heap, caching what it looked up. Made
/// fresh for every walk: the heap moves between walks.
pub struct Heap<'m> {
    mem: &'m Memory,
    layout: &'m HeapLayout,
    /// The L2 arena array (`mheap_.arenas[0]`), 0 if unreadable.
    l2: u64,
    arenas: HashMap<u64, u64>,
    /// Page number → span, `None` for pages with no span in use.
    pages: HashMap<u64, Option<Span>>,
    spans: HashMap<u64, Option<Span>>,
    /// Whole small spans read so far, by start address.
    span_bytes: HashMap<u64, Vec<u8>>,
    budget: u64,
    pub bytes_read: u64,
}

impl<'m> Heap<'m> {
    /// `bias`: the load bias of a PIE binary (0 otherwise).
    pub fn new(mem: &'m Memory, layout: &'m HeapLayout, bias: u64, budget: u64) -> Heap<'m> {
        let l2 = mem.read_u64(layout.arenas_va + bias).unwrap_or(0);
        Heap {
            mem,
            layout,
            l2,
            arenas: HashMap::new(),
            pages: HashMap::new(),
            spans: HashMap::new(),
            span_bytes: HashMap::new(),
            budget,
            bytes_read: 0,
        }
    }

    /// Whether the heap index could be read at all.
    pub fn readable(&self) -> bool {
        self.l2 != 0
    }

    /// The heap object `p` points into, if any. Addresses in free slots of
    /// a span in use count as objects: conservative, like a stack scan.
    pub fn object_of(&mut self, p: u64) -> Option<Object> {
        let ai = p.wrapping_sub(ARENA_BASE_OFFSET) >> ARENA_SHIFT;
        if self.l2 == 0 || ai >= ARENA_L2_ENTRIES {
            return None;
        }
        let page = p >> PAGE_SHIFT;
        let span = match self.pages.get(&page) {
            Some(s) => *s,
            None => {
                let s = self.span_of_page(ai, page);
                self.pages.insert(page, s);
                s
            }
        }?;
        if p < span.start || p >= span.end {
            return None;
        }
        let base = span.start + (p - span.start) / span.elemsize * span.elemsize;
        (base + span.elemsize <= span.end).then_some(Object {
            base,
            size: span.elemsize,
            scan: span.scan,
            span,
        })
    }

    fn span_of_page(&mut self, ai: u64, page: u64) -> Option<Span> {
        let arena = match self.arenas.get(&ai) {
            Some(a) => *a,
            None => {
                let a = self.mem.read_u64(self.l2 + ai * 8).unwrap_or(0);
                self.arenas.insert(ai, a);
                a
            }
        };
        if arena == 0 {
            return None;
        }
        let slot = arena + u64::from(self.layout.arena_spans) + (page % PAGES_PER_ARENA) * 8;
        let span = self.mem.read_u64(slot).ok().filter(|&s| s != 0)?;
        if let Some(s) = self.spans.get(&span) {
            return *s;
        }
        let s = self.read_span(span);
        self.spans.insert(span, s);
        s
    }

    fn read_span(&self, span: u64) -> Option<Span> {
        let l = self.layout;
        let mut b = vec![0u8; l.span_read_len()];
        self.mem.read(span, &mut b).ok()?;
        let u64_at = |o: u32| -> u64 {
            let o = o as usize;
            u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
        };
        let start = u64_at(l.span_start);
        let npages = u64_at(l.span_npages);
        let elemsize = u64_at(l.span_elemsize);
        let state = b[l.span_state as usize];
        let class = b[l.span_class as usize];
        // A span from a torn read or a reused page: refuse what cannot be.
        let len = npages.checked_mul(1 << PAGE_SHIFT)?;
        if state != SPAN_IN_USE || elemsize == 0 || elemsize > len || len > MAX_OBJECT {
            return None;
        }
        Some(Span {
            start,
            end: start.checked_add(len)?,
            elemsize,
            scan: class & 1 == 0,
        })
    }

    /// The bytes of `o`, `None` if unreadable (the object vanished: a span
    /// freed while we walked).
    pub fn read(&mut self, o: Object) -> Result<Option<Vec<u8>>, OverBudget> {
        let s = o.span;
        if s.end - s.start <= READ_WHOLE_SPAN {
            if !self.span_bytes.contains_key(&s.start) {
                let bytes = self.read_range(s.start, s.end - s.start)?;
                self.span_bytes.insert(s.start, bytes.unwrap_or_default());
            }
            let all = &self.span_bytes[&s.start];
            let from = (o.base - s.start) as usize;
            return Ok(all.get(from..from + o.size as usize).map(<[u8]>::to_vec));
        }
        self.read_range(o.base, o.size)
    }

    /// Any range of the target (a stack, a data section), counted against
    /// the budget.
    pub fn read_range(&mut self, addr: u64, len: u64) -> Result<Option<Vec<u8>>, OverBudget> {
        self.bytes_read += len;
        if self.bytes_read > self.budget {
            return Err(OverBudget(self.bytes_read));
        }
        let mut b = vec![0u8; len as usize];
        Ok(self.mem.read(addr, &mut b).ok().map(|()| b))
    }
}

/// The 8-byte-aligned words of `bytes`.
pub fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
}
