//! Who may trace what. leaktrace loads eBPF and reads other processes'
//! memory, so a copy granted capabilities (`setcap`) is a way in unless it
//! checks, as the kernel's ptrace rules would, that the person running it
//! may trace the target with their own credentials. Also: what the kernel
//! wants for each probe kind (found by trying, said precisely), and the
//! rights a `-c` command starts with (never leaktrace's granted ones).
use std::fs;

use super::procfs::{status_hex, status_ids};
use anyhow::{Result, bail};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What the grant that works on Linux 6.18 looks like, for messages.
pub const SETCAP_HINT: &str = "sudo setcap cap_sys_admin,cap_sys_ptrace,cap_dac_read_search+ep \
                               $(command -v leaktrace)";

/// This process's credentials.
#[derive(Clone, Copy, Debug)]
pub struct Credentials {
    pub ruid: u32,
    pub euid: u32,
    pub rgid: u32,
    pub egid: u32,
    /// CapEff as a bit set.
    pub effective: u64,
    /// Started from a setuid or file-capability executable (`AT_SECURE`):
    /// its capabilities were granted by the file, not held by the caller.
    pub granted_by_file: bool,
}

impl Credentials {
    pub fn current() -> Self {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        // SAFETY: plain getters without preconditions.
        let (ruid, euid, rgid, egid, secure) = unsafe {
            (
                libc::getuid(),
                libc::geteuid(),
                libc::getgid(),
                libc::getegid(),
                libc::getauxval(libc::AT_SECURE),
            )
        };
        Self {
            ruid,
            euid,
            rgid,
            egid,
            effective: status_hex(&status, "CapEff:").unwrap_or(0),
            granted_by_file: secure != 0,
        }
    }

    pub fn has(&self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }

    /// The caller's own rights include tracing any process: real root, or
    /// CAP_SYS_PTRACE that was not granted by leaktrace's file.
    fn may_trace_anyone(&self) -> bool {
        self.ruid == 0 || (self.has(CAP_SYS_PTRACE) && !self.granted_by_file)
    }
}

/// Refuse a setuid or setgid install: it would run with the file owner's
/// identity for anyone, and everything below judges the *real* user.
pub fn refuse_setuid(c: &Credentials) -> Result<()> {
    if c.euid != c.ruid || c.egid != c.rgid {
        bail!(
            "leaktrace is installed setuid or setgid (real uid {}, effective uid {}); it refuses to \
             run that way. Remove the bit (`sudo chmod u-s,g-s $(command -v leaktrace)`) and run it \
             with sudo, or grant capabilities: {SETCAP_HINT}",
            c.ruid,
            c.euid
        );
    }
    Ok(())
}

/// Fail early, with the fix, when eBPF cannot be loaded at all.
pub fn check_privileges(c: &Credentials) -> Result<()> {
    if c.euid == 0 && c.has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let bpf = c.has(CAP_SYS_ADMIN) || (c.has(CAP_BPF) && c.has(CAP_PERFMON));
    if !bpf {
        bail!(
            "leaktrace cannot load eBPF probes: it needs root, or CAP_SYS_ADMIN (uprobes need it on \
             Linux 6.18; CAP_BPF with CAP_PERFMON load programs but perf_event_open refuses \
             uprobes without it). Run it with sudo, or: {SETCAP_HINT}"
        );
    }
    Ok(())
}

/// The ptrace rule, applied to the *real* user: the target's real, effective,
/// saved and filesystem uids all equal the caller's real uid, and its gids
/// the caller's real gid — unless the caller's own rights (real root, or
/// CAP_SYS_PTRACE not granted by leaktrace's file) cover anyone. So a
/// capability-granted copy reads only its user's own processes.
pub fn check_may_trace(c: &Credentials, pid: u32) -> Result<()> {
    if c.may_trace_anyone() {
        return Ok(());
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("reading /proc/{pid}/status: {e}"))?;
    let uids = status_ids(&status, "Uid:");
    let gids = status_ids(&status, "Gid:");
    let own = uids.is_some_and(|u| u.iter().all(|&id| id == c.ruid))
        && gids.is_some_and(|g| g.iter().all(|&id| id == c.rgid));
    if !own {
        bail!(
            "uid {} may not trace process {pid} (its uids {:?}, gids {:?}): leaktrace traces only \
             processes the user running it could ptrace with their own rights — their own \
             (every uid and gid theirs), or any as root. Run it as the process's owner or with sudo.",
            c.ruid,
            uids.unwrap_or_default(),
            gids.unwrap_or_default()
        );
    }
    Ok(())
}

/// A refused attach says which capability this kernel wanted, found by
/// trying: perf_event_open answering EACCES or EPERM for a uprobe without
/// CAP_SYS_ADMIN means uprobes need it here.
pub fn explain_attach_failure(c: &Credentials, e: anyhow::Error) -> anyhow::Error {
    let refused = e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EACCES || code == libc::EPERM)
    }) || {
        let text = format!("{e:#}");
        text.contains("Permission denied") || text.contains("Operation not permitted")
    };
    if refused && !c.has(CAP_SYS_ADMIN) {
        return e.context(format!(
            "this kernel refused the uprobe with the capabilities leaktrace has \
             (CAP_BPF: {}, CAP_PERFMON: {}): it needs CAP_SYS_ADMIN for uprobes. {SETCAP_HINT}",
            yes(c.has(CAP_BPF)),
            yes(c.has(CAP_PERFMON))
        ));
    }
    e
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// How a `-c` command's capabilities are dropped between fork and exec,
/// prepared before the fork (the child may only make raw system calls).
#[derive(Clone, Copy, Debug)]
pub struct ChildRights {
    /// Drop effective, permitted and bounding too: leaktrace's capabilities
    /// are not the caller's (not real root, or granted by the file).
    drop_all: bool,
    last_cap: u32,
}

impl ChildRights {
    pub fn for_caller(c: &Credentials) -> Self {
        let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CAP_BPF)
            .min(63);
        Self {
            drop_all: c.ruid != 0 || c.granted_by_file,
            last_cap,
        }
    }

    /// In the forked child, before exec: no ambient or inheritable
    /// capabilities ever (they would pass into the program); with
    /// `drop_all` none at all, and the bounding set emptied where the
    /// kernel lets us (it needs CAP_SETPCAP). Returns false if a required
    /// drop failed (the child must then not run the program).
    ///
    /// # Safety
    /// Only async-signal-safe system calls: callable between fork and exec.
    pub unsafe fn apply(&self) -> bool {
        // SAFETY: raw prctl/capset calls on this process only.
        unsafe {
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
            {
                // No ambient capabilities on this kernel: nothing to clear.
                if *libc::__errno_location() != libc::EINVAL {
                    return false;
                }
            }
            if self.drop_all {
                for cap in 0..=self.last_cap {
                    let _ = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                }
            }
            let mut header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
                return false;
            }
            for d in &mut data {
                d.inheritable = 0;
                if self.drop_all {
                    d.effective = 0;
                    d.permitted = 0;
                }
            }
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == 0
        }
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n\
                          CapEff:\t0000000000200000\n";

    fn caller(ruid: u32, rgid: u32, caps: &[u32], granted_by_file: bool) -> Credentials {
        Credentials {
            ruid,
            euid: ruid,
            rgid,
            egid: rgid,
            effective: caps.iter().fold(0, |acc, c| acc | 1 << c),
            granted_by_file,
        }
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(status_ids(STATUS, "Uid:"), Some([1000; 4]));
        assert_eq!(status_ids(STATUS, "Gid:"), Some([100; 4]));
        assert_eq!(status_hex(STATUS, "CapEff:"), Some(1 << CAP_SYS_ADMIN));
        assert_eq!(status_ids("Uid:\t1\t2\n", "Uid:"), None, "four ids or none");
    }

    #[test]
    fn a_granted_copy_does_not_trace_other_users() {
        let granted = caller(1000, 100, &[CAP_SYS_ADMIN, CAP_SYS_PTRACE], true);
        assert!(!granted.may_trace_anyone());
        // Held by the caller (ambient, or a root shell): their own right.
        let held = caller(1000, 100, &[CAP_SYS_ADMIN, CAP_SYS_PTRACE], false);
        assert!(held.may_trace_anyone());
        assert!(caller(0, 0, &[], true).may_trace_anyone());
    }

    #[test]
    fn setuid_is_refused() {
        let mut c = caller(1000, 100, &[], true);
        c.euid = 0;
        let e = refuse_setuid(&c).unwrap_err().to_string();
        assert!(e.contains("setuid"), "{e}");
        assert!(refuse_setuid(&caller(1000, 100, &[], false)).is_ok());
    }

    #[test]
    fn missing_capabilities_are_named() {
        let e = check_privileges(&caller(1000, 100, &[CAP_SYS_PTRACE], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CAP_SYS_ADMIN"), "{e}");
        assert!(check_privileges(&caller(1000, 100, &[CAP_SYS_ADMIN], true)).is_ok());
        let c = caller(1000, 100, &[CAP_BPF, CAP_PERFMON], false);
        let refused = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EACCES))
            .context("attaching go_spawn: `perf_event_open` failed");
        let e = format!("{:#}", explain_attach_failure(&c, refused));
        assert!(e.contains("needs CAP_SYS_ADMIN for uprobes"), "{e}");
    }
}
