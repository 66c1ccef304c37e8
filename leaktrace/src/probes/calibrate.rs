//! What one uprobe hit costs the traced thread on this machine, measured:
//! the overhead budget multiplies it by each probe's hits per second.
//!
//! How: the `calibrate_hit` program (it only counts) is attached to
//! [`calibration_point`], a function of leaktrace's own process, and a
//! burst of calls is timed with and without it. The difference per call,
//! less the time the program itself ran (which the kernel-side counters
//! measure for every probe, live), is the trap: the breakpoint exception,
//! the uprobe lookup, the single-step or emulation and the return to user
//! space. It depends on the CPU, the kernel and its mitigations, not on the
//! target, so it is measured once per boot and kept in
//! `$XDG_CACHE_HOME/leaktrace/hit-cost` (else `~/.cache/leaktrace/hit-cost`),
//! keyed by the boot id.
use std::{
    hint::black_box,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
};
use leaktrace_common::stats::slot;

use super::Probes;

/// Calls per timed burst: ~50 ms with a probe at ~1 µs a hit (an
/// instruction the kernel must single-step costs ~20× that, see
/// `runtime::go::probe_points`).
const CALLS: u64 = 50_000;
/// Bursts each way; the fastest counts (the least disturbed by other load).
const ROUNDS: usize = 5;

/// The probed function. It starts with a `JMP rel8`, which the kernel
/// emulates rather than single-steps (as it does the branches and calls
/// the Go probes sit on, see `runtime::go::probe_points`): the trap
/// measured is the one those probes pay. Naked, so no prologue comes first.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn leaktrace_calibration_point() {
    core::arch::naked_asm!("jmp 2f", "2:", "ret");
}

fn calibration_point() -> u64 {
    leaktrace_calibration_point as *const () as u64
}

/// The measured cost of one hit, without the program's own time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HitCost {
    pub trap_ns: f64,
    /// Measured now (false: read from this boot's cache).
    pub measured_now: bool,
}

/// This boot's trap cost: from the cache, or measured with `probes` and
/// cached.
pub fn hit_cost(probes: &mut Probes) -> Result<HitCost> {
    let boot = boot_id()?;
    let cache = cache_file();
    if let Some(trap_ns) = cache.as_deref().and_then(|c| read_cache(c, &boot)) {
        return Ok(HitCost {
            trap_ns,
            measured_now: false,
        });
    }
    let trap_ns = measure(probes)?;
    if let Some(c) = cache.as_deref()
        && let Err(e) = write_cache(c, &boot, trap_ns)
    {
        log::debug!("not caching the hit cost in {}: {e}", c.display());
    }
    Ok(HitCost {
        trap_ns,
        measured_now: true,
    })
}

fn boot_id() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading the boot id")?
        .trim()
        .to_string())
}

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("leaktrace").join("hit-cost"))
}

/// `<boot id> <ns>`: the value if it is this boot's and plausible.
fn read_cache(path: &Path, boot: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_cache(&text, boot)
}

fn parse_cache(text: &str, boot: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    if words.next()? != boot {
        return None;
    }
    let ns: f64 = words.next()?.parse().ok()?;
    (ns.is_finite() && ns > 0.0 && ns < 1e6).then_some(ns)
}

fn write_cache(path: &Path, boot: &str, ns: f64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{boot} {ns:.1}\n"))
}

/// Nanoseconds per call of a burst of [`CALLS`] calls.
fn burst() -> f64 {
    let t = Instant::now();
    for _ in 0..CALLS {
        black_box(leaktrace_calibration_point)();
    }
    t.elapsed().as_nanos() as f64 / CALLS as f64
}

fn fastest(f: impl Fn() -> f64) -> f64 {
    (0..ROUNDS).map(|_| f()).fold(f64::INFINITY, f64::min)
}

/// Attach `calibrate_hit` to [`calibration_point`] in this process, time
/// bursts with and without it, detach.
fn measure(probes: &mut Probes) -> Result<f64> {
    let point = calibration_point();
    let (exe, file_offset) = file_offset_of(point)?;
    let bare = fastest(burst);
    let before = probes.probe_stats()[slot::CALIBRATE as usize];
    let prog: &mut UProbe = probes
        .ebpf_mut()
        .program_mut("calibrate_hit")
        .ok_or_else(|| anyhow!("program calibrate_hit missing from the probes object"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|e| anyhow!("the kernel rejected probe calibrate_hit: {e}"))?;
    }
    let pid = NonZeroU32::new(std::process::id()).ok_or_else(|| anyhow!("pid 0"))?;
    let at = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(file_offset),
        cookie: None,
    };
    let link = prog
        .attach(at, &exe, UProbeScope::OneProcess(pid))
        .context("attaching the calibration probe to leaktrace itself")?;
    let probed = fastest(burst);
    let _ = prog.detach(link);
    let after = probes.probe_stats()[slot::CALIBRATE as usize];
    let hits = after.hits - before.hits;
    if hits < CALLS * ROUNDS as u64 {
        bail!(
            "the calibration probe fired {hits} times for {} calls",
            CALLS * ROUNDS as u64
        );
    }
    let in_program = (after.ns - before.ns) as f64 / hits as f64;
    let trap = (probed - bare - in_program).max(0.0);
    log::debug!(
        "hit cost: {bare:.1} ns per call bare, {probed:.1} probed, {in_program:.1} in the program: \
         trap {trap:.1} ns"
    );
    Ok(trap)
}

/// The file and file offset of code address `va` of this process, from
/// `/proc/self/maps` (symbols may be stripped).
fn file_offset_of(va: u64) -> Result<(PathBuf, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(off), Some(_dev), Some(_inode), Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi), Ok(off)) = (
            u64::from_str_radix(lo, 16),
            u64::from_str_radix(hi, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        if (lo..hi).contains(&va) {
            return Ok((PathBuf::from(path), va - lo + off));
        }
    }
    bail!("{va:#x} is in no file mapping of leaktrace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_per_boot_and_sane() {
        assert_eq!(parse_cache("abc 812.5\n", "abc"), Some(812.5));
        assert_eq!(parse_cache("abc 812.5\n", "other"), None);
        assert_eq!(parse_cache("abc -3\n", "abc"), None);
        assert_eq!(parse_cache("abc NaN\n", "abc"), None);
        assert_eq!(parse_cache("", "abc"), None);
    }

    #[test]
    fn the_calibration_point_is_in_a_file() {
        let (exe, off) = file_offset_of(calibration_point()).unwrap();
        assert!(exe.is_absolute());
        assert!(off > 0);
    }
}
