//! Names for stripped tokio binaries from their separate debug info, the way
//! distributions ship it: the fixture's `fulldebug` build split with binutils
//! (`objcopy --only-keep-debug`, `--strip-all`, `--add-gnu-debuglink`), then
//! traced stripped with the debug file given by `--debuginfo`, found in a
//! build-id directory (`--debug-dir`), found by `.gnu_debuglink`, and
//! downloaded from a real debuginfod (elfutils', started here over a
//! directory holding the debug file). Each must give the same groups (future
//! type, spawn site, state, await point) as the unstripped build; without
//! any of them the stripped build has vtable addresses only (with the source
//! file panic locations give, no type), which shows the
//! names really come from the debug file.
mod common;

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use leaktrace::{runtime::tokio::tracer::TokioTracer, symbols::debuginfo::Search};
use serde_json::Value;

/// Tasks that wait forever on a oneshot, spawned from two functions once
/// the probes are armed; then the fixture holds them (no other load: the
/// groups are exactly these, by future type and spawn site).
const FIXTURE_ARGS: &[&str] = &["sites", "--delay", "1s", "--hold", "30s"];
const DEBUGINFOD: &str = "/usr/bin/debuginfod";

/// The split builds, in a fresh directory.
struct Split {
    dir: PathBuf,
    unstripped: PathBuf,
    /// `--strip-all`, no debuglink: found only by build-id (or given).
    stripped: PathBuf,
    /// `--strip-all` plus `--add-gnu-debuglink=app.debug`, the debug file
    /// beside it.
    linked: PathBuf,
    debug: PathBuf,
    build_id: String,
}

impl Drop for Split {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn split() -> Split {
    let dir = tempfile_path("debuginfo");
    std::fs::create_dir_all(&dir).unwrap();
    let unstripped = dir.join("full");
    std::fs::copy(tokio_fixture("fulldebug"), &unstripped).unwrap();
    objcopy(&["--only-keep-debug", "full", "app.debug"], &dir);
    objcopy(&["--strip-all", "full", "app-stripped"], &dir);
    objcopy(&["--strip-all", "full", "app"], &dir);
    objcopy(&["--add-gnu-debuglink=app.debug", "app"], &dir);
    let out = Command::new("readelf")
        .args(["-n", "full"])
        .current_dir(&dir)
        .output()
        .expect("readelf");
    let build_id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .expect("the fixture has a GNU build-id");
    Split {
        unstripped,
        stripped: dir.join("app-stripped"),
        linked: dir.join("app"),
        debug: dir.join("app.debug"),
        build_id,
        dir,
    }
}

/// What a group is, without its counts and timings.
fn group_keys(r: &Value) -> BTreeSet<String> {
    r["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let f = |v: &Value| {
                format!(
                    "{} ({}:{})",
                    v["function"].as_str().unwrap_or(""),
                    v["file"].as_str().unwrap_or(""),
                    v["line"]
                )
            };
            format!(
                "{} spawned by {} [{}] blocked at {}",
                f(&g["start"]),
                f(&g["created_by"]),
                g["state"].as_str().unwrap_or(""),
                f(&g["blocked_at"])
            )
        })
        .collect()
}

/// `leaktrace --duration 3s EXTRA -c BIN sites …` with `env`: its final
/// report and stderr.
fn trace(bin: &Path, extra: &[&str], env: &[(&str, &Path)]) -> (Value, String) {
    let mut cmd = Command::new(leaktrace_bin());
    cmd.args(["--format", "json", "--top", "50", "--duration", "3s"])
        .args(extra)
        .arg("-c")
        .arg(bin)
        .args(FIXTURE_ARGS)
        .env_remove("DEBUGINFOD_URLS")
        .env_remove("DEBUGINFOD_CACHE_PATH")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run leaktrace");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "leaktrace failed: {stderr}");
    let last = parse_reports(&String::from_utf8_lossy(&out.stdout))
        .pop()
        .unwrap_or_else(|| panic!("no report: {stderr}"));
    assert_eq!(last.0["final"], true, "{stderr}");
    (last.0, stderr)
}

/// An elfutils debuginfod on loopback serving `dir`, killed on drop.
struct Debuginfod {
    child: Child,
    url: String,
    _db: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Debuginfod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Debuginfod {
    /// `debuginfod -F DIR` on a free port; returns once the server answers
    /// for `build_id` (its first scan is done).
    fn start(dir: &Path, build_id: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let db = TempDir(tempfile_path("debuginfod-db"));
        std::fs::create_dir_all(&db.0).unwrap();
        let child = Command::new(DEBUGINFOD)
            .args(["-F", "-p", &port.to_string(), "-t", "0", "-g", "0", "-d"])
            .arg(db.0.join("db.sqlite"))
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start debuginfod");
        let server = Debuginfod {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _db: db,
        };
        let probe = format!("{}/buildid/{build_id}/debuginfo", server.url);
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let t0 = Instant::now();
        loop {
            let st = match agent.get(&probe).call() {
                Ok(resp) => resp.status().to_string(),
                Err(e) => e.to_string(),
            };
            if st.starts_with("200") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "debuginfod did not serve {probe} within 30s (last status {st:?})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "debuginfod ready after {:.1}s at {}",
            t0.elapsed().as_secs_f64(),
            server.url
        );
        server
    }
}

#[test]
fn stripped_binary_named_through_its_separate_debug_info() {
    if !ebpf_available("stripped_binary_named_through_its_separate_debug_info") {
        return;
    }
    if !Path::new(DEBUGINFOD).is_file() {
        let msg = format!("{DEBUGINFOD} is missing: run `sudo cargo xtask setup`");
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return;
    }
    let s = split();
    let nowhere = s.dir.join("no-debug-dir");
    let nowhere_arg = nowhere.to_str().unwrap();

    let (truth, _) = trace(&s.unstripped, &[], &[]);
    let expected = group_keys(&truth);
    assert!(
        expected.len() == 2
            && expected.iter().all(|k| {
                k.starts_with("tokio_fixture::site_waiter ")
                    && (k.contains("spawned by tokio_fixture::admin_listen (")
                        || k.contains("spawned by tokio_fixture::worker_pool ("))
            }),
        "the unstripped build names its tasks and their spawn sites: {expected:?}"
    );
    println!("unstripped: {expected:?}");

    // Control: stripped, nothing to find.
    let (r, _) = trace(&s.stripped, &["--debug-dir", nowhere_arg], &[]);
    let keys = group_keys(&r);
    assert!(
        keys.iter().all(|k| k.starts_with("vtable@0x")),
        "without debug info, vtable addresses: {keys:?}"
    );
    println!("stripped, no debug info: {keys:?}");

    // A build-id directory holding the debug file.
    let root = s.dir.join("debugroot");
    let in_root = root
        .join(".build-id")
        .join(&s.build_id[..2])
        .join(format!("{}.debug", &s.build_id[2..]));
    std::fs::create_dir_all(in_root.parent().unwrap()).unwrap();
    std::fs::copy(&s.debug, &in_root).unwrap();

    let debug = s.debug.to_str().unwrap();
    let cache = s.dir.join("xdg-cache");
    let server = Debuginfod::start(&s.dir, &s.build_id);
    // (how the note says it was found, program, options, environment)
    type Way<'a> = (&'a str, &'a Path, Vec<&'a str>, Vec<(&'a str, &'a Path)>);
    let ways: [Way; 4] = [
        (
            "--debuginfo",
            &s.stripped,
            vec!["--debuginfo", debug, "--debug-dir", nowhere_arg],
            vec![],
        ),
        (
            "build-id directory",
            &s.stripped,
            vec!["--debug-dir", root.to_str().unwrap()],
            vec![],
        ),
        (
            ".gnu_debuglink",
            &s.linked,
            vec!["--debug-dir", nowhere_arg],
            vec![],
        ),
        (
            "debuginfod",
            &s.stripped,
            vec!["--debug-dir", nowhere_arg],
            vec![
                ("DEBUGINFOD_URLS", Path::new(&server.url)),
                ("XDG_CACHE_HOME", &cache),
            ],
        ),
    ];
    for (how, bin, extra, env) in ways {
        let (r, stderr) = trace(bin, &extra, &env);
        let keys = group_keys(&r);
        println!("stripped, {how}: {keys:?}");
        assert_eq!(keys, expected, "{how}: same groups as unstripped\n{stderr}");
        assert!(
            stderr.contains("debug info from ") && stderr.contains(&format!("({how}")),
            "{how}: says where the names come from, and how it was found\n{stderr}"
        );
        assert_eq!(r["target"]["symbols"], "dwarf", "{how}");
    }
    let cached = cache
        .join("debuginfod_client")
        .join(&s.build_id)
        .join("debuginfo");
    assert!(
        cached.is_file(),
        "the download is cached where elfutils' client keeps it: {}",
        cached.display()
    );
    drop(server);

    // The cache alone serves the next run (the server is gone).
    let (r, stderr) = trace(
        &s.stripped,
        &["--debug-dir", nowhere_arg],
        &[
            ("DEBUGINFOD_URLS", Path::new("http://127.0.0.1:9")),
            ("XDG_CACHE_HOME", &cache),
        ],
    );
    assert_eq!(group_keys(&r), expected, "from the cache\n{stderr}");
    assert!(stderr.contains("debuginfod cache"), "{stderr}");
}

/// Every task type, not only those alive in a run: the stripped build with
/// its debug file names all 20 vtables exactly as the unstripped build.
#[test]
fn every_task_type_named_as_unstripped() {
    let s = split();
    let names = |t: &TokioTracer| {
        let mut v: Vec<(String, String)> = t
            .bin
            .vtables
            .iter()
            .map(|v| (format!("{:#x}", v.va), v.display_name()))
            .collect();
        v.sort();
        v
    };
    let full = TokioTracer::open(&s.unstripped).expect("unstripped");
    let search = Search::new(vec![s.debug.clone()], s.dir.join("none"), None);
    let split = TokioTracer::open_with(&s.stripped, &search).expect("stripped + debug");
    let bare = TokioTracer::open_with(&s.stripped, &Search::new(vec![], s.dir.join("none"), None))
        .expect("stripped");
    assert_eq!(names(&split), names(&full));
    assert!(names(&bare).iter().all(|(_, n)| n.starts_with("vtable@")));
    println!("{} task types named alike", names(&full).len());
}

/// A debug file of another build is refused, naming both build-ids.
#[test]
fn a_foreign_debug_file_is_refused() {
    let s = split();
    let other = tokio_fixture("lines");
    let out = Command::new(leaktrace_bin())
        .arg("--explain-probes")
        .arg(&s.stripped)
        .arg("--debuginfo")
        .arg(&other)
        .output()
        .expect("run leaktrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&s.build_id) && stderr.contains("objcopy --only-keep-debug"),
        "{stderr}"
    );
    println!("{}", stderr.trim());
}
