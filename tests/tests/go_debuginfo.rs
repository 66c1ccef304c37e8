//! Go binaries stripped of DWARF take their `runtime.g` layout from the
//! separate debug file, as tokio binaries take their names: a plain build
//! split with binutils (`objcopy --only-keep-debug`, `--strip-debug`,
//! `--add-gnu-debuglink`; the Go linker writes no GNU build-id, so the
//! debuglink's CRC is what ties the two) reads its layout from DWARF again,
//! and the same offsets as the unsplit build.
mod common;

use std::path::PathBuf;

use common::*;
use leaktrace::{
    runtime::go::{binary::GoBinary, layout::LayoutSource},
    symbols::debuginfo::Search,
};
use leaktrace_e2e::BuildMode;

#[test]
fn stripped_go_binary_takes_its_layout_from_the_debug_file() {
    let go = one_go("1.26");
    let plain = build("chan_send", &go, BuildMode::Plain);
    let dir = tempfile_path("go-debuginfo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&plain, dir.join("full")).unwrap();
    objcopy(&["--only-keep-debug", "full", "app.debug"], &dir);
    objcopy(&["--strip-debug", "full", "app"], &dir);
    objcopy(&["--add-gnu-debuglink=app.debug", "app"], &dir);
    let none = Search::new(vec![], dir.join("none"), None);

    let full = GoBinary::open(&dir.join("full")).expect("plain build");
    assert_eq!(full.layout_source, LayoutSource::Dwarf);

    // Beside it, through .gnu_debuglink (CRC checked).
    let linked = GoBinary::open_with(&dir.join("app"), &none).expect("stripped build");
    assert_eq!(
        linked.layout_source,
        LayoutSource::Dwarf,
        "{:?}",
        linked.layout
    );
    assert_eq!(linked.layout, full.layout);

    // Without it: the version table, as before.
    std::fs::rename(dir.join("app.debug"), dir.join("moved.debug")).unwrap();
    let alone = GoBinary::open_with(&dir.join("app"), &none).expect("stripped build");
    assert_eq!(alone.layout_source, LayoutSource::VersionTable);

    // Given with --debuginfo.
    let given = Search::new(vec![dir.join("moved.debug")], dir.join("none"), None);
    let with = GoBinary::open_with(&dir.join("app"), &given).expect("stripped build");
    assert_eq!(with.layout_source, LayoutSource::Dwarf);
    println!(
        "{}: layout from {} with its debug file, {} without",
        go.full, linked.layout_source, alone.layout_source
    );
    let _ = std::fs::remove_dir_all::<PathBuf>(dir);
}
