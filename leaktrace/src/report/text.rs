//! The human view: one line per group, sorted by count, like bcc's memleak
//! and panicparse, with the verdict and its reason underneath.
use std::io::Write;

use anyhow::Result;

use super::{
    labels,
    model::{GroupReport, Overhead, Report, ThreadVerdict, ThreadsReport},
};
use crate::{
    aggregate::verdict::{Verdict, human_secs},
    runtime::{RuntimeKind, Shown},
    symbols::Frame,
};

pub struct TextStyle {
    pub color: bool,
    pub stacks: bool,
    /// A trend mark (`▁▂▄▇`) after each group's growth: for people at a
    /// terminal, not for files or pipes that other tools read.
    pub trend: bool,
}

pub fn write(out: &mut dyn Write, report: &Report, style: &TextStyle) -> Result<()> {
    let paint = |code: &str, s: &str| {
        if style.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let t = &report.target;
    let e = &report.events;
    let kind = t.runtime;
    let tasks = kind.tasks;
    let counters = |shown: Shown| -> Vec<String> {
        e.extra
            .iter()
            .filter(|c| c.shown == shown)
            .map(|c| format!("{} {}", c.value, c.label))
            .collect()
    };
    let headline: String = counters(Shown::Headline)
        .iter()
        .map(|c| format!(", {c}"))
        .collect();
    let exited = kind.ended;
    writeln!(
        out,
        "{} {} {tasks} live in pid {} ({} {}), {}{} runtime; after {}: {} spawned, {} {exited}{headline}, {} lost",
        paint(
            "1",
            if report.is_final {
                "Final report:"
            } else {
                "Report:"
            }
        ),
        report.live,
        t.pid,
        t.exe,
        t.runtime_version,
        if report.blocking > 0 {
            format!("{} blocking, ", report.blocking)
        } else {
            String::new()
        },
        report.system,
        human_secs(report.elapsed_s),
        e.spawn,
        e.exit,
        e.lost,
    )?;
    match report.data_age_s {
        Some(age) => writeln!(out, "data as of {age:.1} s ago")?,
        None => writeln!(out, "data: probe events only (no memory read yet)")?,
    }
    let detail = counters(Shown::Detail);
    if !detail.is_empty() {
        writeln!(out, "  {}", detail.join(", "))?;
    }
    if let Some(o) = &report.overhead {
        writeln!(out, "{}", overhead_line(o))?;
        for a in &o.approximate {
            writeln!(out, "{} {a}", paint("33", "approximate:"))?;
        }
    }
    if e.lost > 0 {
        writeln!(
            out,
            "{} {} events were lost (ring buffer full); counts may lag until the next memory refresh corrects them",
            paint("33", "warning:"),
            e.lost
        )?;
    }
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    if report.at_exit {
        writeln!(
            out,
            "{} as they were when the program exited: any still blocked is a leak",
            paint("1", &format!("{} {tasks}", report.live))
        )?;
    }
    if let Some(d) = report.deadlock {
        writeln!(
            out,
            "{} all {} {tasks} of the program have been blocked for ≥ {} on each other (none \
             running, none waiting on I/O or a timer): nothing can run again",
            paint("1;31", "DEADLOCK:"),
            d.participants,
            human_secs(d.blocked_s)
        )?;
    }
    for d in &report.partial_deadlocks {
        writeln!(
            out,
            "{} {} {tasks} wait for each other on channels nothing else in the program can reach, \
             blocked for ≥ {}:",
            paint("1;31", "DEADLOCK (partial):"),
            d.members,
            human_secs(d.blocked_s)
        )?;
        for p in &d.participants {
            writeln!(
                out,
                "  {} {} at {}, created by {}: {}",
                kind.task,
                p.id,
                p.blocked_at.as_deref().unwrap_or("?"),
                p.created_by,
                p.waits.join(", ")
            )?;
        }
        let more = d.members.saturating_sub(d.participants.len() as u64);
        if more > 0 {
            writeln!(out, "  … and {more} more")?;
        }
    }
    if report.groups.is_empty() {
        writeln!(out, "  (no groups to show)")?;
    }
    for g in &report.groups {
        write_group(out, g, kind, style, &paint)?;
    }
    if report.groups_omitted > 0 {
        writeln!(
            out,
            "  … {} more groups (see --top, --older)",
            report.groups_omitted
        )?;
    }
    if let Some(threads) = &report.threads {
        write_threads(out, threads, &paint)?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn write_group(
    out: &mut dyn Write,
    g: &GroupReport,
    kind: RuntimeKind,
    style: &TextStyle,
    paint: &dyn Fn(&str, &str) -> String,
) -> Result<()> {
    let verdict = match g.verdict {
        Verdict::Leak => paint("1;31", "LEAK"),
        Verdict::Suspect => paint("33", "suspect"),
        Verdict::Ok => paint("32", "ok"),
    };
    let blocked = g
        .blocked_s
        .map(|b| {
            let ge = |lower_bound: bool| if lower_bound { "≥" } else { "" };
            if (b.max - b.min).abs() < 0.5 && b.min_at_least == b.max_at_least {
                format!("{}{}", ge(b.max_at_least), human_secs(b.max))
            } else {
                format!(
                    "{}{}–{}{}",
                    ge(b.min_at_least),
                    human_secs(b.min),
                    ge(b.max_at_least),
                    human_secs(b.max)
                )
            }
        })
        .unwrap_or_else(|| "-".into());
    // Padded to the plural's width, so counts line up.
    let noun = if let Some(label) = g.kind {
        // tokio `spawn_blocking` closures: not async tasks.
        label.to_string()
    } else if g.count == 1 {
        format!("{:<width$}", kind.task, width = kind.tasks.len())
    } else {
        kind.tasks.to_string()
    };
    let origin = match kind.spawned {
        // tokio: `future app::handle spawned by app::listen (main.rs:88)`.
        Some(spawned) if g.created_by != g.start => format!(
            "{} {} {spawned} {}",
            kind.origin,
            g.start.function,
            site(&g.created_by)
        ),
        _ => format!("{} {}", kind.origin, labels::creator(g)),
    };
    let mark = match trend_mark(&g.trend) {
        Some(m) if style.trend => format!(" {m}"),
        _ => String::new(),
    };
    let mut line = format!(
        "{:>7} {noun}  {}  {}  {:+.1}/s{mark}  {}  {origin}",
        g.count,
        paint("1", &g.state),
        blocked,
        g.growth_per_s,
        verdict,
    );
    if let Some(via) = &g.created_via {
        line.push_str(&format!(" via {}", site(via)));
    }
    if let Some(at) = &g.blocked_at {
        line.push_str(&format!(", blocked in {}", site(at)));
    } else if kind.spawned.is_none() && g.start.function != g.created_by.function {
        line.push_str(&format!(", running {}", g.start.function));
    }
    writeln!(out, "{line}")?;
    writeln!(out, "          {}", g.why)?;
    if let Some(ch) = g.channels.as_ref().filter(|c| !c.summary.is_empty()) {
        writeln!(out, "          channels: {}", ch.summary)?;
    }
    if let (Some(cause), Some(fix)) = (g.cause, g.fix) {
        writeln!(out, "          cause: {cause} — fix: {fix}")?;
    }
    if style.stacks {
        for f in &g.stack {
            writeln!(out, "            {}", f.function)?;
            // A tokio await chain ends in a leaf future known by type only.
            if !f.file.is_empty() {
                writeln!(out, "                {}:{}", f.file, f.line)?;
            }
        }
        if !g.sample_ids.is_empty() {
            let ids: Vec<String> = g.sample_ids.iter().map(u64::to_string).collect();
            writeln!(out, "            e.g. {} {}", kind.ids, ids.join(", "))?;
        }
    }
    Ok(())
}

/// Width of the trend mark, in characters.
const TREND_WIDTH: usize = 8;

/// The group's size over the window as up to [`TREND_WIDTH`] bars, each the
/// size at the end of its slice of the samples, scaled from zero to the
/// largest: a leak climbs (`▁▂▄▇`), a steady group is level. None with
/// fewer than two samples (no trend yet).
pub fn trend_mark(totals: &[u32]) -> Option<String> {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if totals.len() < 2 {
        return None;
    }
    let width = totals.len().min(TREND_WIDTH);
    let points: Vec<u32> = (1..=width)
        .map(|i| totals[(i * totals.len()).div_ceil(width) - 1])
        .collect();
    let max = points.iter().copied().max().unwrap_or(0);
    Some(
        points
            .iter()
            .map(|&v| match max {
                0 => BARS[0],
                _ => BARS[(v as usize * (BARS.len() - 1)).div_ceil(max as usize)],
            })
            .collect(),
    )
}

/// `function (file.go:12)`, or the function alone when it has no file.
pub fn site(f: &Frame) -> String {
    let file = f.file.rsplit('/').next().unwrap_or(&f.file);
    if file.is_empty() {
        f.function.to_string()
    } else {
        format!("{} ({file}:{})", f.function, f.line)
    }
}

/// OS threads: one short line per group, growing ones with their reason.
fn write_threads(
    out: &mut dyn Write,
    t: &ThreadsReport,
    paint: &dyn Fn(&str, &str) -> String,
) -> Result<()> {
    let lost = if t.lost > 0 {
        format!(", {} events lost", t.lost)
    } else {
        String::new()
    };
    writeln!(
        out,
        "{} {} live; since attach {} created, {} exited{lost}",
        paint("1", "Threads:"),
        t.live,
        t.created,
        t.exited
    )?;
    writeln!(
        out,
        "  {:>5}  {:<16} {:>7}  {:>7}  {:<7}  created by",
        "count", "name", "oldest", "growth", "verdict"
    )?;
    for g in &t.groups {
        let verdict = match g.verdict {
            ThreadVerdict::Growing => paint("1;31", "GROWING"),
            ThreadVerdict::Ok => paint("32", "ok     "),
        };
        writeln!(
            out,
            "  {:>5}  {:<16} {:>7}  {:>+7.1}  {verdict}  {}",
            g.count,
            g.name,
            human_secs(g.oldest_s),
            g.growth_per_s,
            g.created_by
        )?;
        if g.verdict == ThreadVerdict::Growing {
            writeln!(out, "         {}", g.why)?;
        }
    }
    Ok(())
}

/// `overhead ≈ 0.4 % of the target's CPU (budget 2 %); probes: spawn 120/s,
/// park shed (≈ 40k/s), exit 118/s`.
pub fn overhead_line(o: &Overhead) -> String {
    let budget = match o.budget_pct {
        Some(b) if !o.sheddable => {
            format!("budget {b} %, not enforced: these probes cannot be shed")
        }
        Some(b) if o.nearly_idle => {
            format!("budget {b} %, judged against a tenth of a core: the target is nearly idle")
        }
        Some(b) => format!("budget {b} %"),
        None => "no budget".to_string(),
    };
    let rate = |r: f64| {
        if r >= 10_000.0 {
            format!("{:.0}k/s", r / 1000.0)
        } else {
            format!("{r:.0}/s")
        }
    };
    let probes: Vec<String> = o
        .probes
        .iter()
        .map(|p| {
            if p.armed {
                format!("{} {}", p.name, rate(p.hits_per_s))
            } else {
                format!("{} shed (≈ {})", p.name, rate(p.hits_per_s))
            }
        })
        .chain(
            o.not_armed
                .iter()
                .map(|n| format!("{} not armed ({} arms it)", n.name, n.armed_by)),
        )
        .collect();
    let shed = if o.sheds + o.rearms > 0 {
        format!("; shed {}×, re-armed {}×", o.sheds, o.rearms)
    } else {
        String::new()
    };
    format!(
        "overhead ≈ {:.2} % of the target's CPU ({:.0} % of a core; {budget}); probes: {}{shed}",
        o.estimated_pct,
        o.target_cpu_pct,
        if probes.is_empty() {
            "none".to_string()
        } else {
            probes.join(", ")
        }
    )
}

#[cfg(test)]
mod thread_tests {
    use super::*;
    use crate::report::model::ThreadGroupReport;

    #[test]
    fn threads_table() {
        let group = |name: &str, by: &str, count, verdict, why: &str| ThreadGroupReport {
            name: name.into(),
            pattern: crate::threads::fold_digits(name),
            names: vec![name.into()],
            created_by: by.into(),
            site: None,
            count,
            oldest_s: 12.0,
            growth_per_s: if verdict == ThreadVerdict::Growing {
                2.0
            } else {
                0.0
            },
            verdict,
            why: why.into(),
        };
        let t = ThreadsReport {
            live: 15,
            created: 14,
            exited: 0,
            lost: 0,
            groups: vec![
                group(
                    "conn-1 … conn-10",
                    "app::serve (main.rs:40)",
                    10,
                    ThreadVerdict::Growing,
                    "only grows: 2 → 10 over 4s in 4 steps, none exited (+2.0/s)",
                ),
                group(
                    "tokio-rt-worker",
                    "app::main (main.rs:9)",
                    4,
                    ThreadVerdict::Ok,
                    "flat",
                ),
                group("app", "(main thread)", 1, ThreadVerdict::Ok, "flat"),
            ],
        };
        let mut out = Vec::new();
        write_threads(&mut out, &t, &|_, s| s.to_string()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "Threads: 15 live; since attach 14 created, 0 exited
  count  name              oldest   growth  verdict  created by
     10  conn-1 … conn-10     12s     +2.0  GROWING  app::serve (main.rs:40)
         only grows: 2 → 10 over 4s in 4 steps, none exited (+2.0/s)
      4  tokio-rt-worker      12s     +0.0  ok       app::main (main.rs:9)
      1  app                  12s     +0.0  ok       (main thread)
"
        );
    }
}
