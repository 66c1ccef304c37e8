//! Section 6: what leaktrace costs a tokio program, per task and per poll.
//!
//! The target is tests/fixtures/rust's `tokio-fixture` (release profile) in
//! its two benchmark modes: `spawnbench` (one task spawns trivial tasks in
//! batches of 1,000 and awaits them) and `pollbench` (one task yields N
//! times). Each times its own loop, after a 10 % warm-up, so leaktrace's
//! attach and final report never count.
//!
//! Configurations, interleaved per round: untraced; leaktrace attached by
//! pid in default mode (probes once per task) and with `--detailed` (every
//! poll and wake too); and bpftrace with a bare `count()` at the same
//! functions for each mode, the floor any uprobe-based tracer pays there.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Markdown, Plan, Tools,
    proc::{Proc, capture},
    report::{Events, attached_probes, last_report, num_after},
    stats::{fmt_med, median, ratio},
};
use crate::util;

/// How long the fixture sleeps before it starts measuring: leaktrace --pid
/// attaches in about 0.1 s here but once took 1.9 s on a loaded machine,
/// and what it reads right after attaching should be done before the
/// program's clock starts. Every configuration gets the same command line,
/// so the untraced runs sleep too.
const DELAY: Duration = Duration::from_millis(2500);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bench {
    Spawn,
    Poll,
}

impl Bench {
    fn mode(self) -> &'static str {
        match self {
            Bench::Spawn => "spawnbench",
            Bench::Poll => "pollbench",
        }
    }

    /// The line the fixture prints its result on.
    fn key(self) -> &'static str {
        match self {
            Bench::Spawn => "spawn_ns_per_task ",
            Bench::Poll => "poll_ns ",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Bench::Spawn => "task",
            Bench::Poll => "yield",
        }
    }

    fn n(self, plan: &Plan) -> u64 {
        match (self, plan.quick) {
            (Bench::Spawn, false) => 300_000,
            (Bench::Spawn, true) => 100_000,
            (Bench::Poll, false) => 1_000_000,
            (Bench::Poll, true) => 300_000,
        }
    }

    /// Operations in a whole run, warm-up included: what the probes see,
    /// while the fixture's figure covers the last `n` only.
    fn ops(self, n: u64) -> f64 {
        match self {
            Bench::Spawn => (n + n / 10 + 1) as f64,
            Bench::Poll => (n + n / 10) as f64,
        }
    }
}

#[derive(Clone)]
enum Cfg {
    Untraced,
    Leaktrace {
        bin: PathBuf,
        detailed: bool,
    },
    /// bpftrace `count()` at leaktrace's functions for that mode.
    Floor {
        detailed: bool,
    },
}

/// The functions leaktrace probes in the fixture, by mangled name.
#[derive(Default)]
struct Points {
    spawn: Vec<String>,
    complete: Vec<String>,
    shutdown: Vec<String>,
    poll: Vec<String>,
    wake: Vec<String>,
}

/// leaktrace's own probe points, as `leaktrace --explain-probes --detailed`
/// lists them (every point of the detailed plan; the default plan is its
/// spawn, completion and cancellation points), by the mangled name of the
/// function each point enters, so bpftrace counts at exactly those.
fn points(leaktrace: &Path, bin: &Path) -> Result<Points> {
    let listing = super::probes::explain_with(leaktrace, bin, &["--detailed"])?;
    if listing.runtime != "rust-tokio" {
        bail!(
            "leaktrace sees {} as a {} program, not tokio",
            bin.display(),
            listing.runtime
        );
    }
    let mut p = Points::default();
    // Aliases at one address would make bpftrace count one call twice.
    let mut seen = std::collections::BTreeSet::new();
    for probe in listing.probes {
        let list = match probe.event.as_deref() {
            Some("spawn") => &mut p.spawn,
            Some("complete") => &mut p.complete,
            Some("shutdown") => &mut p.shutdown,
            Some("poll") => &mut p.poll,
            Some("wake") => &mut p.wake,
            other => bail!("leaktrace listed a tokio probe for {other:?}"),
        };
        if probe.symbol_offset.unwrap_or(0) != 0 {
            bail!(
                "{} is not at a function entry; bpftrace's count would be somewhere else",
                probe.describe()
            );
        }
        let name = probe
            .symbol
            .clone()
            .with_context(|| format!("no symbol for {} (a stripped fixture?)", probe.describe()))?;
        if seen.insert(probe.va) {
            list.push(name);
        }
    }
    if p.spawn.is_empty() || p.complete.is_empty() || p.poll.is_empty() {
        bail!(
            "leaktrace's listing for {} lacks a kind of point (bind_inner {}, release {}, poll {})",
            bin.display(),
            p.spawn.len(),
            p.complete.len(),
            p.poll.len()
        );
    }
    Ok(p)
}

/// One `count()` map per kind of point: @s spawn, @r completion, @x
/// cancellation, and with `detailed` @p poll and @w wake.
fn bpftrace_script(bin: &Path, p: &Points, detailed: bool) -> String {
    let mut groups = vec![("s", &p.spawn), ("r", &p.complete), ("x", &p.shutdown)];
    if detailed {
        groups.extend([("p", &p.poll), ("w", &p.wake)]);
    }
    groups
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(map, names)| {
            let probes: Vec<String> = names
                .iter()
                .map(|n| format!("uprobe:{}:\"{n}\"", bin.display()))
                .collect();
            format!("{} {{ @{map} = count() }}", probes.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Build the fixture where the tests build it (so the build is shared),
/// then run a private copy: bpftrace's uprobes are per file, so a test
/// running the shared binary meanwhile would be counted (and slowed), and a
/// rebuild could swap the file in the middle of a round.
pub(super) fn fixture(t: &Tools) -> Result<PathBuf> {
    let target = util::target_dir().join("tokio-fixtures");
    util::run(
        Command::new("nice")
            .args(["-n", "19", "cargo", "build", "--locked", "--quiet"])
            .args(["--profile", "release", "--target-dir"])
            .arg(&target)
            .current_dir(util::workspace_root().join("tests/fixtures/rust"))
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS"),
    )?;
    let copy = t.scratch.join("tokio-fixture");
    // Unlink first: a copy onto a file still being executed fails.
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(target.join("release/tokio-fixture"), &copy)
        .with_context(|| format!("copying the tokio fixture to {}", copy.display()))?;
    Ok(copy)
}

/// A process's CPU time so far (s): its threads' run time from schedstat,
/// in ns, because /proc/PID/stat's 10 ms ticks are too coarse for a window
/// of a second. Ended threads drop out; leaktrace's threads live as long
/// as it does.
fn cpu_s(pid: u32) -> Result<f64> {
    let mut ns = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(ns / 1e9)
}

struct Run {
    /// The fixture's own figure: ns per task or per yield.
    ns: f64,
    /// What the probes counted over the whole run (leaktrace's report or
    /// bpftrace's maps).
    ev: Events,
    /// leaktrace's CPU and the wall time from the end of the fixture's
    /// delay to its result line (warm-up and loop).
    cpu_s: f64,
    window_s: f64,
    /// Probes leaktrace said it attached.
    probes: f64,
    /// tokio and rustc versions as leaktrace read them.
    version: Option<String>,
}

impl Run {
    fn plain(ns: f64, ev: Events) -> Self {
        Self {
            ns,
            ev,
            cpu_s: f64::NAN,
            window_s: f64::NAN,
            probes: f64::NAN,
            version: None,
        }
    }
}

/// What every run needs.
struct Ctx<'a> {
    t: &'a Tools,
    fixture: PathBuf,
    points: Points,
}

fn result_ns(out: &str, b: Bench) -> Result<f64> {
    num_after(out, b.key())
        .with_context(|| format!("no `{}` in the fixture's output: {out:?}", b.key().trim()))
}

fn once(c: &Ctx, cfg: &Cfg, b: Bench, n: u64) -> Result<Run> {
    let args = [
        b.mode().to_string(),
        "--n".into(),
        n.to_string(),
        "--delay".into(),
        format!("{}ms", DELAY.as_millis()),
    ];
    let limit = Duration::from_secs(600);
    match cfg {
        Cfg::Untraced => {
            let (_, out, _) =
                capture(Command::new(&c.fixture).args(&args), "tokio-fixture", limit)?;
            Ok(Run::plain(result_ns(&out, b)?, Events::default()))
        }
        Cfg::Floor { detailed } => {
            let (_, out, err) = capture(
                Command::new("bpftrace")
                    .arg("-e")
                    .arg(bpftrace_script(&c.fixture, &c.points, *detailed))
                    .arg("-c")
                    .arg(format!("{} {}", c.fixture.display(), args.join(" "))),
                "bpftrace -c tokio-fixture",
                limit,
            )?;
            let ns = result_ns(&out, b).with_context(|| format!("bpftrace: {err}"))?;
            // A map that never counted is not printed at all.
            let count = |m: &str| num_after(&out, &format!("@{m}: ")).unwrap_or(0.0);
            let ev = Events {
                spawn: count("s"),
                exit: count("r"),
                poll: count("p"),
                wake: count("w"),
                ..Events::default()
            };
            Ok(Run::plain(ns, ev))
        }
        Cfg::Leaktrace { bin, detailed } => leaktrace_once(c, bin, *detailed, b, &args, limit),
    }
}

fn leaktrace_once(
    c: &Ctx,
    bin: &Path,
    detailed: bool,
    b: Bench,
    args: &[String],
    limit: Duration,
) -> Result<Run> {
    let started = Instant::now();
    let mut fx = Proc::spawn(Command::new(&c.fixture).args(args), "tokio-fixture")?;
    let report = c.t.scratch.join("tokio-report.jsonl");
    let _ = std::fs::remove_file(&report);
    let mut cmd = Command::new(bin);
    cmd.args(["--format", "json", "--output"])
        .arg(&report)
        .args(["--pid", &fx.pid().to_string()]);
    if detailed {
        cmd.arg("--detailed");
    }
    let mut lt = Proc::spawn(&mut cmd, "leaktrace --pid tokio-fixture")?;
    let (attached, line) = lt
        .err
        .wait_for("attach", limit, |l| l.starts_with("Attaching"))?;
    let measuring = started + DELAY;
    if attached >= measuring {
        bail!(
            "leaktrace attached only {:.2} s after the fixture started, after its --delay",
            (attached - started).as_secs_f64()
        );
    }
    let probes = attached_probes(&line);
    sleep(measuring.saturating_duration_since(Instant::now()));
    let cpu0 = cpu_s(lt.pid())?;
    let (done, out) = fx
        .out
        .wait_for("the fixture's result", limit, |l| l.starts_with(b.key()))?;
    let cpu1 = cpu_s(lt.pid())?;
    fx.wait(Duration::from_secs(60))?;
    // leaktrace ends by itself when its target exits, with a final report.
    let status = lt.wait(Duration::from_secs(120))?;
    if !status.success() {
        bail!("leaktrace: {status}: {}", lt.err.tail());
    }
    let ev = last_report(&report)?;
    let version = std::fs::read_to_string(&report).ok().and_then(|r| {
        let key = "\"runtime_version\":\"";
        let at = r.rfind(key)? + key.len();
        Some(r[at..].split('"').next()?.to_string())
    });
    Ok(Run {
        ns: result_ns(&out, b)?,
        ev,
        cpu_s: cpu1 - cpu0,
        window_s: done.saturating_duration_since(measuring).as_secs_f64(),
        probes,
        version,
    })
}

/// Runs of each (benchmark, index into the configurations).
type Runs = BTreeMap<(Bench, usize), Vec<Run>>;

/// The configurations, each with its name in the tables.
fn configurations(t: &Tools) -> Vec<(String, Cfg)> {
    let mut cfgs = vec![("untraced".to_string(), Cfg::Untraced)];
    let mut bins = vec![("leaktrace".to_string(), t.leaktrace.clone())];
    bins.extend(t.candidates.iter().cloned());
    for detailed in [false, true] {
        let flag = if detailed { " --detailed" } else { "" };
        for (name, bin) in &bins {
            let bin = bin.clone();
            cfgs.push((
                format!("{name} --pid{flag}"),
                Cfg::Leaktrace { bin, detailed },
            ));
        }
        let mode = if detailed { "detailed" } else { "default" };
        cfgs.push((
            format!("bpftrace count(), leaktrace's {mode} points"),
            Cfg::Floor { detailed },
        ));
    }
    cfgs
}

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let fixture = fixture(t)?;
    let points = points(&t.leaktrace, &fixture)?;
    let c = Ctx { t, fixture, points };
    let cfgs = configurations(t);
    let mut runs = Runs::new();
    for round in 0..plan.runs {
        for b in BENCHES {
            for (i, (name, cfg)) in cfgs.iter().enumerate() {
                let mode = b.mode();
                eprintln!(
                    "bench: tokio round {}/{}: {mode} {name}",
                    round + 1,
                    plan.runs
                );
                match once(&c, cfg, b, b.n(plan)) {
                    Ok(r) => runs.entry((b, i)).or_default().push(r),
                    Err(e) => eprintln!("bench: tokio {mode} {name}: {e:#}"),
                }
            }
        }
    }
    describe(md, plan, &c, &cfgs, &runs);
    let headline: Vec<String> = BENCHES
        .iter()
        .map(|&b| bench_table(md, plan, b, &cfgs, &runs))
        .collect();
    md.line(&event_check(plan, &cfgs, &runs));
    md.line(&format!(
        "Headline (medians, traced − untraced in the same rounds): {}. A probe hit is one \
         counted event (spawn, completion, poll or wake); the tasks run on 2 workers, so hits \
         on the two CPUs partly overlap, and ns per hit is an average per operation, not the \
         cost of one trap.",
        headline.join("; ")
    ));
    Ok(())
}

const BENCHES: [Bench; 2] = [Bench::Spawn, Bench::Poll];

/// The indices of leaktrace (the workspace's build, not a candidate) and of
/// the bpftrace floor in `detailed` mode or not.
fn leaktrace_and_floor(cfgs: &[(String, Cfg)], detailed: bool) -> (Option<usize>, Option<usize>) {
    let lt = cfgs.iter().position(|(n, cfg)| {
        n.starts_with("leaktrace ")
            && matches!(cfg, Cfg::Leaktrace { detailed: d, .. } if *d == detailed)
    });
    let floor = cfgs
        .iter()
        .position(|(_, cfg)| matches!(cfg, Cfg::Floor { detailed: d } if *d == detailed));
    (lt, floor)
}

fn describe(md: &mut Markdown, plan: &Plan, c: &Ctx, cfgs: &[(String, Cfg)], runs: &Runs) {
    let version = runs
        .values()
        .flatten()
        .find_map(|r| r.version.clone())
        .unwrap_or_else(|| "?".into());
    let probes = |detailed: bool| {
        let lt = leaktrace_and_floor(cfgs, detailed).0;
        let v: Vec<f64> = BENCHES
            .iter()
            .filter_map(|&b| runs.get(&(b, lt?)))
            .flatten()
            .map(|r| r.probes)
            .collect();
        format!("{:.0}", median(&v))
    };
    let p = &c.points;
    md.h2("6. Tokio: what each task and each poll costs");
    md.line(&format!(
        "tests/fixtures/rust's `tokio-fixture` (release profile, {version}; 2 worker threads), \
         run as `tokio-fixture spawnbench --n {} --delay {delay}ms` (one task spawns trivial \
         tasks in batches of 1,000 and awaits each batch: ns per task) and `tokio-fixture \
         pollbench --n {} --delay {delay}ms` (one task does `yield_now().await` N times: ns per \
         yield, i.e. per poll). Each times its loop after a 10 % warm-up. Every configuration \
         runs the same command line; leaktrace attaches with `--pid` during the delay and ends \
         with the program; bpftrace runs it with `-c`. The binary is a private copy (`{}`), so \
         no other process hits bpftrace's per-file probes.",
        Bench::Spawn.n(plan),
        Bench::Poll.n(plan),
        c.fixture.display(),
        delay = DELAY.as_millis(),
    ));
    md.line(&format!(
        "bpftrace's points, found with `nm` by the demangled names leaktrace's \
         probe_points.rs matches: default mode = {} × `OwnedTasks::bind_inner` (spawn), {} × \
         `Schedule::release` (completion), {} × `raw::shutdown` (cancellation, never reached \
         here); detailed adds {} × `raw::poll` and {} × `waker::wake_by_{{ref,val}}`. leaktrace \
         reported {} probes in default mode and {} in detailed mode (its `raw::*` points come \
         from the task vtables it finds).",
        p.spawn.len(),
        p.complete.len(),
        p.shutdown.len(),
        p.poll.len(),
        p.wake.len(),
        probes(false),
        probes(true),
    ));
}

fn col(runs: &Runs, k: (Bench, usize), f: impl Fn(&Run) -> f64) -> Vec<f64> {
    runs.get(&k)
        .map(|v| v.iter().map(f).collect())
        .unwrap_or_default()
}

/// One benchmark's table and leaktrace's CPU line; its part of the headline.
fn bench_table(
    md: &mut Markdown,
    plan: &Plan,
    b: Bench,
    cfgs: &[(String, Cfg)],
    runs: &Runs,
) -> String {
    let n = b.n(plan);
    let ops = b.ops(n);
    let unit = b.unit();
    let base = median(&col(runs, (b, 0), |r| r.ns));
    let over = |i: usize| median(&col(runs, (b, i), |r| r.ns)) - base;
    let ev = |i: usize, f: fn(&Events) -> f64| median(&col(runs, (b, i), |r| f(&r.ev)));
    let per_op = |x: f64| {
        if x.is_finite() {
            format!("{:.2}", x / ops)
        } else {
            "–".into()
        }
    };
    // Probe hits per operation, over every event kind reported.
    let hits = |i: usize| {
        [
            ev(i, |e| e.spawn),
            ev(i, |e| e.exit),
            ev(i, |e| e.poll),
            ev(i, |e| e.wake),
        ]
        .iter()
        .filter(|x| x.is_finite())
        .sum::<f64>()
            / ops
    };
    let rows: Vec<Vec<String>> = cfgs
        .iter()
        .enumerate()
        .map(|(i, (name, cfg))| {
            let ns = col(runs, (b, i), |r| r.ns);
            let mut row = vec![
                name.clone(),
                format!("{}", runs.get(&(b, i)).map_or(0, Vec::len)),
                fmt_med(&ns, 0),
                ratio(median(&ns), base),
            ];
            let vs_floor = match cfg {
                Cfg::Untraced => {
                    row.extend(std::iter::repeat_n("–".to_string(), 8));
                    return row;
                }
                Cfg::Floor { .. } => "floor".into(),
                Cfg::Leaktrace { detailed, .. } => match leaktrace_and_floor(cfgs, *detailed).1 {
                    // With no probe on the measured path both overheads are
                    // noise; their ratio would mean nothing.
                    Some(f) if hits(f) >= 0.5 => format!("{:.2}×", over(i) / over(f)),
                    _ => "– (no probe per op)".into(),
                },
            };
            row.extend([
                format!("{:+.0}", over(i)),
                vs_floor,
                per_op(ev(i, |e| e.spawn)),
                per_op(ev(i, |e| e.exit)),
                per_op(ev(i, |e| e.poll)),
                per_op(ev(i, |e| e.wake)),
                format!("{:.0}", ev(i, |e| e.lost)),
                if hits(i) >= 0.5 {
                    format!("{:.0}", over(i) / hits(i))
                } else {
                    "–".into()
                },
            ]);
            row
        })
        .collect();
    md.line(&format!(
        "**{}** ({n} {unit}s timed; the event columns count the whole run, {ops:.0} {unit}s \
         with the warm-up, per {unit}):",
        b.mode()
    ));
    md.table(
        &[
            "configuration",
            "runs",
            &format!("ns per {unit}"),
            "× untraced",
            "ns over untraced",
            "overhead ÷ floor's",
            "spawns",
            "completions",
            "polls",
            "wakes",
            "events lost",
            "ns per probe hit over untraced",
        ],
        &rows,
    );
    let cpu: Vec<String> = [false, true]
        .into_iter()
        .filter_map(|d| Some((d, leaktrace_and_floor(cfgs, d).0?)))
        .map(|(d, i)| {
            let pct = col(runs, (b, i), |r| 100.0 * r.cpu_s / r.window_s.max(1e-3));
            let ns = col(runs, (b, i), |r| r.cpu_s * 1e9 / ops);
            format!(
                "{} {} % of one CPU ({} ns per {unit})",
                if d { "--detailed" } else { "default" },
                fmt_med(&pct, 0),
                fmt_med(&ns, 0)
            )
        })
        .collect();
    md.line(&format!(
        "leaktrace's own CPU from the end of the delay to the program's result line (warm-up \
         and loop; its threads' run time in /proc/PID/task/*/schedstat): {}.",
        cpu.join("; ")
    ));
    let fmt_over = |i: Option<usize>| i.map_or("–".into(), |i| format!("{:+.0} ns", over(i)));
    let (lt, floor) = leaktrace_and_floor(cfgs, false);
    let (lt_d, floor_d) = leaktrace_and_floor(cfgs, true);
    format!(
        "per {unit} ({}): untraced {base:.0} ns; leaktrace default {} (bpftrace floor {}), \
         --detailed {} (floor {})",
        b.mode(),
        fmt_over(lt),
        fmt_over(floor),
        fmt_over(lt_d),
        fmt_over(floor_d),
    )
}

/// The fixture's runtime has 2 workers, each started by a blocking-pool
/// task polled once at start-up: seen by a tracer that is there from the
/// start (bpftrace -c), not by one that attaches later (leaktrace --pid).
const LAUNCHERS: u64 = 2;

/// Did every traced run see what the program did? The fixture's counts are
/// known exactly: spawnbench spawns (and completes) n + n/10 + 1 trivial
/// tasks plus the task that spawns them; pollbench's one task is polled
/// n + n/10 + 1 times and wakes itself n + n/10 times.
fn event_check(plan: &Plan, cfgs: &[(String, Cfg)], runs: &Runs) -> String {
    type Get = fn(&Events) -> f64;
    let expected = |b: Bench, cfg: &Cfg| -> Vec<(&str, Get, u64)> {
        let n = b.n(plan);
        let ops = n + n / 10;
        let (spawn, exit): (Get, Get) = (|e| e.spawn, |e| e.exit);
        let (detailed, launchers) = match cfg {
            Cfg::Untraced => return Vec::new(),
            Cfg::Leaktrace { detailed, .. } => (*detailed, 0),
            Cfg::Floor { detailed } => (*detailed, LAUNCHERS),
        };
        match b {
            Bench::Spawn => vec![("spawns", spawn, ops + 2), ("completions", exit, ops + 2)],
            Bench::Poll if detailed => vec![
                ("spawns", spawn, 1),
                ("completions", exit, 1),
                ("polls", |e| e.poll, ops + 1 + launchers),
                ("wakes", |e| e.wake, ops),
            ],
            Bench::Poll => vec![("spawns", spawn, 1), ("completions", exit, 1)],
        }
    };
    let mut checked = 0;
    let mut off = Vec::new();
    for b in BENCHES {
        for (i, (name, cfg)) in cfgs.iter().enumerate() {
            if matches!(cfg, Cfg::Untraced) {
                continue;
            }
            for r in runs.get(&(b, i)).into_iter().flatten() {
                checked += 1;
                for (what, get, want) in expected(b, cfg) {
                    if get(&r.ev) != want as f64 {
                        off.push(format!(
                            "{} {name}: {} {what} of {want}",
                            b.mode(),
                            get(&r.ev)
                        ));
                    }
                }
                if r.ev.lost > 0.0 {
                    off.push(format!("{} {name}: {} events lost", b.mode(), r.ev.lost));
                }
            }
        }
    }
    let (s, p) = (Bench::Spawn.n(plan), Bench::Poll.n(plan));
    let what = format!(
        "spawnbench {} tasks spawned and completed per run, pollbench 1 task, with --detailed {} \
         polls (bpftrace, there from the start, also sees the {LAUNCHERS} polls of the tasks \
         that launch the workers) and {} wakes",
        s + s / 10 + 2,
        p + p / 10 + 1,
        p + p / 10
    );
    if off.is_empty() {
        format!(
            "Event check: all {checked} traced runs (leaktrace's final report, bpftrace's maps) \
             counted exactly what the fixture did ({what}), and none lost an event."
        )
    } else {
        format!(
            "**Event check: {} of the counts in {checked} traced runs differ from what the \
             fixture did** ({what}): {}.",
            off.len(),
            off.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_counts_each_kind_of_point() {
        let p = Points {
            spawn: vec!["a".into(), "b".into()],
            complete: vec!["c".into()],
            shutdown: vec![],
            poll: vec!["d".into()],
            wake: vec!["e".into()],
        };
        let bin = Path::new("/x/f");
        assert_eq!(
            bpftrace_script(bin, &p, false),
            "uprobe:/x/f:\"a\",uprobe:/x/f:\"b\" { @s = count() } uprobe:/x/f:\"c\" { @r = count() }"
        );
        assert!(
            bpftrace_script(bin, &p, true)
                .ends_with("uprobe:/x/f:\"d\" { @p = count() } uprobe:/x/f:\"e\" { @w = count() }")
        );
    }
}
