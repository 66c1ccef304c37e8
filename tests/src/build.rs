//! Building fixture programs, cached and safe to call from parallel tests.
//!
//! `build_fixture("chan_send", &go, BuildMode::Plain)` produces
//! `<target>/fixtures/go1.22.10/plain/chan_send`, where `<target>` is the
//! workspace target directory (`$CARGO_TARGET_DIR` if set). Next to it,
//! `chan_send.stamp` holds a hash of everything the build depends on (the
//! fixture's directory, the shared `internal/` package, `go.mod`, the
//! toolchain and the mode): the binary is rebuilt only when that changes.
//! Concurrent callers (threads or processes) serialise on
//! `chan_send.lock` (flock) and the binary is moved into place by rename, so
//! nobody ever runs a half-written file.
//!
//! The build runs offline with `CGO_ENABLED=0 GOTOOLCHAIN=local
//! GOFLAGS=-mod=mod GOPROXY=off`, with GOCACHE and GOPATH under
//! [`crate::cache_root`] (shared by all toolchains: Go keys its cache by
//! toolchain).

use crate::toolchain::{GoToolchain, cache_root};
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How a fixture binary is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildMode {
    /// `go build`: symbols and DWARF.
    Plain,
    /// `go build -ldflags='-s -w'`: no .symtab, no DWARF (pclntab remains).
    Stripped,
    /// `go build -buildmode=pie`: position independent, loaded at a random base.
    Pie,
}

impl BuildMode {
    pub const ALL: [BuildMode; 3] = [BuildMode::Plain, BuildMode::Stripped, BuildMode::Pie];

    /// Directory name under `target/fixtures/<go>/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            BuildMode::Plain => "plain",
            BuildMode::Stripped => "stripped",
            BuildMode::Pie => "pie",
        }
    }

    /// Extra `go build` arguments.
    pub fn go_args(self) -> &'static [&'static str] {
        match self {
            BuildMode::Plain => &[],
            BuildMode::Stripped => &["-ldflags=-s -w"],
            BuildMode::Pie => &["-buildmode=pie"],
        }
    }
}

/// `tests/` (this crate's directory).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    crate_dir()
        .parent()
        .map_or_else(crate_dir, Path::to_path_buf)
}

/// The workspace target directory: `$CARGO_TARGET_DIR` (relative paths are
/// taken from the workspace root) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let from_env = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from));
    match from_env {
        Some(d) if d.is_absolute() => d,
        Some(d) => workspace_dir().join(d),
        None => workspace_dir().join("target"),
    }
}

/// `tests/fixtures/go`: the Go module holding every fixture.
pub fn fixtures_go_dir() -> PathBuf {
    crate_dir().join("fixtures/go")
}

/// Names of all fixtures (directories under `tests/fixtures/go` with a
/// `main.go`), sorted.
pub fn fixture_names() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(fixtures_go_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("main.go").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Where `build_fixture` puts a binary.
pub fn fixture_binary_path(name: &str, go: &GoToolchain, mode: BuildMode) -> PathBuf {
    target_dir()
        .join("fixtures")
        .join(&go.full)
        .join(mode.dir_name())
        .join(name)
}

/// Builds (or reuses) a fixture binary. Panics with the compiler's output
/// if the build fails.
pub fn build_fixture(name: &str, go: &GoToolchain, mode: BuildMode) -> PathBuf {
    try_build_fixture(name, go, mode)
        .unwrap_or_else(|e| panic!("building fixture {name} with {} ({mode:?}): {e:#}", go.full))
}

/// [`build_fixture`], returning errors.
pub fn try_build_fixture(name: &str, go: &GoToolchain, mode: BuildMode) -> Result<PathBuf> {
    let src = fixtures_go_dir().join(name);
    if !src.join("main.go").is_file() {
        bail!(
            "no fixture {name:?} (expected {})",
            src.join("main.go").display()
        );
    }
    let out = fixture_binary_path(name, go, mode);
    let dir = out.parent().expect("binary path has a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let stamp = stamp_for(name, go, mode)?;
    let stamp_path = dir.join(format!("{name}.stamp"));
    let fresh =
        || out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == stamp);
    if fresh() {
        return Ok(out);
    }

    let _lock = FileLock::acquire(&dir.join(format!("{name}.lock")))?;
    if fresh() {
        return Ok(out); // someone else built it while we waited
    }

    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut cmd = go_command(go, &fixtures_go_dir());
    cmd.arg("build").arg("-o").arg(&tmp);
    cmd.args(mode.go_args());
    cmd.arg(format!("./{name}"));
    let output = cmd
        .output()
        .with_context(|| format!("running {}", go.go.display()))?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(&tmp, &out).with_context(|| format!("moving {} into place", tmp.display()))?;
    let stamp_tmp = dir.join(format!(".{name}.stamp.tmp-{}", std::process::id()));
    fs::write(&stamp_tmp, format!("{stamp}\n"))?;
    fs::rename(&stamp_tmp, &stamp_path)?;
    Ok(out)
}

/// A `go` command with the offline, reproducible environment the fixtures
/// are built in, run in `dir`.
pub fn go_command(go: &GoToolchain, dir: &Path) -> Command {
    let cache = cache_root();
    let mut cmd = Command::new(&go.go);
    cmd.current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .env("GOPROXY", "off")
        .env("GOSUMDB", "off")
        .env("GOWORK", "off")
        .env("GO111MODULE", "on")
        .env("GOENV", "off")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"))
        .env("GOMODCACHE", cache.join("gopath/pkg/mod"))
        .env_remove("GOOS")
        .env_remove("GOARCH")
        .env_remove("GOEXPERIMENT")
        .env_remove("GOROOT");
    if let Some(root) = go.goroot() {
        cmd.env("GOROOT", root);
    }
    cmd
}

/// FNV-1a over everything the binary depends on.
fn stamp_for(name: &str, go: &GoToolchain, mode: BuildMode) -> Result<String> {
    let root = fixtures_go_dir();
    let mut files = vec![root.join("go.mod")];
    collect_files(&root.join("internal"), &mut files)?;
    collect_files(&root.join(name), &mut files)?;
    files.sort();
    let mut h = Fnv::new();
    h.write(go.full.as_bytes());
    h.write(go.go.as_os_str().as_encoded_bytes());
    h.write(mode.dir_name().as_bytes());
    for f in files {
        let rel = f.strip_prefix(&root).unwrap_or(&f);
        h.write(rel.as_os_str().as_encoded_bytes());
        h.write(&fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
    }
    Ok(format!("{:016x}", h.0))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if p
            .extension()
            .is_some_and(|x| x == "go" || x == "s" || x == "mod" || x == "sum")
        {
            out.push(p);
        }
    }
    Ok(())
}

struct Fnv(u64);
impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Field separator so that ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// An exclusive flock held until drop.
struct FileLock(fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        let _ = writeln!(f, "{}", std::process::id());
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}
