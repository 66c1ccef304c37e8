//! leaktrace's reading of tokio binaries (`leaktrace::runtime::tokio`) on
//! real builds of the tokio fixture, `tests/fixtures/rust`, built once per
//! cargo profile (release, full debug info, line tables only, fat LTO,
//! stripped, v0 mangling) into `<target>/tokio-fixtures*/`:
//! - vtables and task names (how each profile can name a task: DWARF, drop
//!   glue, v0 symbols, or only an address);
//! - the heap scan of a live fixture process, which must reproduce the
//!   fixture's own `num_alive_tasks()` exactly, also under spawn churn;
//! - the probe plan per profile;
//! - await points (full DWARF): each leaked task's stack ends on the
//!   fixture's line that awaits.
//!
//! What tokio counts differently: `num_alive_tasks()` counts the runtime's
//! `OwnedTasks`. The scan also finds blocking-pool tasks, which are never
//! bound to it (`owner_id == 0`): with `worker_threads = 2` these are the two
//! worker launchers, RUNNING for the runtime's whole life. The `block_on`
//! future of `#[tokio::main]` is not a task at all.
//!
//! Needs cargo to build the fixture, not root: the scans read the memory of
//! the test's own child.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leaktrace::runtime::tokio::await_points::AwaitDecoder;
use leaktrace::runtime::tokio::binary;
use leaktrace::runtime::tokio::heap_scan::{self, HeapScan};
use leaktrace::runtime::tokio::probe_points;
use leaktrace::runtime::tokio::state::Activity;
use leaktrace::runtime::tokio::tracer::TokioTracer;
use leaktrace::runtime::tokio::vtables::{self, NameSource, TaskVtable};
use leaktrace::target::elf::ElfFile;
use leaktrace::target::memory::Memory;
use leaktrace_common::tokio::TokioEventKind;
use leaktrace_e2e::{TokioProcess, tokio_fixture, tokio_fixture_line};

const WORKER_THREADS: usize = 2;
/// Tasks each leaking mode of the fixture leaks.
const N: usize = 5;

struct Checked {
    bin: binary::RustBinary,
    bias: u64,
}

fn scan(c: &Checked, r: &TokioProcess) -> HeapScan {
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
    let path = tokio_fixture(profile, v0);
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
        // No name survives stripping; the panic locations of the poll code
        // give the source file of the fixture's own futures, and never a
        // dependency's file. Which vtables are the fixture's own comes from
        // the same source built with symbols (the release profile).
        let named = binary::detect(&ElfFile::open(&tokio_fixture("release", false)).unwrap())
            .expect("release build");
        // The file each of the fixture's own futures is defined in: its
        // module (`tokio_fixture::runtimes::…` is src/runtimes.rs).
        let mut want: Vec<String> = named
            .vtables
            .iter()
            .map(|v| v.display_name())
            .filter_map(|n| {
                let path = n.strip_prefix("tokio_fixture::")?;
                Some(match path.split_once("::") {
                    Some((module, _)) => format!("src/{module}.rs"),
                    None => "src/main.rs".to_string(),
                })
            })
            .collect();
        let hinted: Vec<&TaskVtable> = bin
            .vtables
            .iter()
            .filter(|v| v.name.source == NameSource::PanicLocation)
            .collect();
        assert!(
            bin.vtables.iter().all(|v| v.name.future.is_none()
                && matches!(
                    v.name.source,
                    NameSource::Address | NameSource::PanicLocation
                )),
            "{profile}: a stripped binary names no type"
        );
        let mut got: Vec<String> = hinted
            .iter()
            .map(|v| {
                let h = v.name.hint.as_ref().unwrap();
                assert!(
                    v.display_name().ends_with(&format!(" in {}", h.file)),
                    "{v}"
                );
                h.file.clone()
            })
            .collect();
        want.sort();
        got.sort();
        // Never a wrong file: what is placed is among the fixture's own
        // futures' files, as many times as there are futures there.
        let mut left = want.clone();
        for f in &got {
            let i = left.iter().position(|w| w == f).unwrap_or_else(|| {
                panic!("{profile}: more futures placed in {f} than it defines: {got:?} vs {want:?}")
            });
            left.remove(i);
        }
        // Every async one is placed; a `spawn_blocking` closure may not be
        // (one that never panics has no location: the fixture's
        // blocking_waiter only waits on a std channel).
        let own_blocking = named
            .vtables
            .iter()
            .filter(|v| v.display_name().starts_with("tokio_fixture::") && v.is_blocking())
            .count();
        eprintln!(
            "[{profile}] placed {} of the fixture's {} own futures ({own_blocking} blocking); \
             unplaced: {left:?}",
            got.len(),
            want.len()
        );
        assert!(
            left.len() <= own_blocking,
            "{profile}: async futures left unplaced: {left:?}"
        );
        assert!(bin.naming_warning().is_some_and(|w| w.contains("stripped")));
    }

    for mode in ["oneshot", "mpsc", "pending", "short", "server"] {
        let r = TokioProcess::start(&path, mode, N);
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
                (Some(_), false) => assert_eq!(
                    v.display_name(),
                    format!("vtable@{:#x} in src/main.rs", v.va)
                ),
                _ => assert!(v.display_name().starts_with(&format!("vtable@{:#x}", v.va))),
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
fn stripped_names_by_panic_location() {
    check_profile("stripped", false, NameSource::PanicLocation);
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
    let path = tokio_fixture("release", false);
    let elf = ElfFile::open(&path).expect("open fixture");
    let bin = binary::detect(&elf).expect("tokio binary");
    let mut scans = 0;
    let mut seen_live = 0;
    let mut unstable = 0;
    let r = TokioProcess::start_with(&path, "short", N, |pid| {
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

/// What each build profile of the fixture offers: symbols give spawn
/// and completion points (fat LTO included); a stripped binary only
/// the vtable functions.
/// The tracer opens the release build, which has task vtables of the kind
/// its table follows (the unit test of its event handling in
/// `runtime/tokio/tracer.rs` uses a synthetic one).
#[test]
fn tracer_opens_the_release_build() {
    let t = TokioTracer::open(&tokio_fixture("release", false)).expect("tokio fixture");
    assert!(
        t.bin
            .vtables
            .iter()
            .any(|v| v.has_bound_scheduler() && !v.is_blocking()),
        "a task vtable"
    );
}

#[test]
fn plan_per_build_profile() {
    for (profile, v0, symbols) in [
        ("release", false, true),
        ("fatlto", false, true),
        ("lines", false, true),
        ("release", true, true),
        ("stripped", false, false),
    ] {
        let elf = ElfFile::open(&tokio_fixture(profile, v0)).expect("fixture");
        let bin = binary::detect(&elf).expect("tokio");
        let p = probe_points::plan(&elf, &bin.vtables, true);
        let kinds = |k: TokioEventKind| {
            p.points
                .iter()
                .filter(|a| a.cookie as u8 == k as u8)
                .count()
        };
        println!(
            "{profile}{}: spawn {} complete {} shutdown {} poll {} wake {}; notes {:?}",
            if v0 { "+v0" } else { "" },
            kinds(TokioEventKind::Spawn),
            kinds(TokioEventKind::Complete),
            kinds(TokioEventKind::Shutdown),
            kinds(TokioEventKind::Poll),
            kinds(TokioEventKind::Wake),
            p.notes
        );
        // By symbols, or (stripped) by code shape.
        assert!(p.sees_spawns && p.sees_completions, "{profile}");
        assert!(kinds(TokioEventKind::Shutdown) > 0 && p.polls, "{profile}");
        assert_eq!(kinds(TokioEventKind::Wake) == 2, symbols, "{profile}");

        // Default mode polls only blocking-pool tasks (once each), found
        // by layout, so stripped builds too; never an async task's poll.
        let d = probe_points::plan(&elf, &bin.vtables, false);
        let async_polls: Vec<u64> = bin
            .vtables
            .iter()
            .filter(|v| !v.runs_on_blocking_pool())
            .map(|v| v.poll())
            .collect();
        let polled: Vec<u64> = d
            .points
            .iter()
            .filter(|a| a.cookie as u8 == TokioEventKind::Poll as u8)
            .map(|a| a.va)
            .collect();
        println!("  default: {} blocking-task poll probes", polled.len());
        assert!(!d.polls && d.blocking_starts, "{profile}");
        assert!(
            polled.iter().all(|va| !async_polls.contains(va)
                && bin
                    .vtables
                    .iter()
                    .any(|v| v.runs_on_blocking_pool() && v.poll() == *va)),
            "{profile}"
        );
    }
}

struct Built {
    path: PathBuf,
    elf: ElfFile,
    bin: binary::RustBinary,
}

fn built(profile: &str) -> Built {
    let path = tokio_fixture(profile, false);
    let elf = ElfFile::open(&path).expect("open fixture");
    let bin = binary::detect(&elf).expect("tokio binary");
    Built { path, elf, bin }
}

fn timed_load(name: &str, elf: &ElfFile, vtables: &[TaskVtable]) -> Option<AwaitDecoder> {
    let t0 = Instant::now();
    let dec = AwaitDecoder::load(elf, vtables);
    eprintln!(
        "[{name}] load: {:?} for {} vtables in {:?}",
        dec.as_ref().map(AwaitDecoder::decodable),
        vtables.len(),
        t0.elapsed()
    );
    dec
}

/// Every leaked task of `mode` whose future is `tokio_fixture::{func}`
/// awaits at the line of main.rs that holds `await_expr`.
fn check_mode(f: &Built, dec: &AwaitDecoder, mode: &str, func: &str, await_expr: &str) {
    let line = tokio_fixture_line(await_expr);
    let want_fn = format!("tokio_fixture::{func}");
    let r = TokioProcess::start(&f.path, mode, N);
    let bias = heap_scan::exe_load_bias(r.pid, &f.elf).expect("bias");
    let scan = heap_scan::scan(
        r.pid,
        &f.bin.vtables,
        bias,
        heap_scan::cell_align(f.bin.tokio_version),
    )
    .expect("scan");
    let mem = Memory::new(r.pid);
    let mut read = |addr: u64, len: usize| {
        let mut b = vec![0u8; len];
        mem.read(addr, &mut b).ok().map(|()| b)
    };
    let mut checked = 0;
    for t in &scan.tasks {
        let vt = &f.bin.vtables[t.vtable];
        if vt.display_name() != want_fn {
            continue;
        }
        assert!(dec.is_decodable(t.vtable), "{mode}: {vt} not decodable");
        let stack = dec.stack(t.vtable, t.header, &mut read);
        eprintln!("[{mode}] task {} {}:", t.id, t.state);
        for p in &stack {
            eprintln!("[{mode}]     {p}");
        }
        let frame = stack
            .iter()
            .find(|p| p.function.starts_with("tokio_fixture::"))
            .unwrap_or_else(|| panic!("{mode}: no program frame in {stack:?}"));
        assert_eq!(frame.function, want_fn);
        assert_eq!(frame.line, line, "{mode}: {frame}");
        assert!(frame.file.ends_with("src/main.rs"), "{frame}");
        assert!(frame.state.starts_with("Suspend"), "{frame}");
        // Innermost first: the task's own future is the outermost frame.
        assert_eq!(
            stack.last().map(|p| p.function.as_str()),
            Some(want_fn.as_str())
        );
        checked += 1;
    }
    assert!(
        checked >= 1,
        "{mode}: no {want_fn} task among {}",
        scan.tasks.len()
    );
    // Decode cost per task, on the live process.
    let t = scan
        .tasks
        .iter()
        .find(|t| f.bin.vtables[t.vtable].display_name() == want_fn)
        .expect("a task");
    let n = 2000;
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(dec.stack(t.vtable, t.header, &mut read));
    }
    eprintln!(
        "[{mode}] {checked} tasks decoded; {:.2} µs per stack",
        t0.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
}

#[test]
fn full_debug_await_lines() {
    let f = built("fulldebug");
    let dec = timed_load("fulldebug", &f.elf, &f.bin.vtables).expect("type DWARF");
    // Each async fn of the fixture, for both schedulers, at least.
    assert!(dec.decodable() >= 12, "{dec:?}");
    check_mode(
        &f,
        &dec,
        "oneshot",
        "oneshot_waiter",
        "rx.await.unwrap_or(0)",
    );
    check_mode(&f, &dec, "mpsc", "mpsc_consumer", "rx.recv().await");
    check_mode(
        &f,
        &dec,
        "pending",
        "pending_forever",
        "std::future::pending::<()>().await",
    );
    check_mode(&f, &dec, "server", "accept_loop", "listener.accept().await");
}

#[test]
fn no_type_dwarf_no_decoder() {
    for profile in ["lines", "release"] {
        let f = built(profile);
        assert!(!f.bin.vtables.is_empty());
        assert!(
            timed_load(profile, &f.elf, &f.bin.vtables).is_none(),
            "{profile}"
        );
    }
}

/// Load time on a large binary, and its tasks' stacks:
/// `AWAIT_POINTS_BINARY=/path cargo test --release -p leaktrace-e2e --test
/// tokio_binary large_binary -- --ignored --nocapture`. With
/// `AWAIT_POINTS_SOURCE=main.rs` the binary is run (it must print
/// `ready` once its tasks are idle) and each task's innermost frame in
/// that file must be on a line marked `// AWAIT:<fn name>`.
#[test]
#[ignore]
fn large_binary() {
    let path = std::env::var_os("AWAIT_POINTS_BINARY").expect("AWAIT_POINTS_BINARY");
    let elf = ElfFile::open(Path::new(&path)).expect("open");
    let t0 = Instant::now();
    let vtables = vtables::find_vtables(&elf);
    eprintln!("find_vtables: {} in {:?}", vtables.len(), t0.elapsed());
    let dec = timed_load("large", &elf, &vtables).expect("decoder");
    for (i, v) in vtables.iter().enumerate() {
        let ok = if dec.is_decodable(i) { "ok" } else { "--" };
        eprintln!("  {ok} {v}");
    }
    let Some(source) = std::env::var_os("AWAIT_POINTS_SOURCE") else {
        return;
    };
    let text = std::fs::read_to_string(&source).expect("source");
    let marked = |line: u32| -> Option<String> {
        let l = text.lines().nth(line.checked_sub(1)? as usize)?;
        Some(l.split_once("// AWAIT:")?.1.trim().to_owned())
    };
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let pid = child.id();
    let out = child.stdout.take().expect("stdout");
    for line in std::io::BufReader::new(out).lines() {
        if line.expect("line") == "ready" {
            break;
        }
    }
    let bias = heap_scan::exe_load_bias(pid, &elf).expect("bias");
    let scan = heap_scan::scan(pid, &vtables, bias, heap_scan::CELL_ALIGN).expect("scan");
    let mem = Memory::new(pid);
    let mut read = |addr: u64, len: usize| {
        let mut b = vec![0u8; len];
        mem.read(addr, &mut b).ok().map(|()| b)
    };
    let mut failures = Vec::new();
    for t in scan.counted() {
        let stack = dec.stack(t.vtable, t.header, &mut read);
        eprintln!("task {} {}:", t.id, vtables[t.vtable].display_name());
        for p in &stack {
            eprintln!("    {p}");
        }
        // The outermost frame in the source names its fn on its line
        // (select!'s await is in tokio's macro: no frame there).
        let Some(mine) = stack
            .iter()
            .rev()
            .find(|p| source_matches(&p.file, &source))
        else {
            continue;
        };
        let want = marked(mine.line);
        if want.as_deref() != mine.function.rsplit("::").next() {
            failures.push(format!("{}: {mine} marked {want:?}", t.id));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(failures.is_empty(), "{failures:#?}");
}

fn source_matches(file: &str, source: &std::ffi::OsStr) -> bool {
    let source = Path::new(source);
    !file.is_empty() && source.ends_with(Path::new(file)) || Path::new(file).ends_with(source)
}

/// Stripped binaries' spawn and completion points, found by code shape
/// (`runtime/tokio/code_points.rs`), must be exactly the functions the
/// symbols name in unstripped builds of the same source: the search runs
/// on those builds ignoring their symbols, and its `bind_inner` and
/// `Schedule::release` addresses must equal the symbol plan's.
#[test]
fn code_shape_finds_the_symbol_plans_spawn_and_completion_points() {
    for (profile, v0) in [("release", false), ("fatlto", false), ("release", true)] {
        let profile_name = format!("{profile}{}", if v0 { "+v0" } else { "" });
        let elf = ElfFile::open(&tokio_fixture(profile, v0)).expect("fixture");
        let bin = binary::detect(&elf).expect("tokio");
        let symbols = probe_points::plan(&elf, &bin.vtables, false);
        let by_symbol = |k: TokioEventKind| -> Vec<u64> {
            let mut v: Vec<u64> = symbols
                .points
                .iter()
                .filter(|a| a.cookie as u8 == k as u8)
                .map(|a| a.va)
                .collect();
            v.sort_unstable();
            v
        };
        let t0 = Instant::now();
        let found = probe_points::by_code(&elf, &bin.vtables).expect("x86-64");
        println!(
            "{profile_name}: by code in {:?}: {found}; symbols: spawn {:x?} complete {:x?}; \
             notes {:?}",
            t0.elapsed(),
            by_symbol(TokioEventKind::Spawn),
            by_symbol(TokioEventKind::Complete),
            found.notes
        );
        assert_eq!(
            found.spawns.keys().copied().collect::<Vec<_>>(),
            by_symbol(TokioEventKind::Spawn),
            "{profile_name}: bind_inner"
        );
        assert_eq!(
            found.releases.keys().copied().collect::<Vec<_>>(),
            by_symbol(TokioEventKind::Complete),
            "{profile_name}: Schedule::release"
        );
    }

    // Where the search finds nothing, the stripped build falls back to
    // scans and says so: here vtables that no code references (moved by
    // 8 bytes), so no `bind_inner` is found through them.
    let elf = ElfFile::open(&tokio_fixture("stripped", false)).expect("fixture");
    let bin = binary::detect(&elf).expect("tokio");
    let moved: Vec<TaskVtable> = bin
        .vtables
        .iter()
        .map(|v| TaskVtable {
            va: v.va + 8,
            ..v.clone()
        })
        .collect();
    let p = probe_points::plan(&elf, &moved, false);
    println!("stripped, vtables moved: notes {:?}", p.notes);
    assert!(!p.sees_spawns, "nothing found, nothing probed");
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("bind_inner") && n.contains("did not find")),
        "{:?}",
        p.notes
    );
}
