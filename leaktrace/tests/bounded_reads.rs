//! Reading `runtime.allgs` from a target that claims absurd sizes: the
//! target is this test process, its memory read through
//! `process_vm_readv` as leaktrace reads a traced program's, with a slice
//! header, a g pointer array and g structs laid out as Go's are (the
//! go1.22 layout) and the numbers a race or a hostile program could put
//! there. Every claim is checked before anything is read, a length past
//! the bound is cut with a note, and what the reader allocates stays under
//! a fixed bound whatever the target claims (a property test, with an
//! allocator that counts this thread's bytes).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use leaktrace::{
    runtime::go::{
        allgs_read::{AllgsSlice, BATCH, MAX_ALLGLEN, for_each_g, mapped_bytes, read_slice},
        layout::GLayout,
        reader::GHeader,
        version::GoVersion,
    },
    target::memory::Memory,
};
use proptest::prelude::*;

/// Counts the bytes this thread has allocated and not freed, and the peak
/// since the last [`reset_peak`]. Per thread, so tests running in parallel
/// do not see each other's allocations.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: a thread's TLS may already be gone while it frees.
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call goes to the system allocator unchanged; only counts
// are kept besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated beyond those live when `f` started, at the most.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, (PEAK.with(Cell::get) - base).max(0) as usize)
}

fn layout() -> GLayout {
    GLayout::for_version(&GoVersion::parse("go1.22").expect("a version")).expect("a layout")
}

/// g structs in this process's memory, and the allgs array pointing to
/// them (with `extra` zero pointers after).
struct FakeGs {
    gs: Vec<Vec<u8>>,
    array: Vec<u64>,
}

impl FakeGs {
    fn new(goids: &[u64], l: &GLayout) -> Self {
        let gs: Vec<Vec<u8>> = goids
            .iter()
            .map(|&goid| {
                let mut g = vec![0u8; l.sizeof_g as usize];
                let put = |g: &mut Vec<u8>, off: u32, v: &[u8]| {
                    g[off as usize..off as usize + v.len()].copy_from_slice(v);
                };
                put(&mut g, l.g_goid, &goid.to_le_bytes());
                put(&mut g, l.g_atomicstatus, &4u32.to_le_bytes()); // _Gwaiting
                put(&mut g, l.g_stack_lo, &0x1000u64.to_le_bytes());
                put(&mut g, l.g_stack_hi, &0x2000u64.to_le_bytes());
                g
            })
            .collect();
        let array = gs.iter().map(|g| g.as_ptr() as u64).collect();
        Self { gs, array }
    }
}

fn mem() -> Memory {
    Memory::new(std::process::id())
}

/// The goids of the g's the reader hands out.
fn read_goids(s: &AllgsSlice, l: &GLayout, max: u64) -> anyhow::Result<(Vec<u64>, Option<u64>)> {
    let mut goids = Vec::new();
    let read = for_each_g(&mem(), s, l.sizeof_g as usize, max, &mut |_, b| {
        if let Some(h) = b.and_then(|b| GHeader::parse(b, l)) {
            goids.push(h.goid);
        }
    })?;
    Ok((goids, read.capped_from))
}

#[test]
fn an_honest_allgs_is_read_whole() {
    let l = layout();
    let fake = FakeGs::new(&[1, 2, 7, 9], &l);
    let header = [fake.array.as_ptr() as u64, 4, 4];
    let s = read_slice(&mem(), header.as_ptr() as u64, None, l.sizeof_g, None).unwrap();
    let (goids, capped) = read_goids(&s, &l, MAX_ALLGLEN).unwrap();
    assert_eq!(goids, vec![1, 2, 7, 9]);
    assert_eq!(capped, None);
    drop(fake.gs);
}

#[test]
fn absurd_lengths_are_refused_before_reading() {
    let l = layout();
    let fake = FakeGs::new(&[1], &l);
    let ptr = fake.array.as_ptr() as u64;
    let mapped = mapped_bytes(std::process::id()).expect("this process's VmSize");
    for (len, cap, why) in [
        (u64::MAX, u64::MAX, "more than the process's"),
        (5, 4, "looks wrong"),
        (1 << 40, 1 << 40, "more than the process's"),
        (mapped / 100, mapped / 100, "more than the process's"),
    ] {
        let header = [ptr, len, cap];
        let e = read_slice(
            &mem(),
            header.as_ptr() as u64,
            None,
            l.sizeof_g,
            Some(mapped),
        )
        .expect_err("an impossible length");
        assert!(format!("{e:#}").contains(why), "len {len}: {e:#}");
    }
    // runtime.allglen, read apart from the slice, is checked the same way.
    let header = [ptr, 1, 1];
    let allglen = [1u64 << 50];
    let e = read_slice(
        &mem(),
        header.as_ptr() as u64,
        Some(allglen.as_ptr() as u64),
        l.sizeof_g,
        Some(mapped),
    )
    .expect_err("allglen over cap");
    assert!(format!("{e:#}").contains("looks wrong"), "{e:#}");
    let header = [0u64, 1, 1];
    assert!(read_slice(&mem(), header.as_ptr() as u64, None, l.sizeof_g, None).is_err());
}

#[test]
fn a_length_past_the_bound_is_cut_and_said() {
    let l = layout();
    let fake = FakeGs::new(&[11, 12, 13, 14, 15], &l);
    let s = AllgsSlice {
        ptr: fake.array.as_ptr() as u64,
        len: 5,
        cap: 5,
    };
    let (goids, capped) = read_goids(&s, &l, 3).unwrap();
    assert_eq!(goids, vec![11, 12, 13], "the first `max` only");
    assert_eq!(capped, Some(5));
    let note = leaktrace::runtime::go::allgs_read::AllgsRead {
        pointers: 3,
        capped_from: capped,
    }
    .note(3)
    .expect("a note");
    assert!(
        note.contains("lists 5 goroutines") && note.contains("first 3"),
        "{note}"
    );
}

#[test]
fn an_array_that_ends_early_stops_the_read() {
    // The slice claims more than the array holds and points into unmapped
    // memory after it: what was read is kept, nothing more is tried.
    let l = layout();
    let fake = FakeGs::new(&[3], &l);
    let s = AllgsSlice {
        ptr: 0x10, // never mapped
        len: 4,
        cap: 4,
    };
    assert!(read_goids(&s, &l, MAX_ALLGLEN).is_err(), "nothing readable");
    drop(fake);
}

/// Bytes the reader may allocate, whatever the target claims: a batch of
/// pointers (8 bytes each), their spans (16), the header buffer (one
/// `process_vm_readv` batch, 1 MiB, or one g if larger), iovecs, slack.
const ALLOC_BOUND: usize = BATCH * (8 + 8 + 16 + 32) + (1 << 20) + (64 << 10);

/// g's allocated one after the other, as the runtime allocates them, are
/// read as merged ranges (`Memory::read_spans`): every goid comes back
/// once, and the reader stays under the same bound.
#[test]
fn side_by_side_gs_are_read_whole_within_the_bound() {
    let l = layout();
    let goids: Vec<u64> = (1..=20_000).collect();
    let fake = FakeGs::new(&goids, &l);
    let n = goids.len() as u64;
    let header = [fake.array.as_ptr() as u64, n, n];
    let (read, peak) = peak_during(|| {
        let s = read_slice(&mem(), header.as_ptr() as u64, None, l.sizeof_g, None)?;
        let mut sum = 0u64;
        for_each_g(&mem(), &s, l.sizeof_g as usize, MAX_ALLGLEN, &mut |_, b| {
            sum += b.and_then(|b| GHeader::parse(b, &l)).map_or(0, |h| h.goid);
        })?;
        anyhow::Ok(sum)
    });
    assert_eq!(read.unwrap(), n * (n + 1) / 2, "every goid, once");
    assert!(
        peak <= ALLOC_BOUND,
        "allocated {peak} bytes at the peak, bound {ALLOC_BOUND}"
    );
    drop(fake.gs);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any slice header and any g pointers (mapped or not, repeated, null):
    /// an error or a read, and the reader's allocations stay under
    /// `ALLOC_BOUND`.
    #[test]
    fn allocation_is_bounded_whatever_the_target_claims(
        len in prop_oneof![0u64..20_000, 200_000u64..4_000_000, Just(u64::MAX), any::<u64>()],
        check_mapped in any::<bool>(),
        cap_extra in prop_oneof![Just(0u64), any::<u64>()],
        pointers in proptest::collection::vec(
            prop_oneof![Just(0u64), Just(1u64), any::<u64>(), Just(u64::MAX - 7)], 0..64),
        honest in 0usize..64,
        max in prop_oneof![Just(MAX_ALLGLEN), 0u64..10_000],
    ) {
        let l = layout();
        let fake = FakeGs::new(&(1..=honest as u64).collect::<Vec<_>>(), &l);
        // The claimed array: real g pointers, then the generated ones,
        // repeated to 20,000 entries so several batches are read.
        let mut array: Vec<u64> = fake.array.iter().copied().chain(pointers.iter().copied()).collect();
        let unit = array.clone();
        while !unit.is_empty() && array.len() < 20_000 {
            array.extend_from_slice(&unit);
        }
        let header = [array.as_ptr() as u64, len, len.saturating_add(cap_extra)];
        // Without the VmSize check too: the batches alone must bound it.
        let mapped = mapped_bytes(std::process::id()).filter(|_| check_mapped);
        let (result, peak) = peak_during(|| {
            let s = read_slice(&mem(), header.as_ptr() as u64, None, l.sizeof_g, mapped)?;
            let mut n = 0u64;
            let r = for_each_g(&mem(), &s, l.sizeof_g as usize, max, &mut |_, b| {
                n += u64::from(b.is_some());
            })?;
            anyhow::Ok((s, r, n))
        });
        prop_assert!(peak <= ALLOC_BOUND, "allocated {peak} bytes at the peak, bound {ALLOC_BOUND}");
        if let Ok((s, r, _)) = result {
            prop_assert!(s.len <= s.cap);
            prop_assert!(r.pointers <= s.len.min(max));
            prop_assert_eq!(r.capped_from, (s.len > max).then_some(s.len));
        }
    }
}
