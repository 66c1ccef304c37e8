//! The host agent end to end (`leaktrace --all`, issue #17): one Go
//! fixture already running when the agent starts (found by its /proc
//! scan), then two Go fixtures built with two Go versions and a tokio
//! fixture started after it (found at their exec). Debian's Prometheus
//! scrapes the agent's `/metrics`; each process's live count must equal
//! its own runtime's `runtime.NumGoroutine()` / `num_alive_tasks()`, each
//! has its own `/debug/pprof/goroutine?pid=N`, and a process that exits
//! leaves `/metrics` with every probe link leaktrace held for it (read
//! from leaktrace's own fds: a uprobe link's fdinfo names its pid).
//!
//! `--exe` narrows every run to this test's own copies of the fixtures, so
//! the processes of tests running beside it are left alone. A second test
//! puts fixtures in a fresh cgroup v2 directory and checks `--cgroup`
//! traces those only (the /proc scan and the kernel's exec filter).
mod common;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    prometheus::{Server, free_port, query},
    *,
};
use leaktrace_e2e::{BuildMode, Fixture, TokioProcess};

/// The fixtures leak a few goroutines at once (`-n`), then hold.
const GO_ARGS: &[&str] = &["-n", "5", "-hold", "60s"];

/// `bin` under a name only this test uses (what `--exe` picks): a hard
/// link, so no process of another test can hold a writable descriptor of
/// it while this one execs it (a copy's, inherited by a child forked
/// meanwhile, makes the exec fail with ETXTBSY); a copy on another file
/// system. The kernel names a process by the path it was exec'd by.
fn copy_as(bin: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    if fs::hard_link(bin, &to).is_err() {
        fs::copy(bin, &to).unwrap_or_else(|e| panic!("copying {}: {e}", bin.display()));
    }
    to
}

/// `name{…pid="N"…} V` lines of an exposition: pid → value (the first
/// series of that pid).
fn by_pid(metrics: &str, name: &str) -> BTreeMap<u32, f64> {
    let mut out = BTreeMap::new();
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let pid = rest
            .split("pid=\"")
            .nth(1)
            .and_then(|p| p.split('"').next()?.parse().ok());
        let value = l.rsplit(' ').next().and_then(|v| v.parse().ok());
        if let (Some(pid), Some(v)) = (pid, value) {
            out.entry(pid).or_insert(v);
        }
    }
    out
}

/// An unlabelled sample's value.
fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn scrape(port: u16) -> String {
    match common::prometheus::get(port, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET /metrics: {other:?}"),
    }
}

/// leaktrace's bpf links: for each, the pid a uprobe link is scoped to
/// (`None` for tracepoints).
fn links(leaktrace: u32) -> Vec<Option<u32>> {
    let Ok(dir) = fs::read_dir(format!("/proc/{leaktrace}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let target = fs::read_link(e.path()).ok()?;
        if target.to_string_lossy() != "anon_inode:bpf_link" {
            return None;
        }
        let info = fs::read_to_string(format!(
            "/proc/{leaktrace}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .ok()?;
        Some(
            info.lines()
                .find_map(|l| l.strip_prefix("pid:"))
                .and_then(|p| p.trim().parse().ok()),
        )
    })
    .collect()
}

fn links_of(leaktrace: u32, pid: u32) -> usize {
    links(leaktrace).iter().filter(|l| **l == Some(pid)).count()
}

/// Polls `check` (every 250 ms) until it returns `Ok`, or panics with its
/// last `Err` after `within`.
fn until<T>(within: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `leaktrace_live_tasks` through Prometheus' HTTP API: pid → value.
fn prometheus_live(prom: &Server) -> BTreeMap<u32, f64> {
    query(prom, "leaktrace_live_tasks")
        .into_iter()
        .filter_map(|(labels, v)| Some((labels["pid"].as_str()?.parse().ok()?, v)))
        .collect()
}

/// `leaktrace --all --listen … --interval 1s --format json ARGS`, once it
/// says it is tracing; and its port.
fn start_agent(args: &[&str]) -> (Traced, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec![
        "--all",
        "--listen",
        &listen,
        "--interval",
        "1s",
        "--format",
        "json",
    ];
    all.extend(args);
    let mut agent = Traced::start(&all);
    agent.wait_stderr(
        "tracing every Go and tokio process",
        1,
        Duration::from_secs(20),
    );
    (agent, port)
}

/// The newest Go's build of `fixture` copied into a temporary directory
/// as `name`: the directory and the copy.
fn newest_go_copy(fixture: &str, name: &str) -> (PathBuf, PathBuf) {
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let dir = tempfile_path(name);
    fs::create_dir_all(&dir).expect("temp dir");
    let bin = copy_as(&build(fixture, &go, BuildMode::Plain), &dir, name);
    (dir, bin)
}

#[test]
fn agent_traces_each_go_and_tokio_process_and_forgets_those_that_exit() {
    let name = "agent_traces_each_go_and_tokio_process_and_forgets_those_that_exit";
    if !ebpf_available(name) {
        return;
    }
    assert!(
        Path::new(common::prometheus::PROMETHEUS).is_file(),
        "Debian's prometheus is not installed: run `cargo xtask setup`"
    );
    let t0 = Instant::now();
    let newest = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let older = one_go("1.22");
    assert_ne!(
        older.version, newest.version,
        "two Go versions are needed: run `cargo xtask setup`"
    );
    let dir = tempfile_path("agent");
    fs::create_dir_all(&dir).expect("temp dir");
    let tag = std::process::id();
    let names = [
        format!("lt-agent-{tag}-before"),
        format!("lt-agent-{tag}-go-new"),
        format!("lt-agent-{tag}-go-old"),
        format!("lt-agent-{tag}-tokio"),
    ];
    let before = copy_as(
        &build("waitgroup", &newest, BuildMode::Plain),
        &dir,
        &names[0],
    );
    let go_new = copy_as(
        &build("chan_send", &newest, BuildMode::Plain),
        &dir,
        &names[1],
    );
    let go_old = copy_as(
        &build("chan_send", &older, BuildMode::Plain),
        &dir,
        &names[2],
    );
    let tokio = copy_as(&tokio_fixture("release"), &dir, &names[3]);

    // Running before the agent: found by the /proc scan.
    let fx_before = Fixture::start(&before, GO_ARGS);
    let exes: Vec<&str> = names.iter().flat_map(|n| ["--exe", n.as_str()]).collect();
    let (agent, port) = start_agent(&exes);
    let listen = format!("127.0.0.1:{port}");
    let lt = agent.pid();

    // Started after it: found at their exec.
    let fx_new = Fixture::start(&go_new, GO_ARGS);
    let fx_old = Fixture::start(&go_old, GO_ARGS);
    let tk = TokioProcess::start(&tokio, "mpsc", 7);
    let prom = Server::start(&format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1m\n\
         scrape_configs:\n  - job_name: leaktrace\n    scrape_interval: 1s\n    \
         scrape_timeout: 1s\n    static_configs:\n      - targets: ['{listen}']\n"
    ));
    let mut truth: BTreeMap<u32, f64> = BTreeMap::new();
    for fx in [&fx_before, &fx_new, &fx_old] {
        truth.insert(
            fx.pid(),
            fx.truth(Duration::from_secs(30)).numgoroutine as f64,
        );
    }
    truth.insert(tk.pid, tk.alive_tasks as f64);

    // Every process's live count, as Prometheus stored it, equals its
    // runtime's own.
    let live = until(Duration::from_secs(30), "live counts in Prometheus", || {
        let live = prometheus_live(&prom);
        if live == truth {
            Ok(live)
        } else {
            Err(format!(
                "prometheus: {live:?}\nruntimes: {truth:?}\nleaktrace stderr:\n{}\nprometheus log:\n{}",
                agent.stderr(),
                prom.log()
            ))
        }
    });
    let metrics = scrape(port);
    assert_eq!(
        value(&metrics, "leaktrace_agent_processes_traced"),
        Some(4.0),
        "{metrics}"
    );
    let rss = value(&metrics, "leaktrace_agent_resident_bytes").unwrap_or(0.0);
    let cpu = value(&metrics, "leaktrace_agent_cpu_seconds_total").unwrap_or(-1.0);
    assert!(rss > 0.0 && cpu >= 0.0, "{metrics}");
    for &pid in truth.keys() {
        let (status, body) =
            common::prometheus::get(port, &format!("/debug/pprof/goroutine?pid={pid}"))
                .expect("the pprof endpoint answers");
        assert_eq!(status, 200, "pid {pid}: {body}");
        // Every traced process is probed in its own name (per-pid uprobes).
        assert!(links_of(lt, pid) > 0, "pid {pid}: links {:?}", links(lt));
    }

    // One exits: its series leave /metrics, its links are gone.
    let gone = fx_old.pid();
    fx_old
        .terminate(Duration::from_secs(10))
        .expect("terminating");
    until(
        Duration::from_secs(15),
        "the exited process forgotten",
        || {
            let metrics = scrape(port);
            let traced = value(&metrics, "leaktrace_agent_processes_traced");
            let left = links_of(lt, gone);
            if !metrics.contains(&format!("pid=\"{gone}\"")) && left == 0 && traced == Some(3.0) {
                Ok(())
            } else {
                Err(format!(
                    "{left} links of pid {gone} left; traced {traced:?}:\n{metrics}"
                ))
            }
        },
    );
    let others = by_pid(&scrape(port), "leaktrace_live_tasks");
    assert_eq!(others.len(), 3, "{others:?}");

    // All exit: only the exec watch stays attached.
    fx_before
        .terminate(Duration::from_secs(10))
        .expect("terminating");
    fx_new
        .terminate(Duration::from_secs(10))
        .expect("terminating");
    let tokio_pid = tk.pid;
    drop(tk);
    let left = until(Duration::from_secs(15), "every trace detached", || {
        let metrics = scrape(port);
        let l = links(lt);
        if l.len() == 1 && l[0].is_none() && !metrics.contains("leaktrace_live_tasks{") {
            Ok(l)
        } else {
            Err(format!("links {l:?}\n{metrics}"))
        }
    });
    agent.signal(libc::SIGINT);
    let (status, reports, stderr) = agent.finish();
    assert_eq!(status, Some(0), "{stderr}");
    // A final report for each process, as it exited.
    for pid in truth.keys() {
        assert!(
            reports
                .iter()
                .any(|r| r.0["target"]["pid"] == *pid && r.0["final"] == true),
            "no final report for pid {pid}:\n{stderr}"
        );
    }
    drop(prom);
    let _ = fs::remove_dir_all(&dir);
    println!();
    println!(
        "agent: live counts {live:?} (runtimes {truth:?}); pid {gone} and then pids {:?}, \
         {tokio_pid} exited, leaving links {left:?}; agent rss {:.1} MiB, cpu {cpu:.2}s; {:.1}s",
        [fx_before.pid(), fx_new.pid()],
        rss / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified
/// on a hybrid host).
fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("no cgroup v2 hierarchy mounted")
}

/// A fresh cgroup v2 directory, removed (its processes moved back to the
/// root first) when dropped.
struct TempCgroup {
    dir: PathBuf,
    root: PathBuf,
}

impl TempCgroup {
    fn new(name: &str) -> Self {
        let root = cgroup2_mount();
        let dir = root.join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir, root }
    }

    fn enter(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving pid {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = fs::write(self.root.join("cgroup.procs"), pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn agent_narrowed_to_a_cgroup_traces_only_its_processes() {
    let name = "agent_narrowed_to_a_cgroup_traces_only_its_processes";
    if !ebpf_available(name) {
        return;
    }
    let exe = format!("lt-agent-cg-{}", std::process::id());
    let (dir, bin) = newest_go_copy("chan_send", &exe);
    let cgroup = TempCgroup::new(&format!("leaktrace-test-{}", std::process::id()));

    // Before the agent: one moved into the cgroup, one left outside.
    let inside_before = Fixture::start(&bin, GO_ARGS);
    cgroup.enter(inside_before.pid());
    let outside_before = Fixture::start(&bin, GO_ARGS);
    let cgroup_arg = cgroup.dir.to_string_lossy().into_owned();
    let (agent, port) = start_agent(&["--cgroup", &cgroup_arg, "--exe", &exe]);
    // After it: one outside, then one that enters the cgroup and execs
    // there (the kernel's filter).
    let outside_after = Fixture::start(&bin, GO_ARGS);
    let procs = cgroup.dir.join("cgroup.procs");
    let script = format!(
        "echo $$ > '{}' && exec '{}' {}",
        procs.display(),
        bin.display(),
        GO_ARGS.join(" ")
    );
    let inside_after = Fixture::start("/bin/sh", ["-c", script.as_str()]);
    let mut truth = BTreeMap::new();
    for fx in [&inside_before, &inside_after] {
        truth.insert(
            fx.pid(),
            fx.truth(Duration::from_secs(30)).numgoroutine as f64,
        );
    }
    let live = until(
        Duration::from_secs(30),
        "the cgroup's processes traced",
        || {
            let live = by_pid(&scrape(port), "leaktrace_live_tasks");
            if live == truth {
                Ok(live)
            } else {
                Err(format!(
                    "/metrics: {live:?}\nruntimes (in the cgroup): {truth:?}\n{}",
                    agent.stderr()
                ))
            }
        },
    );
    // The ones outside were seen first (scan, exec) and passed over.
    for fx in [&outside_before, &outside_after] {
        assert_eq!(links_of(agent.pid(), fx.pid()), 0);
        assert!(
            !agent.stderr().contains(&format!("pid {} ", fx.pid())),
            "{}",
            agent.stderr()
        );
    }
    agent.signal(libc::SIGINT);
    let (status, reports, stderr) = agent.finish();
    assert_eq!(status, Some(0), "{stderr}");
    let reported: std::collections::BTreeSet<u64> = reports
        .iter()
        .filter_map(|r| r.0["target"]["pid"].as_u64())
        .collect();
    let expected: std::collections::BTreeSet<u64> = truth.keys().map(|&p| u64::from(p)).collect();
    assert_eq!(reported, expected, "{stderr}");
    for fx in [
        &inside_before,
        &inside_after,
        &outside_before,
        &outside_after,
    ] {
        let _ = fx.terminate(Duration::from_secs(10));
    }
    drop(cgroup);
    let _ = fs::remove_dir_all(&dir);
    println!();
    println!(
        "cgroup: traced {live:?} (pids {} and {} outside it passed over)",
        outside_before.pid(),
        outside_after.pid()
    );
}

/// `--max-processes 1` and two processes of one binary: the second waits,
/// named on stderr and `/metrics`, and is traced (its own per-pid probes
/// on the shared file) once the first exits.
#[test]
fn agent_over_its_cap_names_who_waits_and_traces_it_when_a_slot_frees() {
    let name = "agent_over_its_cap_names_who_waits_and_traces_it_when_a_slot_frees";
    if !ebpf_available(name) {
        return;
    }
    let exe = format!("lt-agent-cap-{}", std::process::id());
    let (dir, bin) = newest_go_copy("chan_send", &exe);
    let first = Fixture::start(&bin, GO_ARGS);
    let (mut agent, port) = start_agent(&["--exe", &exe, "--max-processes", "1"]);
    agent.wait_stderr("Attaching to pid", 1, Duration::from_secs(20));
    let second = Fixture::start(&bin, ["-n", "3", "-hold", "60s"]);
    let truth_first = first.truth(Duration::from_secs(30)).numgoroutine as f64;
    let truth_second = second.truth(Duration::from_secs(30)).numgoroutine as f64;
    let waiting = format!("leaktrace_agent_process_waiting{{pid=\"{}\"", second.pid());
    let metrics = until(
        Duration::from_secs(20),
        "the second process waiting",
        || {
            let m = scrape(port);
            let live = by_pid(&m, "leaktrace_live_tasks");
            let skipped = m.lines().any(|l| {
                l == "leaktrace_agent_processes_skipped_total{reason=\"max_processes\"} 1"
            });
            if m.contains(&waiting)
                && skipped
                && value(&m, "leaktrace_agent_processes_waiting") == Some(1.0)
                && live == BTreeMap::from([(first.pid(), truth_first)])
            {
                Ok(m)
            } else {
                Err(m)
            }
        },
    );
    assert!(
        agent.stderr().contains(&format!(
            "pid {} ({}) is not traced: --max-processes 1 are",
            second.pid(),
            bin.display()
        )),
        "{}",
        agent.stderr()
    );
    assert_eq!(links_of(agent.pid(), second.pid()), 0);

    first
        .terminate(Duration::from_secs(10))
        .expect("terminating");
    let live = until(Duration::from_secs(20), "the second traced", || {
        let m = scrape(port);
        let live = by_pid(&m, "leaktrace_live_tasks");
        if live == BTreeMap::from([(second.pid(), truth_second)])
            && value(&m, "leaktrace_agent_processes_waiting") == Some(0.0)
            && !m.contains("leaktrace_agent_process_waiting{")
        {
            Ok(live)
        } else {
            Err(format!("{m}\n{}", agent.stderr()))
        }
    });
    assert!(links_of(agent.pid(), second.pid()) > 0);
    assert_eq!(links_of(agent.pid(), first.pid()), 0);
    agent.signal(libc::SIGINT);
    let (status, _, stderr) = agent.finish();
    assert_eq!(status, Some(0), "{stderr}");
    let _ = second.terminate(Duration::from_secs(10));
    let _ = fs::remove_dir_all(&dir);
    println!();
    println!(
        "cap: pid {} waited while pid {} was traced ({} lines of /metrics), then traced: {live:?}",
        second.pid(),
        first.pid(),
        metrics.lines().count()
    );
}
