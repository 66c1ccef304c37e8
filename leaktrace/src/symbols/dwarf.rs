//! The one place DWARF sections are taken out of a binary: Go's `runtime.g`
//! layout, tokio's future names and await points, and native symbolization
//! all read them through here, from the binary itself or from the separate
//! debug file [`super::debuginfo`] found for it (`ElfFile::dwarf_file`).
use std::{borrow::Cow, sync::Arc};

use gimli::{EndianArcSlice, EndianSlice, LittleEndian, RunTimeEndian, SectionId};

use crate::target::elf::{ElfError, ElfFile};

/// A borrowed DWARF section.
pub type Slice<'a> = EndianSlice<'a, RunTimeEndian>;

/// The DWARF sections of `elf` that `wanted` selects, decompressed; the
/// others empty (decompressing `.debug_line` or `.debug_loc` for a type
/// lookup would cost more than the lookup). Borrow them with [`borrow`].
pub fn sections<'a>(
    elf: &'a ElfFile,
    wanted: impl Fn(SectionId) -> bool,
) -> Result<gimli::DwarfSections<Cow<'a, [u8]>>, ElfError> {
    let elf = elf.dwarf_file();
    gimli::DwarfSections::load(|id| -> Result<Cow<'a, [u8]>, ElfError> {
        if !wanted(id) {
            return Ok(Cow::Borrowed(&[]));
        }
        Ok(elf
            .uncompressed_section(id.name())?
            .unwrap_or(Cow::Borrowed(&[])))
    })
}

/// Every DWARF section.
pub fn all(_: SectionId) -> bool {
    true
}

/// What type lookups need: the DIE tree and its strings.
pub fn types_only(id: SectionId) -> bool {
    matches!(
        id,
        SectionId::DebugAbbrev | SectionId::DebugInfo | SectionId::DebugStr
    )
}

/// A `gimli::Dwarf` over sections loaded by [`sections`].
pub fn borrow<'s>(sections: &'s gimli::DwarfSections<Cow<'_, [u8]>>) -> gimli::Dwarf<Slice<'s>> {
    sections.borrow(|s| EndianSlice::new(s, RunTimeEndian::Little))
}

/// The same sections, owned, for a symbolizer that outlives the file's
/// bytes (`addr2line::Context`).
pub fn owned(elf: &ElfFile) -> Option<gimli::Dwarf<EndianArcSlice<LittleEndian>>> {
    let sections = sections(elf, all).ok()?;
    Some(sections.borrow(|s| EndianArcSlice::new(Arc::<[u8]>::from(&s[..]), LittleEndian)))
}
