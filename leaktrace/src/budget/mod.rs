//! The overhead budget (`--max-overhead`, issue #14): estimate the CPU the
//! probes add to the target, and keep it under a share of the target's own
//! CPU by detaching the costliest probes (the runtime follows what they saw
//! by reading memory), re-attaching them when the rate falls.
//!
//! Inputs, all measured: hits and in-program time per probe, counted
//! in-kernel (`PROBE_STATS`); the trap cost of one hit on this machine
//! ([`crate::probes::calibrate`]); the target's CPU time
//! (`/proc/PID/stat`). The arithmetic and the decisions are in
//! [`estimate`]; this drives them from a session's refreshes.
pub mod estimate;

use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use self::estimate::{Estimator, ProbeOverhead, Window};
use crate::{
    probes::{Probes, calibrate::HitCost},
    runtime::{NotArmed, Runtime},
};

/// `--max-overhead`: a fraction of the target's own CPU, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxOverhead(pub Option<f64>);

/// `2`, `2%`, `0.5`, `0`, `off`.
pub fn parse_max_overhead(s: &str) -> Result<MaxOverhead, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(MaxOverhead(None));
    }
    let pct: f64 = t
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: give a percentage (e.g. 2 or 0.5) or `off`"))?;
    if !(0.0..=100.0).contains(&pct) || !pct.is_finite() {
        return Err(format!("{s:?}: a percentage from 0 to 100, or `off`"));
    }
    Ok(MaxOverhead(Some(pct / 100.0)))
}

/// What every report says about the probes' cost (JSON `overhead`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Overhead {
    /// `--max-overhead`, % of the target's own CPU; null: `off`.
    pub budget_pct: Option<f64>,
    /// The probes' estimated CPU, % of the target's own CPU (over the last
    /// window of about a second; the armed probes only).
    pub estimated_pct: f64,
    /// The target's own CPU use, % of one core, over that window.
    pub target_cpu_pct: f64,
    /// The target used less than a tenth of a core: the budget judged the
    /// probes' cost against a tenth of a core, not against `estimated_pct`.
    pub nearly_idle: bool,
    /// What one uprobe trap costs here (ns), and how it was known.
    pub trap_ns: Option<f64>,
    pub calibration: String,
    pub probes: Vec<ProbeOverhead>,
    /// Times probes were shed and re-armed since attach.
    pub sheds: u32,
    pub rearms: u32,
    /// What is approximate while probes are shed.
    pub approximate: Vec<&'static str>,
    /// Probes not armed by choice (no `--detailed`): never shed, never
    /// estimated, and what is approximate without them.
    pub not_armed: Vec<NotArmed>,
    /// Whether this runtime's probes can be shed at all (tokio's cannot
    /// yet: its estimate is reported, the budget not enforced).
    pub sheddable: bool,
}

impl Overhead {
    pub fn armed(&self) -> impl Iterator<Item = &ProbeOverhead> {
        self.probes.iter().filter(|p| p.armed)
    }
}

/// Counters at the start of a window.
struct Mark {
    at: Instant,
    hits: Vec<u64>,
    ns: Vec<u64>,
    cpu_ns: u64,
}

/// One process's budget.
pub struct Budget {
    est: Estimator,
    slots: Vec<u32>,
    pid: u32,
    mark: Option<Mark>,
    calibration: String,
    trap_ns: Option<f64>,
    not_armed: Vec<NotArmed>,
    /// Reading the counters failed (the target exiting): not before this.
    retry_at: Option<Instant>,
}

impl Budget {
    /// `hit` is the calibration's result: without a trap cost the estimate
    /// counts the programs' own time only, and says so.
    pub fn new(rt: &dyn Runtime, limit: MaxOverhead, hit: Result<HitCost>, pid: u32) -> Self {
        let probes = rt.budget_probes();
        let (trap_ns, calibration) = match hit {
            Ok(h) => (
                Some(h.trap_ns),
                if h.measured_now {
                    "measured at start".to_string()
                } else {
                    "measured earlier this boot (cached)".to_string()
                },
            ),
            Err(e) => (
                None,
                format!("failed ({e:#}): the estimate counts the probes' own time only"),
            ),
        };
        Self {
            est: Estimator::new(&probes, limit.0, trap_ns.unwrap_or(0.0)),
            slots: probes.iter().map(|p| p.slot).collect(),
            pid,
            mark: None,
            calibration,
            trap_ns,
            not_armed: rt.not_armed(),
            retry_at: None,
        }
    }

    /// After attach: `--max-overhead 0` sheds everything at once; the
    /// first window starts now.
    pub fn start(&mut self, rt: &mut dyn Runtime, probes: &mut Probes) -> Result<()> {
        if self.est.limit == Some(0.0) && self.est.max_step > 0 {
            self.est.start_at(self.est.max_step);
            rt.shed(probes, self.est.step)?;
        }
        // Unreadable now (the process exiting): the first check starts it.
        self.mark = self.counters(probes).ok();
        Ok(())
    }

    /// When [`Self::check`] would close the current window (the session
    /// calls it then, between its refreshes).
    pub fn due(&self) -> Instant {
        let at = self
            .mark
            .as_ref()
            .map_or_else(Instant::now, |m| m.at + self.est.window());
        self.retry_at.map_or(at, |r| r.max(at))
    }

    fn counters(&self, probes: &Probes) -> Result<Mark> {
        let stats = probes.probe_stats();
        Ok(Mark {
            at: Instant::now(),
            hits: self.slots.iter().map(|&s| stats[s as usize].hits).collect(),
            ns: self.slots.iter().map(|&s| stats[s as usize].ns).collect(),
            cpu_ns: target_cpu_ns(self.pid)?,
        })
    }

    /// At [`Self::due`] and at each refresh, before the memory read: close
    /// a window once it is long enough, and shed or re-arm as it says.
    pub fn check(&mut self, rt: &mut dyn Runtime, probes: &mut Probes) -> Result<()> {
        let mark = match self.counters(probes) {
            Ok(m) => m,
            Err(e) => {
                self.retry_at = Some(Instant::now() + estimate::WINDOW);
                return Err(e);
            }
        };
        let at = mark.at;
        let Some(last) = &self.mark else {
            self.mark = Some(mark);
            return Ok(());
        };
        if at.duration_since(last.at) < self.est.window() {
            return Ok(());
        }
        let delta = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter().zip(b).map(|(a, b)| a.saturating_sub(*b)).collect()
        };
        let window = Window {
            span: at.duration_since(last.at),
            target_cpu_ns: mark.cpu_ns.saturating_sub(last.cpu_ns) as f64,
            hits: delta(&mark.hits, &last.hits),
            program_ns: delta(&mark.ns, &last.ns),
            memory_rates: rt.memory_rates(),
        };
        self.mark = Some(mark);
        let before = self.est.step;
        if let Some(step) = self.est.update(&window) {
            let t0 = Instant::now();
            rt.shed(probes, step)?;
            log::info!(
                "overhead {:.2} % of the target's CPU over {:?}: probe step {before} → {step} \
                 in {:?}",
                self.est.judged * 100.0,
                window.span,
                t0.elapsed()
            );
            // The next window starts after the change: the probes' links
            // are in or out by now.
            self.mark = Some(self.counters(probes)?);
        }
        Ok(())
    }

    pub fn report(&self) -> Overhead {
        Overhead {
            budget_pct: self.est.limit.map(|l| l * 100.0),
            estimated_pct: self.est.estimated * 100.0,
            target_cpu_pct: self.est.own_cores * 100.0,
            nearly_idle: self.est.own_cores < estimate::FLOOR_CORES,
            trap_ns: self.trap_ns,
            calibration: self.calibration.clone(),
            probes: self.est.probes(),
            sheds: self.est.sheds,
            rearms: self.est.rearms,
            approximate: self.est.approximate(),
            not_armed: self.not_armed.clone(),
            sheddable: self.est.max_step > 0,
        }
    }
}

/// The target's CPU time so far, in ns: the sum of its threads'
/// `/proc/PID/task/TID/schedstat` (exact nanoseconds; a 0.5 s window of
/// `/proc/PID/stat`'s 10 ms ticks is too coarse when the probes' time is
/// most of it), or `/proc/PID/stat`'s utime + stime for a process with more
/// threads than [`MAX_THREADS_READ`] or without schedstat. Threads that
/// exited take their time with them: a window that saw one exit counts less.
pub fn target_cpu_ns(pid: u32) -> Result<u64> {
    if let Some(ns) = threads_cpu_ns(pid) {
        return Ok(ns);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ns(&stat, clock_ticks()).with_context(|| format!("parsing /proc/{pid}/stat"))
}

/// Threads whose schedstat is read at most, per window.
const MAX_THREADS_READ: usize = 1024;

fn threads_cpu_ns(pid: u32) -> Option<u64> {
    let mut sum = 0u64;
    for (i, t) in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .enumerate()
    {
        if i >= MAX_THREADS_READ {
            return None;
        }
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        sum += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime (fields 14 and 15; the command name before them may hold
/// spaces and parentheses, so count from the last `)`).
fn parse_cpu_ns(stat: &str, ticks_per_s: u64) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) * (1_000_000_000 / ticks_per_s.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        assert_eq!(parse_max_overhead("2"), Ok(MaxOverhead(Some(0.02))));
        assert_eq!(parse_max_overhead("0.5%"), Ok(MaxOverhead(Some(0.005))));
        assert_eq!(parse_max_overhead("0"), Ok(MaxOverhead(Some(0.0))));
        assert_eq!(parse_max_overhead("off"), Ok(MaxOverhead(None)));
        assert!(parse_max_overhead("-1").is_err());
        assert!(parse_max_overhead("lots").is_err());
    }

    #[test]
    fn reads_cpu_time_after_the_command_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ns(stat, 100), Some(3_000_000_000));
        assert_eq!(parse_cpu_ns("garbage", 100), None);
        let own = target_cpu_ns(std::process::id()).unwrap();
        assert!(own < u64::MAX / 2);
    }
}
