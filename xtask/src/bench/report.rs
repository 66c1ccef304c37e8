//! Figures read back from text: the number a program prints after a key,
//! and the event totals in leaktrace's last JSON report line. A loose
//! "first number after the key" is enough for both and keeps the benchmark
//! independent of the report's exact shape.
use std::path::Path;

use anyhow::{Context as _, Result};

/// The probe count of leaktrace's `Attaching …, 20 task types, 24 probes;
/// Ctrl-C …` line (NaN when absent).
pub(super) fn attached_probes(line: &str) -> f64 {
    line.split_once(" probes;")
        .and_then(|(s, _)| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The number right after the first `key` in `text`.
pub(super) fn num_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    let s: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | '+'))
        .collect();
    s.parse().ok()
}

/// Event totals of leaktrace's last JSON report in `path`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Events {
    pub(super) spawn: f64,
    pub(super) park: f64,
    pub(super) exit: f64,
    pub(super) lost: f64,
    pub(super) live: f64,
    /// tokio only (NaN in a Go report): polls and wakes, seen with --detailed.
    pub(super) poll: f64,
    pub(super) wake: f64,
}

impl Events {
    /// Go's records: spawns, exits and (with `--detailed`, else absent)
    /// parks.
    pub(super) fn delivered(&self) -> f64 {
        let park = if self.park.is_nan() { 0.0 } else { self.park };
        self.spawn + park + self.exit
    }
}

pub(super) fn last_report(path: &Path) -> Result<Events> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading leaktrace's report {}", path.display()))?;
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("\"events\""))
        .with_context(|| format!("no report in {}", path.display()))?;
    let ev = &last[last.find("\"events\"").unwrap_or(0)..];
    let get = |k: &str| num_after(ev, &format!("\"{k}\":")).unwrap_or(f64::NAN);
    Ok(Events {
        spawn: get("spawn"),
        park: get("park"),
        exit: get("exit"),
        lost: get("lost"),
        live: num_after(last, "\"live\":").unwrap_or(f64::NAN),
        poll: get("poll"),
        wake: get("wake"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_probe_count_of_the_attach_line() {
        let line = "Attaching to pid 7 (/bin/x, tokio 1.49.0, 1.90.0), 63 task types, 72 probes; \
                    Ctrl-C for the final report.";
        assert_eq!(attached_probes(line), 72.0);
        assert!(attached_probes("Attaching to pid 7").is_nan());
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(
            num_after("ns_per_goroutine 504.6\n", "ns_per_goroutine "),
            Some(504.6)
        );
        assert_eq!(num_after("{\"lost\":12,", "\"lost\":"), Some(12.0));
    }
}
