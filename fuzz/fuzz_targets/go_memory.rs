//! The target's memory, as the Go reader parses it: `runtime.g` headers
//! (every version's layout), sudogs, hchans and timers, and a whole
//! channel read over a wait queue made of the input's bytes (cycles,
//! absurd lengths and pointers anywhere). Also `/proc/PID/maps` text.
//! Reads beyond the input come back unreadable, as they would from a
//! process that unmapped the page.
#![no_main]

use leaktrace::runtime::{
    go::{
        channels::{ChanReader, Hchan, ParkKey, ReadMem, Sudog, Timer, WaitOp, Waiter},
        layout::{ChanLayout, GLayout},
        reader::GHeader,
        version::GoVersion,
    },
    tokio::heap_scan::heap_regions,
};
use libfuzzer_sys::fuzz_target;

/// The input as a process's memory at address BASE.
struct Bytes<'a>(&'a [u8]);

const BASE: u64 = 0xc000_000000;

impl ReadMem for Bytes<'_> {
    fn read_each(&self, addrs: &[u64], len: usize, f: &mut dyn FnMut(usize, Option<&[u8]>)) {
        for (i, &a) in addrs.iter().enumerate() {
            let at = a.checked_sub(BASE).and_then(|o| usize::try_from(o).ok());
            f(i, at.and_then(|o| self.0.get(o..o.checked_add(len)?)));
        }
    }
}

fn word(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8)
        .map_or(0, |w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let minor = 19 + u32::from(pick % 9);
    let version = GoVersion::parse(&format!("go1.{minor}")).expect("a version");
    if let Some(l) = GLayout::for_version(&version)
        && let Some(h) = GHeader::parse(rest, &l)
    {
        let _ = (h.state(), h.is_gone());
    }
    let Some(layout) = ChanLayout::for_minor(minor) else {
        return;
    };
    let _ = Sudog::parse(rest, &layout);
    let _ = Hchan::parse(rest, &layout);
    let _ = Timer::parse(rest, &layout);
    // Waiters whose g.waiting points into the input.
    let ops = [WaitOp::Send, WaitOp::Recv, WaitOp::Select];
    let waiters: Vec<Waiter> = (0..4)
        .map(|i| {
            Waiter::new(
                BASE + 8 * i,
                word(rest, i as usize),
                ops[(word(rest, 4 + i as usize) % 3) as usize],
                ParkKey {
                    goid: i,
                    sp: 0,
                    pc: 0,
                    bp: 0,
                    parked_ns: 0,
                }
                .digest(),
            )
        })
        .collect();
    let mut reader = ChanReader::new(layout, Some(BASE + word(rest, 8) % 4096));
    let _ = reader.read(&Bytes(rest), &waiters);
    let _ = heap_regions(&String::from_utf8_lossy(rest));
});
