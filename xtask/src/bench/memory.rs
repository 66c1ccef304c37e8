//! Section 5: leaktrace's peak RSS per live goroutine (from section 4's
//! runs when it ran, and once at 1,000,000 goroutines in a full run).
use std::time::Duration;

use anyhow::Result;

use super::{
    Markdown, Plan, Tools,
    attach::{AttachRss, AttachRun, attach_once, chan_send},
    report::num_after,
};

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools, rss: AttachRss) -> Result<()> {
    let n = plan.attach_goroutines;
    let (small_rss, many_rss, many_runs) = match rss {
        Some(v) => v,
        None => {
            let mut small = chan_send(t, 100)?;
            let s = attach_once(t, small.pid(), "leaktrace --pid chan_send")?;
            small.stop(Duration::from_secs(10));
            let mut many = chan_send(t, n)?;
            let m = attach_once(t, many.pid(), "leaktrace --pid chan_send")?;
            many.stop(Duration::from_secs(30));
            (s.time.maxrss_kb, m.time.maxrss_kb, 1)
        }
    };
    let per = |rss_kb: f64, count: u64| (rss_kb - small_rss) * 1024.0 / count as f64;
    let mut rows = vec![
        vec![
            "100".into(),
            format!("{:.0}", small_rss / 1024.0),
            "–".into(),
            "baseline".into(),
        ],
        vec![
            format!("{n}"),
            format!("{:.0}", many_rss / 1024.0),
            format!("{:.0}", per(many_rss, n)),
            format!("median of {many_runs} (section 4)"),
        ],
    ];
    let mut note = String::new();
    if plan.one_million {
        let m = 1_000_000;
        eprintln!("bench: memory: chan_send -n {m} (takes a few minutes)");
        let r = (|| -> Result<(AttachRun, f64)> {
            let mut p = chan_send(t, m)?;
            let target_rss = std::fs::read_to_string(format!("/proc/{}/status", p.pid()))
                .ok()
                .and_then(|s| num_after(&s, "VmRSS:"))
                .unwrap_or(f64::NAN);
            let r = attach_once(t, p.pid(), "leaktrace --pid chan_send -n 1000000");
            p.stop(Duration::from_secs(60));
            Ok((r?, target_rss))
        })();
        match r {
            Ok((r, target_rss)) => {
                rows.push(vec![
                    format!("{m}"),
                    format!("{:.0}", r.time.maxrss_kb / 1024.0),
                    format!("{:.0}", per(r.time.maxrss_kb, m)),
                    format!(
                        "1 run: first report after {:.1} s, done after {:.1} s, {:.1} s CPU; \
                         the target itself had {:.0} MiB RSS",
                        r.first_report_s,
                        r.total_s,
                        r.time.cpu_s,
                        target_rss / 1024.0
                    ),
                ]);
            }
            Err(e) => note = format!("The 1,000,000-goroutine run failed: {e:#}"),
        }
    } else {
        note = "1,000,000 goroutines: not run with --quick (the full run does it once).".into();
    }
    md.h2("5. Memory");
    md.line(
        "leaktrace's peak RSS (GNU time's maximum resident set size; leaktrace has no child in \
         --pid mode) for `--interval 100ms --count 2` on chan_send holding N leaked goroutines \
         (plus N finished ones), and the growth over the 100-goroutine baseline per goroutine.",
    );
    md.table(
        &[
            "live goroutines",
            "peak RSS (MiB)",
            "bytes per goroutine over baseline",
            "notes",
        ],
        &rows,
    );
    if !note.is_empty() {
        md.line(&note);
    }
    Ok(())
}
