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

pub struct RingReader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Records shorter than the record type (never expected; counted
    /// so a mismatch between probes and decoder cannot go unnoticed).
    pub malformed: Arc<AtomicU64>,
}

impl RingReader {
    /// Batches of records go to `tx` in ring order; the probes' log lines
    /// (if any) are printed as they come.
    pub fn spawn<T: Pod + Send>(
        mut ring: RingBuf<MapData>,
        mut logger: Option<Logger>,
        tx: UnboundedSender<Vec<T>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let malformed = Arc::new(AtomicU64::new(0));
        let (stop2, malformed2) = (stop.clone(), malformed.clone());
        let handle = std::thread::Builder::new()
            .name("leaktrace-ring".into())
            .spawn(move || {
                loop {
                    let stopping = stop2.load(Ordering::Acquire);
                    let mut batch = Vec::new();
                    while let Some(item) = ring.next() {
                        match decode::<T>(&item) {
                            Some(ev) => batch.push(ev),
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

fn decode<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain old data and read_unaligned copes
    // with the ring's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}
