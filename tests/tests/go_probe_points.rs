//! The Go probe plan (`leaktrace::runtime::go::probe_points`) on real
//! builds of `tests/fixtures/go-spawn`, with every installed toolchain in
//! plain, `-s -w`, PIE and PIE `-s -w` builds (and PGO from Go 1.21 on):
//! `runtime.park_m` and `runtime.goexit0` are probed right after Go's
//! stack-check prologue, the spawn probes sit exactly on newproc1's calls
//! to casgstatus, pclntab agrees with `.symtab`, and newg's gopc, startpc
//! and parentGoid are stored before the spawn point. Checked against an
//! independent disassembly ([`leaktrace_e2e::GoBin`] and iced-x86). Needs
//! Go toolchains, not root.
use iced_x86::{Mnemonic, OpAccess, Register};
use leaktrace::runtime::go::probe_points::{
    G_DEAD, SpawnProbe, decode_all, find_calls_to, mnemonic_name, plan_probes,
};
use leaktrace_e2e::{BuildMode, GoBin, GoProgram, go_toolchains, try_build_go};

const SPAWN: GoProgram<'static> = GoProgram::Module("go-spawn");

/// `runtime.g` field offsets, from research/go-runtime-tables.json:
/// (gopc, startpc, parentGoid, goid).
fn g_offsets(minor: u32) -> Option<(u64, u64, Option<u64>, u64)> {
    Some(match minor {
        19 | 20 => (296, 312, None, 152),
        21 | 22 => (280, 296, Some(272), 152),
        23 | 24 => (288, 304, Some(280), 160),
        25 => (280, 296, Some(272), 152),
        26 | 27 => (288, 304, Some(280), 152),
        _ => return None,
    })
}

/// Addresses of 8-byte stores `MOVQ reg, off(base)` into newproc1's
/// locals-free registers (not SP/BP) with the given displacement.
fn stores_at_offset(code: &[u8], entry: u64, off: u64) -> Vec<u64> {
    let mut factory = iced_x86::InstructionInfoFactory::new();
    decode_all(code, entry)
        .iter()
        .filter(|i| {
            i.memory_displacement64() == off
                && !matches!(
                    i.memory_base(),
                    Register::RSP | Register::RBP | Register::RIP | Register::None
                )
                && factory.info(i).used_memory().iter().any(|m| {
                    m.displacement() == off
                        && matches!(m.access(), OpAccess::Write | OpAccess::ReadWrite)
                })
        })
        .map(|i| i.ip())
        .collect()
}

/// Length of Go's stack-check sequence before the first branch, checking
/// that it is exactly one of the prologues the compiler emits.
fn stack_check(code: &[u8], entry: u64) -> Option<(u64, String)> {
    let instrs = decode_all(&code[..code.len().min(64)], entry);
    let mut shape = Vec::new();
    for i in instrs.iter().take(5) {
        let name = mnemonic_name(i.mnemonic());
        if i.is_jcc_short_or_near() {
            shape.push(name);
            let s = shape.join(";");
            let known = matches!(
                s.as_str(),
                "CMP;JBE" | "LEA;CMP;JBE" | "MOV;SUB;JB" | "MOV;SUB;JAE"
            );
            return known.then(|| (i.ip() - entry, s));
        }
        let guard_cmp = i.mnemonic() == Mnemonic::Cmp
            && i.memory_base() == Register::R14
            && i.memory_displacement64() == 0x10;
        let r12_setup = matches!(i.mnemonic(), Mnemonic::Lea | Mnemonic::Mov | Mnemonic::Sub)
            && i.op0_register() == Register::R12;
        if !(guard_cmp || r12_setup) {
            return None;
        }
        shape.push(name);
    }
    None
}

#[test]
fn go_builds_probe_plan() {
    let mut rows = Vec::new();
    for tc in go_toolchains() {
        let m = tc.minor();
        for mode in [
            BuildMode::Plain,
            BuildMode::Stripped,
            BuildMode::Pie,
            BuildMode::PieStripped,
        ] {
            let path =
                try_build_go(SPAWN, &tc, mode).unwrap_or_else(|e| panic!("{}: {e:#}", tc.full));
            let bin = GoBin::load(&path);
            assert_eq!(
                bin.has_symtab(),
                matches!(mode, BuildMode::Plain | BuildMode::Pie),
                "{path:?}"
            );
            let tag = format!("{} {}", tc.full, mode.dir_name());
            if bin.has_symtab() {
                // pclntab (the stripped-binary route) agrees with .symtab.
                for f in ["runtime.park_m", "runtime.goexit0", "runtime.newproc1"] {
                    assert_eq!(
                        bin.func(f).map(|x| x.0),
                        bin.pcln_func(f).map(|x| x.0),
                        "{tag} {f}"
                    );
                }
            }
            let plan = plan_probes(&|va, len| bin.code_at(va, len), &|n| bin.func(n))
                .unwrap_or_else(|e| panic!("{tag}: {e:#}"));

            let mut cells = Vec::new();
            for (name, point) in [
                ("runtime.park_m", &plan.park),
                ("runtime.goexit0", &plan.exit),
            ] {
                let (entry, end) = bin.func(name).unwrap();
                let code = bin.code_at(entry, (end - entry) as usize).unwrap();
                let (len, shape) = stack_check(&code, entry)
                    .unwrap_or_else(|| panic!("{tag}: {name} has no stack check prologue"));
                assert!(point.emulated, "{tag}: {point:?}");
                assert_eq!(point.va - entry, len, "{tag}: {point:?}");
                assert!(point.what.starts_with(name), "{tag}: {point:?}");
                cells.push(format!("+{len} {shape}"));
            }

            assert_eq!(plan.spawn_kind, SpawnProbe::CasgstatusCall, "{tag}");
            let (np, np_end) = bin.func("runtime.newproc1").unwrap();
            let np_code = bin.code_at(np, (np_end - np) as usize).unwrap();
            let casg = bin.func("runtime.casgstatus").unwrap().0;
            let sites = find_calls_to(&np_code, np, casg);
            assert_eq!(
                plan.spawn.iter().map(|p| p.va).collect::<Vec<_>>(),
                sites.iter().map(|s| s.va).collect::<Vec<_>>(),
                "{tag}"
            );
            assert!(plan.spawn.iter().all(|p| p.emulated), "{tag}");
            // One `_Gidle → _Gdead` for fresh gs and one `_Gdead → ...`,
            // which the eBPF filter keeps.
            let mut olds: Vec<Option<u32>> = sites.iter().map(|s| s.ebx).collect();
            olds.sort();
            assert_eq!(olds, vec![Some(0), Some(G_DEAD)], "{tag}: {sites:?}");
            let spawn_va = sites.iter().find(|s| s.ebx == Some(G_DEAD)).unwrap().va;

            // gopc, startpc (and parentGoid) are stored before the spawn call.
            let (gopc, startpc, parent, goid) = g_offsets(m).expect("offsets for version");
            let mut stored = Vec::new();
            for (field, off) in [
                ("gopc", Some(gopc)),
                ("startpc", Some(startpc)),
                ("parentGoid", parent),
            ] {
                let Some(off) = off else { continue };
                let at = stores_at_offset(&np_code, np, off);
                assert!(
                    at.iter().any(|&a| a < spawn_va),
                    "{tag}: no store to newg.{field} (+{off}) before {spawn_va:#x}: {at:x?}"
                );
                stored.push(field);
            }
            let goid_before = stores_at_offset(&np_code, np, goid)
                .iter()
                .any(|&a| a < spawn_va);
            rows.push(format!(
                "| {:<9} | {:<12} | park_m {:<16} | goexit0 {:<16} | {} CALL casgstatus (EBX {:?}) at +{:#x} | set before: {}{} |",
                tc.full,
                mode.dir_name(),
                cells[0],
                cells[1],
                sites.len(),
                olds.iter().map(|o| o.unwrap_or(u32::MAX)).collect::<Vec<_>>(),
                spawn_va - np,
                stored.join(","),
                if goid_before { ",goid" } else { "" },
            ));
        }
    }
    println!("\nprobe plan per Go build:");
    for r in &rows {
        println!("{r}");
    }
}

#[test]
fn go_pgo_builds_probe_plan() {
    let mut rows = Vec::new();
    for tc in go_toolchains().into_iter().filter(|t| t.minor() >= 21) {
        let path = try_build_go(SPAWN, &tc, BuildMode::Pgo)
            .unwrap_or_else(|e| panic!("{}: {e:#}", tc.full));
        let bin = GoBin::load(&path);
        let tag = format!("{} pgo", tc.full);
        let plan = plan_probes(&|va, len| bin.code_at(va, len), &|n| bin.func(n))
            .unwrap_or_else(|e| panic!("{tag}: {e:#}"));
        // park_m and goexit0 are only reached through mcall, so PGO never
        // inlines them and their prologue is unchanged.
        assert!(plan.park.emulated && plan.exit.emulated, "{tag}: {plan:?}");
        let (np, np_end) = bin.func("runtime.newproc1").unwrap();
        let np_code = bin.code_at(np, (np_end - np) as usize).unwrap();
        let sites = bin
            .func("runtime.casgstatus")
            .map(|c| find_calls_to(&np_code, np, c.0))
            .unwrap_or_default();
        match plan.spawn_kind {
            SpawnProbe::CasgstatusCall => {
                assert!(sites.iter().any(|s| s.ebx != Some(0)), "{tag}")
            }
            SpawnProbe::Newproc1Ret => {
                assert!(!plan.spawn.is_empty() && plan.spawn.iter().all(|p| !p.emulated))
            }
        }
        rows.push(format!(
            "| {:<9} | pgo | newproc1 CALL casgstatus EBX {:?} | plan {:?} with {} point(s): {} | park {} | exit {} |",
            tc.full,
            sites.iter().map(|s| s.ebx).collect::<Vec<_>>(),
            plan.spawn_kind,
            plan.spawn.len(),
            plan.spawn.iter().map(|p| p.what.as_str()).collect::<Vec<_>>().join(", "),
            plan.park.what,
            plan.exit.what,
        ));
    }
    println!("\nPGO builds:");
    for r in &rows {
        println!("{r}");
    }
}
