//! Read-only access to the target's memory.
//!
//! `process_vm_readv` copies from the target without stopping it (no ptrace
//! attach, no signal); it needs the same permission as ptrace-attach, which
//! root has. Reads race with the running program, so callers validate what
//! they read (see `runtime::go::reader`).
use std::io;

pub struct Memory {
    pid: libc::pid_t,
}

/// At most this many iovecs per syscall (the kernel's UIO_MAXIOV).
const MAX_IOV: usize = 1024;
/// Bytes per batched `process_vm_readv` at most (a larger single piece
/// goes alone): bounds the buffer, whatever the lengths asked for.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Pieces at most this far apart are read as one range (see
/// [`Memory::read_spans`]): a `runtime.g` is ~450 bytes of which a
/// refresh reads ~400, a sudog ~90; stacks, 8 KiB apart, stay separate.
const MERGE_GAP: u64 = 512;

impl Memory {
    pub fn new(pid: u32) -> Self {
        Self {
            pid: pid as libc::pid_t,
        }
    }

    /// Fill `buf` from `addr`; an error if any byte is unreadable.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: both iovecs describe valid memory of the stated length; the
        // remote one is only read by the kernel on our behalf.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read at {addr:#x}: {n} of {} bytes", buf.len()),
            ));
        }
        Ok(())
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Read `len` bytes at each address, many per syscall. Unreadable entries
    /// come back as `None` (the batch is retried one by one on failure, since
    /// the kernel stops at the first bad iovec).
    pub fn read_many(&self, addrs: &[u64], len: usize) -> Vec<Option<Vec<u8>>> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; addrs.len()];
        self.read_each(addrs, len, &mut |i, b| out[i] = b.map(<[u8]>::to_vec));
        out
    }

    /// Each `len`-byte piece at `addrs`, `MAX_IOV` addresses per
    /// `process_vm_readv`, into one reused buffer: `f(i, bytes)`, with
    /// `None` for an unreadable one. A refresh reads hundreds of thousands
    /// of small structures; one allocation each would cost more than the
    /// reads.
    pub fn read_each(&self, addrs: &[u64], len: usize, f: &mut dyn FnMut(usize, Option<&[u8]>)) {
        if len == 0 {
            return;
        }
        let spans: Vec<(u64, usize)> = addrs.iter().map(|&a| (a, len)).collect();
        self.read_spans(&spans, f);
    }

    /// Like [`Self::read_each`], with a length per address (stacks of many
    /// goroutines at once): at most `MAX_IOV` pieces and `MAX_BATCH_BYTES`
    /// (or one larger piece) per `process_vm_readv`.
    ///
    /// Pieces that follow each other in the target within `MERGE_GAP`
    /// bytes are read as one range (the bytes between are read and
    /// dropped): the kernel pins the target's pages once per range, and
    /// that, not the copy, is most of the cost of reading a million small
    /// structures that the runtime allocated side by side (`g`s in
    /// `allgs` order, their sudogs). The bytes between two readable pieces
    /// less than a page apart are in the pages of those pieces, so merging
    /// never makes a readable piece unreadable.
    pub fn read_spans(&self, spans: &[(u64, usize)], f: &mut dyn FnMut(usize, Option<&[u8]>)) {
        let mut buf: Vec<u8> = Vec::new();
        let mut ranges: Vec<(u64, usize)> = Vec::with_capacity(MAX_IOV.min(spans.len()));
        // Where each piece of the batch starts in `buf`.
        let mut offs: Vec<usize> = Vec::with_capacity(MAX_IOV.min(spans.len()));
        let mut start = 0;
        while start < spans.len() {
            ranges.clear();
            offs.clear();
            let mut bytes = 0;
            let mut end = start;
            while end < spans.len() {
                let (addr, len) = spans[end];
                let gap = ranges.last().and_then(|&(at, n)| {
                    let gap = addr.checked_sub(at.checked_add(n as u64)?)?;
                    (gap <= MERGE_GAP).then_some(gap as usize)
                });
                let add = gap.map_or(len, |g| g + len);
                if end - start == MAX_IOV || (end > start && bytes + add > MAX_BATCH_BYTES) {
                    break;
                }
                match (gap, ranges.last_mut()) {
                    (Some(g), Some(last)) => {
                        last.1 += add;
                        offs.push(bytes + g);
                    }
                    _ => {
                        ranges.push((addr, len));
                        offs.push(bytes);
                    }
                }
                bytes += add;
                end += 1;
            }
            buf.resize(bytes, 0);
            if self.read_ranges(&ranges, &mut buf) {
                for (j, &off) in offs.iter().enumerate() {
                    f(start + j, Some(&buf[off..off + spans[start + j].1]));
                }
            } else {
                // The kernel stops at the first unreadable address: one by one.
                for (j, &(addr, len)) in spans[start..end].iter().enumerate() {
                    let piece = &mut buf[..len];
                    let ok = self.read(addr, piece).is_ok();
                    f(start + j, ok.then_some(&*piece));
                }
            }
            start = end;
        }
    }

    /// One `process_vm_readv`: the ranges one after the other into `buf`
    /// (at most `MAX_IOV` ranges). False unless every byte was read.
    fn read_ranges(&self, ranges: &[(u64, usize)], buf: &mut [u8]) -> bool {
        debug_assert!(ranges.len() <= MAX_IOV);
        debug_assert_eq!(buf.len(), ranges.iter().map(|s| s.1).sum::<usize>());
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote: Vec<libc::iovec> = ranges
            .iter()
            .map(|&(a, len)| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: the local iovec is `buf`, of its length, and `buf`
        // outlives the call; the remote ones are only read, by the kernel,
        // from the target; there are at most UIO_MAXIOV of them.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        n >= 0 && n as usize == buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let value: [u64; 3] = [0x1122334455667788, 42, 7];
        let mem = Memory::new(std::process::id());
        let addr = value.as_ptr() as u64;
        assert_eq!(mem.read_u64(addr).unwrap(), 0x1122334455667788);
        let many = mem.read_many(&[addr + 8, addr + 16, 8], 8);
        assert_eq!(many[0].as_deref(), Some(&42u64.to_le_bytes()[..]));
        assert_eq!(many[1].as_deref(), Some(&7u64.to_le_bytes()[..]));
        assert!(many[2].is_none(), "address 8 must be unreadable");
        let mut got = Vec::new();
        mem.read_spans(&[(addr, 16), (8, 8), (addr + 16, 8)], &mut |i, b| {
            got.push((i, b.map(<[u8]>::to_vec)));
        });
        assert_eq!(got[0].1.as_deref().map(<[u8]>::len), Some(16));
        assert_eq!(got[1], (1, None));
        assert_eq!(got[2].1.as_deref(), Some(&7u64.to_le_bytes()[..]));
    }

    #[test]
    fn nearby_pieces_are_read_as_one_range_and_still_come_back_apart() {
        let words: Vec<u64> = (0..1024).collect();
        let mem = Memory::new(std::process::id());
        let at = |i: u64| words.as_ptr() as u64 + i * 8;
        // Adjacent, a gap within MERGE_GAP, one beyond it, one going
        // backwards, and an unreadable one in the middle of a batch.
        let spans = [
            (at(1), 8),
            (at(2), 16),
            (at(10), 8),
            (at(500), 8),
            (at(3), 8),
            (8, 8),
            (at(501), 8),
        ];
        let mut got = Vec::new();
        mem.read_spans(&spans, &mut |i, b| {
            got.push((i, b.map(|b| u64::from_le_bytes(b[..8].try_into().unwrap()))));
        });
        assert_eq!(
            got,
            vec![
                (0, Some(1)),
                (1, Some(2)),
                (2, Some(10)),
                (3, Some(500)),
                (4, Some(3)),
                (5, None),
                (6, Some(501)),
            ]
        );
    }
}
