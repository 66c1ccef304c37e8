//! Building the programs the tests run, cached and safe to call from
//! parallel tests: the Go programs under `tests/fixtures` with any Go
//! toolchain ([`build_fixture`], [`build_go`]) and the tokio fixture with
//! cargo ([`tokio_fixture`]).
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
//! GOFLAGS=-mod=mod GOPROXY=off` (cgo only for [`BuildMode::ExtLink`]), with
//! GOCACHE and GOPATH under [`crate::cache_root`] (shared by all
//! toolchains: Go keys its cache by toolchain).

use crate::toolchain::{GoToolchain, cache_root};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// How a Go binary is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildMode {
    /// `go build`: symbols and DWARF.
    Plain,
    /// `go build -ldflags='-s -w'`: no .symtab, no DWARF (pclntab remains).
    Stripped,
    /// `go build -buildmode=pie`: position independent, loaded at a random base.
    Pie,
    /// PIE and `-s -w`.
    PieStripped,
    /// `-pgo=` with a CPU profile the program writes itself: its plain build
    /// is run once with `-cpuprofile=FILE` (Go ≥ 1.21).
    Pgo,
    /// cgo and the external linker (`-ldflags=-linkmode=external`): `.text`
    /// starts with C code. Needs a C compiler.
    ExtLink,
    /// Cross-built for linux/arm64: built, never run.
    Arm64,
}

impl BuildMode {
    /// The modes the leak corpus is checked in.
    pub const ALL: [BuildMode; 3] = [BuildMode::Plain, BuildMode::Stripped, BuildMode::Pie];

    /// Directory name under `target/fixtures/<go>/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            BuildMode::Plain => "plain",
            BuildMode::Stripped => "stripped",
            BuildMode::Pie => "pie",
            BuildMode::PieStripped => "pie-stripped",
            BuildMode::Pgo => "pgo",
            BuildMode::ExtLink => "extlink",
            BuildMode::Arm64 => "arm64",
        }
    }

    /// Extra `go build` arguments (for [`BuildMode::Pgo`], `-pgo=` is added
    /// by the build).
    pub fn go_args(self) -> &'static [&'static str] {
        match self {
            BuildMode::Plain | BuildMode::Pgo | BuildMode::Arm64 => &[],
            BuildMode::Stripped => &["-ldflags=-s -w"],
            BuildMode::Pie => &["-buildmode=pie"],
            BuildMode::PieStripped => &["-buildmode=pie", "-ldflags=-s -w"],
            BuildMode::ExtLink => &["-ldflags=-linkmode=external"],
        }
    }

    /// Environment that differs from the default amd64, cgo-off build.
    fn go_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            BuildMode::ExtLink => &[("CGO_ENABLED", "1")],
            BuildMode::Arm64 => &[("GOOS", "linux"), ("GOARCH", "arm64")],
            _ => &[],
        }
    }
}

/// A Go program under `tests/fixtures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoProgram<'a> {
    /// `tests/fixtures/go/<name>`: a fixture of the corpus (module
    /// `tests/fixtures/go`, sharing its `internal/` package).
    Fixture(&'a str),
    /// `tests/fixtures/<dir>`: a module of its own, built as `.`.
    Module(&'a str),
}

impl GoProgram<'_> {
    /// The binary's file name.
    pub fn name(&self) -> &str {
        match self {
            GoProgram::Fixture(n) | GoProgram::Module(n) => n,
        }
    }

    /// The module root `go build` runs in.
    fn module_dir(&self) -> PathBuf {
        match self {
            GoProgram::Fixture(_) => fixtures_go_dir(),
            GoProgram::Module(dir) => crate_dir().join("fixtures").join(dir),
        }
    }

    /// The package directory (holding `main.go`).
    fn package_dir(&self) -> PathBuf {
        match self {
            GoProgram::Fixture(n) => fixtures_go_dir().join(n),
            GoProgram::Module(_) => self.module_dir(),
        }
    }

    /// The package argument of `go build`.
    fn package_arg(&self) -> String {
        match self {
            GoProgram::Fixture(n) => format!("./{n}"),
            GoProgram::Module(_) => ".".into(),
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
    go_binary_path(GoProgram::Fixture(name), go, mode)
}

/// Where [`build_go`] puts a binary: `<target>/fixtures/<go>/<mode>/<name>`.
pub fn go_binary_path(program: GoProgram, go: &GoToolchain, mode: BuildMode) -> PathBuf {
    target_dir()
        .join("fixtures")
        .join(&go.full)
        .join(mode.dir_name())
        .join(program.name())
}

/// Builds (or reuses) a fixture binary. Panics with the compiler's output
/// if the build fails.
pub fn build_fixture(name: &str, go: &GoToolchain, mode: BuildMode) -> PathBuf {
    build_go(GoProgram::Fixture(name), go, mode)
}

/// [`build_fixture`], returning errors.
pub fn try_build_fixture(name: &str, go: &GoToolchain, mode: BuildMode) -> Result<PathBuf> {
    try_build_go(GoProgram::Fixture(name), go, mode)
}

/// Builds (or reuses) any Go program under `tests/fixtures`. Panics with
/// the compiler's output if the build fails.
pub fn build_go(program: GoProgram, go: &GoToolchain, mode: BuildMode) -> PathBuf {
    try_build_go(program, go, mode).unwrap_or_else(|e| {
        panic!(
            "building {} with {} ({mode:?}): {e:#}",
            program.name(),
            go.full
        )
    })
}

/// [`build_go`], returning errors.
pub fn try_build_go(program: GoProgram, go: &GoToolchain, mode: BuildMode) -> Result<PathBuf> {
    let name = program.name();
    let src = program.package_dir();
    if !src.join("main.go").is_file() {
        bail!(
            "no Go program {name:?} (expected {})",
            src.join("main.go").display()
        );
    }
    let out = go_binary_path(program, go, mode);
    let dir = out.parent().expect("binary path has a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // `budget/burst` is built as `…/budget/burst`: its files sit beside it.
    let name = out
        .file_name()
        .map_or_else(|| name.to_string(), |f| f.to_string_lossy().into_owned());

    let stamp = stamp_for(program, go, mode)?;
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
    let mut cmd = go_command(go, &program.module_dir());
    cmd.arg("build").arg("-o").arg(&tmp);
    cmd.args(mode.go_args());
    for (k, v) in mode.go_env() {
        cmd.env(k, v);
    }
    if mode == BuildMode::Pgo {
        cmd.arg(format!("-pgo={}", pgo_profile(program, go, dir)?.display()));
    }
    cmd.arg(program.package_arg());
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

/// `<dir>/<name>.pprof`: a CPU profile written by the program's plain build
/// run with `-cpuprofile=FILE`, made afresh for each PGO build.
fn pgo_profile(program: GoProgram, go: &GoToolchain, dir: &Path) -> Result<PathBuf> {
    let plain = try_build_go(program, go, BuildMode::Plain)?;
    let profile = dir.join(format!("{}.pprof", program.name()));
    let tmp = dir.join(format!(
        ".{}.pprof.tmp-{}",
        program.name(),
        std::process::id()
    ));
    let mut cmd = Command::new(&plain);
    cmd.arg(format!("-cpuprofile={}", tmp.display()));
    let output = cmd
        .output()
        .with_context(|| format!("running {}", plain.display()))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(&tmp, &profile)?;
    Ok(profile)
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

/// `tests/fixtures/rust`: the tokio fixture's cargo project.
pub fn tokio_fixture_dir() -> PathBuf {
    crate_dir().join("fixtures/rust")
}

/// Builds (or reuses) the tokio fixture in cargo profile `profile`
/// (`release`, `fulldebug`, `lines`, `fatlto`, `stripped`; see its
/// Cargo.toml) into `<target>/tokio-fixtures/<profile>/tokio-fixture`; with
/// `v0`, with `-C symbol-mangling-version=v0` into `<target>/tokio-fixtures-v0/`
/// (RUSTFLAGS change every crate's fingerprint: the two never rebuild each
/// other). Builds are niced and single-job: they share the machine with
/// whatever else runs. Cargo's own lock on the target directory serialises
/// concurrent test processes; each process runs cargo once per build.
pub fn tokio_fixture(profile: &str, v0: bool) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    let key = format!("{profile}{}", if v0 { "+v0" } else { "" });
    if let Some(p) = built.get(&key) {
        return p.clone();
    }
    let target = target_dir().join(if v0 {
        "tokio-fixtures-v0"
    } else {
        "tokio-fixtures"
    });
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19", "cargo", "build", "--locked", "--quiet"])
        .args(["--profile", profile, "--target-dir"])
        .arg(&target)
        .current_dir(tokio_fixture_dir())
        .env("CARGO_BUILD_JOBS", "1")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if v0 {
        // The default from Rust 1.97 on (stable flag since 1.59).
        cmd.env("RUSTFLAGS", "-C symbol-mangling-version=v0");
    } else {
        cmd.env_remove("RUSTFLAGS");
    }
    let status = cmd.status().expect("run cargo for the tokio fixture");
    assert!(
        status.success(),
        "building the tokio fixture ({key}) failed"
    );
    let dir = if profile == "dev" { "debug" } else { profile };
    let bin = target.join(dir).join("tokio-fixture");
    assert!(bin.exists(), "{} missing after build", bin.display());
    built.insert(key, bin.clone());
    bin
}

/// FNV-1a over everything the binary depends on.
fn stamp_for(program: GoProgram, go: &GoToolchain, mode: BuildMode) -> Result<String> {
    let root = program.module_dir();
    let mut files = vec![root.join("go.mod")];
    collect_files(&root.join("internal"), &mut files)?;
    collect_files(&program.package_dir(), &mut files)?;
    files.sort();
    files.dedup();
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
