//! The bodies of the fuzz targets for the parsers of `/proc` text, tracefs
//! formats, `.eh_frame` unwinding, tokio task cells and await points: one
//! copy, used by `fuzz_targets/*.rs` under libFuzzer and by
//! `leaktrace/tests/fuzz_regressions.rs`, which replays every input that
//! once crashed one of them (`fuzz/regressions/<target>/`) on the normal
//! toolchain. Each takes any bytes and must return, never panic.
use std::sync::Arc;

use leaktrace::{
    probes::tracefs::find_field,
    runtime::tokio::{
        await_points::AwaitDecoder,
        heap_scan::{Region, heap_regions, parse_task, scan_regions, task_span},
        vtables::{TaskVtable, find_vtables},
    },
    symbols::native::unwind::{CfiTables, CodeMap, StackCopy, unwind},
    target::{
        elf::ElfFile,
        maps::entries,
        memory::Memory,
        procfs::{start_ticks, stat_state, status_hex, status_ids},
    },
};

/// `/proc/PID/stat`, `/proc/PID/status` and `/proc/PID/maps` text: the
/// state and start time, capabilities and ids, mappings and heap regions.
/// A process names itself (`comm`), so these hold bytes it chose.
pub(crate) fn proc_files(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = (stat_state(&text), start_ticks(&text));
    for key in ["CapEff:", "CapBnd:", "CapAmb:"] {
        let _ = status_hex(&text, key);
    }
    for key in ["Uid:", "Gid:"] {
        let _ = status_ids(&text, key);
    }
    let _ = entries(&text).count();
    let _ = heap_regions(&text);
}

/// A tracepoint's `format` file (`/sys/kernel/tracing/events/*/*/format`):
/// the offset and size of each field leaktrace reads from raw records.
pub(crate) fn tracefs_format(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for name in [
        "pid",
        "comm",
        "parent_pid",
        "child_pid",
        "filename",
        "old_pid",
        "clone_flags",
        "group_dead",
    ] {
        let _ = find_field(&text, name);
    }
}

struct Tables<'a> {
    eh_frame: &'a [u8],
    eh_frame_addr: u64,
    hdr: Option<(&'a [u8], u64)>,
    text_addr: u64,
}

impl CodeMap for Tables<'_> {
    fn cfi_for(&mut self, _pc: u64) -> Option<(CfiTables<'_>, u64)> {
        Some((
            CfiTables {
                eh_frame: self.eh_frame,
                eh_frame_addr: self.eh_frame_addr,
                eh_frame_hdr: self.hdr,
                text_addr: self.text_addr,
            },
            0,
        ))
    }

    fn is_code(&mut self, pc: u64) -> bool {
        pc.checked_sub(self.text_addr).is_some_and(|o| o < 1 << 24)
    }
}

/// The next `n` bytes (fewer at the end).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

fn u64_of(data: &mut &[u8]) -> Option<u64> {
    let b = data.get(..8)?.try_into().ok()?;
    *data = &data[8..];
    Some(u64::from_le_bytes(b))
}

fn u32_of(data: &mut &[u8]) -> Option<u32> {
    let b = data.get(..4)?.try_into().ok()?;
    *data = &data[4..];
    Some(u32::from_le_bytes(b))
}

/// Unwinding a copied user stack with `.eh_frame` (and `.eh_frame_hdr`'s
/// search table): both tables and the stack bytes come from the input, as
/// they come from the target's binary and memory. Layout: ip, sp, bp,
/// eh_frame_addr, text_addr, hdr_addr (u64 each), eh_frame's and
/// eh_frame_hdr's lengths (u32 each), then eh_frame, eh_frame_hdr (none
/// when its length is 0), and the rest is the stack copy at sp.
pub(crate) fn eh_frame_unwind(data: &[u8]) {
    let mut d = data;
    let mut words = [0u64; 6];
    for w in &mut words {
        let Some(v) = u64_of(&mut d) else { return };
        *w = v;
    }
    let [ip, sp, bp, eh_frame_addr, text_addr, hdr_addr] = words;
    let (Some(eh_len), Some(hdr_len)) = (u32_of(&mut d), u32_of(&mut d)) else {
        return;
    };
    let eh_frame = take(&mut d, eh_len as usize);
    let hdr = Some(take(&mut d, hdr_len as usize)).filter(|h| !h.is_empty());
    let mut tables = Tables {
        eh_frame,
        eh_frame_addr,
        hdr: hdr.map(|h| (h, hdr_addr)),
        text_addr,
    };
    let stack = StackCopy {
        ip,
        sp,
        bp,
        bytes: d,
    };
    let _ = unwind(&stack, &mut tables, 64);
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8)
        .map_or(0, |w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
}

/// tokio's task cells as the heap scan finds them: the input is a heap
/// region (placed in this process's memory and read back through
/// `process_vm_readv`, as the target's is) and a task vtable whose offsets
/// come from the input, as they come from the target's binary (offsets
/// tokio's vtables cannot have are refused, as `find_vtables` refuses
/// them). Pointers in the cells (list neighbours) point anywhere; reads
/// that fail are the target's unmapped pages. Layout: vtable address,
/// trailer, scheduler and id offsets (u64 each), a stride byte, then the
/// region.
pub(crate) fn heap_cells(data: &[u8]) {
    if data.len() < 33 {
        return;
    }
    let (head, region) = data.split_at(33);
    let Some(vt) = TaskVtable::from_words(
        u64_at(head, 0),
        [0; 7],
        [u64_at(head, 1), u64_at(head, 2), u64_at(head, 3)],
    ) else {
        return;
    };
    let align = 1u64 << (head[32] % 9);
    // A copy of its own, 128-aligned as tokio's cells are.
    let mut cells = vec![0u8; region.len() + 128];
    let base = cells.as_ptr() as u64;
    let skip = (base.next_multiple_of(128) - base) as usize;
    cells[skip..skip + region.len()].copy_from_slice(region);
    let start = base + skip as u64;
    let regions = [Region {
        start,
        end: start + region.len() as u64,
    }];
    let mem = Memory::new(std::process::id());
    let vtables = [vt];
    let _ = scan_regions(&mem, &regions, &vtables, 0, align);
    let span = task_span(&vtables[0]);
    if span <= region.len() {
        let _ = parse_task(&region[..span], start, &vtables[0], 0, 0);
    }
    drop(cells);
}

/// async fn await points: the DWARF of a Rust binary (generator layouts,
/// `__state` discriminants, awaitee fields) read into a decoder, then every
/// decodable task's await stack decoded from memory made of the input's
/// own bytes (an address reads the input at that offset, wrapping), so
/// state tags, boxed-future pointers and lengths are all the input's.
pub(crate) fn await_points(data: &[u8]) {
    let Ok(elf) = ElfFile::parse(Arc::from(data)) else {
        return;
    };
    let vtables = find_vtables(&elf);
    let Some(decoder) = AwaitDecoder::load(&elf, &vtables) else {
        return;
    };
    let mut read = |addr: u64, len: usize| -> Option<Vec<u8>> {
        if data.is_empty() || len > 1 << 20 {
            return None;
        }
        let start = (addr % data.len() as u64) as usize;
        Some(data.iter().cycle().skip(start).take(len).copied().collect())
    };
    let header = u64_at(data, 0);
    for i in (0..vtables.len()).take(64) {
        if decoder.is_decodable(i) {
            let _ = decoder.stack(i, header, &mut read);
        }
    }
}
