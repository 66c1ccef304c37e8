//! The Go symbolizer and binary inspection (`leaktrace::runtime::go`)
//! against the Go runtime itself, per Go release (each skipped with a
//! message when not installed).
//!
//! `tests/fixtures/go-groundtruth` is built with the release in plain,
//! `-s -w`, PIE and cgo/external-linker builds and run; it prints what
//! `runtime.CallersFrames`, `runtime.FuncForPC` and `reflect` say about its
//! own code. Each answer (frames with inlining, function entries, symbols,
//! version, `runtime.g` layout, waitReason strings, warnings) is compared
//! with ours for the same binary, and damaged copies must never panic. An
//! arm64 cross-build must be refused by name while its symbols still read.
//! Needs Go toolchains, not root.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use leaktrace::runtime::go::binary::{GoBinary, InspectError};
use leaktrace::runtime::go::layout::{GLayout, LayoutSource};
use leaktrace::runtime::go::pclntab::GoSymbols;
use leaktrace::runtime::go::version::GoVersion;
use leaktrace::runtime::go::wait_reason::{WaitReasonSource, WaitReasons};
use leaktrace::symbols::Frame;
use leaktrace::target::elf::ElfFile;
use leaktrace_e2e::toolchain::find;
use leaktrace_e2e::{BuildMode, GoProgram, GoToolchain, try_build_go};

const GROUNDTRUTH: GoProgram<'static> = GoProgram::Module("go-groundtruth");

/// Builds the program (cached) and runs it; returns the binary and its
/// output (none for the arm64 build, which is never run), or why this mode
/// cannot be built here.
fn build_and_run(go: &GoToolchain, mode: BuildMode) -> Result<(PathBuf, String), String> {
    let bin = try_build_go(GROUNDTRUTH, go, mode).map_err(|e| format!("{e:#}"))?;
    if mode == BuildMode::Arm64 {
        return Ok((bin, String::new()));
    }
    let run = Command::new(&bin)
        .output()
        .map_err(|e| format!("running the test program: {e}"))?;
    if !run.status.success() {
        return Err(format!(
            "test program failed: {}",
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    let out = String::from_utf8(run.stdout).map_err(|e| e.to_string())?;
    Ok((bin, out))
}

struct RtFrame {
    pc: u64,
    entry: u64,
    physical: bool,
    frame: Frame,
}

#[derive(Default)]
struct Output {
    version: String,
    stacks: Vec<(String, Vec<RtFrame>)>,
    /// (pc, entry, innermost frame as FuncForPC/FileLine report it)
    pcs: Vec<(u64, u64, Frame)>,
    syms: Vec<(String, u64)>,
    /// (start, perms, file offset)
    maps: Vec<(u64, String, u64)>,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
}

fn parse_output(text: &str) -> Output {
    let mut o = Output::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "VERSION" => o.version = f[1].to_owned(),
            "STACK" => o.stacks.push((f[1].to_owned(), Vec::new())),
            "F" => o.stacks.last_mut().unwrap().1.push(RtFrame {
                pc: hex(f[1]),
                entry: hex(f[2]),
                physical: f[3] == "true",
                frame: Frame {
                    line: f[4].parse().unwrap(),
                    file: f[5].into(),
                    function: f[6].into(),
                },
            }),
            "PC" => o.pcs.push((
                hex(f[1]),
                hex(f[2]),
                Frame {
                    line: f[3].parse().unwrap(),
                    file: f[4].into(),
                    function: f[5].into(),
                },
            )),
            "SYM" => o.syms.push((f[1].to_owned(), hex(f[2]))),
            "MAP" => {
                let start = hex(f[1].split('-').next().unwrap());
                o.maps.push((start, f[2].to_owned(), hex(f[3])));
            }
            _ => {}
        }
    }
    o
}

/// Load bias from the program's own /proc/self/maps: the mapping of file
/// offset 0 is the first PT_LOAD.
fn bias(o: &Output, elf: &ElfFile) -> u64 {
    let (start, _, _) = o
        .maps
        .iter()
        .find(|m| m.2 == 0)
        .expect("no mapping at offset 0");
    let seg = elf
        .segments()
        .iter()
        .find(|s| s.offset == 0)
        .expect("no PT_LOAD at offset 0");
    start.wrapping_sub(seg.vaddr & !0xfff)
}

/// Splits a `CallersFrames` listing into physical frames: the inlined
/// frames of one physical frame share its entry and end with the frame
/// that has a `*Func`.
fn groups(frames: &[RtFrame]) -> Vec<&[RtFrame]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..frames.len() {
        let last =
            i + 1 == frames.len() || frames[i].physical || frames[i + 1].entry != frames[i].entry;
        if last {
            out.push(&frames[start..=i]);
            start = i + 1;
        }
    }
    out
}

fn check_version(release: &str) {
    let Some(go) = find(release) else {
        eprintln!("SKIP go{release}: toolchain not installed");
        return;
    };
    let version = &go.full;
    let mut failures: Vec<String> = Vec::new();
    let mut built = 0;
    for mode in [
        BuildMode::Plain,
        BuildMode::Stripped,
        BuildMode::Pie,
        BuildMode::ExtLink,
    ] {
        let (path, text) = match build_and_run(&go, mode) {
            Ok(x) => x,
            Err(e) if mode == BuildMode::ExtLink => {
                eprintln!("SKIP {version} {}: {e}", mode.dir_name());
                continue;
            }
            Err(e) => panic!("{version} {}: {e}", mode.dir_name()),
        };
        built += 1;
        let mut fail = |msg: String| failures.push(format!("{version} {}: {msg}", mode.dir_name()));
        let o = parse_output(&text);
        let bin = match GoBinary::open(&path) {
            Ok(b) => b,
            Err(e) => {
                fail(format!("open failed: {e}"));
                continue;
            }
        };
        let stats = check_binary(&bin, mode, &o, &mut fail);
        eprintln!(
            "{version} {:8}: {} ({} stacks, {} frames, {} FuncForPC pcs, {} symbols, layout from {}, text from {:?})",
            mode.dir_name(),
            bin.version.raw,
            stats.0,
            stats.1,
            stats.2,
            stats.3,
            bin.layout_source,
            bin.symbols.text().1
        );
        if mode != BuildMode::ExtLink {
            check_corruption(&path, &mut fail);
        }
    }
    assert!(built >= 3, "{version}: fewer than three build modes worked");
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(40);
        panic!(
            "{n} mismatches with the Go runtime:\n{}",
            failures.join("\n")
        );
    }
}

fn check_binary(
    bin: &GoBinary,
    mode: BuildMode,
    o: &Output,
    fail: &mut dyn FnMut(String),
) -> (usize, usize, usize, usize) {
    if bin.version.raw != o.version {
        fail(format!(
            "version {} but runtime.Version() = {}",
            bin.version.raw, o.version
        ));
    }
    if bin.main_module.as_deref() != Some("example.com/leaktrace-gt") {
        fail(format!("main module {:?}", bin.main_module));
    }
    let (dwarf, symtab, pie) = match mode {
        BuildMode::Plain | BuildMode::ExtLink | BuildMode::Arm64 => (true, true, false),
        BuildMode::Stripped => (false, false, false),
        BuildMode::Pie => (true, true, true),
        other => panic!("{other:?} builds are not checked here"),
    };
    if (bin.has_dwarf, bin.has_symtab, bin.is_pie) != (dwarf, symtab, pie) {
        fail(format!(
            "has_dwarf/has_symtab/is_pie = {}/{}/{}",
            bin.has_dwarf, bin.has_symtab, bin.is_pie
        ));
    }
    let expected_source = if dwarf { "dwarf" } else { "pclntab" };
    if bin.symbol_source() != expected_source {
        fail(format!("symbol_source {}", bin.symbol_source()));
    }

    // Layout: DWARF must agree with the compiled-in table.
    let table = GLayout::for_version(&bin.version).unwrap();
    if dwarf {
        if bin.layout_source != LayoutSource::Dwarf {
            fail(format!("layout from {} despite DWARF", bin.layout_source));
        }
        for (field, d, t) in bin.layout.differences(&table) {
            fail(format!("DWARF {field} = {d}, table says {t}"));
        }
    } else {
        if bin.layout_source != LayoutSource::VersionTable || bin.layout != table {
            fail("stripped build not using the version table".into());
        }
        let key = bin.version.minor_key();
        let want = format!(
            "was built with -ldflags=-s -w: no DWARF; using pclntab for names and lines, runtime.g offsets from the {key} table"
        );
        if !bin.warnings().iter().any(|w| w.contains(&want)) {
            fail(format!("missing -s -w warning in {:?}", bin.warnings()));
        }
    }
    if mode != BuildMode::Stripped {
        let unexpected: Vec<String> = bin.warnings();
        if !unexpected.is_empty() {
            fail(format!("unexpected warnings {unexpected:?}"));
        }
    }

    // waitReason strings: the binary's own runtime.waitReasonStrings.
    let table_reasons = WaitReasons::for_version(&bin.version).unwrap();
    if symtab {
        match WaitReasons::from_binary(&bin.elf) {
            Some(Ok(own)) => {
                for (v, ours, theirs) in table_reasons.differences(&own) {
                    fail(format!("waitReason {v}: table {ours:?}, binary {theirs:?}"));
                }
                if bin.wait_reasons.source() != WaitReasonSource::Binary {
                    fail("wait reasons not read from the binary".into());
                }
            }
            other => fail(format!("runtime.waitReasonStrings unreadable: {other:?}")),
        }
    } else if bin.wait_reasons != table_reasons {
        fail("stripped build not using the waitReason table".into());
    }

    let syms = &bin.symbols;
    if !syms.has_inline_info() {
        fail(format!("no inline info: {:?}", syms.notes()));
    }
    let b = bias(o, &bin.elf);
    if !pie && b != 0 {
        fail(format!("non-PIE with load bias {b:#x}"));
    }

    let mut nframes = 0;
    for (label, frames) in &o.stacks {
        for group in groups(frames) {
            nframes += group.len();
            let want: Vec<Frame> = group.iter().map(|f| f.frame.clone()).collect();
            let va = group[0].pc.wrapping_sub(b);
            let got = syms.frames(va);
            if got != want {
                fail(format!(
                    "stack {label}: frames({va:#x}) =\n    {got:?}\n  runtime says\n    {want:?}"
                ));
            }
            match syms.function_at(va) {
                Some(f) if f.entry.wrapping_add(b) == group[0].entry => {}
                other => fail(format!(
                    "stack {label}: function_at({va:#x}) = {other:?}, runtime entry {:#x}",
                    group[0].entry.wrapping_sub(b)
                )),
            }
        }
    }

    for (pc, entry, want) in &o.pcs {
        let va = pc.wrapping_sub(b);
        let got = syms.innermost_frame(va);
        if got.as_ref() != Some(want) {
            fail(format!(
                "FuncForPC({va:#x}): ours {got:?}, runtime {want:?}"
            ));
        }
        match syms.function_at(va) {
            Some(f) if f.entry.wrapping_add(b) == *entry && va < f.end => {}
            other => fail(format!(
                "function_at({va:#x}) = {other:?}, runtime entry {:#x}",
                entry.wrapping_sub(b)
            )),
        }
    }

    for (name, addr) in &o.syms {
        match syms.function(name) {
            Some(f) if f.entry.wrapping_add(b) == *addr => {}
            other => fail(format!(
                "function({name}) = {other:?}, runtime {:#x}",
                addr.wrapping_sub(b)
            )),
        }
        if symtab && bin.elf.symbol(name).map(|v| v.wrapping_add(b)) != Some(*addr) {
            fail(format!("elf.symbol({name}) = {:?}", bin.elf.symbol(name)));
        }
    }

    // Every function round-trips through both lookups, and entries map to
    // file offsets inside executable segments (what uprobes need).
    let mut by_name: HashMap<String, u64> = HashMap::new();
    for f in syms.functions() {
        if f.end <= f.entry {
            fail(format!(
                "{} has end {:#x} <= entry {:#x}",
                f.name, f.end, f.entry
            ));
        }
        if syms.function_at(f.entry).as_ref() != Some(&f) {
            fail(format!("function_at(entry of {}) differs", f.name));
        }
        by_name.entry(f.name.clone()).or_insert(f.entry);
        if bin.elf.va_to_file_offset(f.entry).is_none() {
            fail(format!(
                "{} entry {:#x} has no file offset",
                f.name, f.entry
            ));
        }
    }
    for probe in [
        "runtime.newproc1",
        "runtime.park_m",
        "runtime.goexit0",
        "runtime.gogo",
        "runtime.casgstatus",
    ] {
        match (syms.function(probe), by_name.get(probe)) {
            (Some(f), Some(&e)) if f.entry == e => {
                if symtab {
                    let sym = bin
                        .elf
                        .symbol(probe)
                        .or_else(|| bin.elf.symbol(&format!("{probe}.abi0")));
                    if sym != Some(f.entry) {
                        fail(format!("{probe}: pclntab {:#x}, .symtab {sym:?}", f.entry));
                    }
                }
            }
            other => fail(format!("{probe}: {other:?}")),
        }
    }
    // Wrappers are hidden, as in Go's tracebacks.
    if let Some(w) = syms.function("main.(*T).Val")
        && syms
            .frames(w.entry)
            .iter()
            .any(|f| &*f.function == "main.(*T).Val")
    {
        fail("the autogenerated wrapper main.(*T).Val is not hidden by frames()".into());
    }
    match syms.function("main.(*T).Val") {
        Some(w) => {
            if syms.try_frames(w.entry).is_none()
                || syms.innermost_frame(w.entry).map(|f| f.function).as_deref()
                    != Some("main.(*T).Val")
            {
                fail("wrapper main.(*T).Val: try_frames/innermost_frame wrong".into());
            }
        }
        None => fail("no main.(*T).Val wrapper in the binary".into()),
    }
    if syms.try_frames(0).is_some() || syms.function_at(u64::MAX).is_some() {
        fail("non-Go PCs resolve".into());
    }
    (o.stacks.len(), nframes, o.pcs.len(), o.syms.len())
}

/// Damaged copies of a real Go binary must produce errors or degraded
/// answers, never a panic.
fn check_corruption(path: &Path, fail: &mut dyn FnMut(String)) {
    let data = std::fs::read(path).unwrap();
    let Ok(elf) = ElfFile::parse(Arc::from(data.clone())) else {
        fail("cannot parse the pristine binary".into());
        return;
    };
    let mut hot: Vec<(usize, usize)> = Vec::new();
    for name in [
        ".gopclntab",
        ".data.rel.ro.gopclntab",
        ".go.module",
        ".noptrdata",
        ".go.buildinfo",
    ] {
        if let Some(s) = elf.section(name) {
            hot.push((s.offset as usize, (s.size as usize).min(4096)));
        }
    }
    hot.push((0, 64));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ data.len() as u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let probe_pcs: Vec<u64> = elf
        .section(".text")
        .map(|t| {
            (0..200)
                .map(|i| t.addr + i * (t.size / 200).max(1))
                .collect()
        })
        .unwrap_or_default();
    for round in 0..40 {
        let mut copy = data.clone();
        if round < 10 {
            let cut = (rand() as usize) % copy.len();
            copy.truncate(cut);
        } else {
            let (start, len) = hot[(rand() as usize) % hot.len()];
            for _ in 0..(1 + rand() % 8) {
                let at = start + (rand() as usize) % len.max(1);
                if let Some(b) = copy.get_mut(at) {
                    *b = rand() as u8;
                }
            }
        }
        let res = std::panic::catch_unwind(|| {
            if let Ok(bin) = GoBinary::from_bytes(Path::new("corrupt"), Arc::from(copy)) {
                for &pc in &probe_pcs {
                    let _ = bin.symbols.frames(pc);
                    let _ = bin.symbols.function_at(pc);
                }
                let _ = bin.symbols.function("runtime.newproc1");
            }
        });
        if res.is_err() {
            fail(format!("panic on corrupted input (round {round})"));
        }
    }
}

/// arm64 shares the pclntab and struct handling but not the eBPF side:
/// `open` must refuse it by name, while the symbolizer already reads it.
#[test]
fn arm64_is_refused_with_a_reason() {
    let Some(go) = find("1.27") else {
        eprintln!("SKIP arm64: go1.27 not installed");
        return;
    };
    let (path, _) = build_and_run(&go, BuildMode::Arm64).unwrap();
    let err = GoBinary::open(&path).unwrap_err();
    assert!(matches!(err, InspectError::UnsupportedArch(_)), "{err}");
    assert!(err.to_string().contains("AArch64 (arm64)"), "{err}");
    assert!(err.to_string().contains("linux/amd64"), "{err}");

    let elf = ElfFile::open(&path).unwrap();
    let version = GoVersion::parse(&go.full).unwrap();
    let syms = GoSymbols::new(&elf, &version).unwrap();
    assert!(syms.has_inline_info(), "{:?}", syms.notes());
    for name in ["runtime.newproc1", "runtime.park_m", "main.chain"] {
        let f = syms.function(name).unwrap();
        assert_eq!(elf.symbol(name), Some(f.entry), "{name}");
        assert_eq!(f.entry % 4, 0);
    }
    // The inline chain resolves with arm64's 4-byte PC quantum too.
    let chain = syms.function("main.chain").unwrap();
    let names: Vec<Vec<String>> = (chain.entry..chain.end)
        .step_by(4)
        .map(|pc| {
            syms.frames(pc)
                .into_iter()
                .map(|f| f.function.to_string())
                .collect()
        })
        .collect();
    let want = ["main.inlB", "main.inlA", "main.chain"];
    assert!(names.iter().any(|n| n == &want), "{names:?}");
}

#[test]
fn go1_19() {
    check_version("1.19");
}

#[test]
fn go1_21() {
    check_version("1.21");
}

#[test]
fn go1_22() {
    check_version("1.22");
}

#[test]
fn go1_23() {
    check_version("1.23");
}

#[test]
fn go1_24() {
    check_version("1.24");
}

#[test]
fn go1_25() {
    check_version("1.25");
}

#[test]
fn go1_26() {
    check_version("1.26");
}

#[test]
fn go1_27() {
    check_version("1.27");
}
