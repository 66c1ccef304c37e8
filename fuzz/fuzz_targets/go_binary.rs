//! A Go binary leaktrace is asked to trace: ELF headers and sections,
//! `.gopclntab`, `.go.buildinfo`, DWARF (`runtime.g`, the channel and heap
//! types), `waitReasonStrings`. Any input: an error or a binary, never a
//! panic, an endless loop or an allocation the input's size does not bound.
#![no_main]

use std::{path::Path, sync::Arc};

use leaktrace::runtime::go::{binary::GoBinary, heap::HeapLayout, layout::ChanLayout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data: Arc<[u8]> = Arc::from(data);
    let Ok(bin) = GoBinary::from_bytes(Path::new("fuzzed"), data) else {
        return;
    };
    let _ = bin.warnings();
    let _ = HeapLayout::from_binary(&bin);
    let _ = ChanLayout::from_dwarf(&bin.elf);
});
