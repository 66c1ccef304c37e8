//! Finding `runtime.allgs` (`leaktrace::runtime::go::allgs_locate`) in
//! real builds of `tests/fixtures/go-spawn` with every installed toolchain:
//! decoding `runtime.allgadd` gives what `.symtab` says in plain and PIE
//! builds, the same section offsets in their `-s -w` twins (found through
//! pclntab only), and in PGO builds; `forEachG` agrees where it is out of
//! line; and in the running program the addresses hold a slice header whose
//! length is `allglen`. Needs Go toolchains; reads /proc/PID/mem of its own
//! children.
use std::path::Path;

use leaktrace::runtime::go::allgs_locate::{AllgsLocation, decode_for_each_g, locate_allgs};
use leaktrace_e2e::{BuildMode, GoBin, GoProgram, build_go, go_toolchains};

const SPAWN: GoProgram<'static> = GoProgram::Module("go-spawn");

/// Read the live process: the decoded addresses must hold a slice
/// header whose length equals allglen.
fn check_live(path: &Path, bin: &GoBin, loc: &AllgsLocation, tag: &str) {
    use std::os::unix::fs::FileExt;
    let mut child = std::process::Command::new(path)
        .arg("-hold=10s")
        .spawn()
        .expect("start Go program");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let pid = child.id();
    let result = (|| -> std::result::Result<(u64, u64, u64, u64), String> {
        // Load bias: the mapping of file offset 0 against the lowest
        // PT_LOAD (zero for non-PIE Go binaries).
        let first_load = bin.first_load_vaddr().ok_or("no PT_LOAD")? & !0xfff;
        let maps =
            std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| e.to_string())?;
        let exe = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
        let start = maps
            .lines()
            .find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 6 && f[2] == "00000000" && Path::new(f[5]) == exe
            })
            .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
            .ok_or("binary not mapped")?;
        let bias = start - first_load;
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(|e| e.to_string())?;
        let word = |va: u64| -> std::result::Result<u64, String> {
            let mut b = [0u8; 8];
            mem.read_exact_at(&mut b, va + bias)
                .map_err(|e| format!("read {va:#x}+{bias:#x}: {e}"))?;
            Ok(u64::from_le_bytes(b))
        };
        let ptr = word(loc.allgs)?;
        let len = word(loc.allgs + 8)?;
        let cap = word(loc.allgs + 16)?;
        let allglen = word(loc.allglen.ok_or("no allglen")?)?;
        Ok((ptr, len, cap, allglen))
    })();
    let _ = child.kill();
    let _ = child.wait();
    let (ptr, len, cap, allglen) = result.unwrap_or_else(|e| panic!("{tag}: {e}"));
    // main + 6 goroutines of the program + the runtime's own.
    assert!(
        ptr != 0 && (7..=cap).contains(&len),
        "{tag}: ptr {ptr:#x} len {len} cap {cap}"
    );
    assert_eq!(allglen, len, "{tag}");
}

#[test]
fn go_builds_allgs() {
    let mut rows = Vec::new();
    for tc in go_toolchains() {
        for (plain_mode, stripped_mode) in [
            (BuildMode::Plain, BuildMode::Stripped),
            (BuildMode::Pie, BuildMode::PieStripped),
        ] {
            let plain_path = build_go(SPAWN, &tc, plain_mode);
            let stripped_path = build_go(SPAWN, &tc, stripped_mode);
            let plain = GoBin::load(&plain_path);
            let stripped = GoBin::load(&stripped_path);
            let tag = format!("{} {}", tc.full, plain_mode.dir_name());

            let sym = locate_allgs(
                &|va, len| plain.code_at(va, len),
                &|n| plain.func(n),
                &|n| plain.data_symbol(n),
            )
            .unwrap();
            assert_eq!(sym.how, "symtab", "{tag}");
            assert!(sym.allglen.is_some(), "{tag}");

            // The decoder on the unstripped build against its own symtab.
            let dec = locate_allgs(
                &|va, len| plain.code_at(va, len),
                &|n| plain.func(n),
                &|_| None,
            )
            .unwrap_or_else(|e| panic!("{tag}: {e:#}"));
            assert_eq!(dec.how, "decoded runtime.allgadd", "{tag}");
            assert_eq!((dec.allgs, dec.allglen), (sym.allgs, sym.allglen), "{tag}");

            // The fallback agrees too where forEachG is out of line.
            let for_each = plain.func("runtime.forEachG").map(|(entry, end)| {
                let code = plain.code_at(entry, (end - entry) as usize).unwrap();
                decode_for_each_g(&code, entry)
            });
            if let Some(fe) = for_each {
                assert_eq!(fe, Some(sym.allgs), "{tag} forEachG");
            }

            // The stripped build, found through pclntab only.
            let stag = format!("{} {}", tc.full, stripped_mode.dir_name());
            let sdec = locate_allgs(
                &|va, len| stripped.code_at(va, len),
                &|n| stripped.func(n),
                &|n| stripped.data_symbol(n),
            )
            .unwrap_or_else(|e| panic!("{stag}: {e:#}"));
            assert_eq!(sdec.how, "decoded runtime.allgadd", "{stag}");
            // `-s -w` records itself in .go.buildinfo, which shifts
            // every later section by a few bytes: compare the position
            // inside the section with the unstripped build's symtab.
            let place = |bin: &GoBin, va: Option<u64>| va.and_then(|v| bin.section_offset(v));
            assert_eq!(
                place(&stripped, Some(sdec.allgs)),
                place(&plain, Some(sym.allgs)),
                "{stag} allgs vs {tag} symtab"
            );
            assert_eq!(
                place(&stripped, sdec.allglen),
                place(&plain, sym.allglen),
                "{stag} allglen vs {tag} symtab"
            );
            let (sec, off) = place(&plain, Some(sym.allgs)).unwrap();
            let (lsec, loff) = place(&plain, sym.allglen).unwrap();

            check_live(&plain_path, &plain, &dec, &tag);
            check_live(&stripped_path, &stripped, &sdec, &stag);
            rows.push(format!(
                "| {:<9} | {:<12} | symtab allgs {:#x} ({sec}+{off:#x}) allglen {:#x} ({lsec}+{loff:#x}) | decoded unstripped: equal | {:<12}: {} allgs {:#x} allglen {:#x}, same section offsets | forEachG {} | live ok |",
                tc.full,
                plain_mode.dir_name(),
                sym.allgs,
                sym.allglen.unwrap_or(0),
                stripped_mode.dir_name(),
                sdec.how,
                sdec.allgs,
                sdec.allglen.unwrap_or(0),
                match for_each {
                    Some(_) => "equal",
                    None => "inlined",
                },
            ));
        }
    }
    // PGO recompiles the runtime with a profile; allgadd is cold, but
    // check that the decode still matches.
    for tc in go_toolchains().into_iter().filter(|t| t.minor() >= 21) {
        let path = build_go(SPAWN, &tc, BuildMode::Pgo);
        let bin = GoBin::load(&path);
        let tag = format!("{} pgo", tc.full);
        let dec = locate_allgs(&|va, len| bin.code_at(va, len), &|n| bin.func(n), &|_| None)
            .unwrap_or_else(|e| panic!("{tag}: {e:#}"));
        let sym = (
            bin.data_symbol("runtime.allgs"),
            bin.data_symbol("runtime.allglen"),
        );
        assert_eq!((Some(dec.allgs), dec.allglen), sym, "{tag}");
        rows.push(format!(
            "| {:<9} | pgo          | decoded = symtab |",
            tc.full
        ));
    }
    println!("\nallgs per Go build:");
    for r in &rows {
        println!("{r}");
    }
}
