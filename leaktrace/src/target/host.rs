//! `--all`: which of the host's processes the agent considers — every one
//! in /proc, narrowed by `--cgroup` (a cgroup v2 subtree: a container, a
//! pod) and `--exe` (executable basenames), never leaktrace itself or a
//! process it started. Whether a process is Go or tokio is the runtimes'
//! question, asked after this one.
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Where cgroup v2 is mounted when /proc/self/mountinfo does not say.
const CGROUP2_DEFAULT: &str = "/sys/fs/cgroup";

/// Cgroup directories below `--cgroup` deeper than this are not read
/// (cgroup v2's own default limit is unlimited; real trees are < 10 deep).
const MAX_CGROUP_DEPTH: usize = 32;

/// A ppid chain longer than this is not followed further (a loop in a
/// racing /proc read, or an absurdly deep tree).
const MAX_ANCESTRY: usize = 128;

/// `--cgroup PATH`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Its directory under the cgroup v2 mount.
    pub dir: PathBuf,
    /// As /proc/PID/cgroup writes it (`/kubepods.slice/…`; `/` is the root).
    pub path: String,
    /// Its cgroup id (the directory's inode number), for the kernel filter.
    pub id: u64,
    /// Its depth below the root (the root is 0).
    pub level: u32,
}

impl Cgroup {
    /// `PATH` is a cgroup v2 directory, either under the cgroup2 mount
    /// (`/sys/fs/cgroup/kubepods.slice/…`) or as /proc/PID/cgroup shows it
    /// (`/kubepods.slice/…`).
    pub fn resolve(path: &Path) -> Result<Self> {
        let mount = cgroup2_mount();
        let relative = match path.strip_prefix(&mount) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => path.strip_prefix("/").unwrap_or(path).to_path_buf(),
        };
        let dir = mount.join(&relative);
        let meta = fs::metadata(&dir).map_err(|e| {
            anyhow::anyhow!(
                "--cgroup {}: {} is not a cgroup v2 directory ({e}); give a directory under {} \
                 or the path /proc/PID/cgroup shows after `0::` for a process in the container",
                path.display(),
                dir.display(),
                mount.display()
            )
        })?;
        if !meta.is_dir() || !dir.join("cgroup.procs").exists() {
            bail!(
                "--cgroup {}: {} is not a cgroup v2 directory (no cgroup.procs); leaktrace needs \
                 the unified hierarchy (cgroup v2)",
                path.display(),
                dir.display()
            );
        }
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(Self {
            dir,
            path: format!("/{}", parts.join("/")),
            id: meta.ino(),
            level: parts.len() as u32,
        })
    }

    /// The processes in this cgroup or below it now, from each
    /// directory's `cgroup.procs`: the hierarchy's own answer, the same
    /// whatever cgroup namespace leaktrace runs in (/proc/PID/cgroup paths
    /// are relative to the reader's namespace).
    pub fn pids(&self) -> BTreeSet<u32> {
        let mut pids = BTreeSet::new();
        let mut dirs = vec![(self.dir.clone(), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if depth >= MAX_CGROUP_DEPTH {
                continue;
            }
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push((e.path(), depth + 1));
                }
            }
        }
        pids
    }
}

/// The processes `--all` considers. The cgroup is not checked here: the
/// kernel filters new programs by it, and the scan starts from
/// [`Cgroup::pids`].
#[derive(Clone, Debug)]
pub struct HostFilter {
    pub cgroup: Option<Cgroup>,
    /// `--exe`: executable basenames; empty for any.
    pub exes: Vec<String>,
    /// leaktrace's own pid: it and its descendants are never traced.
    pub own_pid: u32,
}

/// Why a process is not considered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Excluded {
    /// leaktrace itself or a process it started.
    Own,
    Exe,
    /// Gone, or a kernel thread.
    Gone,
}

impl HostFilter {
    /// Whether the agent looks at `pid` (cheap: a few /proc reads).
    pub fn admits(&self, pid: u32) -> Result<(), Excluded> {
        if self.is_own(pid) {
            return Err(Excluded::Own);
        }
        if !self.exes.is_empty() {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).map_err(|_| Excluded::Gone)?;
            let name = exe
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A replaced binary shows as `name (deleted)`.
            let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
            if !self.exes.iter().any(|e| e == name) {
                return Err(Excluded::Exe);
            }
        }
        Ok(())
    }

    /// leaktrace, or one of its descendants.
    fn is_own(&self, pid: u32) -> bool {
        let mut at = pid;
        for _ in 0..MAX_ANCESTRY {
            if at == self.own_pid {
                return true;
            }
            match parent(at) {
                Some(p) if p > 1 => at = p,
                _ => return false,
            }
        }
        false
    }
}

/// The processes to look at first: every one now in /proc (thread group
/// leaders), or the cgroup's; ascending.
pub fn running(cgroup: Option<&Cgroup>) -> Result<Vec<u32>> {
    if let Some(cg) = cgroup {
        return Ok(cg.pids().into_iter().collect());
    }
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// The parent's pid, from /proc/PID/stat (the field after the
/// parenthesised command name, which may itself hold spaces or `)`).
fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ppid(&stat)
}

fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo.
fn cgroup2_mount() -> PathBuf {
    fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                // `… mount-point options … - cgroup2 source super-options`
                let (pre, post) = l.split_once(" - ")?;
                (post.split_whitespace().next()? == "cgroup2")
                    .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
            })
        })
        .unwrap_or_else(|| PathBuf::from(CGROUP2_DEFAULT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_a_command_name_with_parentheses() {
        assert_eq!(parse_ppid("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn leaktrace_and_its_children_are_its_own() {
        let me = std::process::id();
        let f = HostFilter {
            cgroup: None,
            exes: Vec::new(),
            own_pid: me,
        };
        assert_eq!(f.admits(me), Err(Excluded::Own));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        assert_eq!(f.admits(child.id()), Err(Excluded::Own));
        let _ = child.kill();
        let _ = child.wait();
        let other = HostFilter {
            own_pid: u32::MAX,
            exes: vec!["no-such-program".into()],
            ..f
        };
        assert_eq!(other.admits(me), Err(Excluded::Exe));
    }

    /// The cgroup v2 path of `pid` (`0::PATH` in /proc/PID/cgroup), as seen
    /// from leaktrace's cgroup namespace.
    fn process_cgroup(pid: u32) -> Option<String> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim_end().to_string())
    }

    #[test]
    fn the_root_cgroup_resolves_both_ways() {
        let root = Cgroup::resolve(Path::new("/")).expect("cgroup v2 root");
        assert_eq!((root.path.as_str(), root.level), ("/", 0));
        let mine = process_cgroup(std::process::id()).expect("our cgroup");
        let by_path = Cgroup::resolve(Path::new(&mine)).expect("our own cgroup");
        assert_eq!(by_path.path, mine);
        let full = cgroup2_mount().join(mine.trim_start_matches('/'));
        assert_eq!(Cgroup::resolve(&full).expect("by mount path"), by_path);
        assert!(
            by_path.pids().contains(&std::process::id()),
            "{by_path:?} holds this process"
        );
        assert!(
            Cgroup::resolve(Path::new("/no/such/cgroup"))
                .unwrap_err()
                .to_string()
                .contains("0::")
        );
    }
}
