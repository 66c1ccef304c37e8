//! A second opinion on a built Go binary, independent of leaktrace's own
//! reader: functions from `.symtab` when it is there and from pclntab (the
//! `gobin` crate) otherwise, data symbols, and code bytes by address.

use std::collections::HashMap;
use std::path::Path;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

/// A built Go binary, read once.
pub struct GoBin {
    pub data: Vec<u8>,
    /// (va, size, file offset) of sections with file contents.
    sections: Vec<(u64, u64, u64)>,
    symtab_funcs: HashMap<String, (u64, u64)>,
    data_syms: HashMap<String, u64>,
    pcln_funcs: HashMap<String, (u64, u64)>,
}

impl GoBin {
    pub fn load(path: &Path) -> GoBin {
        let data = std::fs::read(path).expect("read Go binary");
        let (sections, symtab_funcs, data_syms) = {
            let file = object::File::parse(&*data).expect("parse ELF");
            let sections = file
                .sections()
                .filter_map(|s| {
                    let (off, size) = s.file_range()?;
                    (s.address() != 0).then_some((s.address(), size, off))
                })
                .collect();
            let mut funcs = HashMap::new();
            let mut datas = HashMap::new();
            for sym in file.symbols() {
                let Ok(name) = sym.name() else { continue };
                match sym.kind() {
                    object::SymbolKind::Text if sym.size() > 0 => {
                        funcs.insert(
                            name.to_string(),
                            (sym.address(), sym.address() + sym.size()),
                        );
                    }
                    object::SymbolKind::Data => {
                        datas.insert(name.to_string(), sym.address());
                    }
                    _ => {}
                }
            }
            (sections, funcs, datas)
        };
        let pcln_funcs = {
            let gb = gobin::GoBinary::parse(&data).expect("gobin parses the binary");
            let text = gb.text_va().expect("runtime.text");
            let mut entries: Vec<(u64, &str)> = gb
                .functions()
                .map(|f| (text + u64::from(f.entry_offset), f.name))
                .collect();
            entries.sort_unstable();
            let mut map = HashMap::new();
            for (i, &(entry, name)) in entries.iter().enumerate() {
                let end = entries
                    .get(i + 1)
                    .map(|e| e.0)
                    .or_else(|| gb.etext_va())
                    .unwrap_or(entry + 0x1000);
                map.entry(name.to_string()).or_insert((entry, end));
            }
            map
        };
        GoBin {
            data,
            sections,
            symtab_funcs,
            data_syms,
            pcln_funcs,
        }
    }

    pub fn has_symtab(&self) -> bool {
        !self.symtab_funcs.is_empty()
    }

    pub fn code_at(&self, va: u64, len: usize) -> Option<Vec<u8>> {
        let &(sva, size, off) = self
            .sections
            .iter()
            .find(|&&(sva, size, _)| va >= sva && va < sva + size)?;
        let end = va.checked_add(len as u64)?;
        if end > sva + size {
            return None;
        }
        let start = (off + (va - sva)) as usize;
        self.data.get(start..start + len).map(<[u8]>::to_vec)
    }

    /// `(entry, end)`: `.symtab` in unstripped builds, pclntab otherwise.
    pub fn func(&self, name: &str) -> Option<(u64, u64)> {
        if self.has_symtab() {
            self.symtab_funcs.get(name).copied()
        } else {
            self.pcln_funcs.get(name).copied()
        }
    }

    /// `(entry, end)` from pclntab, whether or not `.symtab` is there.
    pub fn pcln_func(&self, name: &str) -> Option<(u64, u64)> {
        self.pcln_funcs.get(name).copied()
    }

    pub fn data_symbol(&self, name: &str) -> Option<u64> {
        self.data_syms.get(name).copied()
    }

    /// (section name, offset in it) of a VA: comparable across builds
    /// whose sections shifted (`-s -w` lengthens .go.buildinfo).
    pub fn section_offset(&self, va: u64) -> Option<(String, u64)> {
        let file = object::File::parse(&*self.data).ok()?;
        file.sections()
            .filter(|s| s.address() != 0)
            .find(|s| va >= s.address() && va < s.address() + s.size())
            .and_then(|s| Some((s.name().ok()?.to_string(), va - s.address())))
    }

    /// Lowest `PT_LOAD` virtual address.
    pub fn first_load_vaddr(&self) -> Option<u64> {
        let file = object::File::parse(&*self.data).ok()?;
        file.segments().map(|s| s.address()).min()
    }
}
