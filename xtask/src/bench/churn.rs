//! Section 1: what each goroutine costs. bench/churn spawns, parks and
//! ends goroutines back to back, untraced, under leaktrace, and under
//! bpftrace at the same functions (entries, and leaktrace's own points).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Markdown, Plan, Tools,
    elf::{NewSymbol, copy_with_symbols},
    probes::Listing,
    proc::{Proc, capture},
    report::{last_report, num_after},
    stats::{fmt_med, median, ratio},
};

/// leaktrace's Go probe programs, and the bpftrace map that counts each.
const PROGRAMS: [(&str, &str); 3] = [("go_spawn", "s"), ("go_park", "p"), ("go_exit", "e")];

/// `churn` copied with an ELF symbol at each of leaktrace's probe points,
/// so that bpftrace (which attaches only at symbols) probes exactly there.
pub(super) struct Points {
    bin: PathBuf,
    /// The symbols, per program of `PROGRAMS`.
    spawn: Vec<String>,
    park: Vec<String>,
    exit: Vec<String>,
    described: String,
}

/// Make the copy of `churn` for `listing`, leaktrace's own list of its
/// probe points in `churn`.
pub(super) fn points(listing: &Listing, churn: &Path) -> Result<Points> {
    if listing.runtime != "go" {
        bail!(
            "leaktrace took {} for a {} program",
            churn.display(),
            listing.runtime
        );
    }
    if let Some(p) = listing
        .probes
        .iter()
        .find(|p| !PROGRAMS.iter().any(|(name, _)| *name == p.program))
    {
        // Leaving it out would compare leaktrace with a bpftrace that
        // probes less.
        bail!(
            "leaktrace also probes {} with {}, which this benchmark does not count",
            p.describe(),
            p.program
        );
    }
    let mut symbols = Vec::new();
    let mut names: [Vec<String>; 3] = Default::default();
    let mut described = Vec::new();
    for ((program, _), group) in PROGRAMS.into_iter().zip(&mut names) {
        let event = program.trim_start_matches("go_");
        // One symbol per address: two at one address would count one hit twice.
        let mut seen = BTreeSet::new();
        let probes: Vec<_> = listing
            .probes
            .iter()
            .filter(|p| p.program == program && seen.insert(p.va))
            .collect();
        if probes.is_empty() {
            bail!("leaktrace lists no {program} probe in {}", churn.display());
        }
        for (i, p) in probes.iter().enumerate() {
            let name = format!("lt_{event}{i}");
            symbols.push(NewSymbol {
                name: name.clone(),
                va: p.va,
                file_offset: p.file_offset,
            });
            group.push(name);
        }
        described.push(format!(
            "{event}: {}",
            probes
                .iter()
                .map(|p| format!("`{}` at {:#x}", p.describe(), p.va))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let copy = churn.with_file_name("churn.lt-points");
    copy_with_symbols(churn, &copy, &symbols)?;
    let [spawn, park, exit] = names;
    Ok(Points {
        bin: copy,
        spawn,
        park,
        exit,
        described: format!(
            "{} (as `leaktrace --explain-probes --detailed` lists them{})",
            described.join("; "),
            listing
                .runtime_version
                .as_ref()
                .map(|v| format!(" for {v}"))
                .unwrap_or_default()
        ),
    })
}

#[derive(Clone)]
enum ChurnCfg {
    Untraced,
    /// leaktrace with these options besides `-c`.
    Leaktrace(PathBuf, &'static [&'static str]),
    /// leaktrace attached by pid, stopped (SIGSTOP) while the program runs:
    /// the probes still fire but nobody reads the ring.
    LeaktraceStopped(PathBuf),
    /// churn with `GOMAXPROCS=1` pinned to CPU 0 (the spawn and the exit of
    /// a goroutine on one CPU), the tracer attached by pid and pinned to
    /// CPU 1: the probes' work on the target's CPU, apart from the tracer's
    /// and from anything shared between CPUs.
    Pinned(Pinned),
    /// bpftrace `count()` at the three functions' entries (the brief's peer).
    BpftraceEntry,
    /// bpftrace `count()` at leaktrace's own probe points; a subset of them.
    BpftracePoints {
        spawn: bool,
        park: bool,
        exit: bool,
    },
}

#[derive(Clone)]
enum Pinned {
    Untraced,
    /// Every probe armed (`--max-overhead off`).
    Leaktrace(PathBuf),
    /// `count()` at leaktrace's default points.
    Bpftrace,
}

struct ChurnRun {
    ns: f64,
    /// Probe hits per goroutine (bpftrace's counts or leaktrace's events).
    hits: f64,
    lost: f64,
    iwi: f64,
}

fn churn_once(t: &Tools, cfg: &ChurnCfg, n: u64) -> Result<ChurnRun> {
    let n_s = n.to_string();
    let iwi0 = interrupts("IWI");
    let limit = Duration::from_secs(600);
    let (ns, hits, lost) = match cfg {
        ChurnCfg::Untraced => {
            let (_, out, _) = capture(Command::new(&t.churn).args(["-n", &n_s]), "churn", limit)?;
            (ns_per_goroutine(&out)?, 0.0, 0.0)
        }
        ChurnCfg::Leaktrace(bin, options) => {
            let report = t.scratch.join("churn-report.jsonl");
            let _ = std::fs::remove_file(&report);
            let (status, out, err) = capture(
                Command::new(bin)
                    .args(*options)
                    .args(["--format", "json", "--output"])
                    .arg(&report)
                    .arg("-c")
                    .arg(&t.churn)
                    .args(["-n", &n_s]),
                "leaktrace -c churn",
                limit,
            )?;
            if !status.success() {
                bail!("leaktrace -c churn: {status}: {err}");
            }
            let ev = last_report(&report)?;
            (ns_per_goroutine(&out)?, ev.delivered() / n as f64, ev.lost)
        }
        ChurnCfg::LeaktraceStopped(bin) => {
            let mut churn = Proc::spawn(
                Command::new(&t.churn).args(["-n", &n_s, "-wait"]),
                "churn -wait",
            )?;
            churn
                .out
                .wait_for("ready", Duration::from_secs(20), |l| l == "ready")?;
            let report = t.scratch.join("churn-stopped.jsonl");
            let _ = std::fs::remove_file(&report);
            let mut lt = Proc::spawn(
                Command::new(bin)
                    .args(["--format", "json", "--output"])
                    .arg(&report)
                    .args(["--pid", &churn.pid().to_string()]),
                "leaktrace --pid churn",
            )?;
            lt.err.wait_for("attach", Duration::from_secs(60), |l| {
                l.starts_with("Attaching")
            })?;
            sleep(Duration::from_millis(300));
            lt.signal("STOP");
            churn.send_line("go")?;
            churn.wait(limit)?;
            let out = churn.out.drain(Duration::from_secs(5));
            lt.signal("CONT");
            lt.wait(Duration::from_secs(60))?;
            let ev = last_report(&report)?;
            (
                ns_per_goroutine(&out)?,
                (ev.delivered() + ev.lost) / n as f64,
                ev.lost,
            )
        }
        ChurnCfg::Pinned(tracer) => pinned_once(t, tracer, n, limit)?,
        ChurnCfg::BpftraceEntry | ChurnCfg::BpftracePoints { .. } => {
            let (bin, script) = bpftrace_script(t, cfg)?;
            let (_, out, err) = capture(
                Command::new("bpftrace")
                    .args(["-e", &script, "-c"])
                    .arg(format!("{} -n {n}", bin.display())),
                "bpftrace -c churn",
                limit,
            )?;
            let ns = ns_per_goroutine(&out).with_context(|| format!("bpftrace: {err}"))?;
            (ns, bpftrace_hits(&out) / n as f64, 0.0)
        }
    };
    Ok(ChurnRun {
        ns,
        hits,
        lost,
        iwi: interrupts("IWI").saturating_sub(iwi0) as f64 / n as f64,
    })
}

/// One [`ChurnCfg::Pinned`] run: (ns per goroutine, hits per goroutine,
/// events lost). Every pinned run traces the copy with symbols at
/// leaktrace's points (bpftrace needs them; the code is the same).
fn pinned_once(t: &Tools, which: &Pinned, n: u64, limit: Duration) -> Result<(f64, f64, f64)> {
    let default_points = ChurnCfg::BpftracePoints {
        spawn: true,
        park: false,
        exit: true,
    };
    let (bin, script) = bpftrace_script(t, &default_points)?;
    let mut churn = Proc::spawn(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(&bin)
            .args(["-n", &n.to_string(), "-wait"])
            .env("GOMAXPROCS", "1"),
        "churn -wait on CPU 0",
    )?;
    churn
        .out
        .wait_for("ready", Duration::from_secs(20), |l| l == "ready")?;
    let pid = churn.pid().to_string();
    let report = t.scratch.join("churn-pinned.jsonl");
    let _ = std::fs::remove_file(&report);
    let tracer = match which {
        Pinned::Untraced => None,
        Pinned::Leaktrace(lt) => {
            let mut p = Proc::spawn(
                Command::new("taskset")
                    .args(["-c", "1"])
                    .arg(lt)
                    .args(["--max-overhead", "off", "--format", "json", "--output"])
                    .arg(&report)
                    .args(["--pid", &pid]),
                "leaktrace --pid churn on CPU 1",
            )?;
            p.err.wait_for("attach", Duration::from_secs(60), |l| {
                l.starts_with("Attaching")
            })?;
            Some(p)
        }
        Pinned::Bpftrace => {
            // BEGIN runs once every probe is attached.
            let script = format!("{script} BEGIN {{ printf(\"ready\\n\"); }}");
            let mut p = Proc::spawn(
                Command::new("taskset").args(["-c", "1", "bpftrace", "-p", &pid, "-e", &script]),
                "bpftrace -p churn on CPU 1",
            )?;
            p.out
                .wait_for("ready", Duration::from_secs(60), |l| l == "ready")?;
            Some(p)
        }
    };
    sleep(Duration::from_millis(300));
    churn.send_line("go")?;
    churn.wait(limit)?;
    let ns = ns_per_goroutine(&churn.out.drain(Duration::from_secs(5)))?;
    let Some(mut p) = tracer else {
        return Ok((ns, 0.0, 0.0));
    };
    p.signal("INT");
    p.wait(Duration::from_secs(60))?;
    Ok(match which {
        Pinned::Leaktrace(_) => {
            let ev = last_report(&report)?;
            (ns, ev.delivered() / n as f64, ev.lost)
        }
        _ => (
            ns,
            bpftrace_hits(&p.out.drain(Duration::from_secs(5))) / n as f64,
            0.0,
        ),
    })
}

/// Hits counted by a bpftrace script of [`bpftrace_script`]: the sum of
/// the maps it printed at exit.
fn bpftrace_hits(out: &str) -> f64 {
    PROGRAMS
        .iter()
        .filter_map(|(_, map)| num_after(out, &format!("@{map}: ")))
        .sum()
}

fn bpftrace_script(t: &Tools, cfg: &ChurnCfg) -> Result<(PathBuf, String)> {
    match cfg {
        ChurnCfg::BpftraceEntry => {
            let b = t.churn.display();
            Ok((
                t.churn.clone(),
                format!(
                    "uprobe:{b}:runtime.newproc1 {{ @s = count() }} \
                     uprobe:{b}:runtime.park_m {{ @p = count() }} \
                     uprobe:{b}:runtime.goexit0 {{ @e = count() }}"
                ),
            ))
        }
        ChurnCfg::BpftracePoints { spawn, park, exit } => {
            let p = t
                .churn_points
                .as_ref()
                .context("leaktrace's probe points are not available")?;
            let b = p.bin.display();
            let mut s = String::new();
            let wanted = [(*spawn, &p.spawn), (*park, &p.park), (*exit, &p.exit)];
            for ((want, names), (_, map)) in wanted.into_iter().zip(PROGRAMS) {
                if want {
                    let pts: Vec<String> =
                        names.iter().map(|n| format!("uprobe:{b}:{n}")).collect();
                    let _ = write!(s, "{} {{ @{map} = count() }} ", pts.join(","));
                }
            }
            Ok((p.bin.clone(), s))
        }
        _ => unreachable!("not a bpftrace configuration"),
    }
}

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let mut cfgs: Vec<(String, ChurnCfg)> = vec![
        ("untraced".into(), ChurnCfg::Untraced),
        (
            "leaktrace -c --max-overhead off (every probe armed)".into(),
            ChurnCfg::Leaktrace(t.leaktrace.clone(), &["--max-overhead", "off"]),
        ),
        (
            "leaktrace --detailed -c --max-overhead off".into(),
            ChurnCfg::Leaktrace(
                t.leaktrace.clone(),
                &["--detailed", "--max-overhead", "off"],
            ),
        ),
        (
            // The bench sets LEAKTRACE_MAX_OVERHEAD=off: the default is
            // given explicitly.
            "leaktrace -c --max-overhead 2 (the default)".into(),
            ChurnCfg::Leaktrace(t.leaktrace.clone(), &["--max-overhead", "2"]),
        ),
    ];
    for (name, bin) in &t.candidates {
        cfgs.push((
            format!("{name} -c --max-overhead off"),
            ChurnCfg::Leaktrace(bin.clone(), &["--max-overhead", "off"]),
        ));
    }
    cfgs.push((
        "bpftrace count(), function entries".into(),
        ChurnCfg::BpftraceEntry,
    ));
    if t.churn_points.is_some() {
        let default = ChurnCfg::BpftracePoints {
            spawn: true,
            park: false,
            exit: true,
        };
        cfgs.push(("bpftrace count(), leaktrace's points".into(), default));
        let all = ChurnCfg::BpftracePoints {
            spawn: true,
            park: true,
            exit: true,
        };
        cfgs.push((
            "bpftrace count(), leaktrace's --detailed points".into(),
            all,
        ));
    }
    let main_cfgs = cfgs.len();
    // The breakdown: which probe costs what, and what the ring's reader costs.
    cfgs.push((
        "leaktrace --pid, stopped (SIGSTOP) while the program runs".into(),
        ChurnCfg::LeaktraceStopped(t.leaktrace.clone()),
    ));
    for (name, bin) in &t.candidates {
        cfgs.push((
            format!("{name} --pid, stopped (SIGSTOP) while the program runs"),
            ChurnCfg::LeaktraceStopped(bin.clone()),
        ));
    }
    if t.churn_points.is_some() {
        for (name, which) in [
            ("untraced, GOMAXPROCS=1 on CPU 0", Pinned::Untraced),
            (
                "leaktrace --pid --max-overhead off on CPU 1, churn GOMAXPROCS=1 on CPU 0",
                Pinned::Leaktrace(t.leaktrace.clone()),
            ),
            (
                "bpftrace count(), leaktrace's points, on CPU 1, churn GOMAXPROCS=1 on CPU 0",
                Pinned::Bpftrace,
            ),
        ] {
            cfgs.push((name.into(), ChurnCfg::Pinned(which)));
        }
        for (name, spawn, park, exit) in [
            ("spawn", true, false, false),
            ("park", false, true, false),
            ("exit", false, false, true),
        ] {
            cfgs.push((
                format!("bpftrace count(), leaktrace's {name} point only"),
                ChurnCfg::BpftracePoints { spawn, park, exit },
            ));
        }
    }
    let mut runs: BTreeMap<usize, Vec<ChurnRun>> = BTreeMap::new();
    for round in 0..plan.runs {
        for (i, (name, cfg)) in cfgs.iter().enumerate() {
            eprintln!("bench: churn round {}/{}: {name}", round + 1, plan.runs);
            match churn_once(t, cfg, plan.churn_n) {
                Ok(r) => runs.entry(i).or_default().push(r),
                Err(e) => eprintln!("bench: churn {name}: {e:#}"),
            }
        }
    }
    let col = |i: usize, f: fn(&ChurnRun) -> f64| -> Vec<f64> {
        runs.get(&i)
            .map(|v| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    let base = median(&col(0, |r| r.ns));
    let lt = median(&col(1, |r| r.ns));
    let row = |i: usize, name: &str| -> Vec<String> {
        let ns = col(i, |r| r.ns);
        let m = median(&ns);
        let hits = median(&col(i, |r| r.hits));
        let per_hit = if hits > 0.0 {
            format!("{:.2}", (m - base) / hits / 1000.0)
        } else {
            "–".into()
        };
        vec![
            name.to_string(),
            format!("{}", runs.get(&i).map_or(0, Vec::len)),
            fmt_med(&ns.iter().map(|x| x / 1000.0).collect::<Vec<_>>(), 2),
            ratio(m, base),
            ratio(lt, m),
            if hits > 0.0 {
                format!("{hits:.2}")
            } else {
                "–".into()
            },
            per_hit,
            format!("{:.0}", median(&col(i, |r| r.lost))),
            format!("{:.3}", median(&col(i, |r| r.iwi))),
        ]
    };
    let header = [
        "configuration",
        "runs",
        "µs per goroutine",
        "× untraced",
        "leaktrace ÷ this",
        "probe hits per goroutine",
        "µs per hit over untraced",
        "events lost",
        "IRQ-work interrupts per goroutine",
    ];
    md.h2("1. Churn: what each goroutine costs");
    md.line(&format!(
        "bench/churn spawns a goroutine, parks once on an unbuffered channel and ends it, {} \
         times back to back, and times only that loop (`ns_per_goroutine`). One goroutine = one \
         spawn, one park, one exit; leaktrace probes spawn and exit by default (2 probe hits), \
         and park too with `--detailed` (3). bpftrace runs `count()` in each probe, with `-c` \
         like leaktrace; \"leaktrace's points\" are its spawn and exit points, \"--detailed \
         points\" add park: {}.",
        plan.churn_n,
        t.churn_points
            .as_ref()
            .map(|p| p.described.clone())
            .unwrap_or_else(|| "not available".into())
    ));
    md.table(
        &header,
        &(0..main_cfgs)
            .map(|i| row(i, &cfgs[i].0))
            .collect::<Vec<_>>(),
    );
    let bt_of = |name: &str| {
        cfgs.iter()
            .position(|(n, _)| n == name)
            .map(|i| median(&col(i, |r| r.ns)))
    };
    let bt_points = bt_of("bpftrace count(), leaktrace's points");
    let bt_detailed = bt_of("bpftrace count(), leaktrace's --detailed points");
    let detailed = median(&col(2, |r| r.ns));
    let default = median(&col(3, |r| r.ns));
    let bt_entry = cfgs
        .iter()
        .position(|(_, c)| matches!(c, ChurnCfg::BpftraceEntry))
        .map(|i| median(&col(i, |r| r.ns)));
    md.line(&format!(
        "Headline: leaktrace with every probe armed {:.2} µs vs untraced {:.2} µs per goroutine \
         ({}); bpftrace at function entries {} ({} of leaktrace's time); bpftrace at \
         leaktrace's own points {} (leaktrace takes {} of that). With `--detailed` {:.2} µs, \
         bpftrace at the same three points {} ({}). The floor is about 0.7 µs over untraced \
         per emulated probe hit. With its default budget leaktrace sheds both probes within \
         churn's warm-up and the run costs {:.2} µs per goroutine ({}), the goroutines then \
         followed by reads of `runtime.allgs` (§7).",
        lt / 1000.0,
        base / 1000.0,
        ratio(lt, base),
        bt_entry.map_or("–".into(), |v| format!("{:.2} µs", v / 1000.0)),
        bt_entry.map_or("–".into(), |v| ratio(v, lt)),
        bt_points.map_or("–".into(), |v| format!("{:.2} µs", v / 1000.0)),
        bt_points.map_or("–".into(), |v| ratio(lt, v)),
        detailed / 1000.0,
        bt_detailed.map_or("–".into(), |v| format!("{:.2} µs", v / 1000.0)),
        bt_detailed.map_or("–".into(), |v| ratio(detailed, v)),
        default / 1000.0,
        ratio(default, base),
    ));
    md.line(
        "Breakdown (same rounds): leaktrace attached by pid but stopped, so its probes run and \
         reserve ring space until the ring is full, then count losses, with no reader to wake; \
         churn on one CPU with `GOMAXPROCS=1` (each goroutine's spawn and exit on the same \
         CPU) and the tracer pinned to the other, attached by pid (the copy with symbols at \
         leaktrace's points, so that bpftrace can probe them); and bpftrace on one of \
         leaktrace's points at a time.",
    );
    md.table(
        &header,
        &(main_cfgs..cfgs.len())
            .map(|i| row(i, &cfgs[i].0))
            .collect::<Vec<_>>(),
    );
    Ok(())
}

fn ns_per_goroutine(out: &str) -> Result<f64> {
    num_after(out, "ns_per_goroutine ")
        .with_context(|| format!("no ns_per_goroutine in the program's output: {out:?}"))
}

/// Sum of one /proc/interrupts row over all CPUs (e.g. `IWI`, IRQ work).
fn interrupts(row: &str) -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.trim_start().starts_with(&format!("{row}:")))
                .map(|l| {
                    l.split_whitespace()
                        .skip(1)
                        .map_while(|w| w.parse::<u64>().ok())
                        .sum()
                })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(runtime: &str, programs: &[&str]) -> Listing {
        let probes: Vec<String> = programs
            .iter()
            .map(|p| format!(r#"{{"program":"{p}","event":"x","va":1,"file_offset":1}}"#))
            .collect();
        serde_json::from_str(&format!(
            r#"{{"runtime":"{runtime}","probes":[{}]}}"#,
            probes.join(",")
        ))
        .unwrap()
    }

    /// Refused before any file is touched: these never reach objcopy.
    #[test]
    fn points_need_exactly_the_go_programs() {
        let bin = Path::new("/nonexistent/churn");
        let err = |l: Listing| format!("{:#}", points(&l, bin).err().unwrap());
        assert!(err(listing("tokio", &["tokio_task"])).contains("for a tokio program"));
        assert!(
            err(listing(
                "go",
                &["go_spawn", "go_park", "go_exit", "go_ready"]
            ))
            .contains("does not count")
        );
        assert!(err(listing("go", &["go_spawn", "go_exit"])).contains("no go_park probe"));
    }
}
