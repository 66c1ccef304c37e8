//! Discovering the Go toolchains the fixtures are built with.
//!
//! Default search (each `go` binary is asked for its version with
//! `GOTOOLCHAIN=local go env GOVERSION`; duplicates of one version are
//! dropped, first found wins):
//!
//! 1. `/usr/bin/go`, `/usr/lib/go-*/bin/go`, `/usr/local/go/bin/go`
//!    (Debian's go1.19 here);
//! 2. `<cache>/go/go*/bin/go`, where `<cache>` is [`cache_root`]
//!    (`~/.cache/leaktrace`, where `cargo xtask setup` puts 1.21.13 …
//!    1.27.3).
//!
//! `LEAKTRACE_GO_ROOTS=/a/bin/go,/b/bin/go` replaces the search with exactly
//! those binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One Go toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoToolchain {
    /// `"1.22"`: major.minor, the key used by [`pick`] and `expect.json`.
    pub version: String,
    /// `"go1.22.10"`: what `go env GOVERSION` says.
    pub full: String,
    /// The `go` binary.
    pub go: PathBuf,
}

impl GoToolchain {
    /// Minor version: 22 for go1.22.10.
    pub fn minor(&self) -> u32 {
        parse_version(&self.full).map_or(0, |(_, m)| m)
    }

    /// GOROOT of this toolchain, if the binary sits in `<root>/bin/go`.
    pub fn goroot(&self) -> Option<PathBuf> {
        let real = std::fs::canonicalize(&self.go).ok()?;
        let root = real.parent()?.parent()?;
        root.join("src/runtime")
            .is_dir()
            .then(|| root.to_path_buf())
    }
}

/// `~/.cache/leaktrace` (or `$LEAKTRACE_CACHE_DIR`, or
/// `$XDG_CACHE_HOME/leaktrace`): toolchains and the Go build cache.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("LEAKTRACE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("leaktrace");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/leaktrace")
}

/// `"go1.22.10"` → `(1, 22)`; also accepts `"1.22"` and `"go1.21rc2"`.
pub fn parse_version(s: &str) -> Option<(u32, u32)> {
    let s = s.trim().trim_start_matches("go");
    let mut it = s.split('.');
    let major = it.next()?.parse().ok()?;
    let minor: String = it
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((major, minor.parse().ok()?))
}

/// Asks a `go` binary for its version. `None` if it does not run.
pub fn probe(go: &Path) -> Option<GoToolchain> {
    let out = Command::new(go)
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .env("GOENV", "off")
        .env_remove("GOROOT")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let full = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Older toolchains print "go1.19.8"; a devel toolchain prints other
    // things we cannot key on.
    let (major, minor) = parse_version(&full)?;
    Some(GoToolchain {
        version: format!("{major}.{minor}"),
        full,
        go: go.to_path_buf(),
    })
}

fn candidates() -> Vec<PathBuf> {
    if let Ok(list) = std::env::var("LEAKTRACE_GO_ROOTS") {
        return list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
    }
    let mut c = vec![PathBuf::from("/usr/bin/go")];
    c.extend(glob_bins(Path::new("/usr/lib"), "go-"));
    c.push(PathBuf::from("/usr/local/go/bin/go"));
    c.extend(glob_bins(&cache_root().join("go"), "go"));
    c
}

/// `<dir>/<prefix>*/bin/go`, sorted.
fn glob_bins(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join("bin/go"))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Every Go toolchain found (see the module docs), oldest first. Computed
/// once per process.
pub fn go_toolchains() -> Vec<GoToolchain> {
    static ALL: OnceLock<Vec<GoToolchain>> = OnceLock::new();
    ALL.get_or_init(|| {
        let explicit = std::env::var_os("LEAKTRACE_GO_ROOTS").is_some();
        let mut found: Vec<GoToolchain> = Vec::new();
        for go in candidates() {
            if !go.exists() {
                if explicit {
                    eprintln!(
                        "leaktrace-e2e: LEAKTRACE_GO_ROOTS names {}, which does not exist",
                        go.display()
                    );
                }
                continue;
            }
            match probe(&go) {
                Some(tc) if !found.iter().any(|f| f.full == tc.full) => found.push(tc),
                Some(_) => {}
                None => eprintln!(
                    "leaktrace-e2e: {} does not run `go env GOVERSION`; skipped",
                    go.display()
                ),
            }
        }
        found.sort_by_key(|t| parse_version(&t.full));
        found
    })
    .clone()
}

/// True when `LEAKTRACE_GO_ALL` is set to something other than `0`/empty.
pub fn all_requested() -> bool {
    std::env::var("LEAKTRACE_GO_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The toolchains among `versions` (`"1.22"` style) that are installed, or
/// every toolchain when `LEAKTRACE_GO_ALL=1`. A wanted version that is not
/// installed is reported on stderr and skipped.
pub fn pick(versions: &[&str]) -> Vec<GoToolchain> {
    let all = go_toolchains();
    if all_requested() {
        return all;
    }
    let mut out = Vec::new();
    for v in versions {
        match all
            .iter()
            .find(|t| t.version == *v || t.full == *v || t.full == format!("go{v}"))
        {
            Some(t) => out.push(t.clone()),
            None => eprintln!(
                "leaktrace-e2e: Go {v} is not installed (run `cargo xtask setup`); skipped"
            ),
        }
    }
    out
}

/// The installed toolchain of release `version` (`"1.22"`, any patch
/// level), whatever `LEAKTRACE_GO_ALL` says: for tests that are written per
/// release and skip the ones not installed.
pub fn find(version: &str) -> Option<GoToolchain> {
    let want = parse_version(version)?;
    go_toolchains()
        .into_iter()
        .find(|t| parse_version(&t.full) == Some(want))
}

/// The newest installed toolchain, if any.
pub fn newest() -> Option<GoToolchain> {
    go_toolchains().pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("go1.22.10"), Some((1, 22)));
        assert_eq!(parse_version("go1.19"), Some((1, 19)));
        assert_eq!(parse_version("1.24"), Some((1, 24)));
        assert_eq!(parse_version("go1.21rc2"), Some((1, 21)));
        assert_eq!(parse_version("devel +abc"), None);
        let t = GoToolchain {
            version: "1.26".into(),
            full: "go1.26.6".into(),
            go: "/x/bin/go".into(),
        };
        assert_eq!(t.minor(), 26);
    }
}
