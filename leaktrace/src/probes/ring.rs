//! Draining the ring buffer on its own thread, never behind other work: a
//! refresh of 100,000 goroutines must not leave the ring unread long enough
//! to fill up.
//!
//! The probes wake this thread only once a batch is waiting (1/16 of the
//! ring), because a wake-up per record costs the traced program an interrupt
//! per event; the 50 ms poll timeout picks up whatever stays below that, so
//! events are at most 50 ms late.
use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
};

use aya::Pod;
use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, error::TryRecvError};

use super::Logger;

/// Longest a record waits in the ring when the probes did not wake us.
const POLL_MS: i32 = 50;
/// Records copied out of the ring and not yet applied, at most. The session
/// applies them between reads of the target; a read of a million goroutines
/// takes seconds, and a program spawning 100,000 goroutines a second fills
/// this in ten. Past it, records are dropped and counted as lost (like the
/// kernel's, `events.lost`): 2²⁰ records of ≤ 72 bytes (`GoEvent`) are ≤ 72 MiB.
pub const MAX_QUEUED_RECORDS: usize = 1 << 20;
/// Records per batch at most, so one batch is a small part of the bound.
const MAX_BATCH_RECORDS: usize = 4096;

/// The ring reader's side of the record channel: bounded by
/// [`MAX_QUEUED_RECORDS`] records in flight, overflow counted.
pub struct RecordSender {
    tx: UnboundedSender<RecordBatch>,
    queued: Arc<AtomicUsize>,
    overflowed: Arc<AtomicU64>,
}

/// The session's side: receiving a batch frees its records' room.
pub struct RecordReceiver {
    rx: UnboundedReceiver<RecordBatch>,
    queued: Arc<AtomicUsize>,
}

/// A record channel whose dropped records are added to `overflowed`
/// ([`super::Probes::overflow_counter`], part of `lost`).
pub fn record_channel(overflowed: Arc<AtomicU64>) -> (RecordSender, RecordReceiver) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        RecordSender {
            tx,
            queued: queued.clone(),
            overflowed,
        },
        RecordReceiver { rx, queued },
    )
}

impl RecordSender {
    /// Queue `batch`, or drop and count it when the queue is full. False
    /// once the receiver is gone.
    pub fn send(&self, batch: RecordBatch) -> bool {
        self.send_within(batch, MAX_QUEUED_RECORDS)
    }

    fn send_within(&self, batch: RecordBatch, max: usize) -> bool {
        let n = batch.len();
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > max {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.overflowed.fetch_add(n as u64, Ordering::Relaxed);
            return !self.tx.is_closed();
        }
        self.tx.send(batch).is_ok()
    }
}

impl RecordReceiver {
    pub async fn recv(&mut self) -> Option<RecordBatch> {
        let b = self.rx.recv().await?;
        self.queued.fetch_sub(b.len(), Ordering::AcqRel);
        Some(b)
    }

    pub fn try_recv(&mut self) -> Result<RecordBatch, TryRecvError> {
        let b = self.rx.try_recv()?;
        self.queued.fetch_sub(b.len(), Ordering::AcqRel);
        Ok(b)
    }
}

/// Records of one kind, copied out of the ring back to back, `stride` bytes
/// each: one allocation per batch, whatever the runtime's record type.
#[derive(Debug, Default)]
pub struct RecordBatch {
    pub bytes: Vec<u8>,
    pub stride: usize,
}

impl RecordBatch {
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes.chunks_exact(self.stride.max(1))
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / self.stride.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

pub struct RingReader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Records shorter than the record type (never expected; counted
    /// so a mismatch between probes and decoder cannot go unnoticed).
    pub malformed: Arc<AtomicU64>,
}

impl RingReader {
    /// Batches of `stride`-byte records go to `tx` in ring order; the
    /// probes' log lines (if any) are printed as they come.
    pub fn spawn(
        mut ring: RingBuf<MapData>,
        mut logger: Option<Logger>,
        stride: usize,
        tx: RecordSender,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let malformed = Arc::new(AtomicU64::new(0));
        let (stop2, malformed2) = (stop.clone(), malformed.clone());
        let handle = std::thread::Builder::new()
            .name("leaktrace-ring".into())
            .spawn(move || {
                loop {
                    let stopping = stop2.load(Ordering::Acquire);
                    let new_batch = || RecordBatch {
                        bytes: Vec::new(),
                        stride,
                    };
                    let mut batch = new_batch();
                    while let Some(item) = ring.next() {
                        match item.get(..stride) {
                            Some(record) => batch.bytes.extend_from_slice(record),
                            None => {
                                malformed2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if batch.len() >= MAX_BATCH_RECORDS
                            && !tx.send(std::mem::replace(&mut batch, new_batch()))
                        {
                            return;
                        }
                    }
                    if !batch.is_empty() && !tx.send(batch) {
                        return;
                    }
                    if stopping {
                        return;
                    }
                    if let Some(l) = logger.as_mut() {
                        l.flush();
                    }
                    let fd = |raw| libc::pollfd {
                        fd: raw,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let mut fds = [fd(ring.as_raw_fd()), fd(-1)];
                    if let Some(l) = &logger {
                        fds[1] = fd(l.as_raw_fd());
                    }
                    // SAFETY: valid pollfds (a negative fd is ignored). The
                    // timeout both bounds event latency (see above) and lets
                    // us see `stop`.
                    unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_MS) };
                }
            })
            .expect("spawning the ring buffer reader thread");
        Self {
            stop,
            handle: Some(handle),
            malformed,
        }
    }

    /// Take the last records and stop. Everything committed before this call
    /// has been sent when it returns.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One record as the probes wrote it; `None` if `bytes` is too short.
pub fn decode_record<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain old data and read_unaligned copes
    // with the ring's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: usize) -> RecordBatch {
        RecordBatch {
            bytes: vec![0; records * 8],
            stride: 8,
        }
    }

    /// Past the bound, batches are dropped and their records counted;
    /// receiving frees room again.
    #[test]
    fn a_full_queue_counts_what_it_drops() {
        let lost = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = record_channel(lost.clone());
        assert!(tx.send_within(batch(6), 10));
        assert!(tx.send_within(batch(5), 10), "dropped, not closed");
        assert_eq!(
            lost.load(Ordering::Relaxed),
            5,
            "the second batch did not fit"
        );
        assert_eq!(rx.try_recv().unwrap().len(), 6);
        assert!(tx.send_within(batch(5), 10));
        assert_eq!(
            lost.load(Ordering::Relaxed),
            5,
            "room again after a receive"
        );
        assert_eq!(rx.try_recv().unwrap().len(), 5);
        assert!(rx.try_recv().is_err());
        drop(rx);
        assert!(!tx.send_within(batch(1), 10), "receiver gone");
    }
}
