//! The overhead estimate and the shedding decisions, from counters alone
//! (no I/O: [`super::Budget`] reads the counters, this decides).
//!
//! Estimate over a window of at least [`WINDOW`]:
//! `probe CPU = Σ armed probes (hits × (trap + in-program time per hit))`,
//! `own CPU = the target's CPU time − probe CPU` (the traps are charged to
//! the target's system time), and `estimated = probe CPU / max(own CPU,
//! FLOOR_CORES × window)`: relative to the work the target would have done
//! untraced, which is what a benchmark measures (traced vs untraced CPU for
//! the same work). The budget judges `probe CPU / max(own CPU, FLOOR_CORES
//! × window)`: the floor keeps a nearly idle target from shedding
//! everything for a handful of hits: below a tenth of a core, the probes'
//! absolute cost (at most budget × 0.1 core) is negligible.
//!
//! Shedding: over budget → the next step (one per window). Re-arming: the
//! estimate *with the last-shed step re-armed* (its probes' rates as the
//! memory reads observe them, or scaled from their last armed rate by the
//! target's CPU) under half the budget for [`CALM_WINDOWS`] windows in a
//! row and at least [`DWELL`] since the last change: hysteresis, so a rate
//! near the budget does not flap.
use std::time::Duration;

use serde::Serialize;

use crate::runtime::BudgetProbe;

/// The shortest span an estimate covers once probes have been armed a
/// while: the budget's reaction time to a burst, during which it costs what
/// every armed probe costs.
pub const WINDOW: Duration = Duration::from_millis(500);
/// The windows in the first [`FIRST_SPAN`] after attach and after each
/// re-arm: a program that is busy when probed (or still busy when a step
/// comes back) pays full cost for one of these, not for a [`WINDOW`]
/// (bench/RESULTS.md §7). 20 ms rather than 50: on churn at 50,000
/// goroutines a second, the first window was the largest part of the
/// whole run's excess over the budget. Short windows are exact enough: hits are counted
/// in-kernel and the target's CPU comes from schedstat in nanoseconds
/// (`super::target_cpu_ns`).
pub const FIRST_WINDOW: Duration = Duration::from_millis(20);
pub const FIRST_SPAN: Duration = Duration::from_secs(1);
/// A target using less CPU than this (cores) is judged against this.
pub const FLOOR_CORES: f64 = 0.1;
/// Windows in a row under half the budget before a step is re-armed, and
/// at least this many [`WINDOW`]s' worth of time (short windows do not make
/// re-arming hastier).
pub const CALM_WINDOWS: u32 = 3;
/// The least time between two changes of step the other way round.
pub const DWELL: Duration = Duration::from_secs(3);

/// One window's counters.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub span: Duration,
    /// The target's CPU time over the span (user + system), nanoseconds.
    pub target_cpu_ns: f64,
    /// Per probe (the [`Estimator`]'s order): hits and in-program ns.
    pub hits: Vec<u64>,
    pub program_ns: Vec<u64>,
    /// Rates of shed probes observed by memory reads, by name.
    pub memory_rates: Vec<(&'static str, f64)>,
}

/// What the estimate says, per probe, for the reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProbeOverhead {
    pub name: &'static str,
    pub armed: bool,
    /// Hits per second: counted in-kernel while armed; while shed, as
    /// observed by memory reads or scaled from the last armed rate
    /// (`hits_estimated`).
    pub hits_per_s: f64,
    pub hits_estimated: bool,
    /// Nanoseconds the target pays per hit: the calibrated trap plus the
    /// program's own measured time.
    pub cost_ns: f64,
}

#[derive(Clone, Debug)]
struct ProbeState {
    probe: BudgetProbe,
    rate: f64,
    rate_estimated: bool,
    /// In-program ns per hit, the last time it was measured.
    program_ns: f64,
    /// Hits per second of the target's own CPU (cores), when last armed:
    /// what scales its rate while shed if memory reads cannot see it.
    per_core: Option<f64>,
}

/// The estimate and the shedding state of one process.
#[derive(Clone, Debug)]
pub struct Estimator {
    /// Fraction of the target's own CPU; None: no budget (estimate only).
    pub limit: Option<f64>,
    pub trap_ns: f64,
    probes: Vec<ProbeState>,
    pub step: u8,
    pub max_step: u8,
    /// The last window's estimate (fraction of the target's own CPU), what
    /// the budget judged (the same, or against [`FLOOR_CORES`] when the
    /// target used less), and the target's own CPU (cores).
    pub estimated: f64,
    pub judged: f64,
    pub own_cores: f64,
    calm: u32,
    calm_span: Duration,
    since_change: Duration,
    /// Since attach or the last re-arm: what makes windows short.
    since_arm: Duration,
    pub sheds: u32,
    pub rearms: u32,
}

impl Estimator {
    pub fn new(probes: &[BudgetProbe], limit: Option<f64>, trap_ns: f64) -> Self {
        let max_step = probes.iter().map(|p| p.shed_at).max().unwrap_or(0);
        Self {
            limit,
            trap_ns,
            probes: probes
                .iter()
                .map(|&probe| ProbeState {
                    probe,
                    rate: 0.0,
                    rate_estimated: false,
                    program_ns: 0.0,
                    per_core: None,
                })
                .collect(),
            step: 0,
            max_step,
            estimated: 0.0,
            judged: 0.0,
            own_cores: 0.0,
            calm: 0,
            calm_span: Duration::ZERO,
            since_change: Duration::ZERO,
            since_arm: Duration::ZERO,
            sheds: 0,
            rearms: 0,
        }
    }

    fn armed(&self, p: &BudgetProbe) -> bool {
        p.shed_at == 0 || self.step < p.shed_at
    }

    fn cost(&self, p: &ProbeState) -> f64 {
        self.trap_ns + p.program_ns
    }

    /// Take one window; the step to go to, if it changes.
    pub fn update(&mut self, w: &Window) -> Option<u8> {
        let secs = w.span.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        self.since_change += w.span;
        self.since_arm += w.span;
        let mut probe_ns = 0.0;
        for i in 0..self.probes.len() {
            let armed = self.armed(&self.probes[i].probe);
            let hits = w.hits.get(i).copied().unwrap_or(0);
            let p = &mut self.probes[i];
            if armed {
                // The probes time one hit in 16 (per CPU): a window with
                // none timed keeps the last figure.
                let ns = w.program_ns.get(i).copied().unwrap_or(0);
                if hits > 0 && ns > 0 {
                    p.program_ns = ns as f64 / hits as f64;
                }
                p.rate = hits as f64 / secs;
                p.rate_estimated = false;
            }
            if armed {
                probe_ns += hits as f64 * (self.trap_ns + self.probes[i].program_ns);
            }
        }
        let own_ns = (w.target_cpu_ns - probe_ns).max(0.0);
        self.own_cores = own_ns / secs / 1e9;
        let base_ns = own_ns.max(FLOOR_CORES * secs * 1e9);
        // A short window (20 ms after attach or a re-arm) is judged against
        // the floor of a full one: a nearly idle program's start-up burst
        // (a few dozen spawns, one of them timed cold) must not shed, while
        // a storm still sheds within 20 ms (its probes then cost more than
        // budget × a tenth of a core × 0.5 s). CI saw spawn_via, at 0.3 % of
        // a core, shed in its first 50 ms window and lose its spawn sites.
        let floor_ns = FLOOR_CORES * secs.max(WINDOW.as_secs_f64()) * 1e9;
        self.judged = probe_ns / own_ns.max(floor_ns);
        // Against at least 1 % of a core: a nearly idle target's ratio is
        // noise (and `nearly_idle` says so).
        self.estimated = probe_ns / own_ns.max(0.01 * secs * 1e9);
        // Rates of the shed probes: memory reads, else scaled by CPU.
        let own_cores = self.own_cores;
        for p in &mut self.probes {
            let armed = p.probe.shed_at == 0 || self.step < p.probe.shed_at;
            if armed {
                p.per_core = Some(p.rate / own_cores.max(FLOOR_CORES));
                continue;
            }
            p.rate_estimated = true;
            p.rate = match w.memory_rates.iter().find(|(n, _)| *n == p.probe.name) {
                Some(&(_, r)) => r,
                None => p.per_core.map_or(p.rate, |k| k * own_cores),
            };
        }
        self.decide(probe_ns / secs, base_ns / secs, w.span)
    }

    /// `probe_ns_per_s` of the armed probes against `base_ns_per_s`; the
    /// rates of every probe are this window's (measured or estimated).
    fn decide(&mut self, probe_ns_per_s: f64, base_ns_per_s: f64, span: Duration) -> Option<u8> {
        let limit = self.limit?;
        if self.judged > limit && self.step < self.max_step {
            // Straight to the first step whose armed probes fit, by the
            // rates just measured: one window of reaction, not one per step.
            let fits = |step: u8| {
                let cost: f64 = self
                    .probes
                    .iter()
                    .filter(|p| p.probe.shed_at == 0 || step < p.probe.shed_at)
                    .map(|p| p.rate * self.cost(p))
                    .sum();
                cost / base_ns_per_s <= limit
            };
            let to = (self.step + 1..self.max_step)
                .find(|&s| fits(s))
                .unwrap_or(self.max_step);
            self.calm = 0;
            self.calm_span = Duration::ZERO;
            return Some(self.change(to, true));
        }
        if self.step == 0 {
            return None;
        }
        // With the last-shed step armed again:
        let back: f64 = self
            .probes
            .iter()
            .filter(|p| p.probe.shed_at == self.step)
            .map(|p| p.rate * self.cost(p))
            .sum();
        let with = (probe_ns_per_s + back) / base_ns_per_s;
        if with < limit / 2.0 {
            self.calm += 1;
            self.calm_span += span;
        } else {
            self.calm = 0;
            self.calm_span = Duration::ZERO;
        }
        if self.calm >= CALM_WINDOWS
            && self.calm_span >= WINDOW * CALM_WINDOWS
            && self.since_change >= DWELL
        {
            self.calm = 0;
            self.calm_span = Duration::ZERO;
            return Some(self.change(self.step - 1, false));
        }
        None
    }

    fn change(&mut self, step: u8, shed: bool) -> u8 {
        if shed {
            self.sheds += 1;
        } else {
            self.rearms += 1;
        }
        self.since_change = Duration::ZERO;
        if !shed {
            self.since_arm = Duration::ZERO;
        }
        self.step = step;
        step
    }

    /// How long the current window is to last (see [`FIRST_WINDOW`]).
    pub fn window(&self) -> Duration {
        if self.since_arm < FIRST_SPAN {
            FIRST_WINDOW
        } else {
            WINDOW
        }
    }

    /// Start at `step` (`--max-overhead 0`: everything shed).
    pub fn start_at(&mut self, step: u8) {
        self.step = step.min(self.max_step);
    }

    pub fn probes(&self) -> Vec<ProbeOverhead> {
        self.probes
            .iter()
            .map(|p| ProbeOverhead {
                name: p.probe.name,
                armed: self.armed(&p.probe),
                hits_per_s: p.rate,
                hits_estimated: p.rate_estimated,
                cost_ns: self.cost(p),
            })
            .collect()
    }

    /// What is approximate now, for the reports.
    pub fn approximate(&self) -> Vec<&'static str> {
        self.probes
            .iter()
            .filter(|p| !self.armed(&p.probe) && !p.probe.when_shed.is_empty())
            .map(|p| p.probe.when_shed)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBES: [BudgetProbe; 3] = [
        BudgetProbe {
            name: "park",
            slot: 1,
            shed_at: 1,
            when_shed: "park shed",
        },
        BudgetProbe {
            name: "spawn",
            slot: 0,
            shed_at: 2,
            when_shed: "spawn shed",
        },
        BudgetProbe {
            name: "exit",
            slot: 2,
            shed_at: 2,
            when_shed: "",
        },
    ];

    /// One second with these hits (park, spawn, exit), 1 µs in-program
    /// each, the target busy `cores` on its own plus the probes' time.
    fn second(e: &Estimator, hits: [u64; 3], cores: f64, memory: f64) -> Window {
        let probe_ns: f64 = hits
            .iter()
            .zip(&PROBES)
            .filter(|(_, p)| e.step < p.shed_at)
            .map(|(&h, _)| h as f64 * (e.trap_ns + 1000.0))
            .sum();
        Window {
            span: Duration::from_secs(1),
            target_cpu_ns: cores * 1e9 + probe_ns,
            hits: hits
                .iter()
                .zip(&PROBES)
                .map(|(&h, p)| if e.step < p.shed_at { h } else { 0 })
                .collect(),
            program_ns: hits.iter().map(|&h| h * 1000).collect(),
            memory_rates: vec![("spawn", memory), ("exit", memory)],
        }
    }

    #[test]
    fn estimate_is_probe_cpu_over_own_cpu() {
        let mut e = Estimator::new(&PROBES, None, 1000.0);
        // 5k hits × 2 µs = 10 ms of 1 s of own CPU: 1 %.
        assert_eq!(e.update(&second(&e, [3000, 1000, 1000], 1.0, 0.0)), None);
        assert!((e.estimated - 0.01).abs() < 1e-9, "{}", e.estimated);
        assert!((e.own_cores - 1.0).abs() < 1e-9);
    }

    #[test]
    fn an_idle_target_does_not_shed_for_a_few_hits() {
        let mut e = Estimator::new(&PROBES, Some(0.02), 1000.0);
        // 500 hits (1 ms) on a target using 1 ms of CPU a second: reported
        // against 1 % of a core (10 %), judged against a tenth (1 %).
        assert_eq!(e.update(&second(&e, [500, 0, 0], 0.001, 0.0)), None);
        assert!((e.estimated - 0.1).abs() < 1e-6, "{}", e.estimated);
        assert!(e.judged < 0.02);
    }

    #[test]
    fn sheds_park_then_spawn_exit_and_rearms_with_hysteresis() {
        let mut e = Estimator::new(&PROBES, Some(0.02), 1000.0);
        // A burst: 50k parks, 20k spawns and exits a second on one core.
        let burst = [50_000, 20_000, 20_000];
        // Without park, spawn and exit alone (80 ms a second) still exceed
        // 2 %: straight to step 2.
        assert_eq!(e.update(&second(&e, burst, 1.0, 0.0)), Some(2));
        assert_eq!(e.step, 2);
        assert!(e.approximate().contains(&"spawn shed"));
        // Still bursting: stays shed, the rates estimated.
        for _ in 0..5 {
            assert_eq!(e.update(&second(&e, burst, 1.0, 20_000.0)), None);
        }
        let spawn = e.probes().into_iter().find(|p| p.name == "spawn").unwrap();
        assert!(!spawn.armed && spawn.hits_estimated && spawn.hits_per_s == 20_000.0);
        // Idle: re-armed one step at a time, after calm windows only.
        let idle = [10, 1, 1];
        assert_eq!(e.update(&second(&e, idle, 0.001, 1.0)), None);
        assert_eq!(e.update(&second(&e, idle, 0.001, 1.0)), None);
        assert_eq!(e.update(&second(&e, idle, 0.001, 1.0)), Some(1));
        assert_eq!(e.update(&second(&e, idle, 0.001, 1.0)), None);
        assert_eq!(e.update(&second(&e, idle, 0.001, 1.0)), None);
        assert_eq!(e.update(&second(&e, idle, 0.001, 1.0)), Some(0));
        assert_eq!((e.sheds, e.rearms), (1, 2));
        assert!(e.approximate().is_empty());
    }

    #[test]
    fn no_rearm_while_rearming_would_exceed_half_the_budget() {
        let mut e = Estimator::new(&PROBES, Some(0.02), 1000.0);
        e.start_at(1);
        // Parks were 10k/s per core when armed: shed, the estimate scales.
        e.probes[0].per_core = Some(10_000.0);
        e.probes[0].program_ns = 1000.0;
        for _ in 0..10 {
            // 10k parks × 2 µs = 20 ms on 1 core: 2 % > 1 %.
            assert_eq!(e.update(&second(&e, [10_000, 0, 0], 1.0, 0.0)), None);
        }
        assert_eq!(e.step, 1);
    }

    #[test]
    fn windows_are_short_after_attach_and_after_a_rearm_only() {
        let mut e = Estimator::new(&PROBES, Some(0.02), 1000.0);
        assert_eq!(e.window(), FIRST_WINDOW);
        let burst = [50_000, 20_000, 20_000];
        assert_eq!(e.update(&second(&e, burst, 1.0, 0.0)), Some(2));
        // Past the first second, a shed does not shorten them again.
        assert_eq!(e.window(), WINDOW);
        let idle = [10, 1, 1];
        let mut steps = Vec::new();
        for _ in 0..6 {
            steps.extend(e.update(&second(&e, idle, 0.001, 1.0)));
        }
        assert_eq!(steps, [1, 0]);
        assert_eq!(e.window(), FIRST_WINDOW);
    }

    #[test]
    fn short_windows_do_not_rearm_sooner() {
        let mut e = Estimator::new(&PROBES, Some(0.02), 1000.0);
        e.start_at(2);
        e.since_change = DWELL;
        let idle = Window {
            span: FIRST_WINDOW,
            target_cpu_ns: 1e6,
            hits: vec![0; 3],
            program_ns: vec![0; 3],
            memory_rates: Vec::new(),
        };
        // Calm for CALM_WINDOWS windows but not for CALM_WINDOWS × WINDOW.
        for _ in 0..CALM_WINDOWS {
            assert_eq!(e.update(&idle), None);
        }
        let enough = (WINDOW * CALM_WINDOWS).as_millis() / FIRST_WINDOW.as_millis();
        let steps: Vec<u8> = (CALM_WINDOWS as u128..enough)
            .filter_map(|_| e.update(&idle))
            .collect();
        assert_eq!(
            steps,
            [1],
            "re-armed once calm for {:?}",
            WINDOW * CALM_WINDOWS
        );
    }

    /// A nearly idle program's start-up burst in the first 20 ms window:
    /// 60 spawns and exits at a (cold, timed) 5 µs each are 0.6 ms, under
    /// budget × a tenth of a core × a full window (1 ms at 2 %): kept. A
    /// storm in the same 20 ms (5,000 hits, 10 ms) is shed at once.
    #[test]
    fn a_short_window_needs_more_than_a_burst_to_shed() {
        let window = |hits: u64| Window {
            span: FIRST_WINDOW,
            target_cpu_ns: 150_000.0 + hits as f64 * 6_000.0,
            hits: vec![0, hits, hits],
            program_ns: vec![0, hits * 5_000, hits * 5_000],
            memory_rates: Vec::new(),
        };
        let mut e = Estimator::new(&PROBES, Some(0.02), 1000.0);
        e.start_at(1);
        assert_eq!(e.update(&window(50)), None, "judged {}", e.judged);
        assert!(e.update(&window(2_500)).is_some(), "judged {}", e.judged);
    }

    #[test]
    fn no_budget_never_sheds() {
        let mut e = Estimator::new(&PROBES, None, 1000.0);
        assert_eq!(e.update(&second(&e, [1_000_000, 0, 0], 0.1, 0.0)), None);
        assert!(e.estimated > 1.0);
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;

    #[test]
    fn sheds_only_park_when_that_is_enough() {
        let probes = [
            BudgetProbe {
                name: "park",
                slot: 1,
                shed_at: 1,
                when_shed: "",
            },
            BudgetProbe {
                name: "spawn",
                slot: 0,
                shed_at: 2,
                when_shed: "",
            },
        ];
        let mut e = Estimator::new(&probes, Some(0.02), 1000.0);
        // 20k parks (40 ms) and 1k spawns (2 ms) a second on one core.
        let w = Window {
            span: Duration::from_secs(1),
            target_cpu_ns: 1e9 + 42e6,
            hits: vec![20_000, 1_000],
            program_ns: vec![20_000_000, 1_000_000],
            memory_rates: Vec::new(),
        };
        assert_eq!(e.update(&w), Some(1));
    }
}
