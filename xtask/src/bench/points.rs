//! leaktrace's Go probe points in bench/churn, as ELF symbols bpftrace can
//! attach to.
use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{
    ChurnPoints,
    elf::{NewSymbol, copy_with_symbols},
};

/// Copy `bin` with ELF symbols at the points leaktrace probes: each `CALL
/// runtime.casgstatus` in newproc1, and the branch right after the stack
/// check of park_m and goexit0 (emulated by the kernel, so no single-step).
pub(super) fn churn_points(go: &Path, bin: &Path) -> Result<ChurnPoints> {
    let out = Command::new(go)
        .args([
            "tool",
            "objdump",
            "-s",
            r"^runtime\.(newproc1|park_m|goexit0)$",
        ])
        .arg(bin)
        .output()
        .context("go tool objdump")?;
    if !out.status.success() {
        bail!(
            "go tool objdump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut func = String::new();
    let mut entry = None;
    let mut entries: BTreeMap<String, u64> = BTreeMap::new();
    let mut prev_stack_check = false;
    let mut spawn = Vec::new();
    let mut park = None;
    let mut exit = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("TEXT ") {
            func = rest.split('(').next().unwrap_or("").to_string();
            entry = None;
            prev_stack_check = false;
            continue;
        }
        let fields: Vec<&str> = line.split('\t').filter(|f| !f.is_empty()).collect();
        if fields.len() < 4 {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(fields[1].trim().trim_start_matches("0x"), 16) else {
            continue;
        };
        let asm = fields[3].trim();
        if entry.is_none() {
            entry = Some(addr);
            entries.insert(func.clone(), addr);
        }
        match func.as_str() {
            "runtime.newproc1" if asm.starts_with("CALL runtime.casgstatus(SB)") => {
                spawn.push(addr)
            }
            "runtime.park_m" if prev_stack_check && park.is_none() => park = Some((addr, asm)),
            "runtime.goexit0" if prev_stack_check && exit.is_none() => exit = Some((addr, asm)),
            _ => {}
        }
        prev_stack_check = asm.starts_with("CMPQ SP, 0x10(R14)");
    }
    let (park, park_asm) = park.context("no stack check found in runtime.park_m")?;
    let (exit, exit_asm) = exit.context("no stack check found in runtime.goexit0")?;
    if spawn.is_empty() {
        bail!("no CALL runtime.casgstatus in runtime.newproc1 (inlined? a PGO build?)");
    }
    let copy = bin.with_file_name("churn.lt-points");
    let mut names: Vec<(String, u64)> = spawn
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("lt_spawn{i}"), *a))
        .collect();
    names.push(("lt_park".into(), park));
    names.push(("lt_exit".into(), exit));
    let symbols: Vec<NewSymbol> = names
        .iter()
        .map(|(name, va)| NewSymbol {
            name: name.clone(),
            va: *va,
        })
        .collect();
    copy_with_symbols(bin, &copy, &symbols)?;
    let described = format!(
        "newproc1: {} × `CALL runtime.casgstatus` ({}); park_m+{:#x} (`{park_asm}`); goexit0+{:#x} (`{exit_asm}`)",
        spawn.len(),
        spawn
            .iter()
            .map(|a| format!("{a:#x}"))
            .collect::<Vec<_>>()
            .join(", "),
        park - entries.get("runtime.park_m").copied().unwrap_or(park),
        exit - entries.get("runtime.goexit0").copied().unwrap_or(exit),
    );
    Ok(ChurnPoints {
        bin: copy,
        spawn: names
            .iter()
            .filter(|(n, _)| n.starts_with("lt_spawn"))
            .map(|(n, _)| n.clone())
            .collect(),
        park: "lt_park".into(),
        exit: "lt_exit".into(),
        described,
    })
}
