//! One Go executable, inspected once at attach: version, symbols, struct
//! layout and waitReason strings, with the reasons for any fallback kept as
//! warnings.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::layout::{GLayout, LayoutSource};
use super::own_code::OwnCode;
use super::pclntab::GoSymbols;
use super::version::{GoVersion, VersionError, supported_range};
use super::wait_reason::WaitReasons;
use crate::{
    symbols::debuginfo::{self, DebugInfoError, Outcome, Search},
    target::elf::{ElfError, ElfFile, Machine},
};

/// Why a file cannot be traced as a Go program. Every message says what to
/// do about it.
#[derive(Debug)]
pub enum InspectError {
    NotElf,
    NotGo {
        /// What the binary appears to be instead, when recognisable.
        hint: Option<String>,
    },
    UnsupportedVersion {
        version: String,
        supported: String,
    },
    UnsupportedArch(String),
    Io(io::Error),
    Malformed(String),
    /// A `--debuginfo` file that is not this program's.
    DebugInfo(DebugInfoError),
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InspectError::NotElf => f.write_str(
                "not an ELF executable; pass the program's binary (for a running process, \
                 /proc/PID/exe), not a script or wrapper",
            ),
            InspectError::NotGo { hint: Some(hint) } => write!(
                f,
                "not a Go binary: {hint}. leaktrace's Go mode needs a program built by the Go \
                 toolchain"
            ),
            InspectError::NotGo { hint: None } => f.write_str(
                "not a Go binary (no Go build info and no pclntab); leaktrace's Go mode needs a \
                 program built by the Go toolchain",
            ),
            InspectError::UnsupportedVersion { version, supported } => write!(
                f,
                "the target was built with Go {version}, which leaktrace does not support \
                 (supported: {supported}); rebuild it with a supported Go release or use a \
                 leaktrace that knows this version"
            ),
            InspectError::UnsupportedArch(what) => write!(
                f,
                "{what}; leaktrace supports linux/amd64 Go binaries only (attach to an amd64 \
                 build of the program)"
            ),
            InspectError::Io(e) => write!(
                f,
                "cannot read the target binary: {e}; check the path, and run leaktrace as root \
                 to read another user's /proc/PID/exe"
            ),
            InspectError::Malformed(what) => write!(
                f,
                "the binary's Go metadata could not be read: {what}. If `go version -m` on it \
                 works, please report this as a leaktrace bug"
            ),
            InspectError::DebugInfo(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for InspectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InspectError::Io(e) => Some(e),
            _ => None,
        }
    }
}

pub struct GoBinary {
    pub path: PathBuf,
    pub version: GoVersion,
    /// Main module path from `.go.buildinfo` (`mod` line, else `path`).
    pub main_module: Option<String>,
    /// The program's own code: its modules, from the build info.
    pub own_code: OwnCode,
    pub symbols: GoSymbols,
    pub layout: GLayout,
    pub layout_source: LayoutSource,
    pub wait_reasons: WaitReasons,
    pub elf: ElfFile,
    pub has_dwarf: bool,
    pub has_symtab: bool,
    pub is_pie: bool,
    warnings: Vec<String>,
}

impl fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoBinary")
            .field("path", &self.path)
            .field("version", &self.version.raw)
            .field("main_module", &self.main_module)
            .field("layout_source", &self.layout_source)
            .field("has_dwarf", &self.has_dwarf)
            .field("has_symtab", &self.has_symtab)
            .field("is_pie", &self.is_pie)
            .finish_non_exhaustive()
    }
}

/// Architectures whose Go runtime leaktrace can trace. arm64 shares the
/// struct layouts and pclntab handling; it waits on the eBPF side.
const SUPPORTED_MACHINES: &[Machine] = &[Machine::X86_64];

impl GoBinary {
    pub fn open(path: &Path) -> Result<GoBinary, InspectError> {
        Self::open_with(path, &Search::default())
    }

    /// [`GoBinary::open`], with separate debug info searched as `debug`
    /// says when the binary has no DWARF of its own.
    pub fn open_with(path: &Path, debug: &Search) -> Result<GoBinary, InspectError> {
        let data = std::fs::read(path).map_err(|e| {
            InspectError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        })?;
        Self::inspect(path, Arc::from(data), debug)
    }

    /// Like [`GoBinary::open`] for bytes already in memory; `path` is used
    /// for messages only.
    pub fn from_bytes(path: &Path, data: Arc<[u8]>) -> Result<GoBinary, InspectError> {
        Self::inspect(path, data, &Search::default())
    }

    fn inspect(path: &Path, data: Arc<[u8]>, debug: &Search) -> Result<GoBinary, InspectError> {
        let shown = path.display().to_string();
        let mut elf = ElfFile::parse(data).map_err(|e| match e {
            ElfError::NotElf => InspectError::NotElf,
            ElfError::Unsupported(what) => {
                InspectError::UnsupportedArch(format!("{shown} is a {what}"))
            }
            ElfError::Malformed(what) => InspectError::Malformed(format!("{shown}: {what}")),
            ElfError::Io(e) => InspectError::Io(e),
        })?;

        // Go-ness comes from the sections the Go linker writes (or, with
        // section headers stripped, a pclntab): gobin's buildinfo search
        // falls back to scanning all data and finds its magic in any
        // program that links gobin, leaktrace included.
        let has_go_sections = [
            ".gopclntab",
            ".data.rel.ro.gopclntab",
            ".note.go.buildid",
            ".go.buildinfo",
        ]
        .iter()
        .any(|s| elf.section(s).is_some());
        if !has_go_sections && !super::pclntab::has_pclntab(&elf) {
            return Err(InspectError::NotGo {
                hint: non_go_hint(&elf),
            });
        }
        let ctx = gobin::formats::BinaryContext::new(elf.bytes());
        let build_info = gobin::structures::buildinfo::extract(&ctx);
        if !SUPPORTED_MACHINES.contains(&elf.machine()) {
            return Err(InspectError::UnsupportedArch(format!(
                "{shown} is a {} binary",
                elf.machine()
            )));
        }

        let raw_version = build_info.as_ref().and_then(|b| b.go_version);
        let Some(raw_version) = raw_version else {
            return Err(InspectError::UnsupportedVersion {
                version: "unknown (no Go version in .go.buildinfo; Go older than 1.13?)".into(),
                supported: supported_range(),
            });
        };
        let version = match GoVersion::parse(raw_version) {
            Ok(v) if v.is_supported() => v,
            Ok(v) => {
                return Err(InspectError::UnsupportedVersion {
                    version: v.raw,
                    supported: supported_range(),
                });
            }
            Err(VersionError::Devel(raw)) => {
                return Err(InspectError::UnsupportedVersion {
                    version: raw,
                    supported: format!(
                        "{}; development toolchains have no known layout",
                        supported_range()
                    ),
                });
            }
            Err(VersionError::Unrecognized(raw)) => {
                return Err(InspectError::UnsupportedVersion {
                    version: raw,
                    supported: supported_range(),
                });
            }
        };
        let main_module = build_info
            .as_ref()
            .and_then(|b| b.main_module.or(b.main_path))
            .map(str::to_owned);
        let own_code = OwnCode::new(
            build_info.as_ref().and_then(|b| b.main_module),
            build_info
                .as_ref()
                .map(|b| b.deps.iter().map(|d| d.path.to_owned()).collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        let goarch = build_info
            .as_ref()
            .and_then(|b| b.goarch())
            .map(str::to_owned);
        drop(ctx);

        let mut warnings = Vec::new();
        // Only a find is worth saying: most Go binaries have no build-id,
        // and a stripped one already says what it lacks.
        let found = debuginfo::attach(&mut elf, path, debug).map_err(InspectError::DebugInfo)?;
        if let found @ Outcome::Found { .. } = found {
            warnings.extend(found.note().map(|n| format!("{shown}: {n}")));
        }
        if let (Some(goarch), Some(expected)) = (&goarch, elf.machine().goarch())
            && goarch != expected
        {
            warnings.push(format!(
                "{shown}: build info says GOARCH={goarch} but the ELF machine is {}",
                elf.machine()
            ));
        }
        if version.is_prerelease() {
            warnings.push(format!(
                "{shown} was built with the pre-release {}; assuming the {} release layout",
                version.raw,
                version.minor_key()
            ));
        }

        let symbols = GoSymbols::new(&elf, &version)
            .map_err(|e| InspectError::Malformed(format!("{shown}: {e}")))?;
        warnings.extend(symbols.notes().iter().map(|n| format!("{shown}: {n}")));

        let table =
            GLayout::for_version(&version).ok_or_else(|| InspectError::UnsupportedVersion {
                version: version.raw.clone(),
                supported: supported_range(),
            })?;
        let key = version.minor_key();
        let (layout, layout_source) = match GLayout::from_dwarf(&elf) {
            Ok(Some(dwarf)) if let Some(why) = dwarf.implausible(&table) => {
                warnings.push(format!(
                    "{shown}: the runtime.g DWARF describes cannot be {key}'s ({why}): the file's \
                     debug info is damaged or altered; runtime.g offsets from the {key} table instead"
                ));
                (table, LayoutSource::VersionTable)
            }
            Ok(Some(dwarf)) => {
                let diff = dwarf.differences(&table);
                if !diff.is_empty() {
                    let list: Vec<String> = diff
                        .iter()
                        .map(|(f, d, t)| format!("{f} {d} (table {t})"))
                        .collect();
                    warnings.push(format!(
                        "{shown}: runtime.g layout differs from the {key} table: {}; using DWARF",
                        list.join(", ")
                    ));
                }
                (dwarf, LayoutSource::Dwarf)
            }
            Ok(None) => {
                if elf.has_symtab() {
                    warnings.push(format!(
                        "{shown} was built with -ldflags=-w: no DWARF; runtime.g offsets from the {key} table"
                    ));
                } else {
                    warnings.push(format!(
                        "{shown} was built with -ldflags=-s -w: no DWARF; using pclntab for names and \
                         lines, runtime.g offsets from the {key} table"
                    ));
                }
                (table, LayoutSource::VersionTable)
            }
            Err(e) => {
                warnings.push(format!(
                    "{shown}: could not read runtime.g from DWARF ({e}); runtime.g offsets from the {key} table"
                ));
                (table, LayoutSource::VersionTable)
            }
        };
        if layout_source == LayoutSource::VersionTable && version.minor == 20 {
            warnings.push(format!(
                "{shown}: the go1.20 offsets are from research data that leaktrace's own tests do not cover"
            ));
        }

        let table_reasons =
            WaitReasons::for_version(&version).ok_or_else(|| InspectError::UnsupportedVersion {
                version: version.raw.clone(),
                supported: supported_range(),
            })?;
        let wait_reasons = match WaitReasons::from_binary(&elf) {
            Some(Ok(own)) => {
                let diff = own.differences(&table_reasons);
                if !diff.is_empty() {
                    warnings.push(format!(
                        "{shown}: runtime.waitReasonStrings differs from the {key} table at {} value(s); \
                         using the binary's own",
                        diff.len()
                    ));
                }
                own
            }
            Some(Err(e)) => {
                warnings.push(format!(
                    "{shown}: could not read runtime.waitReasonStrings ({e}); using the {key} table"
                ));
                table_reasons
            }
            None => table_reasons,
        };

        Ok(GoBinary {
            path: path.to_path_buf(),
            version,
            main_module,
            own_code,
            symbols,
            layout,
            layout_source,
            wait_reasons,
            has_dwarf: elf.has_dwarf(),
            has_symtab: elf.has_symtab(),
            is_pie: elf.is_pie(),
            elf,
            warnings,
        })
    }

    /// "dwarf" | "symtab" | "pclntab": the best symbol source present.
    pub fn symbol_source(&self) -> &'static str {
        if self.has_dwarf {
            "dwarf"
        } else if self.has_symtab {
            "symtab"
        } else {
            "pclntab"
        }
    }

    /// One-line warnings to print once at attach.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }
}

/// A guess at what a non-Go ELF is, for the error message.
fn non_go_hint(elf: &ElfFile) -> Option<String> {
    if elf.has_symtab() {
        if elf.any_symbol(|s| s.contains("tokio")) {
            return Some(
                "it looks like a Rust binary (tokio symbols); use leaktrace's tokio mode for it"
                    .into(),
            );
        }
        if elf.any_symbol(|s| {
            s.starts_with("_ZN") && s.contains("core9panicking") || s == "rust_begin_unwind"
        }) {
            return Some("it looks like a Rust binary".into());
        }
    }
    let rodata = elf.section(".rodata").and_then(|s| elf.section_data(s))?;
    let has = |needle: &[u8]| rodata.windows(needle.len()).any(|w| w == needle);
    if has(b"/rustc/") || has(b"library/core/src/") {
        if has(b"tokio") {
            return Some(
                "it looks like a Rust binary (tokio strings, symbols stripped); use leaktrace's tokio mode for it".into(),
            );
        }
        return Some("it looks like a Rust binary".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_a_fix() {
        let dir = std::env::temp_dir().join(format!("leaktrace-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let e = GoBinary::open(&script).unwrap_err();
        assert!(matches!(e, InspectError::NotElf), "{e}");
        assert!(e.to_string().contains("/proc/PID/exe"));

        let e = GoBinary::open(&dir.join("missing")).unwrap_err();
        assert!(matches!(e, InspectError::Io(_)));
        assert!(e.to_string().contains("missing"), "{e}");

        // The Rust test binary itself: an ELF, not Go.
        let exe = std::env::current_exe().unwrap();
        let e = GoBinary::open(&exe).unwrap_err();
        match &e {
            InspectError::NotGo { hint } => {
                assert!(hint.as_deref().unwrap_or("").contains("Rust"), "{e}")
            }
            other => panic!("expected NotGo, got {other}"),
        }
        std::fs::remove_dir_all(&dir).ok();

        let e = InspectError::UnsupportedVersion {
            version: "go1.18.10".into(),
            supported: supported_range(),
        };
        assert!(e.to_string().contains("go1.19 to go1.27"), "{e}");
    }
}
