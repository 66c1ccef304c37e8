//! Run a Go program under the exit probe alone and print the goroutines it
//! had when it exited (issue #13). For trying the probe and timing it:
//!
//! ```text
//! cargo run --release --example exit_walk -- [OPTIONS] -- PROGRAM ARGS...
//! cargo run --release --example exit_walk -- [OPTIONS] --pid PID
//! OPTIONS: --ring-mib N  --frames N  --gate FILE  --quiet  --nofault
//! ```
//!
//! With `--gate FILE` the program is started first and FILE is created once
//! the probe is attached (the exit_snapshot fixture waits for it). Prints
//! one line per goroutine, then the walk's counts and timings, including
//! the time from the probe firing to the process being gone.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use leaktrace::{
    runtime::go::{
        attach::find_allgs,
        binary::GoBinary,
        final_walk::{FinalWalk, FinalWalkOptions},
        wait_reason::gstatus,
    },
    target::clock::monotonic_ns,
};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opts = FinalWalkOptions::default();
    let mut gate: Option<PathBuf> = None;
    let mut pid: Option<u32> = None;
    let mut quiet = false;
    let mut cmd: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ring-mib" => {
                opts.ring_bytes = args.next().context("--ring-mib N")?.parse::<u32>()? << 20
            }
            "--frames" => opts.max_frames = args.next().context("--frames N")?.parse()?,
            "--gate" => gate = Some(args.next().context("--gate FILE")?.into()),
            "--pid" => pid = Some(args.next().context("--pid PID")?.parse()?),
            "--quiet" => quiet = true,
            "--nofault" => opts.sleepable = false,
            "--" => {
                cmd = args.by_ref().collect();
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let mut child = None;
    let pid = match pid {
        Some(p) => p,
        None => {
            let program = cmd.first().context("no program given")?;
            let c = Command::new(program)
                .args(&cmd[1..])
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {program}"))?;
            let p = c.id();
            child = Some(c);
            p
        }
    };
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    // Let it exec before reading the binary.
    std::thread::sleep(Duration::from_millis(50));
    let bin = GoBinary::open(&exe).map_err(|e| anyhow::anyhow!("{e}"))?;
    let allgs = find_allgs(&bin)?;
    let t0 = std::time::Instant::now();
    let mut walk = FinalWalk::attach(&bin, &exe, pid, &allgs, opts)?;
    eprintln!(
        "exit probe ({}) at {:?} of pid {pid} ({}), loaded and attached in {:?}",
        if walk.sleepable {
            "sleepable"
        } else {
            "no-fault fallback"
        },
        walk.points,
        bin.version.raw,
        t0.elapsed()
    );
    if let Some(g) = &gate {
        std::fs::write(g, b"")?;
    }
    // SAFETY: plain syscalls on a pidfd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    unsafe { libc::poll(&mut p, 1, -1) };
    let gone_ns = monotonic_ns();
    let status = child.as_mut().map(|c| c.wait()).transpose()?;
    // Gone, so the walk (which runs before the exit) is over: take() has
    // everything without waiting. None: it died without running Go's exit
    // path (SIGKILL).
    let Some(mut snap) = walk.take() else {
        bail!("the process exited without the exit probe firing");
    };
    snap.symbolize(&bin);
    if !quiet {
        for g in &snap.goroutines {
            let what = if g.is_waiting() {
                g.wait_reason.unwrap_or("?").to_string()
            } else {
                gstatus::name(g.status).unwrap_or("?").to_string()
            };
            let top = g
                .frames
                .iter()
                .find(|f| bin.own_code.is_own(&f.function))
                .or(g.frames.first())
                .map(|f| format!("{} {}:{}", f.function, f.file, f.line))
                .unwrap_or_default();
            println!(
                "goroutine {} [{what}]{}{} {} frames: {top}",
                g.goid,
                if g.system { " (runtime)" } else { "" },
                if g.is_current() {
                    " (exiting thread)"
                } else {
                    ""
                },
                g.stack.len()
            );
        }
    }
    println!(
        "exit {:?}: allglen {} walked {} live {} (program {}) emitted {} dropped {} (waited {:?} for the reader) skipped {} unreadable {} malformed {} walks {}",
        snap.exit,
        snap.allglen,
        snap.walked,
        snap.live,
        snap.program_goroutines().count(),
        snap.emitted,
        snap.dropped,
        snap.waited,
        snap.skipped,
        snap.unreadable,
        snap.malformed,
        snap.walks
    );
    let mut depths: Vec<u64> = snap
        .goroutines
        .iter()
        .filter(|g| g.is_waiting())
        .map(|g| g.stack_hi.saturating_sub(g.sched_sp))
        .collect();
    depths.sort_unstable();
    if !depths.is_empty() {
        println!(
            "stack bytes above sched.sp of waiting goroutines: median {} max {}; frames median {}",
            depths[depths.len() / 2],
            depths[depths.len() - 1],
            {
                let mut f: Vec<usize> = snap.goroutines.iter().map(|g| g.stack.len()).collect();
                f.sort_unstable();
                f[f.len() / 2]
            }
        );
    }
    println!(
        "probe at {} ns, walk end {} ns, gone {gone_ns} ns (CLOCK_MONOTONIC)",
        snap.probe_ns, snap.walk_end_ns
    );
    println!(
        "walk {:.3} ms; probe → gone {:.3} ms; status {status:?}",
        snap.walk_duration().as_secs_f64() * 1e3,
        (gone_ns.saturating_sub(snap.probe_ns)) as f64 / 1e6
    );
    Ok(())
}
