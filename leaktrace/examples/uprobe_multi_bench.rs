//! Attach and detach time of N uprobe points: one uprobe-multi link versus
//! N per-point links (aya's perf-event links), with leaktrace's own
//! `tokio_task` program (aya's copy, and the uprobe-multi copy of
//! `probes::multi::load_multi_copy`) on the entries of N distinct functions
//! of a target executable, scoped to a running instance of it (issue #14).
//!
//! Needs root. Usage:
//!   uprobe_multi_bench TARGET [--n 4,100,400,800] [--per-point pool,seq,thread-each]
//!                             [--per-point-max N] [-- TARGET ARGS]
//! TARGET must run until killed (e.g. a Go program that sleeps); its
//! functions are read from its symbol table. `--per-point` picks how the
//! per-point links are dropped: `pool` (probes::multi::drop_in_pool, 8
//! threads), `seq` (one after the other), `thread-each` (one thread per
//! link, what Probes::detach_all did before); `--per-point-max` skips
//! per-point runs above that N (each such link costs ~0.1 s to drop).
use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
};
use leaktrace::probes::{Probes, multi};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};

const PROGRAM: &str = "tokio_task";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let target = PathBuf::from(args.next().ok_or_else(|| anyhow!("usage: TARGET ..."))?);
    let mut ns = vec![4usize, 100, 400, 800];
    let mut modes = vec!["pool".to_string()];
    let mut per_point_max = usize::MAX;
    let mut target_args = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--n" => {
                ns = args
                    .next()
                    .context("--n needs a list")?
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            }
            "--per-point" => {
                modes = args
                    .next()
                    .context("--per-point needs a list")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--per-point-max" => per_point_max = args.next().context("a number")?.parse()?,
            "--" => target_args.extend(args.by_ref()),
            other => bail!("unknown argument {other}"),
        }
    }

    let offsets = function_offsets(&target)?;
    let max_n = ns.iter().copied().max().unwrap_or(0);
    if offsets.len() < max_n {
        bail!(
            "{} has {} functions, fewer than {max_n}",
            target.display(),
            offsets.len()
        );
    }
    eprintln!(
        "{}: {} function entries to choose from",
        target.display(),
        offsets.len()
    );

    let mut child = Command::new(&target)
        .args(&target_args)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", target.display()))?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id();
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let result = run(&exe, pid, &offsets, &ns, &modes, per_point_max);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn run(
    exe: &Path,
    pid: u32,
    offsets: &[u64],
    ns: &[usize],
    modes: &[String],
    per_point_max: usize,
) -> Result<()> {
    let mut probes = Probes::load(&[])?;
    let prog: &mut UProbe = probes
        .ebpf_mut()
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("{PROGRAM} missing"))?
        .try_into()?;
    prog.load()?;
    let t = Instant::now();
    let copy = multi::load_multi_copy(multi::embedded_object(), PROGRAM, prog)?;
    eprintln!(
        "uprobe-multi copy of {PROGRAM} loaded in {:.1} ms",
        ms(t.elapsed())
    );

    println!("| N | kind | attach ms | detach ms |");
    println!("|---|---|---|---|");
    for &n in ns {
        // Spread the points over the whole text.
        let step = offsets.len() / n;
        let chosen: Vec<u64> = (0..n).map(|i| offsets[i * step]).collect();
        let cookies: Vec<u64> = (0..n as u64).collect();

        let t = Instant::now();
        let link = multi::attach_uprobe_multi(copy.as_fd(), exe, &chosen, &cookies, pid)
            .context("uprobe-multi link")?;
        let attach = t.elapsed();
        let t = Instant::now();
        drop(link);
        let detach = t.elapsed();
        println!(
            "| {n} | multi (1 link) | {:.1} | {:.1} |",
            ms(attach),
            ms(detach)
        );

        for mode in modes {
            if n > per_point_max {
                continue;
            }
            let t = Instant::now();
            let mut links = Vec::with_capacity(n);
            for (&off, &cookie) in chosen.iter().zip(&cookies) {
                let at = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(off),
                    cookie: Some(cookie),
                };
                let id = prog.attach(
                    at,
                    exe,
                    UProbeScope::OneProcess(pid.try_into().context("pid 0")?),
                )?;
                links.push(prog.take_link(id)?);
            }
            let attach = t.elapsed();
            let t = Instant::now();
            match mode.as_str() {
                "pool" => multi::drop_in_pool(links, multi::DETACH_THREADS),
                "seq" => drop(links),
                "thread-each" => std::thread::scope(|s| {
                    for link in links {
                        s.spawn(move || drop(link));
                    }
                }),
                other => bail!("unknown --per-point mode {other}"),
            }
            let detach = t.elapsed();
            println!(
                "| {n} | per-point ({mode}) | {:.1} | {:.1} |",
                ms(attach),
                ms(detach)
            );
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// File offsets of the entries of the functions in `path`'s symbol table,
/// one per distinct address, in address order.
fn function_offsets(path: &Path) -> Result<Vec<u64>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data)?;
    let mut addrs: Vec<u64> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0 && s.is_definition())
        .map(|s| s.address())
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range().0))
        .collect();
    // The kernel refuses a few instructions as probe points (ENOTSUPP for
    // the whole multi link); function entries that start with an ordinary
    // prologue instruction are always accepted, so only those are used.
    let ordinary = |a: u64| -> bool {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic};
        let Some((start, _, off)) = segments
            .iter()
            .find(|(start, size, _)| a >= *start && a < start + size)
        else {
            return false;
        };
        let at = (a - start + off) as usize;
        let Some(code) = data.get(at..at + 16) else {
            return false;
        };
        let insn = Decoder::with_ip(64, code, a, DecoderOptions::NONE).decode();
        matches!(
            insn.mnemonic(),
            Mnemonic::Push | Mnemonic::Sub | Mnemonic::Mov | Mnemonic::Cmp | Mnemonic::Lea
        )
    };
    Ok(addrs
        .into_iter()
        .filter(|&a| ordinary(a))
        .filter_map(|a| {
            segments
                .iter()
                .find(|(start, size, _)| a >= *start && a < start + size)
                .map(|(start, _, off)| a - start + off)
        })
        .collect())
}
