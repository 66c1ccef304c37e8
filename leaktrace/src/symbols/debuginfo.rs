//! Separate debug info for stripped binaries, found where gdb, perf and the
//! distributions put it: files given with `--debuginfo`, the build-id
//! directory (`/usr/lib/debug/.build-id/xx/rest.debug`), `.gnu_debuglink`
//! (next to the binary, in its `.debug/`, and under the debug directory),
//! and debuginfod servers when `DEBUGINFOD_URLS` is set (the elfutils
//! client's protocol and cache). What is found is attached to the program's
//! [`ElfFile`], so every DWARF and `.symtab` reader (tokio names and await
//! points, Go layouts, native frames) uses it without knowing.
//!
//! A debug file is only used when it provably belongs to the program: the
//! same build-id, or (for a debuglink without build-ids) the CRC-32 the
//! link records. A debug file of another build would name the wrong code.
use std::{
    fmt,
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::target::elf::ElfFile;

/// Where the system's separate debug files live (Debian's `-dbgsym`
/// packages, Fedora's `-debuginfo`).
pub const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";

/// A server that has not answered (headers) within this long is skipped
/// (elfutils waits 90 s; a trace should not wait that long to start).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole download is abandoned after this long (elfutils has no default
/// bound; a few hundred MB take seconds on any link a server is used over).
const DEFAULT_MAX_TIME: Duration = Duration::from_secs(600);
/// Debug info of a large Rust program is a few hundred MB; a server
/// offering more than this is not believed (elfutils' DEBUGINFOD_MAXSIZE
/// overrides, as for its own client).
const DEFAULT_MAX_SIZE: u64 = 4 << 30;

/// Where to look, cheap to clone (one per traced program).
#[derive(Clone, Debug)]
pub struct Search {
    inner: Arc<SearchInner>,
}

#[derive(Debug)]
struct SearchInner {
    files: Vec<PathBuf>,
    /// A `--debuginfo` that matches no program is an error; off when
    /// several programs are traced (`-f`), each taking the file that is
    /// its own and searching as usual otherwise.
    strict: bool,
    debug_dir: PathBuf,
    debuginfod: Option<Debuginfod>,
}

/// A debuginfod client configuration, as elfutils reads it from the
/// environment.
#[derive(Clone, Debug)]
pub struct Debuginfod {
    pub urls: Vec<String>,
    pub cache: PathBuf,
    /// Until the server's answer begins.
    pub timeout: Duration,
    /// For the whole body.
    pub max_time: Duration,
    pub max_size: u64,
}

impl Default for Search {
    /// The system debug directory only: no network unless asked.
    fn default() -> Self {
        Self::new(Vec::new(), PathBuf::from(DEFAULT_DEBUG_DIR), None)
    }
}

impl Search {
    pub fn new(files: Vec<PathBuf>, debug_dir: PathBuf, debuginfod: Option<Debuginfod>) -> Self {
        Self {
            inner: Arc::new(SearchInner {
                files,
                strict: true,
                debug_dir,
                debuginfod,
            }),
        }
    }

    /// `--debuginfo` files and `--debug-dir`, with debuginfod from
    /// `DEBUGINFOD_URLS` (off when unset or empty). `strict`: one program
    /// is traced, so `--debuginfo` files must be its own.
    pub fn from_env(files: Vec<PathBuf>, debug_dir: PathBuf, strict: bool) -> Self {
        Self {
            inner: Arc::new(SearchInner {
                files,
                strict,
                debug_dir,
                debuginfod: Debuginfod::from_env(),
            }),
        }
    }
}

impl Debuginfod {
    /// elfutils' variables: `DEBUGINFOD_URLS` (space-separated),
    /// `DEBUGINFOD_CACHE_PATH`, else `$XDG_CACHE_HOME/debuginfod_client`,
    /// else `~/.cache/debuginfod_client`; `DEBUGINFOD_TIMEOUT` (seconds
    /// until the answer begins), `DEBUGINFOD_MAXTIME` (seconds for the whole
    /// download), `DEBUGINFOD_MAXSIZE` (bytes).
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let urls: Vec<String> = var("DEBUGINFOD_URLS")?
            .split_whitespace()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        let cache = var("DEBUGINFOD_CACHE_PATH")
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| Path::new(&d).join("debuginfod_client")))
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache/debuginfod_client")))?;
        let secs = |k: &str, default| {
            var(k)
                .and_then(|t| t.trim().parse().ok())
                .filter(|&n| n > 0)
                .map_or(default, Duration::from_secs)
        };
        let timeout = secs("DEBUGINFOD_TIMEOUT", DEFAULT_TIMEOUT);
        let max_time = secs("DEBUGINFOD_MAXTIME", DEFAULT_MAX_TIME);
        let max_size = var("DEBUGINFOD_MAXSIZE")
            .and_then(|t| t.trim().parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_MAX_SIZE);
        (!urls.is_empty()).then_some(Self {
            urls,
            cache,
            timeout,
            max_time,
            max_size,
        })
    }
}

/// A `--debuginfo` file that cannot be the program's: the trace stops,
/// because the user said to use it.
#[derive(Debug)]
pub struct DebugInfoError(String);

impl fmt::Display for DebugInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DebugInfoError {}

/// What the search did, for the report's notes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The program has its own DWARF: nothing was looked for.
    NotNeeded,
    /// Attached: the file and how it was found.
    Found { path: PathBuf, how: String },
    /// Nothing usable; what was tried, in order.
    NotFound { tried: Vec<String> },
}

impl Outcome {
    /// One line for the report, `None` when there is nothing to say.
    pub fn note(&self) -> Option<String> {
        match self {
            Outcome::NotNeeded => None,
            Outcome::Found { path, how } => {
                Some(format!("debug info from {} ({how})", path.display()))
            }
            Outcome::NotFound { tried } if tried.is_empty() => None,
            Outcome::NotFound { tried } => Some(format!(
                "no separate debug info found ({}); give it with --debuginfo FILE, install the \
                 distribution's debug package, or set DEBUGINFOD_URLS",
                tried.join("; ")
            )),
        }
    }
}

/// Find the separate debug info of `program` (read from `exe`) and attach
/// it. Only a `--debuginfo` file that does not match is an error; every
/// other miss is part of the outcome.
pub fn attach(
    program: &mut ElfFile,
    exe: &Path,
    search: &Search,
) -> Result<Outcome, DebugInfoError> {
    let s = &search.inner;
    let id = program.build_id();
    let link = program.debuglink();
    let mut tried = Vec::new();
    if !s.files.is_empty() {
        match given_file(&s.files, id.as_deref(), link.as_ref(), exe) {
            Ok((debug, path)) => {
                program.set_debug_file(debug);
                return Ok(Outcome::Found {
                    path,
                    how: "--debuginfo, build-id checked".into(),
                });
            }
            Err(e) if s.strict => return Err(e),
            // Another traced program's file: search as usual.
            Err(_) => tried.push("--debuginfo (none is this program's)".into()),
        }
    }
    if program.has_dwarf() {
        return Ok(Outcome::NotNeeded);
    }
    let hit = id
        .as_deref()
        .and_then(|id| {
            let path = build_id_path(&s.debug_dir, id);
            tried.push(path.display().to_string());
            found(open_matching(&path, Some(id), None), "build-id directory")
        })
        .or_else(|| {
            let (name, crc) = link.as_ref()?;
            debuglink_candidates(exe, name, &s.debug_dir)
                .into_iter()
                .find_map(|path| {
                    tried.push(path.display().to_string());
                    found(
                        open_matching(&path, id.as_deref(), Some(*crc)),
                        ".gnu_debuglink",
                    )
                })
        })
        .or_else(|| {
            let (d, id) = (s.debuginfod.as_ref()?, id.as_deref()?);
            let (debug, path, how) = debuginfod(d, id, &mut tried)?;
            found(Some((debug, path)), &how)
        });
    match hit {
        Some((debug, outcome)) => {
            program.set_debug_file(debug);
            Ok(outcome)
        }
        None => {
            if id.is_none() && link.is_none() {
                tried.push("the program has neither a build-id nor a .gnu_debuglink".into());
            }
            Ok(Outcome::NotFound { tried })
        }
    }
}

/// The `--debuginfo` file that belongs to the program, or an error that
/// says why none does.
fn given_file(
    files: &[PathBuf],
    id: Option<&[u8]>,
    link: Option<&(String, u32)>,
    exe: &Path,
) -> Result<(ElfFile, PathBuf), DebugInfoError> {
    let mut why = Vec::new();
    for path in files {
        let debug = ElfFile::open(path)
            .map_err(|e| DebugInfoError(format!("--debuginfo {}: {e}", path.display())))?;
        let theirs = debug.build_id();
        match (id, theirs.as_deref()) {
            (Some(ours), Some(theirs)) if ours == theirs => return Ok((debug, path.clone())),
            (Some(ours), Some(theirs)) => why.push(format!(
                "{} has build-id {}, the program {}",
                path.display(),
                hex(theirs),
                hex(ours)
            )),
            (Some(ours), None) => why.push(format!(
                "{} has no build-id (the program's is {})",
                path.display(),
                hex(ours)
            )),
            (None, _) => match link {
                Some((_, crc)) if crc32(debug.bytes()) == *crc => {
                    return Ok((debug, path.clone()));
                }
                Some((name, _)) => why.push(format!(
                    "{}'s CRC-32 is not the one the program's .gnu_debuglink ({name}) records",
                    path.display()
                )),
                None => why.push(format!(
                    "{} cannot be checked: the program has neither a build-id nor a \
                     .gnu_debuglink",
                    path.display()
                )),
            },
        }
        if !debug.has_dwarf() && !debug.has_symtab() {
            why.push(format!("{} has no DWARF and no .symtab", path.display()));
        }
    }
    Err(DebugInfoError(format!(
        "--debuginfo: no file is the debug info of {}: {}. Give the file split off this very \
         build (`objcopy --only-keep-debug`), or leave --debuginfo out",
        exe.display(),
        why.join("; ")
    )))
}

/// `<dir>/.build-id/ab/cdef….debug`.
pub fn build_id_path(debug_dir: &Path, id: &[u8]) -> PathBuf {
    let hex = hex(id);
    let (head, rest) = hex.split_at(2.min(hex.len()));
    debug_dir
        .join(".build-id")
        .join(head)
        .join(format!("{rest}.debug"))
}

/// gdb's order: next to the binary, its `.debug/`, then the binary's
/// directory under the debug directory. `exe` may be `/proc/PID/exe`: the
/// directory is the real file's.
fn debuglink_candidates(exe: &Path, name: &str, debug_dir: &Path) -> Vec<PathBuf> {
    // A link naming a path is not a file name: nothing to look for.
    if name.is_empty() || name.contains('/') {
        return Vec::new();
    }
    let real = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    let Some(dir) = real.parent() else {
        return Vec::new();
    };
    let mut out = vec![dir.join(name), dir.join(".debug").join(name)];
    let relative = dir.strip_prefix("/").unwrap_or(dir);
    out.push(debug_dir.join(relative).join(name));
    out
}

/// The file at `path` if it is an ELF file with the program's build-id
/// (when both have one) or the debuglink's CRC (otherwise).
fn open_matching(path: &Path, id: Option<&[u8]>, crc: Option<u32>) -> Option<(ElfFile, PathBuf)> {
    if !path.is_file() {
        return None;
    }
    let debug = match ElfFile::open(path) {
        Ok(d) => d,
        Err(e) => {
            log::warn!("{}: {e}", path.display());
            return None;
        }
    };
    let ok = match (id, debug.build_id()) {
        (Some(ours), Some(theirs)) => ours == theirs.as_slice(),
        _ => crc.is_some_and(|c| crc32(debug.bytes()) == c),
    };
    if !ok {
        log::warn!(
            "{}: not this program's debug info (build-id or CRC differs)",
            path.display()
        );
        return None;
    }
    Some((debug, path.to_path_buf()))
}

/// The debug file from the cache, else from the first server that has it
/// (stored in the cache the way elfutils' client stores it, so gdb and perf
/// find it there too).
fn debuginfod(
    d: &Debuginfod,
    id: &[u8],
    tried: &mut Vec<String>,
) -> Option<(ElfFile, PathBuf, String)> {
    let hex = hex(id);
    let cached = d.cache.join(&hex).join("debuginfo");
    if let Some((elf, path)) = open_matching(&cached, Some(id), None) {
        return Some((elf, path, "debuginfod cache".into()));
    }
    for url in &d.urls {
        let full = format!("{url}/buildid/{hex}/debuginfo");
        match download(&full, &cached, d) {
            Ok(()) => match open_matching(&cached, Some(id), None) {
                Some((elf, path)) => return Some((elf, path, format!("debuginfod {url}"))),
                None => {
                    let _ = std::fs::remove_file(&cached);
                    tried.push(format!("{full}: not this program's debug info"));
                }
            },
            Err(e) => tried.push(format!("{full}: {e}")),
        }
    }
    None
}

/// GET `url` into `dest` (written to a temporary name, then renamed: a
/// concurrent reader never sees half a file), at most `d.max_size` bytes.
fn download(url: &str, dest: &Path, d: &Debuginfod) -> Result<(), String> {
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(d.timeout))
        .timeout_recv_response(Some(d.timeout))
        .timeout_global(Some(d.timeout + d.max_time))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    let body = resp.into_body();
    if body.content_length().is_some_and(|n| n > d.max_size) {
        return Err(format!(
            "larger than {} bytes (DEBUGINFOD_MAXSIZE)",
            d.max_size
        ));
    }
    let dir = dest.parent().ok_or("no cache directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".debuginfo.tmp-{}", std::process::id()));
    let mut reader = body.into_reader().take(d.max_size + 1);
    let mut write = || -> std::io::Result<u64> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::copy(&mut reader, &mut f)
    };
    let n = write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })?;
    if n > d.max_size {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "larger than {} bytes (DEBUGINFOD_MAXSIZE)",
            d.max_size
        ));
    }
    std::fs::rename(&tmp, dest).map_err(|e| format!("{}: {e}", dest.display()))
}

/// A debug file found, with how, for [`Outcome::Found`].
fn found(debug: Option<(ElfFile, PathBuf)>, how: &str) -> Option<(ElfFile, Outcome)> {
    debug.map(|(elf, path)| {
        (
            elf,
            Outcome::Found {
                path,
                how: how.into(),
            },
        )
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CRC-32 (IEEE) `.gnu_debuglink` records.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_layout() {
        assert_eq!(
            build_id_path(Path::new("/usr/lib/debug"), &[0xd6, 0xce, 0xa1, 0x46]),
            Path::new("/usr/lib/debug/.build-id/d6/cea146.debug")
        );
    }

    #[test]
    fn debuglink_places() {
        let c = debuglink_candidates(
            Path::new("/nonexistent/bin/app"),
            "app.debug",
            Path::new("/usr/lib/debug"),
        );
        assert_eq!(
            c,
            vec![
                PathBuf::from("/nonexistent/bin/app.debug"),
                PathBuf::from("/nonexistent/bin/.debug/app.debug"),
                PathBuf::from("/usr/lib/debug/nonexistent/bin/app.debug"),
            ]
        );
        assert!(debuglink_candidates(Path::new("/x/app"), "../etc/x", Path::new("/d")).is_empty());
    }

    /// The program itself is not a debug file of another build: a
    /// `--debuginfo` whose build-id differs is refused with both ids.
    #[test]
    fn mismatched_file_is_refused() {
        let exe = std::env::current_exe().unwrap();
        let mut program = ElfFile::open(&exe).unwrap();
        let Some(ours) = program.build_id() else {
            return;
        };
        let other = ["/bin/true", "/usr/bin/true"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists() && ElfFile::open(p).ok().and_then(|e| e.build_id()).is_some());
        let Some(other) = other else { return };
        let search = Search::new(vec![other], PathBuf::from("/nonexistent"), None);
        let e = attach(&mut program, &exe, &search).unwrap_err().to_string();
        assert!(
            e.contains(&hex(&ours)) && e.contains("objcopy --only-keep-debug"),
            "{e}"
        );
    }

    #[test]
    fn crc_is_ieee() {
        // The check value of CRC-32/ISO-HDLC, what binutils computes.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
