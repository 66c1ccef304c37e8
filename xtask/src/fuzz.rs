//! `cargo xtask fuzz`: run every fuzz target under `fuzz/` (cargo-fuzz:
//! libFuzzer with AddressSanitizer, on rustup's nightly) for a while each,
//! from a corpus seeded with real inputs: the fixtures' Go binaries (plain,
//! stripped, PIE) and the tokio fixture for the binary parsers (and their
//! `.eh_frame` for the unwinder), this machine's `/proc` files and
//! tracepoint formats, and tokio task cells as a tokio 1.4x heap holds
//! them.
//! Inputs that crashed once live in `fuzz/regressions/<target>/` and are run
//! first, every time. Prints one line per target: seconds, executions,
//! coverage, crashes.
//!
//! `cargo xtask fuzz --smoke` (30 s each) is what `cargo xtask test` runs;
//! the default (600 s each) is for a person with time.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::util;

pub const TARGETS: &[&str] = &[
    "go_binary",
    "rust_binary",
    "go_memory",
    "records",
    "proc_files",
    "tracefs_format",
    "eh_frame_unwind",
    "heap_cells",
    "await_points",
];
/// The largest seed is a Go binary of a few MiB.
const MAX_LEN: &str = "-max_len=8388608";

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// 30 seconds per target (what CI runs).
    #[arg(long, conflicts_with = "seconds")]
    pub smoke: bool,
    /// Only these targets (default: all).
    pub targets: Vec<String>,
}

pub fn run(o: &Options) -> Result<()> {
    let seconds = if o.smoke { 30 } else { o.seconds };
    let root = util::workspace_root();
    let fuzz_dir = root.join("fuzz");
    ensure_tools()?;
    let targets: Vec<&str> = if o.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        o.targets.iter().map(String::as_str).collect()
    };
    for t in &targets {
        if !TARGETS.contains(t) {
            bail!("no fuzz target {t}; the targets are {}", TARGETS.join(", "));
        }
    }
    let corpus_root = util::target_dir().join("fuzz-corpus");
    seed(&corpus_root)?;
    let mut lines = Vec::new();
    let mut crashed = Vec::new();
    for t in targets {
        let corpus = corpus_root.join(t);
        fs::create_dir_all(&corpus)?;
        let artifacts = fuzz_dir.join("artifacts").join(t);
        fs::create_dir_all(&artifacts)?;
        // Past crashes first: each must now pass.
        let regressions = fuzz_dir.join("regressions").join(t);
        if regressions.is_dir() {
            for e in fs::read_dir(&regressions)? {
                let input = e?.path();
                let st = fuzz_cmd(&fuzz_dir, t)
                    .arg(&input)
                    .status()
                    .context("cargo fuzz run")?;
                if !st.success() {
                    crashed.push(format!("{t}: regression {} fails again", input.display()));
                }
            }
        }
        let out = fuzz_cmd(&fuzz_dir, t)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(MAX_LEN)
            .arg("-rss_limit_mb=4096")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("cargo fuzz run")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let summary = summary(&log);
        let found: Vec<PathBuf> = fs::read_dir(&artifacts)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        lines.push(format!(
            "{t:<12} {seconds:>5}s  {summary}  crashes {}",
            found.len()
        ));
        if !out.status.success() || !found.is_empty() {
            // cargo-fuzz prints the whole input with `Debug`: megabytes on
            // one line for a binary. Lines are cut.
            let tail: Vec<String> = log
                .lines()
                .rev()
                .take(40)
                .map(|l| l.chars().take(300).collect())
                .collect();
            eprintln!(
                "{t} failed; last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            crashed.push(format!(
                "{t}: {} (inputs in {}; copy each into fuzz/regressions/{t}/ once fixed)",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                artifacts.display()
            ));
        }
    }
    println!("fuzz: target, time, executions, coverage, crashes");
    for l in &lines {
        println!("  {l}");
    }
    if !crashed.is_empty() {
        bail!("fuzzing found crashes:\n  {}", crashed.join("\n  "));
    }
    Ok(())
}

fn fuzz_cmd(fuzz_dir: &Path, target: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(fuzz_dir)
        .args(["+nightly", "fuzz", "run", "--fuzz-dir", "."])
        .arg(target)
        // The eBPF object is not fuzzed; building it again under the
        // sanitizer's flags would fail.
        .env("LEAKTRACE_EBPF_TOOLCHAIN", "debian-web");
    c
}

/// `#N DONE cov: C ft: F corp: … exec/s: E` → "N execs (E/s), cov C".
fn summary(log: &str) -> String {
    // libFuzzer's last status line (`#N DONE …`, or the last `#N NEW/REDUCE/
    // pulse …` of a run cut short); not its dictionary's `######` lines.
    let done = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l[1..].starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or("");
    let field = |name: &str| {
        done.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .unwrap_or("?")
            .to_string()
    };
    let execs = done
        .split_whitespace()
        .next()
        .unwrap_or("#?")
        .trim_start_matches('#');
    format!(
        "{execs:>10} execs ({:>6}/s)  cov {:>6}",
        field("exec/s:"),
        field("cov:")
    )
}

fn ensure_tools() -> Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        bail!(
            "fuzzing needs rustup's nightly toolchain (for -Zsanitizer=address): \
             `rustup toolchain install nightly`"
        );
    }
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        util::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz from crates.io")?;
    }
    Ok(())
}

/// Real inputs to start from, copied into the corpus once: the Go fixture
/// binaries the tests built (every toolchain and mode found) and the tokio
/// fixture's, and small records of every size.
fn seed(corpus: &Path) -> Result<()> {
    let target = util::target_dir();
    let mut binaries: Vec<(&str, PathBuf)> = Vec::new();
    let fixtures = target.join("fixtures");
    if let Ok(gos) = fs::read_dir(&fixtures) {
        for go in gos.flatten() {
            for mode in ["plain", "stripped", "pie"] {
                let bin = go.path().join(mode).join("chan_send");
                if bin.is_file() {
                    binaries.push(("go_binary", bin));
                }
            }
        }
    }
    if let Ok(profiles) = fs::read_dir(target.join("tokio-fixtures")) {
        for p in profiles.flatten() {
            let bin = p.path().join("tokio-fixture");
            if bin.is_file() {
                binaries.push(("rust_binary", bin));
            }
        }
    }
    for (t, bin) in &binaries {
        copy_seed(&target, bin, &corpus.join(t))?;
    }
    for (t, bin) in &binaries {
        if *t == "rust_binary" {
            copy_seed(&target, bin, &corpus.join("await_points"))?;
        }
        if let Some(seed) = unwind_seed(bin) {
            write_seed(
                &corpus.join("eh_frame_unwind"),
                &seed_name(&target, bin),
                &seed,
            )?;
        }
    }
    // This machine's own /proc files and tracepoint formats.
    for pid in ["self", "1"] {
        for f in ["stat", "status", "maps"] {
            if let Ok(text) = fs::read(format!("/proc/{pid}/{f}")) {
                write_seed(&corpus.join("proc_files"), &format!("{pid}-{f}"), &text)?;
            }
        }
    }
    for event in [
        "task/task_newtask",
        "task/task_rename",
        "sched/sched_process_exit",
        "sched/sched_process_exec",
        "sched/sched_process_fork",
    ] {
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            if let Ok(text) = fs::read(format!("{root}/events/{event}/format")) {
                write_seed(
                    &corpus.join("tracefs_format"),
                    &event.replace('/', "_"),
                    &text,
                )?;
                break;
            }
        }
    }
    write_seed(&corpus.join("heap_cells"), "four-cells", &heap_cells_seed())?;
    let records = corpus.join("records");
    fs::create_dir_all(&records)?;
    for size in [8usize, 16, 24, 32, 40, 48, 56, 64, 96, 128, 256] {
        let p = records.join(format!("zeros-{size}"));
        if !p.exists() {
            fs::write(p, vec![0u8; size])?;
        }
    }
    Ok(())
}

fn seed_name(target: &Path, bin: &Path) -> String {
    bin.strip_prefix(target)
        .unwrap_or(bin)
        .to_string_lossy()
        .replace('/', "_")
}

fn copy_seed(target: &Path, bin: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let dest = dir.join(seed_name(target, bin));
    if !dest.exists() {
        fs::copy(bin, &dest).with_context(|| format!("seeding {}", bin.display()))?;
    }
    Ok(())
}

fn write_seed(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(dir)?;
    let dest = dir.join(name);
    if !dest.exists() {
        fs::write(&dest, bytes).with_context(|| format!("seeding {}", dest.display()))?;
    }
    Ok(())
}

/// An `eh_frame_unwind` input (its layout is in the target's doc) from a
/// real binary: its `.eh_frame` and `.eh_frame_hdr` at their addresses,
/// the registers at its entry point, and a stack whose words are return
/// addresses into its `.text`.
fn unwind_seed(bin: &Path) -> Option<Vec<u8>> {
    use object::{Object, ObjectSection};
    let data = fs::read(bin).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let eh = file.section_by_name(".eh_frame")?;
    let text = file.section_by_name(".text")?;
    let hdr = file.section_by_name(".eh_frame_hdr");
    let eh_bytes = eh.data().ok()?;
    let hdr_bytes = hdr.as_ref().and_then(|h| h.data().ok()).unwrap_or_default();
    let sp: u64 = 0x7ffe_0000_0000;
    let mut out = Vec::new();
    for w in [
        file.entry(),
        sp,
        sp + 0x40,
        eh.address(),
        text.address(),
        hdr.as_ref().map_or(0, |h| h.address()),
    ] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&u32::try_from(eh_bytes.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(hdr_bytes.len()).ok()?.to_le_bytes());
    out.extend_from_slice(eh_bytes);
    out.extend_from_slice(hdr_bytes);
    for i in 0..64u64 {
        let word = if i % 4 == 1 {
            text.address() + (i * 0x91) % text.size().max(1)
        } else {
            sp + 8 * (i + 8)
        };
        out.extend_from_slice(&word.to_le_bytes());
    }
    Some(out)
}

/// A `heap_cells` input: a vtable with tokio 1.4x's offsets (trailer 80,
/// scheduler 32, id 40), a 128-byte stride, and four live-looking cells
/// linked into one owned-task list, as the heap scan sees them.
fn heap_cells_seed() -> Vec<u8> {
    const VTABLE: u64 = 0x5555_5555_a000;
    let mut out = Vec::new();
    for w in [VTABLE, 80, 32, 40] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.push(7); // 1 << 7 = 128
    for i in 0..4u64 {
        let mut cell = [0u64; 16];
        cell[0] = (2 << 6) | 0b1000; // two refs, JOIN_INTEREST
        cell[2] = VTABLE;
        cell[3] = 1; // owner id
        cell[4] = 0x5555_5556_0000; // scheduler
        cell[5] = 1 + 4 * i; // task id
        for w in cell {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}
