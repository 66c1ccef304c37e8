//! Facts about the traced process from /proc, and the checks that turn bad
//! input into errors that name the fix.
use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// A running process we may trace.
#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    /// `/proc/PID/exe`: opens the executable even inside another mount
    /// namespace (containers) or after it was replaced on disk.
    pub exe_link: PathBuf,
    /// What the link points at, for display.
    pub exe_display: String,
}

/// The reasons attaching can fail before any probe is loaded.
#[derive(Debug)]
pub enum TargetError {
    NoSuchPid(u32),
    ExitedDuringAttach(u32),
    NotPermitted(u32),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchPid(pid) => write!(
                f,
                "no process with pid {pid}. Check the pid with `pgrep -a <name>` or `ps -p {pid}`."
            ),
            Self::ExitedDuringAttach(pid) => write!(
                f,
                "process {pid} exited while leaktrace was attaching; nothing to trace. \
                 To trace a short-lived program from its start, use `leaktrace -c <command>`."
            ),
            Self::NotPermitted(pid) => write!(
                f,
                "not permitted to read process {pid}. Run leaktrace as root (sudo), or as the \
                 process's owner with {}",
                super::privileges::SETCAP_HINT
            ),
        }
    }
}

impl std::error::Error for TargetError {}

impl Process {
    pub fn open(pid: u32) -> Result<Self> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(TargetError::NoSuchPid(pid).into());
        }
        let exe_link = proc_dir.join("exe");
        let exe_display = match fs::read_link(&exe_link) {
            Ok(p) => p.display().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(TargetError::NotPermitted(pid).into());
            }
            Err(_) if !proc_dir.exists() => return Err(TargetError::ExitedDuringAttach(pid).into()),
            Err(e) => {
                // Kernel threads have no exe; so do zombies.
                bail!(
                    "process {pid} has no executable to trace ({e}); is it a kernel thread or a zombie?"
                )
            }
        };
        Ok(Self {
            pid,
            exe_link,
            exe_display,
        })
    }

    /// Whether the process is running `program` now. With `-c` the child is
    /// still leaktrace until it execs; its maps would describe leaktrace.
    pub fn runs(&self, program: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(&self.exe_link), fs::metadata(program)) {
            (Ok(running), Ok(ours)) => (running.dev(), running.ino()) == (ours.dev(), ours.ino()),
            _ => false,
        }
    }

    pub fn is_alive(&self) -> bool {
        // A zombie still has /proc/PID but state Z; treat it as gone.
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => super::procfs::stat_state(&stat).is_some_and(|s| s != 'Z'),
            Err(_) => false,
        }
    }

    /// Where the executable's first byte is mapped, as (start, file offset)
    /// pairs per mapping of `exe`, from /proc/PID/maps. Used to compute the
    /// load bias of PIE executables.
    pub fn exe_mappings(&self) -> Result<Vec<Mapping>> {
        let exe_target = fs::read_link(&self.exe_link)
            .with_context(|| format!("reading {}", self.exe_link.display()))?;
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map_err(|_| TargetError::ExitedDuringAttach(self.pid))?;
        Ok(parse_maps(&maps, &exe_target))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
}

fn parse_maps(maps: &str, exe: &Path) -> Vec<Mapping> {
    let exe = exe.to_string_lossy();
    let exe = exe.trim_end_matches(" (deleted)");
    super::maps::entries(maps)
        .filter(|e| e.path.trim_end_matches(" (deleted)") == exe)
        .map(|e| Mapping {
            start: e.start,
            end: e.end,
            file_offset: e.offset,
        })
        .collect()
}

/// Load bias of a mapped ELF: runtime address = link-time VA + bias.
///
/// `segments` are the PT_LOAD (vaddr, file offset) pairs. 0 for non-PIE.
/// Open sockets of `pid` (links in /proc/PID/fd that read `socket:[…]`);
/// `None` when they cannot be listed. Stops counting at `MAX_FDS_SCANNED`
/// descriptors, so a process with millions of them costs a bounded scan.
pub fn open_sockets(pid: u32) -> Option<u32> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut n = 0u32;
    for entry in dir.take(MAX_FDS_SCANNED).flatten() {
        if fs::read_link(entry.path())
            .is_ok_and(|l| l.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
        {
            n += 1;
        }
    }
    Some(n)
}

const MAX_FDS_SCANNED: usize = 1 << 20;

pub fn load_bias(mappings: &[Mapping], segments: &[(u64, u64)]) -> Option<u64> {
    for m in mappings {
        for &(vaddr, offset) in segments {
            // Segments are mapped page-aligned: match on the page-aligned offset.
            let page_off = offset & !0xfff;
            if page_off == m.file_offset {
                let page_vaddr = vaddr & !0xfff;
                return Some(m.start.wrapping_sub(page_vaddr));
            }
        }
    }
    None
}

/// Fail early, with the fix, on kernels without what the probes need.
pub fn check_kernel() -> Result<()> {
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        bail!(
            "this kernel has no uprobe support (/sys/bus/event_source/devices/uprobe is missing). \
             leaktrace needs Linux ≥ 5.8 built with CONFIG_UPROBES=y and CONFIG_BPF_EVENTS=y."
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing). leaktrace needs \
             Linux ≥ 5.8 built with CONFIG_DEBUG_INFO_BTF=y."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_bias_for_a_pie() {
        let maps = "\
555555554000-555555556000 r--p 00000000 fd:01 1234 /srv/api
555555556000-55555555a000 r-xp 00002000 fd:01 1234 /srv/api
7ffff7dd3000-7ffff7dfc000 r-xp 00000000 fd:01 99 /usr/lib/libc.so.6
";
        let m = parse_maps(maps, Path::new("/srv/api"));
        assert_eq!(m.len(), 2);
        let bias = load_bias(&m, &[(0, 0), (0x2000, 0x2000)]).unwrap();
        assert_eq!(bias, 0x555555554000);
        // Non-PIE: mapped at its link address.
        let m = [Mapping {
            start: 0x400000,
            end: 0x500000,
            file_offset: 0,
        }];
        assert_eq!(load_bias(&m, &[(0x400000, 0)]), Some(0));
    }

    #[test]
    fn missing_pid_names_the_fix() {
        let err = Process::open(u32::MAX - 1).unwrap_err().to_string();
        assert!(err.contains("no process with pid"), "{err}");
    }
}
