//! Command-line interface, in the shape bcc's memleak users know:
//! `leaktrace --pid PID [INTERVAL [COUNT]]` or `leaktrace -c CMD [ARGS…]`.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Find goroutine and tokio task leaks in a running process with eBPF: no restart, no rebuild, no pprof endpoint, no stop-the-world.",
    after_help = "\
EXAMPLES:
  sudo leaktrace --pid $(pidof api)            report every 5s until Ctrl-C (then a final report)
  sudo leaktrace -p 1234 10 3                  three reports, 10s apart
  sudo leaktrace -p 1234 --duration 1m --older 30s --stacks
  sudo leaktrace -p 1234 -d 30s --format json  JSON on stdout, one object per report
  sudo leaktrace -c ./server --port 8080       start the program with probes already attached
  sudo leaktrace -p 1234 --listen 127.0.0.1:9091   Prometheus /metrics and /debug/pprof/goroutine
  sudo leaktrace -f --fail-on leak -c go test ./...   each test binary, judged when it exits
  sudo leaktrace --all --listen :9091          every Go and tokio process on the host

Verdicts (README §Verdicts): `leak` = blocked on something that can never
happen, a blocked group that grows (or grew and stays blocked), tasks blocked
far longer than their finished siblings lived, a deadlock, or, at exit, still
blocked when the program ended; each with its cause and fix when recognised
(README §Causes). `suspect` = blocked longer than --stuck, or many blocked
and flat, or growth that follows open sockets; `ok` = anything else, including
the main goroutine and a server's idle connections.

Needs Linux ≥ 5.8 with BTF and uprobes, and root, or CAP_SYS_ADMIN (uprobes
need it on Linux 6.18), CAP_DAC_READ_SEARCH (tracefs: threads, exec) and, under
Yama ptrace_scope ≥ 1, CAP_SYS_PTRACE; a capability-granted copy traces only its
user's own processes (README §Privileges). The target is never stopped: probes
only copy a few words and its memory is only read.

Exit status: the command's own with -c (3 if --fail-on matched), 0 with --pid,
2 when leaktrace fails (the message names the fix), 4 when its report output
cannot be written (a closed stdout or pipe)."
)]
pub struct Args {
    /// Process to trace.
    #[arg(
        short,
        long,
        conflicts_with = "command",
        required_unless_present_any = ["command", "explain_probes", "all"]
    )]
    pub pid: Option<u32>,

    /// Seconds (or a duration like 500ms, 1m) between reports.
    #[arg(value_parser = parse_duration)]
    pub interval_pos: Option<Duration>,

    /// Number of reports, then exit (the last one is the final report).
    pub count_pos: Option<u64>,

    /// Same as the INTERVAL positional.
    #[arg(short, long, value_parser = parse_duration, conflicts_with = "interval_pos")]
    pub interval: Option<Duration>,

    /// Same as the COUNT positional.
    #[arg(long, conflicts_with = "count_pos")]
    pub count: Option<u64>,

    /// Stop after this long (e.g. 30s, 5m) with a final report.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Show only the N largest groups.
    #[arg(short = 'T', long, default_value_t = 10)]
    pub top: usize,

    /// Ignore goroutines blocked for less than this; also the age from which a
    /// blocked goroutine counts toward a group's growth.
    #[arg(short, long, value_parser = parse_duration, default_value = "1s")]
    pub older: Duration,

    /// A flat group with at least this many goroutines blocked ≥ --older is `suspect`.
    #[arg(long, default_value_t = 100)]
    pub suspect_count: u64,

    /// The recent window growth is measured over; growth earlier in the
    /// session is remembered apart ("grew by N in the first …").
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub window: Duration,

    /// Blocked longer than this outside an idle pattern (accept, a read on a
    /// connection, a timer, a pool's receive) is `suspect`.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub stuck: Duration,

    /// Every goroutine of the program blocked on the program itself
    /// (channels, locks) this long, none running or waiting on I/O or a
    /// timer: the report says `deadlock` with the participants.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub hang: Duration,

    /// Leave out goroutines whose top frame (the first outside package
    /// runtime) is this function, as goleak's IgnoreTopFunction (repeatable).
    #[arg(long, value_name = "FUNC")]
    pub ignore_top: Vec<String>,

    /// Leave out goroutines that already existed when leaktrace attached,
    /// as goleak's IgnoreCurrent.
    #[arg(long)]
    pub ignore_current: bool,

    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write reports here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,

    /// Also write each report as a gzipped pprof goroutine profile to FILE
    /// (`go tool pprof -top FILE`), rewritten at every report.
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,

    /// Also write each report as folded stacks (flamegraph.pl, inferno) to
    /// FILE, rewritten at every report.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,

    /// Serve /metrics (Prometheus) and /debug/pprof/goroutine on ADDR
    /// (e.g. 127.0.0.1:9091), from the latest report.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// A full-screen table for people who watch, redrawn at each report:
    /// ↑↓ select, Enter a group's stack and reason, s sort, q the final report.
    #[arg(long, conflicts_with_all = ["follow", "output", "format"])]
    pub tui: bool,

    /// Print each group's stack.
    #[arg(short, long)]
    pub stacks: bool,

    /// Also show the Go runtime's own goroutines (GC workers and the like).
    #[arg(long)]
    pub system: bool,

    /// Do not read the goroutines that existed before attach (live events only).
    #[arg(long)]
    pub no_snapshot: bool,

    /// Also probe every block: Go, every park (exact blocked-since times;
    /// ~1 µs per park, bench/RESULTS.md §1); tokio, every poll and wake
    /// (exact idle durations, tasks of stripped binaries seen at their
    /// first poll; ~2.4 µs per poll, §6). Default is once per task (spawn
    /// and exit or completion): blocked and idle durations are then known
    /// to a refresh (≥).
    #[arg(long)]
    pub detailed: bool,

    /// Keep the probes' estimated CPU cost under PCT % of the target's own
    /// CPU (README §Overhead budget): over it, the costliest probes are
    /// detached (Go: park, then spawn and exit) and what they saw is read
    /// from memory at each refresh (approximations said in the reports);
    /// re-armed when the rate falls. `off`: never detach (still estimated);
    /// `0`: memory reads only from the start. The default can also come
    /// from LEAKTRACE_MAX_OVERHEAD (benchmarks that measure the probes
    /// themselves set it to `off`).
    #[arg(long, value_name = "PCT", value_parser = crate::budget::parse_max_overhead,
          default_value = "2", env = "LEAKTRACE_MAX_OVERHEAD")]
    pub max_overhead: crate::budget::MaxOverhead,

    /// The program's separate debug info (`objcopy --only-keep-debug`), for
    /// names in a stripped binary; repeatable (each program traced takes
    /// the file with its build-id; one that is no traced program's is an
    /// error, except with -f). Without it leaktrace looks in the
    /// build-id directory under --debug-dir, at `.gnu_debuglink`, and asks
    /// the debuginfod servers in DEBUGINFOD_URLS.
    #[arg(long, value_name = "FILE")]
    pub debuginfo: Vec<PathBuf>,

    /// Where separate debug files are installed (`.build-id/xx/rest.debug`).
    #[arg(long, value_name = "DIR", default_value = crate::symbols::debuginfo::DEFAULT_DEBUG_DIR)]
    pub debug_dir: PathBuf,

    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    /// Print where the probes would go in PROGRAM (JSON: program, event,
    /// symbol, offsets, cookie) and exit; attaches nothing, needs no
    /// privileges. Benchmarks use it to probe exactly leaktrace's points.
    #[arg(long, value_name = "PROGRAM", conflicts_with_all = ["pid", "command"])]
    pub explain_probes: Option<PathBuf>,

    /// With -c: also trace every Go or tokio program the command starts
    /// (fork, exec, wrapper scripts, `go test` running each package's test
    /// binary), each reported on its own. Each new program is held (SIGSTOP)
    /// for the milliseconds leaktrace takes to look at it and attach, so
    /// nothing is missed; other programs are passed over.
    #[arg(short = 'f', long, requires = "command")]
    pub follow: bool,

    /// Exit with status 3 when a traced process ends with a group of this
    /// verdict (or worse) in its final report: for CI jobs that must fail
    /// when a test leaks.
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub fail_on: Option<FailOn>,

    /// Trace every Go and tokio process on the host, those running now and
    /// each new one as it starts (attached right after its exec, never
    /// stopped), each reported on its own; a process leaves the reports and
    /// /metrics when it exits. leaktrace and its own children are never
    /// traced.
    #[arg(long, conflicts_with_all = ["pid", "command", "tui"])]
    pub all: bool,

    /// With --all: only processes in this cgroup v2 or below it (a
    /// container, a pod): a directory under /sys/fs/cgroup, or the path
    /// /proc/PID/cgroup shows.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// With --all: only processes whose executable has this file name
    /// (repeatable).
    #[arg(long = "exe", value_name = "NAME")]
    pub exes: Vec<String>,

    /// With --all: trace at most this many processes at once (default 64);
    /// others wait for a slot (named on stderr and /metrics).
    #[arg(long, value_name = "N")]
    pub max_processes: Option<usize>,

    /// Start this command with the probes attached before it runs, so nothing
    /// is missed; its output passes through. Everything after -c is the command.
    #[arg(short = 'c', long = "command", num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    Leak,
    Suspect,
}

/// `--fail-on` matched.
pub const EXIT_FAIL_ON: i32 = 3;

/// The report output could not be written (stdout closed, its pipe's reader
/// gone, disk full): tracing stopped there, everything detached.
pub const EXIT_OUTPUT_FAILED: i32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

impl Args {
    pub fn report_interval(&self) -> Duration {
        self.interval
            .or(self.interval_pos)
            .unwrap_or(Duration::from_secs(5))
    }

    /// `--max-processes`, or its default.
    pub fn max_processes(&self) -> usize {
        self.max_processes.unwrap_or(64).max(1)
    }

    /// `--cgroup`, `--exe` and `--max-processes` shape `--all` and mean
    /// nothing without it. (clap's `requires` takes `--all`'s default
    /// `false` for presence, so this is checked here.)
    pub fn check_all_options(&self) -> Result<(), String> {
        let given = [
            ("--cgroup", self.cgroup.is_some()),
            ("--exe", !self.exes.is_empty()),
            ("--max-processes", self.max_processes.is_some()),
        ];
        match given.iter().find(|(_, given)| *given) {
            Some((name, _)) if !self.all => Err(format!(
                "{name} narrows --all (every Go and tokio process on the host); add --all, \
                 or drop {name} to trace one process"
            )),
            _ => Ok(()),
        }
    }

    pub fn report_count(&self) -> Option<u64> {
        self.count.or(self.count_pos)
    }

    /// Periodic reports are on unless `--duration` was given alone: then
    /// the one report is the final one.
    pub fn periodic_reports(&self) -> bool {
        self.duration.is_none()
            || self.interval.is_some()
            || self.interval_pos.is_some()
            || self.report_count().is_some()
    }
}

/// `5` (seconds), `1.5`, `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("`{s}` is not a duration"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); use e.g. 500ms, 30s, 5m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_alone_means_one_final_report() {
        let parse = |a: &[&str]| Args::try_parse_from(a).expect("valid arguments");
        assert!(!parse(&["leaktrace", "-p", "1", "--duration", "30s"]).periodic_reports());
        assert!(
            parse(&["leaktrace", "-p", "1", "--duration", "30s", "-i", "5"]).periodic_reports()
        );
        assert!(parse(&["leaktrace", "-p", "1", "5"]).periodic_reports());
        assert!(parse(&["leaktrace", "-p", "1"]).periodic_reports());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
    }

    #[test]
    fn all_stands_alone_and_takes_its_narrowing_options() {
        let a = Args::try_parse_from([
            "leaktrace",
            "--all",
            "--exe",
            "api",
            "--exe",
            "worker",
            "--cgroup",
            "/pod",
        ])
        .unwrap();
        assert_eq!((a.all, a.exes.len(), a.max_processes()), (true, 2, 64));
        assert_eq!(a.check_all_options(), Ok(()));
        assert!(Args::try_parse_from(["leaktrace", "--all", "-p", "1"]).is_err());
        assert!(Args::try_parse_from(["leaktrace", "--all", "-c", "x"]).is_err());
        for narrowing in [
            ["--exe", "api"],
            ["--cgroup", "/pod"],
            ["--max-processes", "3"],
        ] {
            let a =
                Args::try_parse_from(["leaktrace", "-p", "1", narrowing[0], narrowing[1]]).unwrap();
            let e = a.check_all_options().unwrap_err();
            assert!(e.contains(narrowing[0]) && e.contains("add --all"), "{e}");
        }
    }

    #[test]
    fn memleak_style_positionals_and_command() {
        let a = Args::try_parse_from(["leaktrace", "-p", "42", "10", "3"]).unwrap();
        assert_eq!(a.pid, Some(42));
        assert_eq!(a.report_interval(), Duration::from_secs(10));
        assert_eq!(a.report_count(), Some(3));
        let a = Args::try_parse_from(["leaktrace", "--format", "json", "-c", "./srv", "-x", "--y"])
            .unwrap();
        assert_eq!(a.command, ["./srv", "-x", "--y"]);
        assert!(Args::try_parse_from(["leaktrace"]).is_err());
        assert!(Args::try_parse_from(["leaktrace", "-p", "1", "-c", "x"]).is_err());
    }
}
