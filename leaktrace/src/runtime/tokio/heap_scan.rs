//! Every live tokio task of a running process, found by reading its memory.
//!
//! Tasks that leaked before leaktrace attached are never polled again, so no
//! probe will ever see them; the heap does. Task cells are `repr(align(128))`
//! on x86_64/aarch64 (tokio ≥ 1.29) and their header holds the address of a
//! per-type static vtable at +16, so a 128-byte stride over the writable
//! anonymous mappings, keeping the slots whose +16 word is a known vtable,
//! finds every cell. Freed cells keep their vtable word, so each candidate's
//! state word must also look live (see [`StateWord::is_plausible_live`]).
//!
//! Reads use `process_vm_readv` and never stop the target; a task may
//! change while it is read, which a second read of each hit catches.
use std::collections::{HashMap, HashSet};
use std::io;

use leaktrace_common::tokio::task_header::{
    LEN as HEADER_LEN, OWNER_ID as HEADER_OWNER_ID, VTABLE as HEADER_VTABLE,
};

use super::state::StateWord;
use super::vtables::TaskVtable;
use crate::target::elf::ElfFile;
use crate::target::maps::entries;
use crate::target::memory::Memory;
use crate::target::process::{Process, load_bias};

/// `Cell`'s alignment on 64-bit x86 and arm (tokio ≥ 1.29, #5809).
pub const CELL_ALIGN: u64 = 128;
/// Before 1.29 a cell is only as aligned as malloc makes it.
pub const MALLOC_ALIGN: u64 = 16;

/// The scan stride for a tokio version; unknown versions get the modern
/// alignment (a pre-1.29 tokio with remapped paths would be missed).
pub fn cell_align(version: Option<super::binary::TokioVersion>) -> u64 {
    match version {
        Some(v) if v.major == 1 && v.minor < 29 => MALLOC_ALIGN,
        _ => CELL_ALIGN,
    }
}

/// Read mappings in pieces this big: bounded memory on multi-GB heaps.
const CHUNK: u64 = 1 << 20;
/// Cells whose vtable word matches, kept for the second read, at most:
/// 2²² (4 million tasks, 64 MiB of candidates). A heap of task-vtable
/// addresses (a hostile program, or one that stores many copies) would
/// otherwise make this list as large as the heap over the stride.
pub const MAX_CANDIDATES: usize = 1 << 22;

/// One live task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveTask {
    /// Run-time address of the task's header (its `RawTask` pointer), the
    /// key every probe argument will carry.
    pub header: u64,
    /// tokio's task id: unique, never reused.
    pub id: u64,
    pub state: StateWord,
    /// Index into the vtable slice given to [`scan`].
    pub vtable: usize,
    /// `OwnedTasks` id of the runtime the task is bound to; 0 for tasks that
    /// are never bound (`spawn_blocking`, the runtime's worker launchers).
    pub owner_id: u64,
    /// `Core.scheduler`: for `Arc<Handle>` schedulers, the runtime handle's
    /// address, the same for every task of one runtime.
    pub scheduler: u64,
}

impl LiveTask {
    /// Whether `Handle::metrics().num_alive_tasks()` counts this task: it
    /// counts the runtime's `OwnedTasks`, which bound tasks join at spawn
    /// and leave at completion. Blocking tasks are never bound.
    pub fn counted_by_tokio(&self) -> bool {
        self.owner_id != 0
    }
}

#[derive(Clone, Debug, Default)]
pub struct HeapScan {
    /// By header address.
    pub tasks: Vec<LiveTask>,
    /// Cells with a vtable word but a dead state word: freed memory.
    pub stale_cells: usize,
    /// Completed tasks whose cell a JoinHandle or waker still holds.
    pub complete_cells: usize,
    /// Unbound copies of a task cell (left on a thread's stack when the
    /// cell was built there and moved into its Box): an `Arc` scheduler
    /// means the task is bound at spawn, so `owner_id == 0` cannot be live.
    pub unbound_copies: usize,
    /// Hits that changed between the two reads (a task that finished, or
    /// memory reused, while we looked).
    pub unstable: usize,
    pub regions: usize,
    pub bytes_scanned: u64,
    /// Mapped but unreadable (e.g. guard pages inside an anonymous range).
    pub bytes_unreadable: u64,
    /// The scan stopped at [`MAX_CANDIDATES`] cells with a vtable word.
    pub capped: bool,
}

impl HeapScan {
    pub fn counted(&self) -> impl Iterator<Item = &LiveTask> {
        self.tasks.iter().filter(|t| t.counted_by_tokio())
    }
}

/// The load bias of `pid`'s executable (0 when not PIE).
pub fn exe_load_bias(pid: u32, elf: &ElfFile) -> anyhow::Result<u64> {
    let proc = Process::open(pid)?;
    let mappings = proc.exe_mappings()?;
    load_bias(&mappings, &elf.load_segments())
        .ok_or_else(|| anyhow::anyhow!("process {pid}: executable mapping not found in maps"))
}

/// A writable private anonymous mapping: where malloc puts task cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

/// `rw-p` mappings with no file: `[heap]`, glibc's thread arenas and
/// mmapped chunks, and `[anon:…]`-named ones.
pub fn heap_regions(maps: &str) -> Vec<Region> {
    entries(maps)
        .filter(|e| {
            let anonymous = e.path.is_empty() || e.path == "[heap]" || e.path.starts_with("[anon:");
            e.perms.starts_with("rw") && e.is_private() && e.inode == "0" && anonymous
        })
        .map(|e| Region {
            start: e.start,
            end: e.end,
        })
        .collect()
}

/// Find every live task of `pid` whose vtable is in `vtables` (link-time
/// addresses; `load_bias` is added), stepping `align` bytes
/// ([`cell_align`]).
pub fn scan(pid: u32, vtables: &[TaskVtable], load_bias: u64, align: u64) -> io::Result<HeapScan> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let regions = heap_regions(&maps);
    scan_regions(&Memory::new(pid), &regions, vtables, load_bias, align)
}

pub fn scan_regions(
    mem: &Memory,
    regions: &[Region],
    vtables: &[TaskVtable],
    load_bias: u64,
    align: u64,
) -> io::Result<HeapScan> {
    // A stride that is not a power of two ≥ 8 would read vtable words at
    // offsets no header has.
    let align = if align.is_power_of_two() && align >= 8 {
        align
    } else {
        CELL_ALIGN
    };
    let by_addr: HashMap<u64, usize> = vtables
        .iter()
        .enumerate()
        .map(|(i, v)| (v.va.wrapping_add(load_bias), i))
        .collect();
    let mut out = HeapScan {
        regions: regions.len(),
        ..HeapScan::default()
    };
    let mut hits = Vec::new();
    let mut buf = Vec::new();
    'regions: for r in regions {
        let mut at = r.start.next_multiple_of(align);
        while at < r.end {
            if hits.len() >= MAX_CANDIDATES {
                out.capped = true;
                break 'regions;
            }
            let len = CHUNK.min(r.end - at);
            buf.resize(len as usize, 0);
            if read_tolerant(mem, at, &mut buf, &mut out) {
                for off in (0..len as usize).step_by(align as usize) {
                    let Some(vt) = word(&buf, off + HEADER_VTABLE as usize) else {
                        continue;
                    };
                    if let Some(&i) = by_addr.get(&vt) {
                        hits.push((at + off as u64, i));
                    }
                }
            }
            at += len;
        }
    }
    // Second read of each hit, whole header and id at once: a cell that
    // was freed or reused in between shows a different vtable or id.
    let mut ids = HashSet::new();
    // (header, id, list neighbours) of every bound task kept, per owner
    // list (runtime or LocalSet): each list has its own shard count.
    let mut listed: HashMap<u64, Vec<(u64, u64, [u64; 2])>> = HashMap::new();
    for (header, i) in hits {
        let vt = &vtables[i];
        let Some(first) = read_task(mem, header, vt, i, load_bias) else {
            out.unstable += 1;
            continue;
        };
        if first.state.is_complete() && first.state.refs() > 0 {
            out.complete_cells += 1;
            continue;
        }
        if !first.state.is_plausible_live() || first.id == 0 {
            out.stale_cells += 1;
            continue;
        }
        if first.owner_id == 0 && vt.has_bound_scheduler() {
            out.unbound_copies += 1;
            continue;
        }
        match read_task(mem, header, vt, i, load_bias) {
            Some(again) if again.id == first.id && again.state.is_plausible_live() => {
                // A freed cell reused by other data can keep the old header
                // intact (seen: an mpsc block whose first slot made a
                // plausible state word); its list neighbours moved on.
                let linked = || list_neighbours(mem, header, vt, &by_addr, vtables);
                let neighbours = if vt.has_bound_scheduler() {
                    match linked().or_else(linked) {
                        Some(n) => Some(n),
                        None => {
                            out.stale_cells += 1;
                            continue;
                        }
                    }
                } else {
                    None
                };
                if ids.insert(again.id) {
                    if let Some(n) = neighbours {
                        listed
                            .entry(again.owner_id)
                            .or_default()
                            .push((header, again.id, n));
                    }
                    out.tasks.push(again);
                } else {
                    // Two cells cannot hold one live id; the other is a
                    // stale copy we cannot tell apart. Keep the first.
                    out.stale_cells += 1;
                }
            }
            _ => out.unstable += 1,
        }
    }
    let lone: HashSet<u64> = listed.values().flat_map(|l| lone_impostors(l)).collect();
    if !lone.is_empty() {
        out.stale_cells += lone.len();
        out.tasks.retain(|t| !lone.contains(&t.id));
    }
    out.tasks.sort_by_key(|t| t.header);
    Ok(out)
}

/// Ids of cells that claim to be alone in their list shard (no neighbours)
/// although other tasks share that shard: a freed cell whose task was alone
/// when it left, since reused by data that left its header intact. `listed`
/// holds one owner list's tasks: runtimes differ in shard count (a
/// 2-worker runtime's tasks would otherwise be judged by a 1-worker one's).
///
/// tokio picks a task's shard as `id & (shards - 1)`, and the tasks of one
/// shard are linked to each other, so every difference between linked ids
/// is a multiple of the shard count; their gcd is the shard count or a
/// multiple of it, which only makes this test weaker, never wrong.
fn lone_impostors(listed: &[(u64, u64, [u64; 2])]) -> HashSet<u64> {
    let id_of: HashMap<u64, u64> = listed.iter().map(|&(h, id, _)| (h, id)).collect();
    let mut shards = 0u64;
    for &(_, id, neighbours) in listed {
        for n in neighbours {
            if let Some(&other) = id_of.get(&n) {
                shards = gcd(shards, id.abs_diff(other));
            }
        }
    }
    if shards == 0 {
        return HashSet::new();
    }
    let linked: HashSet<u64> = listed
        .iter()
        .filter(|(_, _, n)| n.iter().any(|&p| p != 0))
        .map(|(_, id, _)| id % shards)
        .collect();
    listed
        .iter()
        .filter(|(_, id, n)| n == &[0, 0] && linked.contains(&(id % shards)))
        .map(|&(_, id, _)| id)
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Read `buf.len()` bytes at `at`; on failure, page by page, zeroing what
/// cannot be read. False when nothing was readable.
fn read_tolerant(mem: &Memory, at: u64, buf: &mut [u8], out: &mut HeapScan) -> bool {
    if mem.read(at, buf).is_ok() {
        out.bytes_scanned += buf.len() as u64;
        return true;
    }
    let mut any = false;
    for (k, page) in buf.chunks_mut(4096).enumerate() {
        let addr = at + (k * 4096) as u64;
        if mem.read(addr, page).is_ok() {
            out.bytes_scanned += page.len() as u64;
            any = true;
        } else {
            page.fill(0);
            out.bytes_unreadable += page.len() as u64;
        }
    }
    any
}

/// A bound task's list neighbours (prev and next headers, 0 for none), if
/// each points back at it. A task lives on its runtime's owned-task list
/// (`Trailer.owned`) from spawn to completion; a freed cell keeps stale
/// pointers whose targets were relinked to each other when it left.
fn list_neighbours(
    mem: &Memory,
    header: u64,
    vt: &TaskVtable,
    by_addr: &HashMap<u64, usize>,
    vtables: &[TaskVtable],
) -> Option<[u64; 2]> {
    let pair = |at: u64| {
        let mut b = [0u8; 16];
        mem.read(at, &mut b).ok()?;
        Some([word(&b, 0)?, word(&b, 8)?])
    };
    // The neighbours are words of the target's memory: any value, so the
    // addresses wrap (and then do not read) rather than overflow.
    let neighbours = pair(header.wrapping_add(vt.trailer_offset))?;
    let points_back = |n: u64| {
        let vtable = mem.read_u64(n.wrapping_add(HEADER_VTABLE)).ok()?;
        let nvt = &vtables[*by_addr.get(&vtable)?];
        pair(n.wrapping_add(nvt.trailer_offset)).map(|p| p.contains(&header))
    };
    neighbours
        .iter()
        .all(|&n| n == 0 || points_back(n).unwrap_or(false))
        .then_some(neighbours)
}

/// One task header (and its id and scheduler) at `header`, if its vtable
/// word is still `vt`'s.
pub fn read_task(
    mem: &Memory,
    header: u64,
    vt: &TaskVtable,
    index: usize,
    load_bias: u64,
) -> Option<LiveTask> {
    // Header, scheduler and id in one read: the offsets are small (< 4 KiB).
    let mut b = vec![0u8; task_span(vt)];
    mem.read(header, &mut b).ok()?;
    parse_task(&b, header, vt, index, load_bias)
}

/// Bytes from the header to the end of the task id.
pub fn task_span(vt: &TaskVtable) -> usize {
    (vt.id_offset + 8).max(HEADER_LEN as u64) as usize
}

/// A task from `b`, the [`task_span`] bytes read at `header`.
pub fn parse_task(
    b: &[u8],
    header: u64,
    vt: &TaskVtable,
    index: usize,
    load_bias: u64,
) -> Option<LiveTask> {
    if word(b, HEADER_VTABLE as usize)? != vt.va.wrapping_add(load_bias) {
        return None;
    }
    Some(LiveTask {
        header,
        id: word(b, vt.id_offset as usize)?,
        state: StateWord(word(b, 0)?),
        vtable: index,
        owner_id: word(b, HEADER_OWNER_ID as usize)?,
        scheduler: word(b, vt.scheduler_offset as usize)?,
    })
}

fn word(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_follows_the_version() {
        use super::super::binary::TokioVersion;
        let v = |minor| {
            Some(TokioVersion {
                major: 1,
                minor,
                patch: 0,
            })
        };
        assert_eq!(cell_align(v(28)), MALLOC_ALIGN);
        assert_eq!(cell_align(v(29)), CELL_ALIGN);
        assert_eq!(cell_align(None), CELL_ALIGN);
    }

    /// Shard count 4 (ids 1, 5, 9 linked; 2, 6 linked): a lone 13 shares
    /// shard 1 with a list, so it cannot be alone; a lone 3 can.
    #[test]
    fn lone_cells_in_a_populated_shard_are_impostors() {
        let listed = [
            (0x100, 1, [0, 0x200]),
            (0x200, 5, [0x100, 0x300]),
            (0x300, 9, [0x200, 0]),
            (0x400, 2, [0, 0x500]),
            (0x500, 6, [0x400, 0]),
            (0x600, 13, [0, 0]),
            (0x700, 3, [0, 0]),
        ];
        assert_eq!(lone_impostors(&listed), HashSet::from([13]));
        assert!(
            lone_impostors(&listed[5..]).is_empty(),
            "no lists: no evidence"
        );
    }

    #[test]
    fn picks_anonymous_writable_mappings() {
        let maps = "\
555555554000-555555556000 r--p 00000000 fd:01 1234 /srv/api
555555556000-55555555a000 rw-p 00002000 fd:01 1234 /srv/api
55555555a000-55555557b000 rw-p 00000000 00:00 0 [heap]
7ffff0000000-7ffff0021000 rw-p 00000000 00:00 0
7ffff0021000-7ffff4000000 ---p 00000000 00:00 0
7ffff7000000-7ffff7001000 rw-s 00000000 00:05 77 /dev/zero (deleted)
7ffff7800000-7ffff7900000 rw-p 00000000 00:00 0 [anon: glibc: malloc arena]
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
";
        let r = heap_regions(maps);
        assert_eq!(
            r.iter().map(|r| r.start).collect::<Vec<_>>(),
            vec![0x55555555a000, 0x7ffff0000000, 0x7ffff7800000]
        );
    }
}
