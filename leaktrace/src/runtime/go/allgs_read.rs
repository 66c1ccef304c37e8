//! Reading `runtime.allgs` (every g the program ever made) from the
//! target's memory, with every number it claims checked first.
//!
//! The slice header (pointer, length, capacity) and `runtime.allglen` are
//! words in the target: a race, a wrong address or a hostile program can put
//! anything there. Before a byte of the array is read, the length must fit
//! the capacity, and the array and the g structs it points to must fit in
//! the memory the process has mapped (`VmSize`): a g is `sizeof(runtime.g)`
//! bytes (checked against the version table, [`super::layout`]), so a
//! process cannot hold more g's than its mapped bytes over that. A length
//! past [`MAX_ALLGLEN`] that passes those checks is real but beyond what
//! leaktrace reads: the first [`MAX_ALLGLEN`] are read and the caller is
//! told. The array is read in batches of [`BATCH`] pointers, their g
//! headers in the same batch, so what leaktrace allocates does not grow
//! with the length.
use anyhow::{Result, bail};

use crate::target::memory::Memory;

/// Goroutines read from `runtime.allgs` at most: 2²⁴ (16.7 million). Their
/// g structs alone take 7 GiB of the target's memory (≥ 440 bytes each from
/// Go 1.21), their smallest stacks 32 GiB more; the largest programs seen
/// run about a million. Reading the headers of 2²⁴ takes leaktrace about a
/// minute and its table a few GiB, so more would not make a useful report.
pub const MAX_ALLGLEN: u64 = 1 << 24;
/// g pointers per batch: a 32 KiB array piece, then their headers in
/// `process_vm_readv` batches of at most 1 MiB (see [`Memory::read_spans`]).
pub const BATCH: usize = 4096;

/// `runtime.allgs`'s slice header as the target holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllgsSlice {
    pub ptr: u64,
    pub len: u64,
    pub cap: u64,
}

/// What one read of `runtime.allgs` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllgsRead {
    /// g pointers read (non-zero ones, whether their g's live or not).
    pub pointers: u64,
    /// Set when the length was over the bound: what it was, for the note.
    pub capped_from: Option<u64>,
}

impl AllgsRead {
    /// The line the report shows when the bound was hit.
    pub fn note(&self, max: u64) -> Option<String> {
        self.capped_from.map(|len| {
            format!(
                "runtime.allgs lists {len} goroutines; leaktrace read the first {max} (its bound, \
                 README §Bounds): the rest are seen only as the probes report them"
            )
        })
    }
}

/// The slice header at `slice` (its length from `allglen` when the binary
/// has that global: it is what the runtime updates last), checked: a
/// non-null array, a length within the capacity, and an array and g's that
/// fit in `mapped_bytes` (the target's `VmSize`; `None`: not checked).
pub fn read_slice(
    mem: &Memory,
    slice: u64,
    allglen: Option<u64>,
    sizeof_g: u32,
    mapped_bytes: Option<u64>,
) -> Result<AllgsSlice> {
    let ptr = mem.read_u64(slice)?;
    let len = match allglen {
        Some(at) => mem.read_u64(at)?,
        None => mem.read_u64(slice.wrapping_add(8))?,
    };
    let cap = mem.read_u64(slice.wrapping_add(16))?;
    let s = AllgsSlice { ptr, len, cap };
    if ptr == 0 || len > cap {
        bail!("runtime.allgs looks wrong (ptr {ptr:#x}, len {len}, cap {cap}); not reading it");
    }
    // Each g takes its pointer in the array and its own struct.
    let per_g = 8 + u64::from(sizeof_g.max(1));
    if let Some(mapped) = mapped_bytes
        && len.saturating_mul(per_g) > mapped
    {
        bail!(
            "runtime.allgs claims {len} goroutines, more than the process's {mapped} mapped bytes \
             can hold at {per_g} bytes each: a wrong read; not reading it"
        );
    }
    Ok(s)
}

/// The target's mapped bytes (`VmSize`, the first field of
/// `/proc/PID/statm`, in pages); `None` when it cannot be read.
pub fn mapped_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.checked_mul(u64::try_from(page).ok()?)
}

/// Each non-zero g pointer of the first `max` in `s`, with the first
/// `g_len` bytes of its g (`None`: unreadable), in batches of [`BATCH`].
/// An unreadable piece of the array ends the read: the array is one
/// allocation, so the rest is unreadable too (or was freed by a growth).
pub fn for_each_g(
    mem: &Memory,
    s: &AllgsSlice,
    g_len: usize,
    max: u64,
    f: &mut dyn FnMut(u64, Option<&[u8]>),
) -> Result<AllgsRead> {
    let mut out = AllgsRead {
        capped_from: (s.len > max).then_some(s.len),
        ..AllgsRead::default()
    };
    let len = s.len.min(max);
    let mut raw = vec![0u8; BATCH * 8];
    let mut addrs: Vec<u64> = Vec::with_capacity(BATCH);
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(BATCH as u64) as usize;
        let piece = &mut raw[..n * 8];
        let addr = s.ptr.wrapping_add(at * 8);
        if let Err(e) = mem.read(addr, piece) {
            if at == 0 {
                bail!("reading the allgs array at {addr:#x}: {e}");
            }
            break;
        }
        addrs.clear();
        addrs.extend(
            piece
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .filter(|&a| a != 0),
        );
        out.pointers += addrs.len() as u64;
        mem.read_each(&addrs, g_len, &mut |i, b| f(addrs[i], b));
        at += n as u64;
    }
    Ok(out)
}
