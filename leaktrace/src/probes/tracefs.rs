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

/// The tracefs directory, mounting tracefs at its standard place if no one
/// has (systemd does at boot; minimal VMs and some containers do not).
///
/// Must run before aya's first tracepoint attach in this process: aya looks
/// for tracefs once and caches a miss.
pub fn ensure_mounted() -> Result<PathBuf> {
    for dir in [MOUNT_POINT, "/sys/kernel/debug/tracing"] {
        if is_populated(Path::new(dir)) {
            return Ok(dir.into());
        }
    }
    let target = CString::new(MOUNT_POINT).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {MOUNT_POINT} failed ({err}); \
             thread tracking needs it: `mount -t tracefs nodev {MOUNT_POINT}`"
        );
    }
    log::info!("mounted tracefs at {MOUNT_POINT} (thread tracking needs tracepoint ids)");
    Ok(MOUNT_POINT.into())
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
fn find_field(format: &str, name: &str) -> Option<Field> {
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
