//! Where the probes go in this particular binary, as file offsets.
use anyhow::{Context as _, Result};

use super::{
    allgs_locate::{AllgsLocation, locate_allgs},
    binary::GoBinary,
    probe_points::{ProbePoint, SpawnProbe, plan_probes},
};
use crate::{probes::AttachPoint, runtime::PlannedProbe};

pub struct Placement {
    pub probes: Vec<PlannedProbe>,
    /// Probe points the kernel has to single-step (slow): said once at attach.
    pub warnings: Vec<String>,
}

/// The spawn and exit probes, and the park probe when `detailed`.
pub fn place_probes(bin: &GoBinary, detailed: bool) -> Result<Placement> {
    let code_at = |va: u64, len: usize| bin.elf.read_va(va, len).map(<[u8]>::to_vec);
    let func = |name: &str| bin.symbols.function(name).map(|f| (f.entry, f.end));
    let plan = plan_probes(&code_at, &func)
        .context("finding the probe points in the Go runtime of this binary")?;
    let mut warnings = Vec::new();
    if plan.spawn_kind == SpawnProbe::Newproc1Ret {
        warnings.push(
            "runtime.casgstatus is inlined into newproc1 (a PGO build?): spawn probes sit on \
             newproc1's RET instructions, which the kernel single-steps (~10× slower per goroutine)"
                .to_string(),
        );
    }
    let cookie = plan.spawn_kind.cookie();
    let planned = |p: &ProbePoint,
                   program: &'static str,
                   event: &'static str,
                   cookie: u64|
     -> Result<PlannedProbe> {
        Ok(PlannedProbe {
            program,
            event,
            function: bin.symbols.function_at(p.va).map(|f| (f.name, f.entry)),
            point: AttachPoint {
                va: p.va,
                file_offset: bin.elf.va_to_file_offset(p.va).with_context(|| {
                    format!("{} ({:#x}) is not in a loaded segment", p.what, p.va)
                })?,
                cookie,
                what: p.what.clone(),
            },
        })
    };
    let park = detailed.then_some(&plan.park);
    for p in park.into_iter().chain([&plan.exit]) {
        if !p.emulated {
            warnings.push(format!(
                "{}: no emulated instruction in the prologue; this probe is single-stepped (slower)",
                p.what
            ));
        }
    }
    let mut probes = plan
        .spawn
        .iter()
        .map(|p| planned(p, "go_spawn", "spawn", cookie))
        .collect::<Result<Vec<_>>>()?;
    if let Some(park) = park {
        probes.push(planned(park, "go_park", "park", 0)?);
    }
    probes.push(planned(&plan.exit, "go_exit", "exit", 0)?);
    Ok(Placement { probes, warnings })
}

pub fn find_allgs(bin: &GoBinary) -> Result<AllgsLocation> {
    let code_at = |va: u64, len: usize| bin.elf.read_va(va, len).map(<[u8]>::to_vec);
    let func = |name: &str| bin.symbols.function(name).map(|f| (f.entry, f.end));
    let data_symbol = |name: &str| bin.elf.symbol(name);
    locate_allgs(&code_at, &func, &data_symbol)
}
