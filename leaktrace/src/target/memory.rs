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
        let mut buf = vec![0u8; addrs.len().min(MAX_IOV) * len];
        for (c, chunk) in addrs.chunks(MAX_IOV).enumerate() {
            let bytes = &mut buf[..chunk.len() * len];
            if self.read_batch(chunk, len, bytes) {
                for (j, b) in bytes.chunks(len).enumerate() {
                    f(c * MAX_IOV + j, Some(b));
                }
            } else {
                // The kernel stops at the first unreadable address: one by one.
                for (j, (&a, b)) in chunk.iter().zip(bytes.chunks_mut(len)).enumerate() {
                    let ok = self.read_batch(&[a], len, b);
                    f(c * MAX_IOV + j, ok.then_some(&*b));
                }
            }
        }
    }

    /// One `process_vm_readv`: `buf` split in `len`-byte pieces, each read
    /// from its address in `addrs` (at most `MAX_IOV`). False unless every
    /// byte was read.
    fn read_batch(&self, addrs: &[u64], len: usize, buf: &mut [u8]) -> bool {
        debug_assert!(addrs.len() <= MAX_IOV && buf.len() == addrs.len() * len);
        let local: Vec<libc::iovec> = buf
            .chunks_mut(len)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let remote: Vec<libc::iovec> = addrs
            .iter()
            .map(|&a| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: every local iovec is a distinct `len`-byte piece of `buf`,
        // which outlives the call; the remote ones are only read, by the
        // kernel, from the target; counts are at most UIO_MAXIOV.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid,
                local.as_ptr(),
                local.len() as libc::c_ulong,
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
    }
}
