//! Inputs the fuzz targets (`fuzz/`, `cargo xtask fuzz`) once crashed on,
//! replayed through the same parsers on the normal toolchain: each must
//! now give an error or a result, never a panic.
use std::{path::Path, sync::Arc};

use leaktrace::{
    runtime::{
        go::binary::GoBinary,
        tokio::{
            await_points::AwaitDecoder, binary::detect, probe_points::plan, vtables::find_vtables,
        },
    },
    target::elf::ElfFile,
};

/// The fuzz targets' bodies (`fuzz/harness.rs`), the same code libFuzzer
/// runs.
#[path = "../../fuzz/harness.rs"]
mod harness;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            (p.display().to_string(), std::fs::read(&p).expect("read"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn rust_binary_regressions() {
    let all = inputs("rust_binary");
    assert!(!all.is_empty(), "no regression inputs found");
    for (name, data) in all {
        eprintln!("{name}");
        let Ok(elf) = ElfFile::parse(Arc::from(data)) else {
            continue;
        };
        let _ = detect(&elf);
        let vtables = find_vtables(&elf);
        let _ = plan(&elf, &vtables, true);
        let _ = AwaitDecoder::load(&elf, &vtables);
    }
}

#[test]
fn go_binary_regressions() {
    for (name, data) in inputs("go_binary") {
        eprintln!("{name}");
        let _ = GoBinary::from_bytes(Path::new("fuzzed"), Arc::from(data));
    }
}

/// The go_binary input whose compressed section claimed terabytes: the
/// claim is refused before anything is allocated (under ASan the
/// allocation itself was the crash; here it would only fail or overcommit,
/// so the refusal is what is checked).
#[test]
fn compressed_size_claims_are_refused() {
    let (_, data) = inputs("go_binary")
        .into_iter()
        .find(|(n, _)| n.ends_with("/compressed-size-claim"))
        .expect("fuzz/regressions/go_binary/compressed-size-claim");
    let elf = ElfFile::parse(Arc::from(data)).expect("parses as ELF");
    let names: Vec<String> = elf.sections().iter().map(|s| s.name.clone()).collect();
    let refused: Vec<String> = names
        .iter()
        .filter_map(|n| elf.uncompressed_section(n).err())
        .map(|e| e.to_string())
        .filter(|e| e.contains("bytes uncompressed from"))
        .collect();
    assert!(!refused.is_empty(), "sections {names:?}: no claim refused");
}

/// One fuzz target's body.
type Harness = fn(&[u8]);

/// Every input under `fuzz/regressions/<target>/` of the targets that
/// share `fuzz/harness.rs`, through that target's body.
#[test]
fn harness_regressions() {
    let targets: [(&str, Harness); 5] = [
        ("proc_files", harness::proc_files),
        ("tracefs_format", harness::tracefs_format),
        ("eh_frame_unwind", harness::eh_frame_unwind),
        ("heap_cells", harness::heap_cells),
        ("await_points", harness::await_points),
    ];
    for (target, run) in targets {
        for (name, data) in inputs(target) {
            eprintln!("{name}");
            run(&data);
        }
    }
}
