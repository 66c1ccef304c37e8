//! `-c CMD`: start the program held at the starting line until the probes are
//! attached, so not one goroutine is missed.
//!
//! std's `Command::spawn` returns only after `exec`, which is too late, so we
//! fork by hand: the child blocks reading a pipe, the parent attaches probes
//! scoped to the child's pid (which `exec` keeps), then writes one byte.
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use super::privileges::ChildRights;

pub struct HeldChild {
    pub pid: u32,
    /// The resolved program file; probes attach to its inode.
    pub program: PathBuf,
    release_fd: libc::c_int,
}

/// Find `cmd` the way a shell would (a path if it has a slash, else PATH).
pub fn resolve(cmd: &str) -> Result<PathBuf> {
    let p = Path::new(cmd);
    if cmd.contains('/') {
        if p.is_file() {
            return Ok(p.canonicalize()?);
        }
        bail!("{cmd}: no such file");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let c = dir.join(cmd);
        if c.is_file() {
            return Ok(c.canonicalize()?);
        }
    }
    bail!("{cmd}: command not found in PATH")
}

impl HeldChild {
    /// Fork; the child waits for [`HeldChild::release`] and then execs.
    /// Must be called before any thread is started (before the tokio runtime).
    /// The program starts with `rights`: never leaktrace's granted
    /// capabilities.
    pub fn spawn(program: &Path, argv: &[String], rights: ChildRights) -> Result<Self> {
        let c_prog = CString::new(program.as_os_str().as_bytes())?;
        let c_args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .context("an argument contains a NUL byte")?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());

        let mut fds = [0; 2];
        // SAFETY: valid out-array of two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe2");
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: single-threaded at this point (documented precondition);
        // the child only calls async-signal-safe functions before exec.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: in the forked child only async-signal-safe calls
            // (prctl, getppid, capget/capset, close, read, execv, _exit) on
            // fds and strings made before fork.
            unsafe {
                // If leaktrace dies (even by SIGKILL), the command dies with
                // it rather than run on untraced. The fork happens on the
                // main thread, which lives as long as leaktrace (the signal
                // follows the parent *thread*). Kept across exec, except
                // into a setuid or file-capability program.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
                    || libc::getppid() != parent
                    || !rights.apply()
                {
                    libc::_exit(127);
                }
                libc::close(write_fd);
                let mut b = 0u8;
                let n = libc::read(read_fd, (&raw mut b).cast(), 1);
                if n != 1 {
                    // The parent went away without releasing us: do not run
                    // the program untraced.
                    libc::_exit(127);
                }
                libc::execv(c_prog.as_ptr(), c_argv.as_ptr());
                libc::_exit(127);
            }
        }
        // SAFETY: closing our copy of the child's end.
        unsafe { libc::close(read_fd) };
        Ok(Self {
            pid: pid as u32,
            program: program.to_path_buf(),
            release_fd: write_fd,
        })
    }

    /// Let the child exec the program.
    pub fn release(&mut self) -> Result<()> {
        if self.release_fd < 0 {
            return Ok(());
        }
        let b = 1u8;
        // SAFETY: writing one byte from a valid buffer to our pipe end.
        let n = unsafe { libc::write(self.release_fd, (&raw const b).cast(), 1) };
        // SAFETY: closing our own pipe end, once (set to -1 below).
        unsafe { libc::close(self.release_fd) };
        self.release_fd = -1;
        if n != 1 {
            bail!("could not start the command (its process is gone)");
        }
        Ok(())
    }
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        if self.release_fd >= 0 {
            // Never released (attach failed): closing the pipe makes the
            // child exit without running the program.
            // SAFETY: closing our own pipe end, which nothing else uses.
            unsafe { libc::close(self.release_fd) };
        }
    }
}

/// Reap the child if it has exited; its exit status if so.
pub fn try_reap(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: valid out-pointer; WNOHANG never blocks.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    if r == pid as libc::pid_t {
        if libc::WIFEXITED(status) {
            Some(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Some(128 + libc::WTERMSIG(status))
        } else {
            None
        }
    } else {
        None
    }
}
