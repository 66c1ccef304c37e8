//! The Go toolchain version a binary was built with, as recorded in
//! `.go.buildinfo` (the same string `runtime.Version()` returns).
//!
//! Everything version-keyed in leaktrace (struct offsets, waitReason
//! numbering, pclntab details) is keyed by `major.minor`; the patch level
//! is kept for messages only.

use std::fmt;

/// Oldest and newest Go minor versions (1.x) whose runtime layout is known.
pub const MIN_SUPPORTED_MINOR: u32 = 19;
pub const MAX_SUPPORTED_MINOR: u32 = 27;

/// Human-readable supported range, for error messages.
pub fn supported_range() -> String {
    format!("go1.{MIN_SUPPORTED_MINOR} to go1.{MAX_SUPPORTED_MINOR}")
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// Exactly as recorded in the binary, e.g. `go1.26.6-X:goroutineleakprofile`.
    pub raw: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionError {
    /// `devel go1.24-abcdef ...`: a toolchain built from an arbitrary commit,
    /// whose runtime layout matches no release.
    Devel(String),
    Unrecognized(String),
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionError::Devel(raw) => write!(
                f,
                "{raw:?} is a development toolchain; its runtime layout is unknown. \
                 Build the target with a released Go ({})",
                supported_range()
            ),
            VersionError::Unrecognized(raw) => {
                write!(f, "unrecognized Go version string {raw:?}")
            }
        }
    }
}

impl std::error::Error for VersionError {}

impl GoVersion {
    /// Parses `go1.N`, `go1.N.P`, pre-releases (`go1.23rc1`) and any suffix
    /// after the numbers (`-X:exp`, ` X:exp`, vendor suffixes like `-1`).
    pub fn parse(s: &str) -> Result<GoVersion, VersionError> {
        let raw = s.trim();
        if raw.starts_with("devel") || raw.contains(" devel ") {
            return Err(VersionError::Devel(raw.to_owned()));
        }
        let unrecognized = || VersionError::Unrecognized(raw.to_owned());
        let rest = raw.strip_prefix("go").ok_or_else(unrecognized)?;
        let (major, rest) = take_number(rest).ok_or_else(unrecognized)?;
        let rest = rest.strip_prefix('.').ok_or_else(unrecognized)?;
        let (minor, rest) = take_number(rest).ok_or_else(unrecognized)?;
        let patch = match rest.strip_prefix('.') {
            Some(r) => take_number(r).ok_or_else(unrecognized)?.0,
            None => 0,
        };
        Ok(GoVersion {
            major,
            minor,
            patch,
            raw: raw.to_owned(),
        })
    }

    /// Whether this is go1.`minor` or later.
    pub fn at_least(&self, minor: u32) -> bool {
        self.major > 1 || (self.major == 1 && self.minor >= minor)
    }

    /// `go1.22`: the key used for every version-dependent table.
    pub fn minor_key(&self) -> String {
        format!("go{}.{}", self.major, self.minor)
    }

    pub fn is_supported(&self) -> bool {
        self.major == 1 && (MIN_SUPPORTED_MINOR..=MAX_SUPPORTED_MINOR).contains(&self.minor)
    }

    /// `rc`/`beta` releases: supported like the release, but their layout
    /// was never measured.
    pub fn is_prerelease(&self) -> bool {
        let numbers = format!("go{}.{}", self.major, self.minor);
        self.raw
            .strip_prefix(&numbers)
            .is_some_and(|r| r.starts_with("rc") || r.starts_with("beta"))
    }

    /// GOEXPERIMENTs baked into the toolchain (`X:a,b` suffix).
    pub fn experiments(&self) -> Vec<&str> {
        match self.raw.find("X:") {
            Some(i) => self.raw[i + 2..]
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .collect(),
            None => Vec::new(),
        }
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn take_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> (u32, u32, u32) {
        let g = GoVersion::parse(s).unwrap();
        assert_eq!(g.raw, s.trim());
        (g.major, g.minor, g.patch)
    }

    #[test]
    fn parses_release_strings() {
        assert_eq!(v("go1.22.10"), (1, 22, 10));
        assert_eq!(v("go1.19"), (1, 19, 0));
        assert_eq!(v("go1.26.6-X:goroutineleakprofile"), (1, 26, 6));
        assert_eq!(v("go1.21.13 X:boringcrypto"), (1, 21, 13));
        assert_eq!(v("go1.23rc1"), (1, 23, 0));
        assert_eq!(v("go1.22.10-1"), (1, 22, 10));
        let g = GoVersion::parse("go1.26.6-X:goroutineleakprofile").unwrap();
        assert_eq!(g.experiments(), vec!["goroutineleakprofile"]);
        assert!(g.is_supported());
        assert!(!g.is_prerelease());
        assert!(GoVersion::parse("go1.23rc1").unwrap().is_prerelease());
        assert_eq!(g.minor_key(), "go1.26");
        assert!(g.at_least(26) && !g.at_least(27));
    }

    #[test]
    fn refuses_devel_and_garbage() {
        assert!(matches!(
            GoVersion::parse("devel go1.24-1a2b3c4 Tue Jan 1 00:00:00 2025 +0000"),
            Err(VersionError::Devel(_))
        ));
        for bad in ["", "go", "go1", "go1.", "gox.y", "1.22.3", "go1.x"] {
            assert!(
                matches!(GoVersion::parse(bad), Err(VersionError::Unrecognized(_))),
                "{bad:?}"
            );
        }
        let msg = GoVersion::parse("devel +abc").unwrap_err().to_string();
        assert!(msg.contains("go1.19 to go1.27"), "{msg}");
        assert!(!GoVersion::parse("go1.18.10").unwrap().is_supported());
        assert!(!GoVersion::parse("go1.28").unwrap().is_supported());
        assert!(!GoVersion::parse("go2.0").unwrap().is_supported());
    }
}
