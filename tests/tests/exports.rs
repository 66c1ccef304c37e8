//! Exports end to end (issue #17): what leaktrace writes for other tools,
//! read by those tools themselves and compared with the fixture's own
//! runtime.
//!
//! * `--pprof FILE`: `go tool pprof -raw` and `-top` (the newest installed
//!   toolchain) read the file without the binary; its samples add up to
//!   `runtime.NumGoroutine()`, the leaking group's sample has the runtime's
//!   own count and leaktrace's labels.
//! * `--folded FILE`: the lines add up to `runtime.NumGoroutine()`, the
//!   leaking stack to its count.
//! * `--listen ADDR`: Debian's Prometheus scrapes `/metrics` and a PromQL
//!   query through its HTTP API returns the leaking group's count and the
//!   live count equal to the runtime's; `go tool pprof -raw
//!   http://…/debug/pprof/goroutine?pid=N` reads the same profile.
mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use common::{
    prometheus::{Server, free_port, query},
    *,
};
use leaktrace_e2e::{BuildMode, Expect, Fixture, GoToolchain, GroundTruth};

const FIXTURE: &str = "chan_send";

/// One run at a time, whatever the harness's threads: runs share two CPUs,
/// and verdicts read lifetimes and trends.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One sample of `go tool pprof -raw`: its value, labels and functions
/// (leaf first).
#[derive(Debug)]
struct Sample {
    count: u64,
    labels: BTreeMap<String, String>,
    functions: Vec<String>,
}

/// `go tool pprof ARGS SOURCE`, its standard output; pprof's own copy of a
/// fetched profile goes to a temporary directory.
fn pprof(go: &GoToolchain, args: &[&str], source: &str) -> String {
    let tmp = tempfile_path("pprof-tmp");
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let out = Command::new(&go.go)
        .args(["tool", "pprof"])
        .args(args)
        .arg(source)
        .env("PPROF_TMPDIR", &tmp)
        .stdin(Stdio::null())
        .output()
        .expect("running go tool pprof");
    let _ = std::fs::remove_dir_all(&tmp);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {source} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The samples of `go tool pprof -raw` output, with their locations
/// resolved to function names.
fn parse_raw(raw: &str) -> Vec<Sample> {
    let mut lines = raw.lines();
    let mut samples: Vec<(u64, Vec<u64>, BTreeMap<String, String>)> = Vec::new();
    for l in lines.by_ref() {
        if l.starts_with("Samples:") {
            break;
        }
    }
    lines.next(); // `goroutine/count`
    for l in lines.by_ref() {
        if l.starts_with("Locations") {
            break;
        }
        let t = l.trim();
        if let Some((count, ids)) = t.split_once(": ")
            && let Ok(count) = count.parse::<u64>()
        {
            let ids = ids
                .split_whitespace()
                .map(|i| i.parse().expect("location id"))
                .collect();
            samples.push((count, ids, BTreeMap::new()));
        } else if let Some(last) = samples.last_mut() {
            last.2.extend(parse_labels(t));
        }
    }
    // `     4: 0x0 M=1 main.(*Hub).Publish.func1 /path/main.go:64:0 s=0`
    let mut functions: BTreeMap<u64, String> = BTreeMap::new();
    for l in lines {
        let mut words = l.split_whitespace();
        let Some(id) = words
            .next()
            .and_then(|w| w.trim_end_matches(':').parse().ok())
        else {
            break;
        };
        let function = words.nth(2).unwrap_or_default().to_string();
        functions.insert(id, function);
    }
    samples
        .into_iter()
        .map(|(count, ids, labels)| Sample {
            count,
            labels,
            functions: ids
                .iter()
                .map(|i| functions.get(i).cloned().unwrap_or_default())
                .collect(),
        })
        .collect()
}

/// `key:[value] key:[value with spaces]` → pairs.
fn parse_labels(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find(":[") {
        let key = rest[..open].trim().to_string();
        let after = &rest[open + 2..];
        // A value ends at `] ` before the next key, or at the last `]`.
        let end = after
            .match_indices("] ")
            .map(|(i, _)| i)
            .find(|&i| {
                let next = &after[i + 2..];
                next.split_once(":[")
                    .is_some_and(|(k, _)| !k.contains(' ') && !k.is_empty())
            })
            .unwrap_or_else(|| after.rfind(']').unwrap_or(after.len()));
        out.push((key, after[..end].to_string()));
        rest = after.get(end + 1..).unwrap_or_default();
    }
    out
}

/// What the leaking group must look like, from expect.json and the truth.
struct Leak {
    /// The first frame of the program's own code where its members wait.
    at: String,
    created_by: String,
    wait_reason: String,
    cause: String,
    /// The runtime's own count there.
    count: u64,
}

fn leak(go: &GoToolchain, truth: &GroundTruth) -> Leak {
    let expect = Expect::load(FIXTURE);
    let minor = go.minor();
    let at = expect.blocked_at_for(minor);
    let count = truth.profile.count_at(&at);
    assert!(
        count > 0,
        "the fixture leaked nothing at {at}:\n{}",
        truth.raw
    );
    Leak {
        count,
        created_by: expect.created_by_for(minor),
        wait_reason: expect.wait_reason_for(minor),
        cause: expect
            .main_group()
            .cause
            .clone()
            .flatten()
            .unwrap_or_default(),
        at,
    }
}

/// A pprof profile of the fixture (file or URL) against its truth.
fn check_profile(go: &GoToolchain, source: &str, truth: &GroundTruth, leak: &Leak) -> String {
    let raw = pprof(go, &["-raw"], source);
    let samples = parse_raw(&raw);
    let ctx = || {
        format!(
            "go tool pprof -raw {source}:\n{raw}\nruntime:\n{}",
            truth.raw
        )
    };
    let total: u64 = samples.iter().map(|s| s.count).sum();
    assert_eq!(
        total,
        truth.numgoroutine,
        "the samples add up to runtime.NumGoroutine(): {}",
        ctx()
    );
    let wait_prefix = format!("{} (", leak.at);
    let leaking: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.labels
                .get("wait")
                .is_some_and(|w| w.starts_with(&wait_prefix))
        })
        .collect();
    let count: u64 = leaking.iter().map(|s| s.count).sum();
    assert_eq!(
        count,
        leak.count,
        "goroutines waiting at {}: {}",
        leak.at,
        ctx()
    );
    for s in &leaking {
        let label = |k: &str| s.labels.get(k).map(String::as_str).unwrap_or_default();
        assert_eq!(label("verdict"), "leak", "{}", ctx());
        assert_eq!(label("cause"), leak.cause, "{}", ctx());
        assert_eq!(label("state"), leak.wait_reason, "{}", ctx());
        assert!(
            label("created_by").starts_with(&format!("{} (", leak.created_by)),
            "created_by {:?}, expected {}: {}",
            label("created_by"),
            leak.created_by,
            ctx()
        );
        let blocked: f64 = label("blocked_s").parse().unwrap_or(-1.0);
        assert!(
            blocked > 0.0,
            "blocked_s {:?}: {}",
            label("blocked_s"),
            ctx()
        );
        // The stack itself, leaf first: the runtime's park, then the wait.
        assert!(
            s.functions.first().is_some_and(|f| f == "runtime.gopark")
                && s.functions.contains(&leak.at),
            "stack {:?}: {}",
            s.functions,
            ctx()
        );
    }

    // -top: the total, and the leaking function's cumulative count.
    let top = pprof(go, &["-top"], source);
    let showing = format!(
        "Showing nodes accounting for {n}, 100% of {n} total",
        n = truth.numgoroutine
    );
    assert!(top.contains(&showing), "-top lacks {showing:?}:\n{top}");
    assert!(top.contains("Type: goroutine"), "{top}");
    let cum = top
        .lines()
        .find(|l| l.split_whitespace().last() == Some(leak.at.as_str()))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok());
    assert_eq!(cum, Some(leak.count), "-top's cum at {}:\n{top}", leak.at);
    format!(
        "{} samples, {total} goroutines, {count} at {} ({}); -top agrees",
        samples.len(),
        leak.at,
        leaking
            .iter()
            .map(|s| format!("{:?}", s.labels))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

#[test]
fn pprof_and_folded_files_hold_the_runtimes_own_counts() {
    let name = "pprof_and_folded_files_hold_the_runtimes_own_counts";
    if !ebpf_available(name) {
        return;
    }
    let _one = serial();
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let bin = build(FIXTURE, &go, BuildMode::Plain);
    let pprof_file = tempfile_path("goroutines.pb.gz");
    let folded_file = tempfile_path("goroutines.folded");
    let run = run_command_with(
        &bin,
        &["-leak-for", "2s", "-hold", "30s"],
        &[
            "--interval",
            "1s",
            "--duration",
            "5s",
            "--pprof",
            pprof_file.to_str().unwrap(),
            "--folded",
            folded_file.to_str().unwrap(),
        ],
    );
    let leak = leak(&go, &run.truth);
    assert_eq!(
        run.last().live(),
        run.truth.numgoroutine,
        "the final report's live count:\n{}",
        run.last().summary()
    );
    let pprof_summary = check_profile(&go, pprof_file.to_str().unwrap(), &run.truth, &leak);

    let folded = std::fs::read_to_string(&folded_file).expect("the folded file");
    // Root first, the state as the leaf.
    let (total, at_leak) = folded_counts(&folded, |frames| {
        frames.contains(&leak.at.as_str()) && frames.last() == Some(&leak.wait_reason.as_str())
    });
    assert_eq!(
        total, run.truth.numgoroutine,
        "the folded stacks add up to runtime.NumGoroutine():\n{folded}"
    );
    assert_eq!(
        at_leak, leak.count,
        "folded stacks at {}:\n{folded}",
        leak.at
    );
    for f in [&pprof_file, &folded_file] {
        let _ = std::fs::remove_file(f);
    }
    println!();
    println!("pprof file: {pprof_summary}");
    println!(
        "folded file: {} lines, {total} goroutines, {at_leak} at {}",
        folded.lines().count(),
        leak.at
    );
}

/// The folded file's total, and the total of the stacks `pick` chooses.
fn folded_counts(folded: &str, pick: impl Fn(&[&str]) -> bool) -> (u64, u64) {
    let mut total = 0;
    let mut picked = 0;
    for l in folded.lines() {
        let (stack, count) = l.rsplit_once(' ').expect("`stack count`");
        let count: u64 = count.parse().expect("a count");
        total += count;
        if pick(&stack.split(';').collect::<Vec<_>>()) {
            picked += count;
        }
    }
    (total, picked)
}

/// tokio: the same files for tasks, against `num_alive_tasks()`. The
/// fixture's `mpsc` mode leaks tasks awaiting a channel whose sender stays
/// alive, and once quiescent every alive task is one of them.
#[test]
fn tokio_pprof_and_folded_files_hold_the_runtimes_own_count() {
    let name = "tokio_pprof_and_folded_files_hold_the_runtimes_own_count";
    if !ebpf_available(name) {
        return;
    }
    let _one = serial();
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed (for go tool pprof): run `cargo xtask setup`");
    let bin = tokio_fixture("release");
    let pprof_file = tempfile_path("tasks.pb.gz");
    let folded_file = tempfile_path("tasks.folded");
    let run = run_command_until(
        &bin,
        &["mpsc", "--leak-for", "4s", "--hold", "30s"],
        &[
            "--interval",
            "1s",
            "--pprof",
            pprof_file.to_str().unwrap(),
            "--folded",
            folded_file.to_str().unwrap(),
        ],
        "alive_tasks ",
        Duration::from_secs(60),
    );
    let alive: u64 = run
        .value("alive_tasks ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no alive_tasks line:\n{}", run.lines.join("\n")));
    assert!(alive > 0, "the fixture leaked nothing");
    assert_eq!(run.last().live(), alive, "{}", run.last().summary());

    let source = pprof_file.to_str().unwrap();
    let raw = pprof(&go, &["-raw"], source);
    assert!(raw.contains("PeriodType: task count"), "{raw}");
    let samples = parse_raw(&raw);
    let total: u64 = samples.iter().map(|s| s.count).sum();
    assert_eq!(total, alive, "samples vs num_alive_tasks():\n{raw}");
    let leaking: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.labels.get("verdict").map(String::as_str) == Some("leak"))
        .collect();
    let leaked: u64 = leaking.iter().map(|s| s.count).sum();
    assert_eq!(leaked, alive, "leaking tasks:\n{raw}");
    for s in &leaking {
        let label = |k: &str| s.labels.get(k).map(String::as_str).unwrap_or_default();
        // The future type; created_by is where the fixture spawned it.
        assert!(
            label("start").ends_with("::mpsc_consumer"),
            "named by its async fn: {s:?}"
        );
        assert!(label("created_by").starts_with("tokio_fixture::"), "{s:?}");
        assert!(label("state").starts_with("idle"), "{s:?}");
        // The report's own cause (none in a build without full DWARF: no
        // await chain to recognise the channel by).
        let cause = run
            .last()
            .groups()
            .iter()
            .find(|g| g["verdict"] == "leak")
            .and_then(|g| g["cause"].as_str())
            .unwrap_or_default();
        assert_eq!(label("cause"), cause, "{s:?}");
        assert!(
            s.functions.iter().any(|f| f.ends_with("::mpsc_consumer")),
            "{s:?}"
        );
    }
    let top = pprof(&go, &["-top"], source);
    let showing = format!("Showing nodes accounting for {alive}, 100% of {alive} total");
    assert!(top.contains(&showing), "-top lacks {showing:?}:\n{top}");

    let folded = std::fs::read_to_string(&folded_file).expect("the folded file");
    let (folded_total, consumer) = folded_counts(&folded, |frames| {
        frames.iter().any(|f| f.ends_with("::mpsc_consumer"))
    });
    assert_eq!(
        folded_total, alive,
        "folded vs num_alive_tasks():\n{folded}"
    );
    assert_eq!(consumer, alive, "stacks through mpsc_consumer:\n{folded}");
    for f in [&pprof_file, &folded_file] {
        let _ = std::fs::remove_file(f);
    }
    println!();
    println!(
        "tokio: num_alive_tasks {alive}; pprof {} samples, {total} tasks, {leaked} leaking ({:?}); folded {folded_total}",
        samples.len(),
        leaking.first().map(|s| &s.labels)
    );
}

/// `leaktrace --pid … --listen …`, interrupted (Ctrl-C) when dropped.
struct Leaktrace {
    child: Child,
}

impl Drop for Leaktrace {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn prometheus_scrapes_the_leaking_groups_count_and_pprof_reads_the_endpoint() {
    let name = "prometheus_scrapes_the_leaking_groups_count_and_pprof_reads_the_endpoint";
    if !ebpf_available(name) {
        return;
    }
    let _one = serial();
    assert!(
        Path::new(common::prometheus::PROMETHEUS).is_file(),
        "Debian's prometheus is not installed: run `cargo xtask setup`"
    );
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let bin = build(FIXTURE, &go, BuildMode::Plain);
    let fx = Fixture::start(&bin, ["-leak-for", "2s", "-hold", "60s"]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let out = tempfile_path("reports.jsonl");
    let _leaktrace = Leaktrace {
        child: Command::new(leaktrace_bin())
            .args(["--format", "json", "--interval", "1s", "--listen", &listen])
            .arg("--output")
            .arg(&out)
            .args(["--pid", &fx.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting leaktrace"),
    };
    let prom = Server::start(&format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1m\n\
         scrape_configs:\n  - job_name: leaktrace\n    scrape_interval: 1s\n    \
         scrape_timeout: 1s\n    static_configs:\n      - targets: ['{listen}']\n"
    ));
    let truth = fx.truth(Duration::from_secs(30));
    let leak = leak(&go, &truth);
    let start = Expect::load(FIXTURE)
        .main_group()
        .start_fn_for(go.minor())
        .unwrap_or_else(|| leak.at.clone());
    let pid = fx.pid().to_string();

    // The leaking group's series and the live count, once a report made
    // after the fixture went quiescent has been scraped.
    let leak_query = format!("leaktrace_tasks{{pid=\"{pid}\",verdict=\"leak\"}}");
    let live_query = format!("leaktrace_live_tasks{{pid=\"{pid}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leaking, live) = loop {
        let leaking = query(&prom, &leak_query);
        let live = query(&prom, &live_query);
        let done = leaking.len() == 1
            && leaking[0].1 == leak.count as f64
            && live
                .first()
                .is_some_and(|l| l.1 == truth.numgoroutine as f64);
        if done || Instant::now() > deadline {
            break (leaking, live);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let ctx = || {
        format!(
            "{leak_query} = {leaking:?}\n{live_query} = {live:?}\nruntime:\n{}\nprometheus log:\n{}",
            truth.raw,
            prom.log()
        )
    };
    assert_eq!(leaking.len(), 1, "one leaking series: {}", ctx());
    assert_eq!(
        leaking[0].1,
        leak.count as f64,
        "the leaking group's count: {}",
        ctx()
    );
    let labels = &leaking[0].0;
    assert_eq!(labels["start"], start.as_str(), "{}", ctx());
    assert_eq!(labels["cause"], leak.cause.as_str(), "{}", ctx());
    assert_eq!(labels["state"], leak.wait_reason.as_str(), "{}", ctx());
    assert_eq!(labels["runtime"], "go", "{}", ctx());
    assert_eq!(
        live.first().map(|l| l.1),
        Some(truth.numgoroutine as f64),
        "live: {}",
        ctx()
    );

    let url = format!("http://{listen}/debug/pprof/goroutine?pid={pid}");
    let pprof_summary = check_profile(&go, &url, &truth, &leak);
    drop(_leaktrace);
    drop(prom);
    let _ = std::fs::remove_file(&out);
    println!();
    println!(
        "prometheus: {leak_query} = {} ({labels}), {live_query} = {}; runtime: {} at {}, {} live",
        leaking[0].1, live[0].1, leak.count, leak.at, truth.numgoroutine
    );
    println!("{url}: {pprof_summary}");
}
