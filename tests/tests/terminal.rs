//! The text report as a person at a terminal sees it: leaktrace runs in a
//! real terminal (tmux, a private server), the screen is read back with
//! `capture-pane`. Each group carries a trend mark there (`▁▂▄▇`): the leak
//! climbs to its top; written to a pipe, the same report has no mark.
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use leaktrace_e2e::BuildMode;

const TREND_BARS: &str = "▁▂▃▄▅▆▇█";

/// A private tmux server (its own socket), killed with its panes when
/// dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
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
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
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

    let tmux = Tmux {
        socket: format!("leaktrace-e2e-{}", std::process::id()),
    };
    // A wide terminal, so report lines are not wrapped; the pane stays
    // after the command ends so its screen can be read.
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "lt",
        "-x",
        "300",
        "-y",
        "60",
        &format!("{args}; echo leaktrace-exited-$?; sleep 60"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(40);
    let screen = loop {
        let s = tmux.screen();
        if s.contains("leaktrace-exited-") || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
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
