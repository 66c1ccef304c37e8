//! tracefs: where tracepoint ids and record layouts are published.
//!
//! aya attaches a tracepoint by reading its id from tracefs, and the record
//! layout of a tracepoint changes between kernels (`sched_process_fork` moved
//! its comm fields to `__data_loc` in 6.x, shifting every offset after them),
//! so the probes take their field offsets from the `format` files here rather
//! than compiling any in.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

const MOUNT_POINT: &str = "/sys/kernel/tracing";

/// The tracefs directory. When no one mounted tracefs (systemd does at
/// boot; minimal VMs and some containers do not), leaktrace mounts it in a
/// mount namespace of its own, so the host's mounts never change and it
/// goes away with leaktrace. That needs a single-threaded process (the first
/// call, from `main`, before the tokio runtime) and CAP_SYS_ADMIN.
///
/// Must run before aya's first tracepoint attach in this process: aya looks
/// for tracefs once and caches a miss.
pub fn ensure_mounted() -> Result<PathBuf> {
    for dir in [MOUNT_POINT, "/sys/kernel/debug/tracing"] {
        if is_populated(Path::new(dir)) {
            return Ok(dir.into());
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(dir) = tracefs_mounts(&mountinfo).next() {
        // Mounted, but not readable with this process's rights (mode 0700,
        // root's): mounting again would only fail with EBUSY.
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        bail!(
            "tracefs at {dir} is not readable by uid {uid} (it is root's, mode 0700); thread and \
             exec tracking need its tracepoint ids: run leaktrace as root, or grant it \
             CAP_DAC_READ_SEARCH too"
        );
    }
    mount_privately().map_err(|e| {
        anyhow!(
            "tracefs is not mounted and leaktrace could not mount it in a mount namespace of its \
             own ({e}); thread and exec tracking need it: `sudo mount -t tracefs nodev \
             {MOUNT_POINT}`, or run leaktrace as root"
        )
    })?;
    log::info!("mounted tracefs at {MOUNT_POINT} in leaktrace's own mount namespace");
    Ok(MOUNT_POINT.into())
}

/// A new mount namespace whose mounts do not propagate back, with tracefs
/// mounted in it.
fn mount_privately() -> std::io::Result<()> {
    let root = CString::new("/").expect("no NUL");
    let target = CString::new(MOUNT_POINT).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: plain system calls on valid C strings; unshare affects only
    // this (single-threaded) process.
    let ok = unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
            && libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            ) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Mount points of tracefs in a `/proc/self/mountinfo` text (the fifth
/// field, where the filesystem type after ` - ` is `tracefs`).
fn tracefs_mounts(mountinfo: &str) -> impl Iterator<Item = &str> {
    mountinfo.lines().filter_map(|l| {
        let (mount, fs) = l.split_once(" - ")?;
        (fs.split_whitespace().next() == Some("tracefs"))
            .then(|| mount.split_whitespace().nth(4))
            .flatten()
    })
}

fn is_populated(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

/// One field of a tracepoint record, as its `format` file describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Look `field` up in `events/<event>/format` (e.g. `task/task_newtask`).
pub fn field(tracefs: &Path, event: &str, field: &str) -> Result<Field> {
    let path = tracefs.join("events").join(event).join("format");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is the tracepoint there?)", path.display()))?;
    find_field(&text, field).ok_or_else(|| anyhow!("no field `{field}` in {}", path.display()))
}

/// Parses lines like
/// `field:char newcomm[16];<TAB>offset:28;<TAB>size:16;<TAB>signed:0;`.
/// Public for the fuzz target (`fuzz/fuzz_targets/tracefs_format.rs`).
#[doc(hidden)]
pub fn find_field(format: &str, name: &str) -> Option<Field> {
    format.lines().find_map(|line| {
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.parse().ok();
            } else if let Some(s) = part.strip_prefix("size:") {
                size = s.parse().ok();
            }
        }
        let ident = decl?.rsplit(' ').next()?;
        let ident = ident.split('[').next()?;
        (ident == name).then_some(Field {
            offset: offset?,
            size: size?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel 6.18's `task_rename` and `sched_process_fork` formats.
    const RENAME: &str = "name: task_rename
ID: 204
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char oldcomm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:char newcomm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:short oom_score_adj;\toffset:44;\tsize:2;\tsigned:1;

print fmt: \"pid=%d oldcomm=%s newcomm=%s\", REC->pid, REC->oldcomm, REC->newcomm
";
    const FORK: &str = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";

    #[test]
    fn finds_tracefs_mounts() {
        let info = "23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
";
        assert_eq!(
            tracefs_mounts(info).collect::<Vec<_>>(),
            ["/sys/kernel/tracing"]
        );
        assert_eq!(tracefs_mounts("").count(), 0);
    }

    #[test]
    fn reads_offsets_and_sizes() {
        let f = |fmt, name| find_field(fmt, name);
        assert_eq!(
            f(RENAME, "newcomm"),
            Some(Field {
                offset: 28,
                size: 16
            })
        );
        assert_eq!(f(RENAME, "pid"), Some(Field { offset: 8, size: 4 }));
        assert_eq!(f(RENAME, "comm"), None, "no prefix matches");
        assert_eq!(
            f(FORK, "child_comm"),
            Some(Field {
                offset: 16,
                size: 4
            })
        );
        assert_eq!(
            f(FORK, "child_pid"),
            Some(Field {
                offset: 20,
                size: 4
            })
        );
    }
}
