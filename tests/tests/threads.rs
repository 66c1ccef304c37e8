//! The thread probes (`leaktrace::threads`) attached to real processes (a
//! Python script, a Rust program built with rustc), compared with /proc and
//! with what the programs themselves report: counts, names, exits, and the
//! creating function and line. Needs root (eBPF), python3 and rustc;
//! skipped with a message without root, except under CI where that is a
//! failure.
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace::probes::Probes;
use leaktrace::threads::{
    ThreadGroupReport, ThreadProbes, ThreadTable, ThreadVerdict, ThreadsReport,
};

fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{test}: must run as root under CI (eBPF)"
    );
    eprintln!("{test}: skipped: not root, so eBPF probes cannot be loaded");
    false
}

fn load() -> Probes {
    Probes::load(&[]).expect("loading the probes object")
}

/// A child that takes commands on stdin and answers one line each.
struct Driven {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driven {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the test program");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut d = Self {
            child,
            stdin,
            stdout,
        };
        assert_eq!(d.line(), "ready");
        d
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout
            .read_line(&mut l)
            .expect("reading the test program");
        l.trim_end().to_string()
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_tasks(pid: u32) -> Vec<u32> {
    let mut t: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    t.sort_unstable();
    t
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Drain until `done` holds for the table (events are delivered at once,
/// but the reader may look before the kernel has committed the last one).
fn drain_until(
    probes: &mut ThreadProbes,
    table: &mut ThreadTable,
    mut done: impl FnMut(&ThreadTable) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        probes.drain(table);
        if done(table) || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn group<'r>(r: &'r ThreadsReport, name: &str) -> Option<&'r ThreadGroupReport> {
    r.groups.iter().find(|g| g.pattern == name)
}

const PYTHON: &str = r#"
import ctypes, sys, threading
libc = ctypes.CDLL(None)
stop = threading.Event()
started = []
lock = threading.Lock()
def work(name):
    libc.prctl(15, name.encode())
    with lock:
        started.append(threading.get_native_id())
    stop.wait()
threads = []
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd.startswith("start"):
        n = int(cmd.split()[1])
        threads = [threading.Thread(target=work, args=("pyworker-%d" % i,)) for i in range(n)]
        for t in threads: t.start()
        while len(started) < n: pass
        print(" ".join(map(str, sorted(started))), flush=True)
    elif cmd.startswith("name "):
        # One thread with this name, longer than the kernel keeps.
        t = threading.Thread(target=work, args=(cmd[5:],))
        threads.append(t)
        t.start()
        while len(started) < len(threads): pass
        print(started[-1], flush=True)
    elif cmd == "stop":
        stop.set()
        for t in threads: t.join()
        print("stopped", flush=True)
"#;

#[test]
fn python_threads_are_counted_named_and_seen_to_exit() {
    if !root("python_threads_are_counted_named_and_seen_to_exit") {
        return;
    }
    let mut py = Driven::spawn(Command::new("python3").args(["-c", PYTHON]));
    let pid = py.pid();
    let mut ebpf = load();
    let mut probes = ThreadProbes::attach(&mut ebpf, pid).expect("attach");
    let mut table = ThreadTable::seed(pid).unwrap();
    assert_eq!(table.live(), proc_tasks(pid).len());

    let tids: Vec<u32> = py
        .ask("start 5")
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(tids.len(), 5);
    drain_until(&mut probes, &mut table, |t| t.created() >= 5);
    let r = table.report(now_ns());
    assert_eq!((r.created, r.exited, r.lost), (5, 0, 0), "{r:#?}");
    assert_eq!(r.live as usize, proc_tasks(pid).len(), "{r:#?}");
    let g = group(&r, "pyworker-#").unwrap_or_else(|| panic!("{r:#?}"));
    assert_eq!(g.count, 5);
    // The interpreter's own frames are in libpython or the python3
    // executable; none is the script's, so the creating thread names it.
    assert!(
        g.created_by == "thread `python3`" || g.site.is_some(),
        "{}",
        g.created_by
    );
    // Shown as the script named them; grouped with digits folded.
    assert_eq!(g.name, "pyworker-0 … pyworker-4");
    assert_eq!(
        g.names,
        (0..5).map(|i| format!("pyworker-{i}")).collect::<Vec<_>>()
    );

    // A name longer than the kernel's 15 bytes: prctl(PR_SET_NAME) keeps
    // the first 15 and nothing else in the kernel has the rest, so what
    // /proc shows is what can be shown, digits and all.
    let long = "V8 DefaultWorker-1";
    let tid: u32 = py.ask(&format!("name {long}")).trim().parse().unwrap();
    drain_until(&mut probes, &mut table, |t| t.created() >= 6);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
    assert_eq!(comm.trim_end(), &long[..15]);
    let r = table.report(now_ns());
    let g = group(&r, "V# DefaultWorke").unwrap_or_else(|| panic!("{r:#?}"));
    assert_eq!(g.name, comm.trim_end(), "{r:#?}");
    println!(
        "shown: {:?} (set: {long:?}, pattern {:?})",
        g.name, g.pattern
    );
    // Python starts them in order, so the i-th tid is pyworker-i.
    let mut names: Vec<&str> = tids
        .iter()
        .map(|&t| table.name_of(t).unwrap_or("?"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "pyworker-0",
            "pyworker-1",
            "pyworker-2",
            "pyworker-3",
            "pyworker-4"
        ]
    );

    assert_eq!(py.ask("stop"), "stopped");
    drain_until(&mut probes, &mut table, |t| t.exited() >= 6);
    let r = table.report(now_ns());
    assert_eq!((r.created, r.exited), (6, 6), "{r:#?}");
    assert_eq!(r.live as usize, proc_tasks(pid).len(), "{r:#?}");
    assert!(group(&r, "pyworker-#").is_none(), "{r:#?}");
    assert_eq!(probes.malformed, 0);
}

const RUST: &str = r#"
use std::io::BufRead;
#[inline(never)]
fn spawn_sleepers(n: usize, up: &std::sync::mpsc::Sender<()>) {
    for i in 0..n {
        let up = up.clone();
        std::thread::Builder::new()
            .name(format!("sleeper-{i}"))
            .spawn(move || { up.send(()).unwrap(); std::thread::park() })
            .unwrap();
    }
}
fn main() {
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let n: usize = line.unwrap().trim().parse().unwrap();
        let (up, started) = std::sync::mpsc::channel();
        spawn_sleepers(n, &up);
        // std names a thread before running its closure: once all have
        // reported, every rename is in the probes' ring.
        for _ in 0..n { started.recv().unwrap(); }
        println!("spawned");
    }
}
"#;

/// Compile [`RUST`] with `flags` into `dir`.
fn build_rust(dir: &Path, name: &str, flags: &[&str]) -> std::path::PathBuf {
    let src = dir.join("sleepers.rs");
    std::fs::write(&src, RUST).unwrap();
    let out = dir.join(name);
    let status = Command::new("rustc")
        .args(["--edition", "2021", "-C", "opt-level=3"])
        .args(flags)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("running rustc");
    assert!(status.success());
    out
}

/// The creation site comes from unwinding the creating thread's stack copy
/// with `.eh_frame`: with line tables it is the function and line that
/// called `Builder::spawn`; with `.symtab` only (Cargo's default release)
/// it is the function.
#[test]
fn rust_threads_are_attributed_to_the_spawning_function() {
    if !root("rust_threads_are_attributed_to_the_spawning_function") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("leaktrace-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (variant, flags, line) in [
        ("lines", &["-C", "debuginfo=line-tables-only"][..], 9),
        ("symtab", &["-C", "strip=debuginfo"][..], 0),
    ] {
        let exe = build_rust(&dir, variant, flags);
        let mut prog = Driven::spawn(&mut Command::new(&exe));
        let pid = prog.pid();
        let mut ebpf = load();
        let mut probes = ThreadProbes::attach(&mut ebpf, pid).expect("attach");
        let mut table = ThreadTable::seed(pid).unwrap();
        for round in 1..=4u64 {
            assert_eq!(prog.ask("3"), "spawned");
            drain_until(&mut probes, &mut table, |t| t.created() >= 3 * round);
            let r = table.report(now_ns());
            assert_eq!(r.live as usize, proc_tasks(pid).len(), "{variant}: {r:#?}");
            let g = group(&r, "sleeper-#").unwrap_or_else(|| panic!("{r:#?}"));
            assert_eq!(g.count, 3 * round, "{variant}: {r:#?}");
            let site = g
                .site
                .as_ref()
                .unwrap_or_else(|| panic!("{variant}: no site: {r:#?}"));
            assert_eq!(&*site.function, "sleepers::spawn_sleepers", "{variant}");
            assert_eq!(site.line, line, "{variant}: {site:?}");
            // One rise per round: growing from the fourth sample on.
            let expect = if round >= 4 {
                ThreadVerdict::Growing
            } else {
                ThreadVerdict::Ok
            };
            assert_eq!(g.verdict, expect, "{variant} round {round}: {}", g.why);
        }
        assert_eq!(probes.stacks_lost(), 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
