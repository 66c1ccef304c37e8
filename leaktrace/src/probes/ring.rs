//! Draining the ring buffer when the kernel says it is readable (epoll via
//! tokio's AsyncFd), never on a timer: a sleeping reader loses records at
//! high event rates.
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use leaktrace_common::GoEvent;
use tokio::io::unix::AsyncFd;

pub struct EventRing {
    fd: AsyncFd<RingBuf<MapData>>,
    /// Records whose size did not match `GoEvent` (never expected; counted
    /// so a mismatch between probes and decoder cannot go unnoticed).
    pub malformed: u64,
}

impl EventRing {
    pub fn new(ring: RingBuf<MapData>) -> Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps returning it until
        // dropped, which only happens when the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
        Ok(Self { fd, malformed: 0 })
    }

    /// Wait until records are available, then append all of them to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<GoEvent>) -> Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(ev) => out.push(ev),
                None => self.malformed += 1,
            }
        }
        guard.clear_ready();
        Ok(())
    }

    /// Take whatever is in the ring now without waiting (used before the
    /// final report so no committed record is left behind).
    pub fn drain_now(&mut self, out: &mut Vec<GoEvent>) {
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(ev) => out.push(ev),
                None => self.malformed += 1,
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Option<GoEvent> {
    if bytes.len() < size_of::<GoEvent>() {
        return None;
    }
    // SAFETY: length checked; GoEvent is plain old data and read_unaligned
    // copes with the ring's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<GoEvent>()) })
}
