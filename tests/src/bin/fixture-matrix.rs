//! Builds every fixture with every Go toolchain and checks each against its
//! expect.json, using the runtime's own goroutine profile (debug=2, which
//! has wait reasons and creation sites).
//!
//! ```text
//! cargo run -p leaktrace-e2e --bin fixture-matrix -- [--go 1.19,1.24] [--fixtures a,b]
//!     [--modes plain,stripped,pie] [--leak-for 1s] [--no-growth] [--details]
//! ```
//!
//! For each (toolchain, fixture): build in every mode; run the plain binary
//! with `-leak-for L -hold 1s -debug 2` and check every expected group
//! (count, wait reason, creator); run it again with `-leak-for 2L` and check
//! the primary leak grew (unless expect.json fixes its size: `count`); run
//! the other modes once and check the truth block appears. Prints a matrix;
//! exits non-zero if any cell failed.

use leaktrace_e2e::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Opts {
    go: Option<Vec<String>>,
    fixtures: Option<Vec<String>>,
    modes: Vec<BuildMode>,
    leak_for_ms: u64,
    growth: bool,
    details: bool,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        go: None,
        fixtures: None,
        modes: BuildMode::ALL.to_vec(),
        leak_for_ms: 1000,
        growth: true,
        details: false,
    };
    let mut it = std::env::args().skip(1);
    let list = |s: Option<String>| -> Vec<String> {
        s.unwrap_or_default()
            .split(',')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--go" => o.go = Some(list(it.next())),
            "--fixtures" => o.fixtures = Some(list(it.next())),
            "--modes" => {
                o.modes = list(it.next())
                    .iter()
                    .map(|m| match m.as_str() {
                        "plain" => BuildMode::Plain,
                        "stripped" => BuildMode::Stripped,
                        "pie" => BuildMode::Pie,
                        other => panic!("unknown mode {other}"),
                    })
                    .collect()
            }
            "--leak-for" => {
                let v = it.next().unwrap_or_default();
                let v = v.trim_end_matches("ms");
                o.leak_for_ms = if let Some(s) = v.strip_suffix('s') {
                    s.parse::<u64>().expect("seconds") * 1000
                } else {
                    v.parse().expect("milliseconds")
                };
            }
            "--no-growth" => o.growth = false,
            "--details" => o.details = true,
            "-h" | "--help" => {
                println!("see the doc comment of tests/src/bin/fixture-matrix.rs");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// Outcome of one (toolchain, fixture) cell.
struct Cell {
    ok: bool,
    short: String,
    notes: Vec<String>,
    observed: Vec<String>,
}

fn ms(d: u64) -> String {
    format!("{d}ms")
}

fn run_truth(bin: &std::path::Path, args: &[String]) -> Result<GroundTruth, String> {
    let fx = Fixture::command(bin)
        .args(args)
        .try_start()
        .map_err(|e| format!("{e:#}"))?;
    let t = fx
        .try_truth(Duration::from_secs(60))
        .map_err(|e| format!("{e:#}\n{}", fx.diagnostics()))?;
    Ok(t)
}

fn check_group(
    t: &GroundTruth,
    g: &Group,
    minor: u32,
    expect_min: Option<u64>,
    notes: &mut Vec<String>,
) -> (bool, u64) {
    let site = g.blocked_at_for(minor);
    let recs: Vec<&Record> = t.profile.at(&site).collect();
    let n: u64 = recs.iter().map(|r| r.count).sum();
    let mut ok = true;
    if let Some(c) = g.count
        && n != c
    {
        ok = false;
        notes.push(format!("{site}: {n} goroutines, expected exactly {c}"));
    }
    if let Some(min) = expect_min
        && n < min
    {
        ok = false;
        notes.push(format!("{site}: {n} goroutines, expected at least {min}"));
    }
    for r in &recs {
        let reason = r.wait_reason.clone().unwrap_or_default();
        match (&g.state, g.wait_reason_for(minor)) {
            (Some(_), _) => {
                if !matches!(reason.as_str(), "running" | "runnable") {
                    ok = false;
                    notes.push(format!(
                        "{site}: state {reason:?}, expected running/runnable"
                    ));
                }
            }
            (None, want) => {
                if reason != want {
                    ok = false;
                    notes.push(format!(
                        "{site}: {} with wait reason {reason:?}, expected {want:?}",
                        r.count
                    ));
                }
            }
        }
        let creator = r
            .created_by
            .as_ref()
            .map(|f| f.function.clone())
            .unwrap_or_default();
        let want = g.created_by_for(minor);
        if creator != want {
            ok = false;
            notes.push(format!(
                "{site}: {} created by {creator:?}, expected {want:?}",
                r.count
            ));
        }
    }
    (ok, n)
}

/// Text symbols of a binary, sorted by address (`go tool nm -n`).
fn symbols(go: &GoToolchain, bin: &std::path::Path) -> Vec<(u64, String)> {
    let out = leaktrace_e2e::build::go_command(go, std::path::Path::new("/"))
        .args(["tool", "nm", "-n"])
        .arg(bin)
        .output()
        .expect("go tool nm");
    let mut v: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (addr, rest) = l.split_once(' ')?;
            let (kind, name) = rest.trim_start().split_once(' ')?;
            if kind != "T" && kind != "t" {
                return None;
            }
            Some((u64::from_str_radix(addr, 16).ok()?, name.to_string()))
        })
        .collect();
    v.sort();
    v
}

fn symbol_at(syms: &[(u64, String)], pc: u64) -> Option<&str> {
    let i = syms.partition_point(|(a, _)| *a <= pc);
    (i > 0).then(|| syms[i - 1].1.as_str())
}

/// Checks `inlined_into` (the symbol holding the blocked PC) and
/// `start_fn` (the symbol exists) against the binary.
fn check_symbols(
    t: &GroundTruth,
    e: &Expect,
    go: &GoToolchain,
    bin: &std::path::Path,
    notes: &mut Vec<String>,
) -> bool {
    let minor = go.minor();
    let syms = symbols(go, bin);
    let mut ok = true;
    for g in e.leak_groups() {
        let site = g.blocked_at_for(minor);
        let want = g.inlined_into_for(minor).unwrap_or_else(|| site.clone());
        for r in t.profile.blocked_at(&site) {
            let Some(i) = r.frames.iter().position(|f| f.function == site) else {
                continue;
            };
            let got = r
                .frame_pcs
                .get(i)
                .and_then(|pc| symbol_at(&syms, *pc))
                .unwrap_or("?");
            if got != want {
                ok = false;
                notes.push(format!("{site}: blocked PC is in {got}, expected {want}"));
            }
        }
        if let Some(start) = g.start_fn_for(minor)
            && !syms.iter().any(|(_, n)| *n == start)
        {
            ok = false;
            notes.push(format!(
                "{site}: start_fn {start} is not a symbol of the binary"
            ));
        }
    }
    ok
}

fn observed_groups(t: &GroundTruth) -> Vec<String> {
    let mut m: BTreeMap<(String, String, String, String), u64> = BTreeMap::new();
    for r in &t.profile.records {
        let site = r
            .first_non_stdlib_frame()
            .map_or("<stdlib>".into(), |f| f.function.clone());
        if site.starts_with("leaktrace.test/") || site == "main.main" {
            continue;
        }
        let reason = r.wait_reason.clone().unwrap_or_default();
        let creator = r
            .created_by
            .as_ref()
            .map_or(String::new(), |f| f.function.clone());
        let entry = r.entry().map_or(String::new(), |f| f.function.clone());
        *m.entry((site, reason, creator, entry)).or_insert(0) += r.count;
    }
    m.into_iter()
        .map(|((site, reason, creator, entry), n)| {
            format!("{n:>5}  at {site}  [{reason}]  created by {creator}  entry {entry}")
        })
        .collect()
}

fn check_fixture(name: &str, go: &GoToolchain, o: &Opts) -> Cell {
    let minor = go.minor();
    let e = Expect::load(name);
    let mut notes = Vec::new();
    let mut ok = true;

    let mut bins = BTreeMap::new();
    for &mode in &o.modes {
        let t0 = Instant::now();
        match try_build_fixture(name, go, mode) {
            Ok(p) => {
                bins.insert(mode.dir_name(), p);
            }
            Err(err) => {
                ok = false;
                notes.push(format!(
                    "build {mode:?} failed after {:?}: {err:#}",
                    t0.elapsed()
                ));
            }
        }
    }
    let Some(plain) = bins.get("plain").cloned() else {
        return Cell {
            ok: false,
            short: "BUILD".into(),
            notes,
            observed: vec![],
        };
    };

    let l = o.leak_for_ms;
    let args = |leak_for: u64, debug: u32| -> Vec<String> {
        vec![
            "-leak-for".into(),
            ms(leak_for),
            "-hold".into(),
            "1s".into(),
            "-debug".into(),
            debug.to_string(),
        ]
    };
    let t = match run_truth(&plain, &args(l, 2)) {
        Ok(t) => t,
        Err(err) => {
            notes.push(err);
            return Cell {
                ok: false,
                short: "RUN".into(),
                notes,
                observed: vec![],
            };
        }
    };
    if t.numgoroutine != t.profile.total {
        notes.push(format!(
            "numgoroutine {} != profile total {}",
            t.numgoroutine, t.profile.total
        ));
    }
    let observed = observed_groups(&t);

    let mut short = String::new();
    let ops_min = (20.0 * l as f64 / 1000.0 * 0.5) as u64; // -rate 20, half of it at least
    let mut primary_n = 0;
    for (i, g) in e.leak_groups().enumerate() {
        // A leak of a fixed size (`count`) does not scale with -leak-for.
        let min = g.per_op.filter(|_| g.count.is_none()).map(|p| p * ops_min);
        let (gok, n) = check_group(&t, g, minor, min, &mut notes);
        ok &= gok;
        if i == 0 {
            primary_n = n;
        }
        short.push_str(&format!("{}{n}", if i > 0 { "+" } else { "" }));
    }
    for g in &e.must_not_flag {
        let (gok, n) = check_group(&t, g, minor, None, &mut notes);
        ok &= gok;
        if !e.is_leak() {
            if !short.is_empty() {
                short.push('/');
            }
            short.push_str(&n.to_string());
        }
    }

    let fixed = e.primary.as_ref().is_some_and(|p| p.count.is_some());
    if o.growth && e.is_leak() && !fixed {
        let primary = e.primary.as_ref().unwrap();
        match run_truth(&plain, &args(2 * l, 1)) {
            Ok(t2) => {
                let n2 = t2.profile.count_blocked_at(&primary.blocked_at_for(minor));
                ok &= check_symbols(&t2, &e, go, &plain, &mut notes);
                short.push_str(&format!("→{n2}"));
                if (n2 as f64) < 1.5 * primary_n as f64 {
                    ok = false;
                    notes.push(format!(
                        "no growth: {primary_n} at {} vs {n2} at {}",
                        ms(l),
                        ms(2 * l)
                    ));
                }
            }
            Err(err) => {
                ok = false;
                notes.push(format!("growth run: {err}"));
            }
        }
    }
    if o.growth && !e.is_leak() {
        // A control under load: ask for truth mid-phase; flat, not growing.
        let fx = Fixture::start(&plain, args(2 * l, 1));
        std::thread::sleep(Duration::from_millis(l / 2));
        let a = fx.request_truth(Duration::from_secs(30)).numgoroutine;
        std::thread::sleep(Duration::from_millis(l));
        let b = fx.request_truth(Duration::from_secs(30)).numgoroutine;
        let q = fx.truth(Duration::from_secs(60)).numgoroutine;
        short.push_str(&format!(" (load {a},{b}→{q})"));
    }

    for (mode, bin) in &bins {
        if *mode == "plain" {
            continue;
        }
        match run_truth(bin, &args(l / 2, 1)) {
            Ok(t) => {
                let g = e.main_group();
                let n = t.profile.count_blocked_at(&g.blocked_at_for(minor));
                if e.is_leak() && n == 0 {
                    ok = false;
                    notes.push(format!(
                        "{mode}: no goroutines at {}",
                        g.blocked_at_for(minor)
                    ));
                }
            }
            Err(err) => {
                ok = false;
                notes.push(format!("{mode}: {err}"));
            }
        }
    }
    Cell {
        ok,
        short,
        notes,
        observed,
    }
}

fn main() {
    let o = parse_args();
    let gos: Vec<GoToolchain> = match &o.go {
        Some(v) => pick(&v.iter().map(String::as_str).collect::<Vec<_>>()),
        None => go_toolchains(),
    };
    let names = o.fixtures.clone().unwrap_or_else(fixture_names);
    if gos.is_empty() {
        eprintln!("no Go toolchain found");
        std::process::exit(2);
    }

    let mut cells: BTreeMap<(String, String), Cell> = BTreeMap::new();
    for go in &gos {
        for name in &names {
            let t0 = Instant::now();
            let cell = check_fixture(name, go, &o);
            eprintln!(
                "{} {:<15} {:<4} {:<24} {:.1}s",
                go.full,
                name,
                if cell.ok { "ok" } else { "FAIL" },
                cell.short,
                t0.elapsed().as_secs_f64()
            );
            cells.insert((name.clone(), go.full.clone()), cell);
        }
    }

    println!();
    print!("| fixture |");
    for go in &gos {
        print!(" {} |", go.full);
    }
    println!();
    print!("|---|");
    for _ in &gos {
        print!("---|");
    }
    println!();
    for name in &names {
        print!("| {name} |");
        for go in &gos {
            let c = &cells[&(name.clone(), go.full.clone())];
            print!(" {}{} |", if c.ok { "" } else { "**FAIL** " }, c.short);
        }
        println!();
    }
    let mut failed = false;
    for ((name, go), c) in &cells {
        if !c.notes.is_empty() {
            println!("\n{name} {go}:");
            for n in &c.notes {
                println!("  {n}");
            }
        }
        failed |= !c.ok;
        if o.details {
            println!("\n{name} {go} observed:");
            for l in &c.observed {
                println!("  {l}");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
