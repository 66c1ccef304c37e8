//! A copy of a program with extra ELF symbols, for bpftrace. bpftrace
//! attaches only at a symbol (it refuses a raw address inside a function),
//! and leaktrace's probe points sit inside functions, so each point gets a
//! symbol of its own. objcopy adds them, but cannot give them a size and
//! leaves it at 0, which bpftrace refuses; the size is then set in place,
//! one field of each new .symtab entry, so nothing else in the file moves.
use std::{mem::size_of, path::Path, process::Command};

use anyhow::{Context as _, Result, anyhow, bail};
use object::{
    Endianness, Object as _, ObjectSection as _, SectionKind, elf,
    read::elf::{ElfFile64, SectionHeader as _, Sym as _},
};

use crate::util;

/// A symbol to add at a link-time virtual address.
pub(super) struct NewSymbol {
    pub(super) name: String,
    pub(super) va: u64,
    /// Where whoever chose `va` expects it in the file: a check that the
    /// address was taken from this very file.
    pub(super) file_offset: u64,
}

/// Copy `bin` to `copy` with a global function symbol of size 1 at each of
/// `symbols`, which must lie in a code section, at the file offset given.
pub(super) fn copy_with_symbols(bin: &Path, copy: &Path, symbols: &[NewSymbol]) -> Result<()> {
    let data = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an object file", bin.display()))?;
    let mut objcopy = Command::new("objcopy");
    for s in symbols {
        // objcopy places a symbol by section and offset, not by address.
        let section = file
            .sections()
            .find(|c| {
                c.kind() == SectionKind::Text
                    && (c.address()..c.address() + c.size()).contains(&s.va)
            })
            .with_context(|| format!("{:#x} ({}) is in no code section", s.va, s.name))?;
        let at = section
            .file_range()
            .map(|(off, _)| off + (s.va - section.address()));
        if at != Some(s.file_offset) {
            bail!(
                "{:#x} ({}) is at file offset {} in {}, not at {:#x}: the address is not from this file",
                s.va,
                s.name,
                at.map_or("none".into(), |a| format!("{a:#x}")),
                bin.display(),
                s.file_offset
            );
        }
        objcopy.arg("--add-symbol").arg(format!(
            "{}={}:{:#x},global,function",
            s.name,
            section.name()?,
            s.va - section.address()
        ));
    }
    util::run(objcopy.arg(bin).arg(copy)).context("objcopy (binutils)")?;
    let mut patched = std::fs::read(copy)?;
    let names: Vec<&str> = symbols.iter().map(|s| s.name.as_str()).collect();
    let n = set_symbol_sizes(&mut patched, &names, 1)?;
    if n != symbols.len() {
        bail!("set the size of {n} symbols, expected {}", symbols.len());
    }
    std::fs::write(copy, patched)?;
    Ok(())
}

/// Set `st_size` of every .symtab symbol named in `names`, in place; how
/// many were set.
fn set_symbol_sizes(data: &mut [u8], names: &[&str], size: u64) -> Result<usize> {
    type Sym = elf::Sym64<Endianness>;
    let (endian, entries) = {
        let file = ElfFile64::<Endianness>::parse(&*data).context("not an ELF64 file")?;
        let endian = file.endian();
        let sections = file.elf_section_table();
        let symtab = sections.symbols(endian, &*data, elf::SHT_SYMTAB)?;
        if symtab.is_empty() {
            bail!("no .symtab");
        }
        let table_at = sections.section(symtab.section())?.sh_offset(endian);
        let entries: Vec<usize> = symtab
            .enumerate()
            .filter(|(_, sym)| {
                sym.name(endian, symtab.strings())
                    .is_ok_and(|n| names.iter().any(|want| want.as_bytes() == n))
            })
            .map(|(i, _)| table_at as usize + i.0 * size_of::<Sym>())
            .collect();
        (endian, entries)
    };
    for &at in &entries {
        let (sym, _) = object::pod::from_bytes_mut::<Sym>(&mut data[at..])
            .map_err(|()| anyhow!("symbol entry at {at:#x} runs past the end of the file"))?;
        sym.st_size.set(endian, size);
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use object::ObjectSymbol as _;

    use super::*;

    /// Round trip on this test binary: the symbols exist afterwards, at the
    /// addresses asked for, with size 1. Needs objcopy (binutils), as the
    /// benchmark does.
    #[test]
    fn adds_sized_symbols() {
        let bin = std::env::current_exe().unwrap();
        let data = std::fs::read(&bin).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let text = file.section_by_name(".text").unwrap();
        let (text_at, _) = text.file_range().unwrap();
        let at = |off: u64| NewSymbol {
            name: format!("lt_test_{off:x}"),
            va: text.address() + off,
            file_offset: text_at + off,
        };
        let want = [at(4), at(0x40)];
        let copy = std::env::temp_dir().join(format!("xtask-elf-test-{}", std::process::id()));
        let wrong = [NewSymbol {
            file_offset: text_at + 5,
            ..at(4)
        }];
        assert!(copy_with_symbols(&bin, &copy, &wrong).is_err());
        copy_with_symbols(&bin, &copy, &want).unwrap();
        let out = std::fs::read(&copy).unwrap();
        let _ = std::fs::remove_file(&copy);
        let file = object::File::parse(&*out).unwrap();
        for w in &want {
            let s = file
                .symbols()
                .find(|s| s.name() == Ok(w.name.as_str()))
                .unwrap();
            assert_eq!((s.address(), s.size()), (w.va, 1), "{}", w.name);
        }
    }
}
