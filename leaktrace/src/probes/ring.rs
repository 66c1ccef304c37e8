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
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use aya::Pod;
use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc::UnboundedSender;

use super::Logger;

/// Longest a record waits in the ring when the probes did not wake us.
const POLL_MS: i32 = 50;

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
        tx: UnboundedSender<RecordBatch>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let malformed = Arc::new(AtomicU64::new(0));
        let (stop2, malformed2) = (stop.clone(), malformed.clone());
        let handle = std::thread::Builder::new()
            .name("leaktrace-ring".into())
            .spawn(move || {
                loop {
                    let stopping = stop2.load(Ordering::Acquire);
                    let mut batch = RecordBatch {
                        bytes: Vec::new(),
                        stride,
                    };
                    while let Some(item) = ring.next() {
                        match item.get(..stride) {
                            Some(record) => batch.bytes.extend_from_slice(record),
                            None => {
                                malformed2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if !batch.is_empty() && tx.send(batch).is_err() {
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
