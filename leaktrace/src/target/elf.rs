//! The ELF facts leaktrace needs from a target executable: where a virtual
//! address lives in the file (uprobes are attached by file offset), the bytes
//! at a link-time address, `.symtab` lookups, and whether debug info survived.
//!
//! Everything works on link-time virtual addresses (the `p_vaddr`/`st_value`
//! space). For a PIE target the caller subtracts the load bias first.
//!
//! The file is read once and kept as `Arc<[u8]>`: Go's symbolizer reads
//! pclntab and inline trees out of it for the whole session, and cloning the
//! `Arc` is how other parts share it without copying or re-reading.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, SymbolKind};

/// zlib cannot inflate more than ~1,032 bytes per byte; real DWARF
/// compresses 3–10×. A larger claim is a damaged or forged header.
const MAX_INFLATE_RATIO: u64 = 1100;
/// No section leaktrace reads is this large uncompressed (a 100 MB Go
/// binary's `.debug_info` is a few hundred MB).
const MAX_UNCOMPRESSED: u64 = 4 << 30;

/// Why a file could not be read as a (supported) ELF file.
#[derive(Debug)]
pub enum ElfError {
    Io(std::io::Error),
    NotElf,
    /// A well-formed ELF leaktrace cannot handle (32-bit, big-endian).
    Unsupported(String),
    Malformed(String),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Io(e) => write!(f, "{e}"),
            ElfError::NotElf => f.write_str("not an ELF file"),
            ElfError::Unsupported(what) => write!(f, "unsupported ELF file: {what}"),
            ElfError::Malformed(what) => write!(f, "malformed ELF file: {what}"),
        }
    }
}

impl std::error::Error for ElfError {}

/// `e_machine`, reduced to the architectures leaktrace knows about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    X86_64,
    Aarch64,
    Other(u16),
}

impl Machine {
    /// GOARCH spelling, as Go's buildinfo reports it.
    pub fn goarch(self) -> Option<&'static str> {
        match self {
            Machine::X86_64 => Some("amd64"),
            Machine::Aarch64 => Some("arm64"),
            Machine::Other(_) => None,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Machine::X86_64 => f.write_str("x86-64 (amd64)"),
            Machine::Aarch64 => f.write_str("AArch64 (arm64)"),
            Machine::Other(m) => write!(f, "ELF machine {m}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSection {
    pub name: String,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub flags: u64,
    pub sh_type: u32,
}

impl ElfSection {
    /// SHT_NOBITS sections (.bss) occupy no bytes in the file.
    pub fn has_file_data(&self) -> bool {
        self.sh_type != elf::SHT_NOBITS
    }

    pub fn is_alloc(&self) -> bool {
        self.flags & u64::from(elf::SHF_ALLOC) != 0
    }

    pub fn is_writable(&self) -> bool {
        self.flags & u64::from(elf::SHF_WRITE) != 0
    }

    pub fn is_executable(&self) -> bool {
        self.flags & u64::from(elf::SHF_EXECINSTR) != 0
    }

    pub fn contains_va(&self, va: u64) -> bool {
        self.is_alloc() && va >= self.addr && va - self.addr < self.size
    }
}

/// A `PT_LOAD` program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub flags: u32,
    pub align: u64,
}

impl LoadSegment {
    pub fn is_executable(&self) -> bool {
        self.flags & elf::PF_X != 0
    }

    pub fn is_writable(&self) -> bool {
        self.flags & elf::PF_W != 0
    }

    /// File offset of `va` if it is backed by file bytes in this segment.
    pub fn file_offset(&self, va: u64) -> Option<u64> {
        let rel = va.checked_sub(self.vaddr)?;
        (rel < self.filesz).then(|| self.offset + rel)
    }
}

/// Maps link-time virtual addresses to bytes of the file, via `PT_LOAD`.
///
/// Split out of [`ElfFile`] so that long-lived readers (the Go symbolizer)
/// can keep just the bytes and the segment list.
#[derive(Clone, Debug)]
pub struct VaReader {
    data: Arc<[u8]>,
    segments: Arc<[LoadSegment]>,
}

impl VaReader {
    pub fn data(&self) -> &Arc<[u8]> {
        &self.data
    }

    pub fn va_to_file_offset(&self, va: u64) -> Option<u64> {
        self.segments.iter().find_map(|s| s.file_offset(va))
    }

    /// `len` bytes at `va`; `None` unless all of them are file-backed in one
    /// segment (bytes that only exist at run time, like .bss, are not here).
    pub fn read(&self, va: u64, len: usize) -> Option<&[u8]> {
        let seg = self.segments.iter().find(|s| s.file_offset(va).is_some())?;
        let rel = va - seg.vaddr;
        let end_rel = rel.checked_add(len as u64)?;
        if end_rel > seg.filesz {
            return None;
        }
        let start = usize::try_from(seg.offset + rel).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }

    pub fn read_u32(&self, va: u64) -> Option<u32> {
        let b = self.read(va, 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    pub fn read_u64(&self, va: u64) -> Option<u64> {
        let b = self.read(va, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfSymbolKind {
    Function,
    Data,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSymbol {
    pub name: String,
    pub value: u64,
    pub size: u64,
    pub kind: ElfSymbolKind,
}

/// A parsed 64-bit little-endian ELF file that keeps its bytes.
pub struct ElfFile {
    reader: VaReader,
    e_type: u16,
    machine: Machine,
    entry: u64,
    sections: Vec<ElfSection>,
    has_symtab: bool,
    has_dwarf: bool,
    /// Built on first lookup: most sessions never need it, and a large Go
    /// binary has ~100k symbols.
    symtab: OnceLock<HashMap<String, ElfSymbol>>,
    /// The program's separate debug file (`objcopy --only-keep-debug`),
    /// when one was found for it: same addresses, DWARF and often the
    /// `.symtab` the program itself was stripped of.
    debug: Option<Box<ElfFile>>,
}

impl fmt::Debug for ElfFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElfFile")
            .field("len", &self.reader.data.len())
            .field("e_type", &self.e_type)
            .field("machine", &self.machine)
            .field("sections", &self.sections.len())
            .field("has_symtab", &self.has_symtab)
            .field("has_dwarf", &self.has_dwarf)
            .field("debug", &self.debug)
            .finish()
    }
}

impl ElfFile {
    pub fn open(path: &Path) -> Result<ElfFile, ElfError> {
        let data = std::fs::read(path).map_err(ElfError::Io)?;
        ElfFile::parse(Arc::from(data))
    }

    pub fn parse(data: Arc<[u8]>) -> Result<ElfFile, ElfError> {
        let ident = data.get(..EI_NIDENT).ok_or(ElfError::NotElf)?;
        if ident[..4] != elf::ELFMAG {
            return Err(ElfError::NotElf);
        }
        if ident[EI_CLASS] != elf::ELFCLASS64 {
            return Err(ElfError::Unsupported(
                "32-bit ELF (leaktrace supports 64-bit targets only)".into(),
            ));
        }
        if ident[EI_DATA] != elf::ELFDATA2LSB {
            return Err(ElfError::Unsupported(
                "big-endian ELF (leaktrace supports little-endian targets only)".into(),
            ));
        }
        let parsed = parse_object(&data)?;
        let endian = parsed.endian();
        let header = parsed.elf_header();
        let e_type = header.e_type(endian);
        let machine = match header.e_machine(endian) {
            elf::EM_X86_64 => Machine::X86_64,
            elf::EM_AARCH64 => Machine::Aarch64,
            m => Machine::Other(m),
        };
        let entry = header.e_entry(endian);

        let mut segments = Vec::new();
        for ph in parsed.elf_program_headers() {
            if ph.p_type(endian) != elf::PT_LOAD {
                continue;
            }
            let seg = LoadSegment {
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                memsz: ph.p_memsz(endian),
                flags: ph.p_flags(endian),
                align: ph.p_align(endian),
            };
            let in_file = seg
                .offset
                .checked_add(seg.filesz)
                .is_some_and(|end| end <= data.len() as u64);
            if !in_file {
                return Err(ElfError::Malformed(format!(
                    "PT_LOAD at {:#x} extends past the end of the file",
                    seg.vaddr
                )));
            }
            segments.push(seg);
        }

        let table = parsed.elf_section_table();
        let mut sections = Vec::new();
        for sh in table.iter() {
            let name = table
                .section_name(endian, sh)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            sections.push(ElfSection {
                name,
                addr: sh.sh_addr(endian),
                offset: sh.sh_offset(endian),
                size: sh.sh_size(endian),
                flags: sh.sh_flags(endian),
                sh_type: sh.sh_type(endian),
            });
        }
        let has_symtab = sections
            .iter()
            .any(|s| s.sh_type == elf::SHT_SYMTAB && s.size > 0);
        let has_dwarf = sections
            .iter()
            .any(|s| (s.name == ".debug_info" || s.name == ".zdebug_info") && s.size > 0);

        Ok(ElfFile {
            reader: VaReader {
                data,
                segments: segments.into(),
            },
            e_type,
            machine,
            entry,
            sections,
            has_symtab,
            has_dwarf,
            symtab: OnceLock::new(),
            debug: None,
        })
    }

    pub fn data(&self) -> &Arc<[u8]> {
        &self.reader.data
    }

    pub fn bytes(&self) -> &[u8] {
        &self.reader.data
    }

    /// A cheap handle for reading by virtual address after `self` is gone.
    pub fn va_reader(&self) -> VaReader {
        self.reader.clone()
    }

    pub fn machine(&self) -> Machine {
        self.machine
    }

    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// ET_DYN: loaded at a random base, so run-time addresses carry a bias.
    pub fn is_pie(&self) -> bool {
        self.e_type == elf::ET_DYN
    }

    /// A `.symtab` is available: the file's own, or its debug file's.
    pub fn has_symtab(&self) -> bool {
        self.symtab_file().has_symtab
    }

    /// DWARF is available: the file's own, or its debug file's.
    pub fn has_dwarf(&self) -> bool {
        self.dwarf_file().has_dwarf
    }

    /// Use `debug` (a separate debug file whose build-id or debuglink CRC
    /// the caller checked) for DWARF, and for symbols when this file has
    /// none of its own.
    pub fn set_debug_file(&mut self, debug: ElfFile) {
        self.debug = Some(Box::new(debug));
    }

    /// Another handle on the same bytes and debug file, for a reader that
    /// must own its file (nothing is copied or read again).
    pub fn share(&self) -> Result<ElfFile, ElfError> {
        let mut elf = ElfFile::parse(self.data().clone())?;
        if let Some(d) = &self.debug {
            elf.set_debug_file(d.share()?);
        }
        Ok(elf)
    }

    pub fn debug_file(&self) -> Option<&ElfFile> {
        self.debug.as_deref()
    }

    /// The file whose DWARF sections describe this program.
    pub fn dwarf_file(&self) -> &ElfFile {
        match &self.debug {
            Some(d) if !self.has_dwarf && d.has_dwarf => d,
            _ => self,
        }
    }

    /// The file whose `.symtab` names this program's functions.
    pub fn symtab_file(&self) -> &ElfFile {
        match &self.debug {
            Some(d) if !self.has_symtab && d.has_symtab => d,
            _ => self,
        }
    }

    /// The GNU build-id note (`NT_GNU_BUILD_ID`), what separate debug files
    /// and debuginfod servers are keyed by.
    pub fn build_id(&self) -> Option<Vec<u8>> {
        let parsed = parse_object(self.bytes()).ok()?;
        parsed.build_id().ok().flatten().map(<[u8]>::to_vec)
    }

    /// `.gnu_debuglink`: the debug file's name and the CRC-32 of its bytes.
    pub fn debuglink(&self) -> Option<(String, u32)> {
        let parsed = parse_object(self.bytes()).ok()?;
        let (name, crc) = parsed.gnu_debuglink().ok().flatten()?;
        Some((String::from_utf8_lossy(name).into_owned(), crc))
    }

    pub fn sections(&self) -> &[ElfSection] {
        &self.sections
    }

    pub fn section(&self, name: &str) -> Option<&ElfSection> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// `PT_LOAD` headers.
    pub fn segments(&self) -> &[LoadSegment] {
        &self.reader.segments
    }

    /// `(p_vaddr, p_offset)` of each `PT_LOAD`, for load-bias computation
    /// from /proc/PID/maps.
    pub fn load_segments(&self) -> Vec<(u64, u64)> {
        self.reader
            .segments
            .iter()
            .map(|s| (s.vaddr, s.offset))
            .collect()
    }

    /// Raw file bytes of a section (still compressed if it is compressed).
    pub fn section_data(&self, section: &ElfSection) -> Option<&[u8]> {
        if !section.has_file_data() {
            return None;
        }
        let start = usize::try_from(section.offset).ok()?;
        let len = usize::try_from(section.size).ok()?;
        self.bytes().get(start..start.checked_add(len)?)
    }

    /// Section contents with SHF_COMPRESSED / `.zdebug_` compression undone.
    /// Go compresses its DWARF sections by default.
    ///
    /// The uncompressed size is the file's claim, and the buffer is
    /// allocated from it before a byte is inflated: a claim beyond
    /// [`MAX_INFLATE_RATIO`] times the compressed bytes, or beyond
    /// [`MAX_UNCOMPRESSED`], is refused (found by fuzzing: a 1 KiB section
    /// claiming terabytes).
    pub fn uncompressed_section(&self, name: &str) -> Result<Option<Cow<'_, [u8]>>, ElfError> {
        let parsed = parse_object(self.bytes())?;
        let Some(section) = parsed.section_by_name(name) else {
            return Ok(None);
        };
        let malformed = |e: &dyn fmt::Display| ElfError::Malformed(format!("section {name}: {e}"));
        let compressed = section.compressed_data().map_err(|e| malformed(&e))?;
        if compressed.format != object::CompressionFormat::None {
            let from = compressed.data.len() as u64;
            let claimed = compressed.uncompressed_size;
            let most = from
                .saturating_mul(MAX_INFLATE_RATIO)
                .saturating_add(64 << 10)
                .min(MAX_UNCOMPRESSED);
            if claimed > most {
                return Err(malformed(&format!(
                    "claims {claimed} bytes uncompressed from {from} compressed (at most \
                     {MAX_INFLATE_RATIO}× and {MAX_UNCOMPRESSED} bytes are believed); the file \
                     is damaged"
                )));
            }
        }
        compressed.decompress().map(Some).map_err(|e| malformed(&e))
    }

    /// File offset for a link-time virtual address; this is what a uprobe
    /// attach by absolute offset wants.
    pub fn va_to_file_offset(&self, va: u64) -> Option<u64> {
        self.reader.va_to_file_offset(va)
    }

    pub fn file_offset_to_va(&self, offset: u64) -> Option<u64> {
        self.reader.segments.iter().find_map(|s| {
            let rel = offset.checked_sub(s.offset)?;
            (rel < s.filesz).then(|| s.vaddr.wrapping_add(rel))
        })
    }

    pub fn read_va(&self, va: u64, len: usize) -> Option<&[u8]> {
        self.reader.read(va, len)
    }

    pub fn read_u64_va(&self, va: u64) -> Option<u64> {
        self.reader.read_u64(va)
    }

    /// Address of a `.symtab` symbol by exact name (`runtime.allgs`,
    /// `runtime.newproc1`). `None` when the binary has no `.symtab` (e.g.
    /// Go's `-ldflags=-s`).
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbol_info(name).map(|s| s.value)
    }

    /// Like [`ElfFile::symbol`], with size and kind.
    pub fn symbol_info(&self, name: &str) -> Option<&ElfSymbol> {
        self.symbols().get(name)
    }

    fn symbols(&self) -> &HashMap<String, ElfSymbol> {
        let file = self.symtab_file();
        if !std::ptr::eq(file, self) {
            return file.symbols();
        }
        self.symtab.get_or_init(|| {
            let mut map = HashMap::new();
            if !self.has_symtab {
                return map;
            }
            // The headers parsed once already; a failure now cannot happen
            // for the same bytes, and an empty map is the right degradation.
            let Ok(parsed) = parse_object(self.bytes()) else {
                return map;
            };
            for sym in parsed.symbols() {
                let Ok(name) = sym.name() else { continue };
                if name.is_empty() || sym.is_undefined() {
                    continue;
                }
                let kind = match sym.kind() {
                    SymbolKind::Text => ElfSymbolKind::Function,
                    SymbolKind::Data | SymbolKind::Tls => ElfSymbolKind::Data,
                    _ => ElfSymbolKind::Other,
                };
                // Keep the first definition: Go emits each name once, and C
                // objects linked in with cgo may repeat local names.
                map.entry(name.to_owned()).or_insert_with(|| ElfSymbol {
                    name: name.to_owned(),
                    value: sym.address(),
                    size: sym.size(),
                    kind,
                });
            }
            map
        })
    }

    /// Every `.symtab` function whose (mangled) name satisfies `pred`.
    pub fn functions_where(&self, mut pred: impl FnMut(&str) -> bool) -> Vec<&ElfSymbol> {
        self.symbols()
            .values()
            .filter(|s| s.kind == ElfSymbolKind::Function && pred(&s.name))
            .collect()
    }

    /// The `.symtab` function whose range holds `va`: `(name, entry)`. A
    /// linear walk: for listings, not for hot paths.
    pub fn function_containing(&self, va: u64) -> Option<(&str, u64)> {
        self.symbols()
            .values()
            .filter(|s| {
                s.kind == ElfSymbolKind::Function
                    && s.value <= va
                    && va < s.value.saturating_add(s.size.max(1))
            })
            .min_by_key(|s| va - s.value)
            .map(|s| (s.name.as_str(), s.value))
    }

    /// Whether any `.symtab` name satisfies `pred` (for "what is this binary"
    /// hints; walks the whole table).
    pub fn any_symbol(&self, mut pred: impl FnMut(&str) -> bool) -> bool {
        self.symbols().keys().any(|k| pred(k))
    }
}

// e_ident layout (the `object` crate has the values but not the indices).
const EI_NIDENT: usize = 16;
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;

fn parse_object(data: &[u8]) -> Result<ElfFile64<'_, Endianness>, ElfError> {
    ElfFile64::<Endianness>::parse(data).map_err(|e| ElfError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_and_truncated() {
        assert!(matches!(
            ElfFile::parse(Arc::from(&b"#!/bin/sh\necho hi\n"[..])),
            Err(ElfError::NotElf)
        ));
        assert!(matches!(
            ElfFile::parse(Arc::from(&b"\x7fEL"[..])),
            Err(ElfError::NotElf)
        ));
        let mut trunc = vec![0u8; 64];
        trunc[..4].copy_from_slice(&elf::ELFMAG);
        trunc[EI_CLASS] = elf::ELFCLASS64;
        trunc[EI_DATA] = elf::ELFDATA2LSB;
        trunc[6] = elf::EV_CURRENT;
        // Zeroed header with a bogus program header table must not panic.
        trunc[32] = 0xff;
        trunc[56] = 0xff;
        let _ = ElfFile::parse(Arc::from(trunc));
    }

    #[test]
    fn reads_own_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let f = ElfFile::open(&exe).unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(f.machine(), Machine::X86_64);
        }
        let text = f.section(".text").unwrap();
        let off = f.va_to_file_offset(text.addr).unwrap();
        assert_eq!(off, text.offset);
        assert_eq!(f.file_offset_to_va(off), Some(text.addr));
        assert_eq!(
            f.read_va(text.addr, 16).unwrap(),
            &f.bytes()[off as usize..off as usize + 16]
        );
    }
}
