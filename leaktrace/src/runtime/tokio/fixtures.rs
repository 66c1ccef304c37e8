//! End-to-end checks against the real binaries of `tests/fixtures/rust`,
//! built once per profile into `<target>/tokio-fixtures/<profile>/` and run
//! as live processes; each fixture prints its own ground truth
//! (`num_alive_tasks()`), which the heap scan must reproduce.
//!
//! What tokio counts differently: `num_alive_tasks()` counts the runtime's
//! `OwnedTasks`. The scan also finds blocking-pool tasks, which are never
//! bound to it (`owner_id == 0`): with `worker_threads = 2` these are the two
//! worker launchers, RUNNING for the runtime's whole life. The `block_on`
//! future of `#[tokio::main]` is not a task at all.
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::binary::{self, RustBinary};
use super::heap_scan::{self, HeapScan};
use super::state::Activity;
use super::vtables::{NameSource, TaskVtable};
use crate::target::elf::ElfFile;

const WORKER_THREADS: usize = 2;
const N: usize = 5;

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/rust")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("tokio-fixtures")
}

/// Build (or reuse) the fixture in `profile`. Builds are niced and
/// single-job: they share the machine with whatever else runs.
pub(super) fn fixture_binary(profile: &str, v0: bool) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    let key = format!("{profile}{}", if v0 { "+v0" } else { "" });
    if let Some(p) = built.get(&key) {
        return p.clone();
    }
    // RUSTFLAGS changes every crate's fingerprint: give v0 its own target
    // directory so the two never rebuild each other.
    let mut target = target_dir();
    if v0 {
        target.set_file_name("tokio-fixtures-v0");
    }
    let mut cmd = Command::new("nice");
    cmd.args([
        "-n",
        "19",
        "cargo",
        "build",
        "--locked",
        "--quiet",
        "--profile",
        profile,
    ])
    .arg("--target-dir")
    .arg(&target)
    .current_dir(manifest_dir())
    .env("CARGO_BUILD_JOBS", "1")
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if v0 {
        // The default from Rust 1.97 on (stable flag since 1.59).
        cmd.env("RUSTFLAGS", "-C symbol-mangling-version=v0");
    } else {
        cmd.env_remove("RUSTFLAGS");
    }
    let status = cmd.status().expect("run cargo for the tokio fixture");
    assert!(
        status.success(),
        "building the tokio fixture ({profile}) failed"
    );
    let dir = if profile == "dev" { "debug" } else { profile };
    let bin = target.join(dir).join("tokio-fixture");
    assert!(bin.exists(), "{} missing after build", bin.display());
    built.insert(key, bin.clone());
    bin
}

/// A fixture process, killed when dropped.
pub(super) struct Running {
    child: Child,
    pub(super) pid: u32,
    alive_tasks: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn run(bin: &Path, mode: &str) -> Running {
    run_with(bin, mode, |_| {})
}

/// Start the fixture, call `during` once its pid is known (its active
/// phase is running then), and return once it printed its ground truth.
fn run_with(bin: &Path, mode: &str, during: impl FnOnce(u32)) -> Running {
    let mut child = Command::new(bin)
        .args([mode, &N.to_string(), "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fixture");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("fixture {mode}: no {what} line ({e})"))
    };
    let first = next("pid");
    let pid: u32 = first
        .strip_prefix("pid ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("fixture {mode}: first line {first:?}"));
    assert_eq!(pid, child.id());
    let mut running = Running {
        child,
        pid,
        alive_tasks: usize::MAX,
    };
    during(pid);
    loop {
        let line = next("alive_tasks");
        if let Some(a) = line.strip_prefix("alive_tasks ") {
            running.alive_tasks = a.trim().parse().expect("alive_tasks count");
            return running;
        }
    }
}

struct Checked {
    bin: RustBinary,
    bias: u64,
}

fn scan(c: &Checked, r: &Running) -> HeapScan {
    heap_scan::scan(
        r.pid,
        &c.bin.vtables,
        c.bias,
        heap_scan::cell_align(c.bin.tokio_version),
    )
    .expect("scan")
}

fn vt(c: &Checked, i: usize) -> &TaskVtable {
    &c.bin.vtables[i]
}

/// What every profile must show; `source` is how the leaking tasks' types
/// must be named in this profile.
fn check_profile(profile: &str, v0: bool, source: NameSource) {
    let path = fixture_binary(profile, v0);
    let profile = &format!("{profile}{}", if v0 { "+v0" } else { "" });
    let elf = ElfFile::open(&path).expect("open fixture");
    let bin = binary::detect(&elf).unwrap_or_else(|e| panic!("{profile}: {e}"));
    eprintln!(
        "[{profile}] rustc={:?} tokio={:?} symtab={} dwarf={} mangling={:?} vtables={}",
        bin.rustc,
        bin.tokio_version,
        bin.has_symtab,
        bin.has_dwarf,
        bin.mangling,
        bin.vtables.len()
    );
    for v in &bin.vtables {
        eprintln!(
            "[{profile}]   {v} sched={:?} offs=({}, {}, {}) reason={:?}",
            v.name.scheduler, v.trailer_offset, v.scheduler_offset, v.id_offset, v.name.reason
        );
    }
    assert!(
        bin.rustc
            .as_deref()
            .is_some_and(|r| r.starts_with("rustc version 1."))
    );
    assert_eq!(bin.tokio_version, Some(binary::NEWEST_TESTED_TOKIO));
    assert_eq!(bin.version_note(), None);
    // Each of the 6 async fns for 2 schedulers, the worker launcher, and
    // the runtime's own (blocking) tasks: at least 12.
    assert!(
        bin.vtables.len() >= 12,
        "{profile}: {} vtables",
        bin.vtables.len()
    );
    let names: Vec<String> = bin.vtables.iter().map(|v| v.display_name()).collect();
    if source >= NameSource::DropGlue {
        for f in [
            "oneshot_waiter",
            "mpsc_consumer",
            "pending_forever",
            "short_job",
            "accept_loop",
            "handle_conn",
        ] {
            let want = format!("tokio_fixture::{f}");
            let n = names.iter().filter(|n| **n == want).count();
            assert_eq!(n, 2, "{profile}: {want} once per scheduler in {names:?}");
        }
    } else {
        assert!(
            bin.vtables
                .iter()
                .all(|v| v.name.source == NameSource::Address
                    && v.name
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains("stripped"))),
            "{profile}: stripped binary names nothing"
        );
        assert!(bin.naming_warning().is_some_and(|w| w.contains("stripped")));
    }

    for mode in ["oneshot", "mpsc", "pending", "short", "server"] {
        let r = run(&path, mode);
        let c = Checked {
            bias: heap_scan::exe_load_bias(r.pid, &elf).expect("bias"),
            bin: bin.clone(),
        };
        let t0 = std::time::Instant::now();
        let s = scan(&c, &r);
        let took = t0.elapsed();
        eprintln!(
            "[{profile}] {mode}: alive_tasks={} scan: {} tasks ({} counted), stale={} complete={} \
             unbound_copies={} unstable={} regions={} scanned={}KiB in {:?}",
            r.alive_tasks,
            s.tasks.len(),
            s.counted().count(),
            s.stale_cells,
            s.complete_cells,
            s.unbound_copies,
            s.unstable,
            s.regions,
            s.bytes_scanned / 1024,
            took
        );
        for t in &s.tasks {
            eprintln!(
                "[{profile}]   id={} {} owner={} hdr={:#x} {}",
                t.id,
                t.state,
                t.owner_id,
                t.header,
                vt(&c, t.vtable).display_name()
            );
        }
        // The ground truth, exactly.
        assert_eq!(s.counted().count(), r.alive_tasks, "{profile} {mode}");
        // What tokio does not count: the worker launchers, running.
        let uncounted: Vec<_> = s.tasks.iter().filter(|t| !t.counted_by_tokio()).collect();
        assert_eq!(
            uncounted.len(),
            WORKER_THREADS,
            "{profile} {mode}: launchers"
        );
        for t in uncounted {
            assert_eq!(t.state.activity(), Activity::Running);
            if source >= NameSource::DropGlue {
                assert!(vt(&c, t.vtable).is_blocking(), "{}", vt(&c, t.vtable));
            }
        }
        let counted: Vec<_> = s.counted().collect();
        let expect_fn = match mode {
            "oneshot" => Some("oneshot_waiter"),
            "mpsc" => Some("mpsc_consumer"),
            "pending" => Some("pending_forever"),
            "server" => Some("accept_loop"),
            _ => None,
        };
        let expect_n = match mode {
            "short" => 0,
            "server" => 1,
            _ => N,
        };
        assert_eq!(r.alive_tasks, expect_n, "{profile} {mode}: fixture truth");
        // One leak group: every counted task shares a vtable (and so a name,
        // whatever the profile can say about it).
        let mut groups: Vec<usize> = counted.iter().map(|t| t.vtable).collect();
        groups.dedup();
        assert!(
            groups.len() <= 1,
            "{profile} {mode}: one vtable, got {groups:?}"
        );
        for t in &counted {
            let v = vt(&c, t.vtable);
            match (expect_fn, source >= NameSource::DropGlue) {
                (Some(f), true) => {
                    assert_eq!(v.display_name(), format!("tokio_fixture::{f}"));
                    assert!(v.name.source >= source, "{profile}: {v}");
                }
                _ => assert_eq!(v.display_name(), format!("vtable@{:#x}", v.va)),
            }
            assert_eq!(
                t.state.activity(),
                Activity::Idle,
                "{profile} {mode}: {}",
                t.state
            );
            match mode {
                "pending" => assert!(t.state.lost_waker(), "{}", t.state),
                _ => assert!(
                    t.state.outstanding_wakers().is_some_and(|w| w >= 1),
                    "{profile} {mode}: {}",
                    t.state
                ),
            }
            assert_eq!(
                t.state.has_join_interest(),
                mode == "mpsc" || (mode == "pending" && t.state.refs() == 2)
            );
        }
        if mode == "pending" {
            // Even tags kept their JoinHandle: 3 of 5.
            let joined = counted
                .iter()
                .filter(|t| t.state.has_join_interest())
                .count();
            assert_eq!(joined, N.div_ceil(2));
        }
    }
}

#[test]
fn release_default_names_by_drop_glue() {
    check_profile("release", false, NameSource::DropGlue);
}

#[test]
fn full_debug_names_by_dwarf() {
    check_profile("fulldebug", false, NameSource::Dwarf);
}

#[test]
fn line_tables_only_names_by_dwarf() {
    check_profile("lines", false, NameSource::Dwarf);
}

#[test]
fn fat_lto() {
    check_profile("fatlto", false, NameSource::DropGlue);
}

#[test]
fn stripped_names_by_address() {
    check_profile("stripped", false, NameSource::Address);
}

#[test]
fn v0_mangling_names_by_symbol() {
    check_profile("release", true, NameSource::V0Symbol);
}

/// Scans while tasks are spawned and freed hundreds of times a second: no
/// error, and nothing reported that is not a plausible live task of the
/// types this phase spawns.
#[test]
fn scan_during_churn() {
    let path = fixture_binary("release", false);
    let elf = ElfFile::open(&path).expect("open fixture");
    let bin = binary::detect(&elf).expect("tokio binary");
    let mut scans = 0;
    let mut seen_live = 0;
    let mut unstable = 0;
    let r = run_with(&path, "short", |pid| {
        let bias = heap_scan::exe_load_bias(pid, &elf).expect("bias");
        let until = std::time::Instant::now() + Duration::from_millis(700);
        while std::time::Instant::now() < until {
            let s = heap_scan::scan(pid, &bin.vtables, bias, heap_scan::CELL_ALIGN)
                .expect("scan under churn");
            scans += 1;
            unstable += s.unstable;
            for t in &s.tasks {
                assert!(t.state.is_plausible_live(), "{}", t.state);
                let v = &bin.vtables[t.vtable];
                if t.counted_by_tokio() {
                    seen_live += 1;
                    assert_eq!(v.display_name(), "tokio_fixture::short_job", "{}", t.state);
                } else {
                    assert!(v.is_blocking(), "{v}");
                }
            }
        }
    });
    eprintln!("churn: {scans} scans, {seen_live} live sightings, {unstable} unstable hits");
    assert!(scans >= 3);
    assert_eq!(r.alive_tasks, 0);
}
