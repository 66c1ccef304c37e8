//! leaktrace's Go probe points in bench/churn, as ELF symbols bpftrace can
//! attach to.
use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::ChurnPoints;
use crate::util;

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
    let elf = std::fs::read(bin)?;
    let text_sh = elf_sections(&elf)?
        .into_iter()
        .find(|s| s.name == ".text")
        .context("no .text section")?;
    let copy = bin.with_file_name("churn.lt-points");
    let mut names: Vec<(String, u64)> = spawn
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("lt_spawn{i}"), *a))
        .collect();
    names.push(("lt_park".into(), park));
    names.push(("lt_exit".into(), exit));
    let mut objcopy = Command::new("objcopy");
    for (name, addr) in &names {
        objcopy.arg("--add-symbol").arg(format!(
            "{name}=.text:{:#x},global,function",
            addr - text_sh.addr
        ));
    }
    util::run(objcopy.arg(bin).arg(&copy)).context("objcopy (binutils)")?;
    // bpftrace refuses a symbol of size 0; the size is not used otherwise.
    let mut patched = std::fs::read(&copy)?;
    let n = elf_set_symbol_sizes(&mut patched, "lt_", 1)?;
    if n != names.len() {
        bail!("patched {n} symbols, expected {}", names.len());
    }
    std::fs::write(&copy, patched)?;
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

pub(super) struct ElfSection {
    name: String,
    kind: u32,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
}

pub(super) fn le_u16(b: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(at..at + 2).context("ELF truncated")?.try_into()?,
    ))
}
pub(super) fn le_u32(b: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(at..at + 4).context("ELF truncated")?.try_into()?,
    ))
}
pub(super) fn le_u64(b: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        b.get(at..at + 8).context("ELF truncated")?.try_into()?,
    ))
}

pub(super) fn c_str(b: &[u8], at: usize) -> String {
    let tail = b.get(at..).unwrap_or_default();
    let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

/// Section headers of a little-endian ELF64 file.
pub(super) fn elf_sections(b: &[u8]) -> Result<Vec<ElfSection>> {
    if b.get(..6) != Some(&b"\x7fELF\x02\x01"[..]) {
        bail!("not a little-endian ELF64 file");
    }
    let shoff = le_u64(b, 0x28)? as usize;
    let shentsize = le_u16(b, 0x3a)? as usize;
    let shnum = le_u16(b, 0x3c)? as usize;
    let shstrndx = le_u16(b, 0x3e)? as usize;
    let raw = |i: usize| -> Result<(u32, u32, u64, u64, u64, u32)> {
        let h = shoff + i * shentsize;
        Ok((
            le_u32(b, h)?,
            le_u32(b, h + 4)?,
            le_u64(b, h + 0x10)?,
            le_u64(b, h + 0x18)?,
            le_u64(b, h + 0x20)?,
            le_u32(b, h + 0x28)?,
        ))
    };
    let names_at = raw(shstrndx)?.3 as usize;
    (0..shnum)
        .map(|i| {
            let (name, kind, addr, offset, size, link) = raw(i)?;
            Ok(ElfSection {
                name: c_str(b, names_at + name as usize),
                kind,
                addr,
                offset,
                size,
                link,
            })
        })
        .collect()
}

/// Set `st_size` of every .symtab symbol whose name starts with `prefix`;
/// how many were set.
pub(super) fn elf_set_symbol_sizes(b: &mut [u8], prefix: &str, size: u64) -> Result<usize> {
    const SHT_SYMTAB: u32 = 2;
    let sections = elf_sections(b)?;
    let symtab = sections
        .iter()
        .find(|s| s.kind == SHT_SYMTAB)
        .context("no .symtab")?;
    let strtab = sections
        .get(symtab.link as usize)
        .context("bad .symtab link")?
        .offset as usize;
    let mut n = 0;
    for at in (symtab.offset..symtab.offset + symtab.size).step_by(24) {
        let at = at as usize;
        let name = c_str(b, strtab + le_u32(b, at)? as usize);
        if name.starts_with(prefix) {
            b[at + 16..at + 24].copy_from_slice(&size.to_le_bytes());
            n += 1;
        }
    }
    Ok(n)
}
