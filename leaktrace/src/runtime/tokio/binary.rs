//! Is this a Rust binary with a tokio runtime, which tokio, built how?
//!
//! Everything here survives `strip = "symbols"`: `.comment` keeps the rustc
//! version, panic-location strings in `.rodata` keep tokio's registry path
//! (`…/tokio-1.54.1/src/…`), and the task vtables keep their shape
//! (see [`super::vtables`]).
use std::collections::HashMap;
use std::fmt;

use object::{Object as _, ObjectSymbol as _};

use super::vtables::{self, NameSource, TaskVtable};
use crate::{symbols::debuginfo::DebugInfoError, target::elf::ElfFile};

/// `scheduler_offset` and `id_offset` joined the task vtable in 1.23
/// (tokio-rs/tokio#5213); before that the layout is not self-describing.
pub const MIN_TOKIO: TokioVersion = TokioVersion {
    major: 1,
    minor: 23,
    patch: 0,
};

/// The newest tokio the layout facts were checked against.
pub const NEWEST_TESTED_TOKIO: TokioVersion = TokioVersion {
    major: 1,
    minor: 54,
    patch: 1,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokioVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for TokioVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Symbol-name counts per mangling scheme. A stable-rustc binary mixes both:
/// its own code is legacy (`_ZN…17h<hash>E`) while the precompiled std is v0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mangling {
    pub legacy: usize,
    pub v0: usize,
    /// Symbols of tokio's task machinery (`tokio::runtime::task::…`), in
    /// either scheme.
    pub tokio_task: usize,
}

/// What a binary offers for tokio tracing.
#[derive(Clone, Debug)]
pub struct RustBinary {
    /// From `.comment`, e.g. `rustc version 1.95.0 (59807616e 2026-04-14)`.
    pub rustc: Option<String>,
    /// From tokio's source paths embedded in the binary; `None` when paths
    /// were remapped away (`--remap-path-prefix`).
    pub tokio_version: Option<TokioVersion>,
    pub has_symtab: bool,
    pub has_dwarf: bool,
    pub mangling: Mangling,
    pub vtables: Vec<TaskVtable>,
}

impl RustBinary {
    /// How task types will be named, worst source first; for the one-line
    /// "what you get with this build" notice.
    pub fn naming_quality(&self) -> Option<NameSource> {
        self.vtables.iter().map(|v| v.name.source).min()
    }

    /// A note when the tokio is newer than the one the layout was checked
    /// against: the vtable shape and state bits have been stable since
    /// 1.23, so this is a caution, not a refusal.
    pub fn version_note(&self) -> Option<String> {
        let v = self.tokio_version?;
        (v > NEWEST_TESTED_TOKIO).then(|| {
            format!(
                "tokio {v} is newer than the newest tested ({NEWEST_TESTED_TOKIO}); task layout \
                 assumed unchanged"
            )
        })
    }

    /// A warning about what this build cannot show, with the fix; `None`
    /// when every task type is named exactly.
    pub fn naming_warning(&self) -> Option<String> {
        let hinted = self
            .vtables
            .iter()
            .any(|v| v.name.source == NameSource::PanicLocation);
        match self.naming_quality()? {
            NameSource::V0Symbol | NameSource::Dwarf => None,
            NameSource::DropGlue => Some(
                "task types come from drop-glue symbols (legacy mangling, no debug info). Rebuild \
                 with `debug = \"line-tables-only\"` or with v0 mangling (Rust ≥ 1.97, or \
                 `-C symbol-mangling-version=v0`) for exact types."
                    .into(),
            ),
            NameSource::Address | NameSource::PanicLocation if hinted => {
                let named = self
                    .vtables
                    .iter()
                    .filter(|v| v.name.source == NameSource::PanicLocation)
                    .count();
                let bare = self
                    .vtables
                    .iter()
                    .filter(|v| v.name.source == NameSource::Address)
                    .count();
                Some(format!(
                    "binary is stripped: {named} of {} task types are placed only by the source \
                     file their code panics in (`vtable@… in FILE`, from panic locations: a hint, \
                     the file may be an async fn the task awaits){}. Give the separate debug info \
                     (--debuginfo, a build-id directory, DEBUGINFOD_URLS) or keep symbols for \
                     exact names.",
                    self.vtables.len(),
                    if bare > 0 {
                        format!("; {bare} by vtable address only")
                    } else {
                        String::new()
                    }
                ))
            }
            NameSource::PanicLocation | NameSource::Address => Some(if self.has_symtab {
                "some task types could not be named (their drop glue was inlined away); they are \
                 shown by vtable address. Rebuild with `debug = \"line-tables-only\"` to name them."
                    .into()
            } else {
                "binary is stripped; tasks are identified by vtable address only. Keep symbols \
                 (`strip = false`) or build with `debug = \"line-tables-only\"` to name them."
                    .into()
            }),
        }
    }
}

#[derive(Debug)]
pub enum TokioError {
    /// Not a Rust program with tokio tasks.
    NotTokio(String),
    TooOld(TokioVersion),
    /// A `--debuginfo` file that is not this program's.
    DebugInfo(DebugInfoError),
}

impl fmt::Display for TokioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTokio(why) => write!(f, "not a tokio program: {why}"),
            Self::TooOld(v) => write!(
                f,
                "this program uses tokio {v}; leaktrace supports tokio ≥ {MIN_TOKIO}, the first \
                 release whose task vtable describes the task layout (scheduler and id offsets). \
                 Upgrade tokio (`cargo update -p tokio`) and rebuild."
            ),
            Self::DebugInfo(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TokioError {}

/// Inspect `elf` and decide whether leaktrace can trace its tokio tasks.
pub fn detect(elf: &ElfFile) -> Result<RustBinary, TokioError> {
    let rustc = rustc_comment(elf);
    let tokio_version = tokio_version(elf.bytes());
    if let Some(v) = tokio_version
        && v < MIN_TOKIO
    {
        return Err(TokioError::TooOld(v));
    }
    let mangling = mangling(elf);
    let vtables = vtables::find_vtables(elf);
    if vtables.is_empty() {
        let why = if mangling.tokio_task > 0 || tokio_version.is_some() {
            "it links tokio but no task vtable was found (no task is ever spawned, or a tokio \
             build with an unknown layout, e.g. `--cfg tokio_unstable`)"
        } else if rustc.is_some() {
            "a Rust program without tokio's task runtime"
        } else {
            "no rustc marker, no tokio symbols and no tokio task vtables"
        };
        return Err(TokioError::NotTokio(why.into()));
    }
    Ok(RustBinary {
        rustc,
        tokio_version,
        has_symtab: elf.has_symtab(),
        has_dwarf: elf.has_dwarf(),
        mangling,
        vtables,
    })
}

/// The `rustc version …` entry of `.comment` (NUL-separated strings, one
/// per toolchain that contributed objects).
pub fn rustc_comment(elf: &ElfFile) -> Option<String> {
    let section = elf.section(".comment")?;
    let data = elf.section_data(section)?;
    data.split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .find(|s| s.starts_with("rustc version "))
        .map(str::to_owned)
}

/// tokio's version from its registry source path (`tokio-1.54.1/`), which
/// panic locations embed even in stripped builds. The most frequent version
/// wins: only one tokio 1.x can be in a dependency graph, but path or git
/// copies could add stray strings.
pub fn tokio_version(bytes: &[u8]) -> Option<TokioVersion> {
    const NEEDLE: &[u8] = b"tokio-1.";
    let mut counts: HashMap<TokioVersion, usize> = HashMap::new();
    let mut at = 0;
    while let Some(pos) = find(&bytes[at..], NEEDLE) {
        let start = at + pos;
        at = start + NEEDLE.len();
        // Not `my-tokio-1.x`: the name starts a path component.
        if start > 0 && !matches!(bytes[start - 1], b'/' | b'\\') {
            continue;
        }
        let rest = &bytes[at..bytes.len().min(at + 16)];
        if let Some(v) = parse_version_path(rest) {
            *counts.entry(v).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(v, n)| (n, v))
        .map(|(v, _)| v)
}

/// `54.1/src` → 1.54.1 (the text after `tokio-1.`); the version must end
/// the path component.
fn parse_version_path(rest: &[u8]) -> Option<TokioVersion> {
    let mut nums = [0u32; 2];
    let mut i = 0;
    for (k, n) in nums.iter_mut().enumerate() {
        let digits = rest[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 4 {
            return None;
        }
        *n = std::str::from_utf8(&rest[i..i + digits])
            .ok()?
            .parse()
            .ok()?;
        i += digits;
        let expected: &[u8] = if k == 0 { b"." } else { b"/" };
        if !rest[i..].starts_with(expected) {
            return None;
        }
        i += 1;
    }
    Some(TokioVersion {
        major: 1,
        minor: nums[0],
        patch: nums[1],
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(p) = haystack[from..].iter().position(|&b| b == first) {
        let i = from + p;
        if haystack[i..].starts_with(needle) {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

fn mangling(elf: &ElfFile) -> Mangling {
    let mut m = Mangling::default();
    let symtab = elf.symtab_file().bytes();
    let Ok(parsed) = object::read::elf::ElfFile64::<object::Endianness>::parse(symtab) else {
        return m;
    };
    for sym in parsed.symbols() {
        let Ok(name) = sym.name() else { continue };
        if name.starts_with("_ZN") {
            m.legacy += 1;
        } else if name.starts_with("_R") {
            m.v0 += 1;
        } else {
            continue;
        }
        // Both schemes spell identifiers as <len><ident>.
        if name.contains("5tokio7runtime4task") {
            m.tokio_task += 1;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_paths() {
        let blob = b"\0/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/runtime/task/state.rs\0\
                     tokio-1.54.1/src/sync/oneshot.rs\0foo-tokio-1.9.9/src\0tokio-1.54.1x/\0/tokio-1.20.0/src";
        assert_eq!(
            tokio_version(blob),
            Some(TokioVersion {
                major: 1,
                minor: 54,
                patch: 1
            })
        );
        assert_eq!(tokio_version(b"tokio-macros-2.7.2/src"), None);
        assert_eq!(tokio_version(b"/tokio-1."), None);
        assert_eq!(
            tokio_version(b"/tokio-1.20.3/src").map(|v| v < MIN_TOKIO),
            Some(true)
        );
    }

    #[test]
    fn a_c_program_is_not_tokio() {
        let Some(path) = ["/bin/true", "/usr/bin/true"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.exists())
        else {
            return;
        };
        let elf = ElfFile::open(path).expect("open true(1)");
        match detect(&elf) {
            Err(TokioError::NotTokio(why)) => assert!(why.contains("no rustc marker"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_old_names_the_fix() {
        let e = TokioError::TooOld(TokioVersion {
            major: 1,
            minor: 20,
            patch: 0,
        })
        .to_string();
        assert!(e.contains("1.20.0") && e.contains("≥ 1.23.0") && e.contains("cargo update"));
    }
}
