//! A Rust binary: tokio detection, task vtables and their relocations, the
//! probe plan's instruction patterns, async fn await points from DWARF.
#![no_main]

use std::sync::Arc;

use leaktrace::{
    runtime::tokio::{await_points::AwaitDecoder, binary::detect, probe_points::plan, vtables::find_vtables},
    target::elf::ElfFile,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(elf) = ElfFile::parse(Arc::from(data)) else {
        return;
    };
    let _ = detect(&elf);
    let vtables = find_vtables(&elf);
    let _ = plan(&elf, &vtables, true);
    let _ = AwaitDecoder::load(&elf, &vtables);
});
