//! goleak's own test suite (Debian's `golang-uber-goleak-dev`, installed by
//! `cargo xtask setup`), run with Debian's Go in GOPATH mode under
//! `leaktrace -f -c go test -v go.uber.org/goleak/...` — tests nobody here
//! wrote, by the tool whose meaning leaktrace's at-exit `leak` borrows.
//!
//! goleak's tests leak goroutines on purpose (a `blockedG` parked on a
//! channel receive, closures waiting on `done`, 100 deep stacks) and assert
//! what goleak says about them *at the call* to `Find`/`VerifyNone`; then
//! they release them before returning. leaktrace looks *at exit*, so for
//! those cases the right answer is "nothing left": the comparison is about
//! when each tool looks, not a disagreement.
//!
//! Ground truth at exit: the copy of the suite gets one extra file per
//! package, a `TestMain` that runs the tests, then prints goleak's own
//! `Find()` (package goleak only; package stack cannot import goleak) and
//! the runtime's goroutine dump (`runtime.Stack(all)`) right before
//! `os.Exit`. The test asserts:
//!
//! * the suite passes under leaktrace with the same exit status and the same
//!   test results as without it;
//! * one final report per test binary (goleak.test, stack.test), each taken
//!   at exit;
//! * in each, leaktrace's `leak` goroutines are exactly the ones the
//!   runtime's dump shows parked (here: none), and goleak's own `Find()` at
//!   exit agrees (no error);
//!
//! and prints the case-by-case table: what each test leaks, goleak's
//! asserted verdict at its `Find`, whether the goroutine is still alive at
//! exit (dump), and what leaktrace says at exit.
mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use common::*;
use leaktrace_e2e::{cache_root, go_toolchains};
use serde_json::Value;

const GOCODE: &str = "/usr/share/gocode";
const GOLEAK_DIR: &str = "src/go.uber.org/goleak";
/// The Debian version the comparison below was written against.
const TESTED_VERSION: &str = "1.2.0-1";

const TRUTH_GOLEAK: &str = r#"package goleak

// Added by leaktrace's tests/tests/goleak_suite.rs to a copy of the suite:
// the ground truth at exit, printed right before the test binary exits.

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	fmt.Printf("leaktrace-truth goleak-find-at-exit: %v\n", Find(maxSleep(time.Millisecond)))
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	fmt.Printf("leaktrace-truth-begin\n%s\nleaktrace-truth-end\n", buf[:n])
	os.Exit(code)
}
"#;

const TRUTH_STACK: &str = r#"package stack

// Added by leaktrace's tests/tests/goleak_suite.rs to a copy of the suite:
// the ground truth at exit, printed right before the test binary exits.

import (
	"fmt"
	"os"
	"runtime"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	fmt.Printf("leaktrace-truth-begin\n%s\nleaktrace-truth-end\n", buf[:n])
	os.Exit(code)
}
"#;

/// One deliberate leak in goleak's tests: where, what, goleak's verdict
/// as its test asserts it, and whether the test releases it.
struct Case {
    test: &'static str,
    binary: &'static str,
    /// A function on the leaked goroutine's stack (dump and report).
    func: &'static str,
    leaked: &'static str,
    goleak: &'static str,
    released: &'static str,
}

const CASES: &[Case] = &[
    Case {
        test: "TestFind/Find_leaks_with_leaked_goroutine",
        binary: "goleak.test",
        func: "go.uber.org/goleak.(*blockedG).run",
        leaked: "1 blockedG (chan receive)",
        goleak: "leak: Find errors (asserted)",
        released: "bg.unblock(), then Find() = nil",
    },
    Case {
        test: "TestFindRetry",
        binary: "goleak.test",
        func: "go.uber.org/goleak.(*blockedG).run",
        leaked: "1 blockedG (chan receive)",
        goleak: "leak, then none once a goroutine unblocks it 1ms later (Find retries)",
        released: "yes, by another goroutine",
    },
    Case {
        test: "TestVerifyNone/VerifyNone_finds_leaks",
        binary: "goleak.test",
        func: "go.uber.org/goleak.(*blockedG).run",
        leaked: "1 blockedG (chan receive)",
        goleak: "leak: VerifyNone reports errors (asserted)",
        released: "bg.unblock()",
    },
    Case {
        test: "TestIgnoreCurrent/Should_ignore_current",
        binary: "goleak.test",
        func: "go.uber.org/goleak.TestIgnoreCurrent.func1.1",
        leaked: "1 closure on <-done",
        goleak: "ignored: VerifyNone(IgnoreCurrent()) passes",
        released: "close(done)",
    },
    Case {
        test: "TestIgnoreCurrent/Should_detect_new_leaks",
        binary: "goleak.test",
        func: "go.uber.org/goleak.TestIgnoreCurrent.func2.",
        leaked: "2 closures on <-done1, <-done2",
        goleak: "leak: Find errors for the 1st; with IgnoreCurrent, the 2nd only",
        released: "close(done1), close(done2)",
    },
    Case {
        test: "TestIgnoreCurrent/Should_not_ignore_false_positive",
        binary: "goleak.test",
        func: "go.uber.org/goleak.TestIgnoreCurrent.func3.",
        leaked: "5 closures (released), then 5× 1 on <-ch",
        goleak: "leak: each of the 5 later ones, despite IgnoreCurrent",
        released: "close(ch) each time",
    },
    Case {
        test: "TestOptionsFilters",
        binary: "goleak.test",
        func: "go.uber.org/goleak.(*blockedG).run",
        leaked: "1 blockedG (chan receive)",
        goleak: "leak; ignored with IgnoreTopFunction(\"…(*blockedG).run\")",
        released: "defer unblock()",
    },
    Case {
        test: "TestVerifyTestMain",
        binary: "goleak.test",
        func: "go.uber.org/goleak.(*blockedG).run",
        leaked: "1 blockedG (chan receive)",
        goleak: "leak: VerifyTestMain(0) exits 1 (asserted); ignored when the run failed",
        released: "blocked.unblock()",
    },
    Case {
        test: "TestNoLeaks (signal_test.go)",
        binary: "goleak.test",
        func: "os/signal.loop",
        leaked: "signal.Notify's os/signal.loop (never stops)",
        goleak: "not a leak: default filter (asserted)",
        released: "never (signal.Reset keeps the loop)",
    },
    Case {
        test: "stack.TestAll",
        binary: "stack.test",
        func: "go.uber.org/goleak/internal/stack.waitForDone",
        leaked: "5 waitForDone (chan receive)",
        goleak: "(stack.All lists them: 7 goroutines)",
        released: "defer close(_allDone)",
    },
    Case {
        test: "stack.TestAllLargeStack",
        binary: "stack.test",
        func: "go.uber.org/goleak/internal/stack.TestAllLargeStack.func1",
        leaked: "100 goroutines 100 frames deep (chan receive)",
        goleak: "(stack buffer grows past 64 KiB)",
        released: "close(done) as the test's last line",
    },
];

/// A goroutine from the runtime's dump.
struct Dumped {
    state: String,
    text: String,
}

impl Dumped {
    /// Parked (a wait reason), not running, runnable or in a system call.
    fn parked(&self) -> bool {
        !["running", "runnable", "syscall"]
            .iter()
            .any(|s| self.state.starts_with(s))
    }
}

/// The dump printed by the truth TestMain whose first goroutine runs
/// `main_fn` (so each binary's is told apart), without that goroutine.
fn dump_of(stdout: &str, main_fn: &str) -> Option<Vec<Dumped>> {
    let mut rest = stdout;
    while let Some(i) = rest.find("leaktrace-truth-begin\n") {
        let body = &rest[i + "leaktrace-truth-begin\n".len()..];
        let end = body.find("leaktrace-truth-end")?;
        let gs: Vec<Dumped> = body[..end]
            .split("\n\n")
            .filter(|b| b.starts_with("goroutine "))
            .map(|b| Dumped {
                state: b
                    .split_once('[')
                    .and_then(|(_, s)| s.split_once(']'))
                    .map(|(s, _)| s.to_string())
                    .unwrap_or_default(),
                text: b.to_string(),
            })
            .collect();
        if gs.first().is_some_and(|g| g.text.contains(main_fn)) {
            return Some(gs.into_iter().skip(1).collect());
        }
        rest = &body[end..];
    }
    None
}

fn group_mentions(g: &Value, func: &str) -> bool {
    let f = |v: &Value| v["function"].as_str().is_some_and(|s| s.contains(func));
    f(&g["created_by"])
        || f(&g["start"])
        || f(&g["blocked_at"])
        || g["stack"].as_array().is_some_and(|s| s.iter().any(f))
}

fn test_results(out: &str) -> BTreeSet<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("--- ") || l.starts_with("ok  ") || l.starts_with("FAIL"))
        .map(|l| {
            // Drop timings: "--- PASS: TestX (0.00s)", "ok  \tpkg\t1.2s".
            let l = l.split(" (").next().unwrap_or(l);
            l.split('\t').take(2).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn installed_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "golang-uber-goleak-dev"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "(not from dpkg)".into())
}

/// A copy of Debian's GOPATH with the truth TestMains added.
fn gopath_copy() -> PathBuf {
    let dir = tempfile_path("gopath");
    let st = Command::new("cp")
        .args(["-rL", GOCODE])
        .arg(&dir)
        .status()
        .expect("cp");
    assert!(st.success(), "copying {GOCODE}");
    let goleak = dir.join(GOLEAK_DIR);
    std::fs::write(goleak.join("zz_leaktrace_truth_test.go"), TRUTH_GOLEAK).unwrap();
    std::fs::write(
        goleak.join("internal/stack/zz_leaktrace_truth_test.go"),
        TRUTH_STACK,
    )
    .unwrap();
    dir
}

/// GOPATH mode, offline, with Debian's Go.
fn go_env(cmd: &mut Command, gopath: &Path) {
    cmd.env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOFLAGS", "")
        .env("GOTOOLCHAIN", "local")
        .env("GOENV", "off")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache_root().join("gocache"))
        .env_remove("GOROOT")
        .current_dir(gopath)
        .stdin(Stdio::null());
}

const GO_TEST: &[&str] = &["test", "-count=1", "-v", "go.uber.org/goleak/..."];

#[test]
fn goleak_suite_passes_under_leaktrace_and_at_exit_leaks_match_the_runtime() {
    let name = "goleak_suite_passes_under_leaktrace_and_at_exit_leaks_match_the_runtime";
    if !ebpf_available(name) {
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !Path::new(GOCODE).join(GOLEAK_DIR).is_dir() {
        if ci {
            panic!("{name}: golang-uber-goleak-dev is missing: run `sudo cargo xtask setup`");
        }
        eprintln!(
            "{name}: skipped: golang-uber-goleak-dev is missing (run `sudo cargo xtask setup`)"
        );
        return;
    }
    let Some(go) = go_toolchains().into_iter().find(|t| t.version == "1.19") else {
        if ci {
            panic!("{name}: Debian's go1.19 is missing: run `sudo cargo xtask setup`");
        }
        eprintln!("{name}: skipped: Debian's go1.19 is missing (run `sudo cargo xtask setup`)");
        return;
    };
    let t0 = Instant::now();
    let gopath = gopath_copy();

    // Without leaktrace.
    let mut plain = Command::new(&go.go);
    go_env(&mut plain, &gopath);
    let plain = plain.args(GO_TEST).output().expect("go test");
    let plain_out = String::from_utf8_lossy(&plain.stdout).into_owned();
    let plain_code = plain.status.code().unwrap_or(-1);
    let plain_s = t0.elapsed().as_secs_f64();

    // Under leaktrace.
    let t1 = Instant::now();
    let out = tempfile_path("goleak.jsonl");
    let mut traced = Command::new(leaktrace_bin());
    go_env(&mut traced, &gopath);
    let traced = traced
        .args(["-f", "--format", "json", "--top", "100", "--output"])
        .arg(&out)
        .arg("-c")
        .arg(&go.go)
        .args(GO_TEST)
        .output()
        .expect("running leaktrace");
    let traced_s = t1.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&traced.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&traced.stderr).into_owned();
    let code = traced.status.code().unwrap_or(-1);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_dir_all(&gopath);
    let ctx = || format!("exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}\nreports:\n{text}");

    assert_eq!(
        plain_code, 0,
        "goleak's suite fails without leaktrace:\n{plain_out}"
    );
    assert_eq!(code, plain_code, "same exit status: {}", ctx());
    assert_eq!(
        test_results(&stdout),
        test_results(&plain_out),
        "same test results: {}",
        ctx()
    );

    let reports = parse_reports(&text);
    let finals: Vec<&Report> = reports.iter().filter(|r| r.0["final"] == true).collect();
    let cmdline = |r: &Report| r.0["target"]["cmdline"].as_str().unwrap_or("").to_string();
    let mut rows = Vec::new();
    for (bin, main_fn) in [
        ("goleak.test", "go.uber.org/goleak.TestMain"),
        ("stack.test", "go.uber.org/goleak/internal/stack.TestMain"),
    ] {
        let mine: Vec<&&Report> = finals.iter().filter(|r| cmdline(r).contains(bin)).collect();
        assert_eq!(mine.len(), 1, "one final report for {bin}: {}", ctx());
        let r = mine[0];
        assert!(
            r.0["at_exit"] == true,
            "{bin}'s final report is at exit: {}",
            ctx()
        );
        let dump = dump_of(&stdout, main_fn)
            .unwrap_or_else(|| panic!("{bin} printed no goroutine dump: {}", ctx()));
        let parked: Vec<&Dumped> = dump.iter().filter(|g| g.parked()).collect();
        let leaks: Vec<&Value> = r
            .groups()
            .iter()
            .filter(|g| g["verdict"] == "leak")
            .collect();
        let leaked: u64 = leaks.iter().filter_map(|g| g["count"].as_u64()).sum();
        assert_eq!(
            leaked,
            parked.len() as u64,
            "{bin}: leaktrace's at-exit leaks are the goroutines the runtime had parked at exit\n{}\n{}",
            r.summary(),
            parked
                .iter()
                .map(|g| g.text.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")
        );
        for g in &parked {
            assert!(
                leaks.iter().any(|l| g
                    .text
                    .contains(l["blocked_at"]["function"].as_str().unwrap_or("\0"))),
                "{bin}: the parked goroutine is one of leaktrace's leaks:\n{}\n{}",
                g.text,
                r.summary()
            );
        }
        if bin == "goleak.test" {
            assert!(
                stdout.contains("leaktrace-truth goleak-find-at-exit: <nil>"),
                "goleak's own Find() at exit finds nothing, as leaktrace: {}",
                ctx()
            );
        }
        for c in CASES.iter().filter(|c| c.binary == bin) {
            let alive = dump.iter().filter(|g| g.text.contains(c.func)).count();
            let alive_states: BTreeSet<&str> = dump
                .iter()
                .filter(|g| g.text.contains(c.func))
                .map(|g| g.state.as_str())
                .collect();
            let said: Vec<String> = r
                .groups()
                .iter()
                .filter(|g| group_mentions(g, c.func))
                .map(|g| {
                    format!(
                        "{} × {} [{}]",
                        g["count"],
                        g["verdict"].as_str().unwrap_or(""),
                        g["state"].as_str().unwrap_or("")
                    )
                })
                .collect();
            rows.push(format!(
                "| {} | {} | {} | {} | {} | {} |",
                c.test,
                c.leaked,
                c.goleak,
                c.released,
                if alive == 0 {
                    "0".to_string()
                } else {
                    format!(
                        "{alive} [{}]",
                        alive_states.into_iter().collect::<Vec<_>>().join(", ")
                    )
                },
                if said.is_empty() {
                    "not in the report (gone by exit)".to_string()
                } else {
                    said.join("; ")
                }
            ));
        }
        rows.push(format!(
            "| **{bin} at exit** | | goleak Find() at exit: {} | | {} goroutines, {} parked | live {}, leak groups {} ({leaked} goroutines) |",
            if bin == "goleak.test" { "nil" } else { "n/a (cycle)" },
            dump.len(),
            parked.len(),
            r.live(),
            leaks.len()
        ));
    }
    assert_eq!(
        finals.len(),
        2,
        "two test binaries, two final reports: {}",
        ctx()
    );

    let mut version = installed_version();
    if version != TESTED_VERSION {
        version.push_str(&format!(" (tested with {TESTED_VERSION})"));
    }
    println!(
        "goleak {version}, {}: exit {code} under leaktrace (plain {plain_code}); go test took {plain_s:.1}s plain (with copying the GOPATH), {traced_s:.1}s under leaktrace -f",
        go.full
    );
    println!(
        "| test | leaks on purpose | goleak's verdict (at its Find) | released before return | alive just before exit (runtime dump) | leaktrace at exit |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
