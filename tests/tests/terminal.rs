//! leaktrace as a person at a terminal sees it: it runs in a real terminal
//! (tmux, a private server), keys are typed with `send-keys` and the screen
//! is read back with `capture-pane`.
//!
//! * The text report: each group carries a trend mark (`▁▂▄▇`), the leak's
//!   climbs to its top; written to a pipe, the same report has no mark.
//! * `--tui`: the table shows the leaking group with the runtime's own
//!   count, Enter opens its stack and reason, `q` gives the terminal back
//!   and prints the final report.
mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use leaktrace_e2e::{BuildMode, Expect, Fixture};

const TREND_BARS: &str = "▁▂▃▄▅▆▇█";

/// A private tmux server (its own socket in a temporary path), killed with
/// its panes and its socket removed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tmux (installed by `cargo xtask setup`)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pane's whole history and screen, as text.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "lt"])
    }

    /// A session `lt` running `command` in a wide terminal (report lines
    /// are not wrapped); the pane stays after the command ends, with its
    /// exit status, so its screen can be read.
    fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: tempfile_path("tmux.sock"),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "lt",
            "-x",
            "300",
            "-y",
            "60",
            &format!("{command}; echo leaktrace-exited-$?; sleep 60"),
        ]);
        tmux
    }

    /// The screen once `done` holds for it, or as it is after `timeout`.
    fn wait_for(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if done(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "lt", keys]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The final report's lines of `LEAK` groups, and what precedes the verdict:
/// `  40 goroutines  chan send  2s–5s  +8.1/s ▁▃▆█████  LEAK  created by …`.
fn leak_lines(screen: &str) -> Vec<String> {
    let final_at = screen.rfind("Final report:").unwrap_or(0);
    screen[final_at..]
        .lines()
        .filter(|l| l.contains("  LEAK  "))
        .map(str::to_string)
        .collect()
}

/// The trend mark of a group line: the word after the growth (`+8.1/s`).
fn mark(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let growth = words.iter().position(|w| w.ends_with("/s"))?;
    let m = words.get(growth + 1)?;
    m.chars()
        .all(|c| TREND_BARS.contains(c))
        .then(|| m.to_string())
}

#[test]
fn a_terminal_shows_the_leak_climbing_a_pipe_gets_no_mark() {
    let name = "a_terminal_shows_the_leak_climbing_a_pipe_gets_no_mark";
    if !ebpf_available(name) {
        return;
    }
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let bin = build("chan_send", &go, BuildMode::Plain);
    let leaktrace = leaktrace_bin();
    let args = format!(
        "{} --interval 1s --duration 5s -c {} -leak-for 2s -hold 30s",
        leaktrace.display(),
        bin.display()
    );

    let tmux = Tmux::start(&args);
    let screen = tmux.wait_for(Duration::from_secs(40), |s| s.contains("leaktrace-exited-"));
    drop(tmux);
    assert!(
        screen.contains("leaktrace-exited-0"),
        "leaktrace did not end well in the terminal:\n{screen}"
    );
    let leaks = leak_lines(&screen);
    assert_eq!(leaks.len(), 1, "one leaking group:\n{screen}");
    let m = mark(&leaks[0]).unwrap_or_else(|| panic!("no trend mark: {}\n{screen}", leaks[0]));
    let bars: Vec<usize> = m
        .chars()
        .map(|c| TREND_BARS.chars().position(|b| b == c).unwrap())
        .collect();
    assert!(bars.len() >= 2, "{m}");
    // It grew over the window and is at its largest now.
    assert_eq!(bars.last(), Some(&7), "{m}: {}", leaks[0]);
    assert!(bars[0] < 7, "{m}: {}", leaks[0]);
    assert!(bars.windows(2).all(|w| w[0] <= w[1]), "{m}: {}", leaks[0]);

    // The same report written to a pipe: no mark.
    let out = Command::new(&leaktrace)
        .args(["--interval", "1s", "--duration", "5s", "-c"])
        .arg(&bin)
        .args(["-leak-for", "2s", "-hold", "30s"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("running leaktrace");
    let piped = String::from_utf8_lossy(&out.stdout);
    let piped_leaks = leak_lines(&piped);
    assert_eq!(piped_leaks.len(), 1, "{piped}");
    assert_eq!(mark(&piped_leaks[0]), None, "{}", piped_leaks[0]);
    assert!(!piped.contains(|c| TREND_BARS.contains(c)), "{piped}");
    println!();
    println!("terminal: {}", leaks[0].trim());
    println!("pipe:     {}", piped_leaks[0].trim());
}

#[test]
fn the_tui_shows_the_leak_opens_its_stack_and_q_prints_the_final_report() {
    let name = "the_tui_shows_the_leak_opens_its_stack_and_q_prints_the_final_report";
    if !ebpf_available(name) {
        return;
    }
    let go = leaktrace_e2e::toolchain::newest()
        .expect("no Go toolchain installed: run `cargo xtask setup`");
    let bin = build("chan_send", &go, BuildMode::Plain);
    // Attached while the fixture leaks, so the growth is seen (a group
    // that leaked before attach and stays flat is not called a leak).
    let fx = Fixture::start(&bin, ["-leak-for", "4s", "-hold", "60s"]);
    let tmux = Tmux::start(&format!(
        "{} --tui --interval 1s -p {}",
        leaktrace_bin().display(),
        fx.pid()
    ));
    let truth = fx.truth(Duration::from_secs(30));
    let at = Expect::load("chan_send").blocked_at_for(go.minor());
    let leaked = truth.profile.count_at(&at);
    assert!(leaked > 0, "{}", truth.raw);
    // The table: the leaking group's row, first (leaks first), with the
    // runtime's own count.
    let leak_row = |s: &str| {
        s.lines()
            .find(|l| l.contains(" leak ") && l.contains(&format!("in {at} (")))
            .map(str::to_string)
    };
    let table = tmux.wait_for(Duration::from_secs(30), |s| {
        leak_row(s).is_some_and(|r| r.split_whitespace().next() == Some(&leaked.to_string()))
    });
    let row = leak_row(&table).unwrap_or_else(|| panic!("no leaking row:\n{table}"));
    assert_eq!(
        row.split_whitespace().next(),
        Some(leaked.to_string().as_str()),
        "the row's count vs the runtime's {leaked} at {at}:\n{table}"
    );
    assert!(row.contains("send-without-receiver"), "{row}");
    assert!(table.contains("s sort"), "the keys are shown:\n{table}");

    // Enter: the selected (first) group's stack and reason.
    tmux.keys("Enter");
    let stack = tmux.wait_for(Duration::from_secs(10), |s| {
        s.contains("stack (innermost first):")
    });
    assert!(stack.contains("stack (innermost first):"), "{stack}");
    assert!(stack.contains(&format!("  {at}")), "{stack}");
    assert!(stack.contains("  runtime.gopark"), "{stack}");
    assert!(
        stack.contains("cause: send-without-receiver — fix:"),
        "{stack}"
    );

    // q: the terminal back, the final report as text, a clean exit.
    tmux.keys("q");
    let end = tmux.wait_for(Duration::from_secs(30), |s| s.contains("leaktrace-exited-"));
    drop(tmux);
    assert!(end.contains("leaktrace-exited-0"), "{end}");
    let final_at = end
        .rfind("Final report:")
        .unwrap_or_else(|| panic!("{end}"));
    let leaks = leak_lines(&end[final_at..]);
    assert_eq!(leaks.len(), 1, "{end}");
    assert!(
        leaks[0]
            .trim_start()
            .starts_with(&format!("{leaked} goroutines")),
        "{}",
        leaks[0]
    );
    println!();
    println!("tui row:  {}", row.trim());
    println!("final:    {}", leaks[0].trim());
}
