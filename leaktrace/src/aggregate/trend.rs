//! How each group's size moves over the observation window.
//!
//! A leak is a trend, not a number: a pool of 500 idle workers is fine, 50
//! goroutines that grow by 5 every second are not. Each tick records every
//! group's total and its "aged" count (members blocked at least `--older`);
//! short-lived tasks never age, so a busy but healthy server stays flat here.
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Separate rises of the aged count a group needs before it is called
/// growing (tasks and threads alike): a burst (a pool starting) that a
/// sample happens to split still shows as at most two.
pub const MIN_RISES: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    tick: u64,
    total: u32,
    aged: u32,
}

/// What a series did over the whole session, kept after its samples leave
/// the window, so a leak that grew and stopped is still known as one.
#[derive(Clone, Copy, Debug, PartialEq)]
struct History {
    first_ns: u64,
    first_aged: u32,
    last_aged: u32,
    /// Separate rises of the aged count over the session.
    rises: usize,
    /// When the aged count last went up (0: never).
    last_rise_ns: u64,
    /// When the series was last present.
    seen_ns: u64,
}

#[derive(Debug)]
pub struct Trends<K> {
    /// Tick number → time (ns) for the ticks still in the window.
    ticks: VecDeque<(u64, u64)>,
    next_tick: u64,
    series: HashMap<K, VecDeque<Sample>>,
    history: HashMap<K, History>,
    /// The recent window the movement covers, in ns.
    window_ns: u64,
    /// Ticks kept at most, whatever the window (bounds memory).
    max_ticks: usize,
}

/// A group's movement over the recent window, and over the session.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Movement {
    /// Least-squares slope of the group's total, per second.
    pub growth_per_s: f64,
    /// Aged members at the first and last tick of the window.
    pub aged_first: u32,
    pub aged_last: u32,
    /// Least-squares slope of the aged count, per second.
    pub aged_slope: f64,
    /// Between how many consecutive ticks the aged count went up. A pool
    /// started all at once ages in one step; a leak keeps adding.
    pub aged_rises: usize,
    pub ticks: usize,
    pub window_s: f64,
    pub session: Session,
}

/// The whole session of one series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Session {
    /// Since the series was first seen.
    pub span_s: f64,
    pub aged_first: u32,
    pub aged_last: u32,
    pub rises: usize,
    /// From the first sample to the last rise; and since the last rise.
    pub growing_s: f64,
    pub flat_s: f64,
}

impl Session {
    /// The aged count's rise over the session (0 if it fell).
    pub fn grew(&self) -> u32 {
        self.aged_last.saturating_sub(self.aged_first)
    }
}

impl<K: Eq + Hash + Clone> Trends<K> {
    /// Movement over the last `window_ns` (at most `max_ticks` samples).
    pub fn new(window_ns: u64, max_ticks: usize) -> Self {
        Self {
            ticks: VecDeque::new(),
            next_tick: 0,
            series: HashMap::new(),
            history: HashMap::new(),
            window_ns,
            max_ticks: max_ticks.max(2),
        }
    }

    /// Record one observation of every group present now. Groups absent at a
    /// tick count as zero there.
    pub fn record(&mut self, now_ns: u64, groups: impl IntoIterator<Item = (K, u32, u32)>) {
        let tick = self.next_tick;
        self.next_tick += 1;
        self.ticks.push_back((tick, now_ns));
        for (key, total, aged) in groups {
            let h = self.history.entry(key.clone()).or_insert(History {
                first_ns: now_ns,
                first_aged: aged,
                last_aged: 0,
                rises: 0,
                last_rise_ns: 0,
                seen_ns: now_ns,
            });
            if aged > h.last_aged && h.seen_ns != now_ns {
                h.rises += 1;
                h.last_rise_ns = now_ns;
            }
            h.last_aged = aged;
            h.seen_ns = now_ns;
            self.series
                .entry(key)
                .or_default()
                .push_back(Sample { tick, total, aged });
        }
        // Absent now: zero. A series gone for a whole window is forgotten.
        let window = self.window_ns;
        self.history.retain(|_, h| {
            if h.seen_ns != now_ns {
                h.last_aged = 0;
            }
            now_ns.saturating_sub(h.seen_ns) <= window
        });
        while self.ticks.len() > self.max_ticks
            || self
                .ticks
                .front()
                .is_some_and(|&(_, t)| now_ns.saturating_sub(t) > window)
        {
            self.ticks.pop_front();
        }
        let oldest = self.ticks.front().map(|&(t, _)| t).unwrap_or(0);
        self.series.retain(|_, s| {
            while s.front().is_some_and(|x| x.tick < oldest) {
                s.pop_front();
            }
            !s.is_empty()
        });
    }

    /// The series' total at each tick of the window, oldest first (zero
    /// where it was absent): what a trend mark draws.
    pub fn totals(&self, key: &K) -> Vec<u32> {
        // Both are in tick order: one pass over each, whatever the window.
        let mut samples = self.series.get(key).into_iter().flatten().peekable();
        self.ticks
            .iter()
            .map(|&(tick, _)| {
                while samples.next_if(|s| s.tick < tick).is_some() {}
                samples.next_if(|s| s.tick == tick).map_or(0, |s| s.total)
            })
            .collect()
    }

    pub fn movement(&self, key: &K) -> Movement {
        let (Some(&(_, t0)), Some(&(_, tn))) = (self.ticks.front(), self.ticks.back()) else {
            return Movement::default();
        };
        let session = self
            .history
            .get(key)
            .map(|h| Session {
                span_s: tn.saturating_sub(h.first_ns) as f64 / 1e9,
                aged_first: h.first_aged,
                aged_last: h.last_aged,
                rises: h.rises,
                growing_s: h.last_rise_ns.saturating_sub(h.first_ns) as f64 / 1e9,
                flat_s: if h.last_rise_ns == 0 {
                    tn.saturating_sub(h.first_ns) as f64 / 1e9
                } else {
                    tn.saturating_sub(h.last_rise_ns) as f64 / 1e9
                },
            })
            .unwrap_or_default();
        let Some(series) = self.series.get(key) else {
            return Movement {
                session,
                ticks: self.ticks.len(),
                window_s: (tn - t0) as f64 / 1e9,
                ..Movement::default()
            };
        };
        let points: Vec<(f64, f64, f64)> = self
            .ticks
            .iter()
            .map(|&(tick, t)| {
                let s = series.iter().find(|s| s.tick == tick);
                let x = (t - t0) as f64 / 1e9;
                (
                    x,
                    s.map_or(0.0, |s| s.total as f64),
                    s.map_or(0.0, |s| s.aged as f64),
                )
            })
            .collect();
        let aged_at = |tick: u64| series.iter().find(|s| s.tick == tick).map_or(0, |s| s.aged);
        let aged_rises = points.windows(2).filter(|w| w[1].2 > w[0].2).count();
        Movement {
            aged_rises,
            growth_per_s: slope(points.iter().map(|p| (p.0, p.1))),
            aged_slope: slope(points.iter().map(|p| (p.0, p.2))),
            aged_first: aged_at(self.ticks.front().map_or(0, |t| t.0)),
            aged_last: aged_at(self.ticks.back().map_or(0, |t| t.0)),
            ticks: self.ticks.len(),
            window_s: (tn - t0) as f64 / 1e9,
            session,
        }
    }
}

fn slope(points: impl Iterator<Item = (f64, f64)> + Clone) -> f64 {
    let n = points.clone().count() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .clone()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn totals_per_tick_with_zero_where_absent() {
        let mut t = Trends::new(3 * S, 100);
        t.record(0, [("a", 1, 0)]);
        t.record(S, [("b", 7, 0)]);
        t.record(2 * S, [("a", 3, 0)]);
        t.record(3 * S, [("a", 4, 0), ("b", 8, 0)]);
        assert_eq!(t.totals(&"a"), [1, 0, 3, 4]);
        assert_eq!(t.totals(&"b"), [0, 7, 0, 8]);
        // The first tick leaves the 3s window.
        t.record(4 * S, [("a", 5, 0)]);
        assert_eq!(t.totals(&"a"), [0, 3, 4, 5]);
        assert_eq!(t.totals(&"c"), [0, 0, 0, 0]);
    }

    #[test]
    fn steady_growth_has_its_rate() {
        let mut t = Trends::new(60 * S, 100);
        for i in 0..6u32 {
            t.record(i as u64 * S, [("a", 10 + 5 * i, 5 * i)]);
        }
        let m = t.movement(&"a");
        assert!((m.growth_per_s - 5.0).abs() < 1e-9, "{m:?}");
        assert_eq!((m.aged_first, m.aged_last), (0, 25));
        assert_eq!(m.aged_rises, 5);
        assert_eq!(m.ticks, 6);
        assert!((m.window_s - 5.0).abs() < 1e-9);
    }

    #[test]
    fn absent_ticks_count_as_zero_and_window_slides() {
        let mut t = Trends::new(60 * S, 3);
        t.record(0, [("a", 4, 4)]);
        t.record(S, Vec::<(&str, u32, u32)>::new());
        t.record(2 * S, [("a", 4, 4)]);
        t.record(3 * S, [("a", 4, 4)]);
        let m = t.movement(&"a");
        assert_eq!(m.ticks, 3);
        assert_eq!((m.aged_first, m.aged_last), (0, 4));
        assert!(m.growth_per_s > 0.0);
        // Flat once the gap leaves the window.
        t.record(4 * S, [("a", 4, 4)]);
        assert_eq!(t.movement(&"a").growth_per_s, 0.0);
    }

    #[test]
    fn a_leak_that_stopped_is_remembered_past_the_window() {
        // 10 s window; grows 0 → 40 over the first 4 s, then flat for 20 s.
        let mut t = Trends::new(10 * S, 1000);
        for i in 0..=24u64 {
            let aged = (i.min(4) * 10) as u32;
            t.record(i * S, [("a", aged, aged)]);
        }
        let m = t.movement(&"a");
        assert_eq!(m.aged_rises, 0, "flat over the recent window");
        assert_eq!(m.growth_per_s, 0.0);
        assert_eq!(m.session.grew(), 40);
        assert_eq!(m.session.rises, 4);
        assert!((m.session.growing_s - 4.0).abs() < 1e-9, "{m:?}");
        assert!((m.session.flat_s - 20.0).abs() < 1e-9, "{m:?}");
        assert!((m.window_s - 10.0).abs() < 1e-9, "{m:?}");
    }
}
