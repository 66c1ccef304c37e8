//! `cargo xtask bench`: what leaktrace costs the process it traces, and how
//! far it scales. Everything is measured side by side in one run, and each
//! figure is set against a baseline taken in the same run, because this
//! machine is small (2 cores) and often busy with other builds: runs are
//! interleaved (A, B, C, A, B, C, …) so that background load hits every
//! configuration alike, and the median of several runs is reported.
//!
//! Sections (see `bench/RESULTS.md` for what each one found):
//! 1. churn: a Go program spawning, parking and ending goroutines, untraced,
//!    under `leaktrace -c`, and under bpftrace on the same runtime functions
//!    (at their entries, and at exactly leaktrace's probe points), plus a
//!    per-probe breakdown;
//! 2. http: a Go net/http server on loopback under wrk, untraced and traced;
//! 3. throughput: the event rate leaktrace keeps up with, and what happens
//!    above it;
//! 4. attach: time to the first report on a large binary and on 100,000
//!    goroutines, and whether the target stalls meanwhile (1 ms ticker);
//! 5. memory: leaktrace's peak RSS per live goroutine;
//! 6. tokio: per-task and per-poll cost on tests/fixtures/rust's spawn and
//!    poll benchmarks, default and detailed mode, against bpftrace at the
//!    same functions (bench/tokio.rs).
//!
//! `--only` runs some sections and, if the output file exists, replaces just
//! those sections in it, so the rest of a full run's results stays.
//!
//! Benchmarks are not tests: nothing here asserts a timing.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{demo::build_go_program, setup, util};

mod tokio;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Churn,
    Http,
    Throughput,
    Attach,
    Memory,
    Tokio,
}

impl Section {
    /// Its number in RESULTS.md (`## N. …`), by which `--only` finds it.
    fn number(self) -> usize {
        self as usize + 1
    }
}

#[derive(clap::Args)]
pub struct Options {
    /// About six minutes instead of twenty: fewer goroutines and tokio tasks,
    /// shorter and fewer runs, the standard-library-only large binary, no
    /// 1M-goroutine run.
    #[arg(long)]
    pub quick: bool,
    /// Runs of each measurement, whose median is reported (default 5, or 3 with --quick).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Another leaktrace binary (e.g. a build with a proposed fix), measured
    /// side by side with the workspace's in the churn, http and throughput
    /// sections and named by its file name. Repeatable.
    #[arg(long)]
    pub candidate: Vec<PathBuf>,
    /// Only these sections (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Where to write the results (relative paths are from the workspace root).
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
}

/// Sizes of one benchmark run.
struct Plan {
    quick: bool,
    runs: usize,
    churn_n: u64,
    http_secs: u32,
    tp_secs: u32,
    /// Goroutines per second offered in the throughput section (0: unpaced).
    tp_rates: Vec<u64>,
    /// Extra parked goroutines during unpaced throughput runs.
    tp_live: Vec<u64>,
    /// How long leaktrace is stopped in the runs that overflow the ring.
    tp_stalls: Vec<Duration>,
    tp_runs: usize,
    attach_goroutines: u64,
    generated_big: bool,
    one_million: bool,
}

impl Plan {
    fn new(o: &Options) -> Self {
        let runs = o.runs.unwrap_or(if o.quick { 3 } else { 5 }).max(1);
        if o.quick {
            Self {
                quick: true,
                runs,
                churn_n: 100_000,
                http_secs: 4,
                tp_secs: 2,
                tp_rates: vec![50_000, 0],
                tp_live: vec![100_000],
                tp_stalls: vec![Duration::from_secs(1)],
                tp_runs: 1,
                attach_goroutines: 100_000,
                generated_big: false,
                one_million: false,
            }
        } else {
            Self {
                quick: false,
                runs,
                churn_n: 300_000,
                http_secs: 10,
                tp_secs: 3,
                tp_rates: vec![25_000, 50_000, 100_000, 0],
                tp_live: vec![10_000, 100_000],
                tp_stalls: vec![Duration::from_millis(200), Duration::from_secs(1)],
                tp_runs: runs.min(3),
                attach_goroutines: 100_000,
                generated_big: true,
                one_million: true,
            }
        }
    }
}

/// Everything the sections run.
struct Tools {
    leaktrace: PathBuf,
    /// (name, binary): other leaktrace builds measured alongside.
    candidates: Vec<(String, PathBuf)>,
    go: PathBuf,
    churn: PathBuf,
    /// `churn` with ELF symbols added at leaktrace's probe points, so that
    /// bpftrace (which cannot probe at an offset here) can use the same points.
    churn_points: Option<ChurnPoints>,
    http: PathBuf,
    ticker: PathBuf,
    chan_send: PathBuf,
    big: PathBuf,
    scratch: PathBuf,
}

struct ChurnPoints {
    bin: PathBuf,
    spawn: Vec<String>,
    park: String,
    exit: String,
    described: String,
}

pub fn run(o: &Options) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the benchmark attaches eBPF probes and reads other processes' memory: run it as root \
             (sudo -E cargo xtask bench)"
        );
    }
    let plan = Plan::new(o);
    let sections: Vec<Section> = if o.only.is_empty() {
        vec![
            Section::Churn,
            Section::Http,
            Section::Throughput,
            Section::Attach,
            Section::Memory,
            Section::Tokio,
        ]
    } else {
        o.only.clone()
    };
    let started = Instant::now();
    let mut md = Markdown::default();
    let load_before = loadavg();

    let installed = setup::run(&setup::Options::default())?;
    let mut did = install_tools(&sections)?;
    let go = installed
        .go
        .last()
        .context("no Go toolchain (cargo xtask setup)")?
        .clone();
    let leaktrace = util::build_leaktrace()?;
    let mut candidates = Vec::new();
    for c in &o.candidate {
        if !c.is_file() {
            bail!("--candidate {}: no such file", c.display());
        }
        let name = c
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| c.display().to_string());
        candidates.push((format!("candidate {name}"), c.clone()));
    }
    let tools = build_tools(&plan, &go, leaktrace, candidates, &mut did)?;

    md.h1("leaktrace benchmarks");
    md.line(&format!(
        "Written by `cargo xtask bench{}` on {}. Regenerate with the same command; \
         bench/ANALYSIS.md explains the figures and what would improve them.",
        if plan.quick { " --quick" } else { "" },
        command_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default()
    ));
    machine_section(&mut md, &plan, &tools, &did, &load_before)?;

    let mut rss = None;
    let mut chunks = Vec::new();
    for &s in &sections {
        let t = Instant::now();
        let load = loadavg();
        let mut sec = Markdown::default();
        let r = match s {
            Section::Churn => churn_section(&mut sec, &plan, &tools),
            Section::Http => http_section(&mut sec, &plan, &tools),
            Section::Throughput => throughput_section(&mut sec, &plan, &tools),
            Section::Attach => attach_section(&mut sec, &plan, &tools, &mut rss),
            Section::Memory => memory_section(&mut sec, &plan, &tools, rss),
            Section::Tokio => tokio::section(&mut sec, &plan, &tools),
        };
        if let Err(e) = r {
            sec.line(&format!("**This section failed:** {e:#}"));
            eprintln!("bench: section {s:?} failed: {e:#}");
        }
        sec.line(&format!(
            "_Section took {:.0} s; load average at its start: {load}._",
            t.elapsed().as_secs_f64()
        ));
        // A section that failed before its heading still needs one, or
        // `--only` could not find it again.
        if !sec.text.starts_with("## ") {
            sec.text = format!("## {}. {s:?}\n\n{}", s.number(), sec.text);
        }
        chunks.push((s, sec.text));
    }

    let out = if o.out.is_absolute() {
        o.out.clone()
    } else {
        util::workspace_root().join(&o.out)
    };
    let earlier = (!o.only.is_empty())
        .then(|| std::fs::read_to_string(&out).ok())
        .flatten()
        .filter(|t| t.starts_with("# leaktrace benchmarks"));
    let text = if let Some(earlier) = earlier {
        let note = format!(
            "_Regenerated alone by `cargo xtask bench{} --only {}` on {}, {} runs per figure, \
             leaktrace at {}; the rest of this file is from the run named at the top._\n\n",
            if plan.quick { " --quick" } else { "" },
            sections
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(","),
            command_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            plan.runs,
            git_describe(),
        );
        splice_sections(&earlier, &chunks, &note)
    } else {
        for (_, c) in &chunks {
            md.text.push_str(c);
        }
        md.h2("Load");
        md.line(&format!(
            "Load average (1, 5, 15 min) before: {load_before}; after: {}. Whole run: {:.0} s.",
            loadavg(),
            started.elapsed().as_secs_f64()
        ));
        md.text
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

/// `text` with each `(section, chunk)` in place of that section's `## N. …`
/// block (up to the next `## ` heading), or inserted before the first later
/// section (or `## Load`) if it has none yet; `note` ends each chunk.
fn splice_sections(text: &str, chunks: &[(Section, String)], note: &str) -> String {
    let mut text = text.to_string();
    for (s, chunk) in chunks {
        let n = s.number();
        // (offset, section number or None) of every `## ` line.
        let heads: Vec<(usize, Option<usize>)> = text
            .match_indices("## ")
            .filter(|(at, _)| *at == 0 || text.as_bytes()[at - 1] == b'\n')
            .map(|(at, _)| {
                let num = text[at + 3..]
                    .split('.')
                    .next()
                    .and_then(|d| d.parse().ok());
                (at, num)
            })
            .collect();
        let new = format!("{chunk}{note}");
        match heads.iter().position(|h| h.1 == Some(n)) {
            Some(i) => {
                let end = heads.get(i + 1).map_or(text.len(), |h| h.0);
                text.replace_range(heads[i].0..end, &new);
            }
            None => {
                let at = heads
                    .iter()
                    .find(|h| h.1.is_some_and(|m| m > n) || text[h.0..].starts_with("## Load"))
                    .map_or(text.len(), |h| h.0);
                text.insert_str(at, &new);
            }
        }
    }
    text
}

// ---------------------------------------------------------------- setup

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// apt packages the sections need (bpftrace, wrk, GNU time); what was done.
fn install_tools(sections: &[Section]) -> Result<Vec<String>> {
    let mut want = vec![("time", "/usr/bin/time")];
    if sections.contains(&Section::Churn) || sections.contains(&Section::Tokio) {
        want.push(("bpftrace", "bpftrace"));
    }
    if sections.contains(&Section::Http) {
        want.push(("wrk", "wrk"));
    }
    let missing: Vec<&str> = want
        .iter()
        .filter(|(_, bin)| {
            if bin.starts_with('/') {
                !Path::new(bin).is_file()
            } else {
                !on_path(bin)
            }
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    let present: Vec<&str> = want
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !missing.contains(p))
        .collect();
    let mut did = vec![format!("already present: {}", present.join(", "))];
    if missing.is_empty() {
        return Ok(did);
    }
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    did.push(format!("installed with apt-get: {}", missing.join(", ")));
    eprintln!("bench: installed {}", missing.join(", "));
    Ok(did)
}

fn build_tools(
    plan: &Plan,
    go: &Path,
    leaktrace: PathBuf,
    candidates: Vec<(String, PathBuf)>,
    did: &mut Vec<String>,
) -> Result<Tools> {
    std::fs::create_dir_all(util::target_dir().join("xtask-go/bench"))?;
    let scratch = util::target_dir().join("bench");
    std::fs::create_dir_all(&scratch)?;
    let churn = build_go_program(go, "bench/churn")?;
    let churn_points = match churn_points(go, &churn) {
        Ok(p) => Some(p),
        Err(e) => {
            let msg = format!("bpftrace at leaktrace's probe points is skipped: {e:#}");
            eprintln!("bench: {msg}");
            did.push(msg);
            None
        }
    };
    let big = if plan.generated_big {
        let t = Instant::now();
        let b = build_generated_big(go)?;
        did.push(format!(
            "built the generated large binary in {:.0} s (Go's build cache makes later builds fast)",
            t.elapsed().as_secs_f64()
        ));
        b
    } else {
        build_go_program(go, "bench/big")?
    };
    Ok(Tools {
        leaktrace,
        candidates,
        go: go.to_path_buf(),
        churn,
        churn_points,
        http: build_go_program(go, "bench/http")?,
        ticker: build_go_program(go, "bench/ticker")?,
        chan_send: build_go_program(go, "chan_send")?,
        big,
        scratch,
    })
}

/// bench/big plus generated code (3,000 types × 8 methods, all kept by the
/// run-time method lookup in main.go): over 50 MB with DWARF, the size of a
/// large real service. Built outside the fixture module so that no
/// generated file lands in the source tree.
fn build_generated_big(go: &Path) -> Result<PathBuf> {
    let src = util::target_dir().join("xtask-go/bench-big-src");
    let pkg = src.join("big");
    std::fs::create_dir_all(&pkg)?;
    std::fs::write(src.join("go.mod"), "module benchbig\n\ngo 1.19\n")?;
    std::fs::copy(
        util::workspace_root().join("tests/fixtures/go/bench/big/main.go"),
        pkg.join("main.go"),
    )?;
    let mut code = String::from(
        "// Code generated by cargo xtask bench; DO NOT EDIT.\n\npackage main\n\n\
         import (\n\t\"fmt\"\n\t\"strings\"\n)\n\n",
    );
    const TYPES: usize = 3000;
    for t in 0..TYPES {
        let _ = writeln!(
            code,
            "type Gen{t} struct {{\n\ta, b int\n\ts    string\n\ttags []string\n}}\n"
        );
        for m in 0..8 {
            let _ = writeln!(
                code,
                "func (g *Gen{t}) Op{m}(x int, name string) (string, error) {{\n\
                 \tswitch {{\n\
                 \tcase x < {lo}:\n\
                 \t\treturn fmt.Sprintf(\"gen{t}.op{m} low %d %s %d\", x+g.a*{mul}, name, g.b^{xor}), nil\n\
                 \tcase x > {hi}:\n\
                 \t\treturn \"\", fmt.Errorf(\"gen{t}.op{m}: %d out of range for %q\", x, name)\n\
                 \t}}\n\
                 \tg.tags = append(g.tags, strings.Repeat(name, {rep}))\n\
                 \treturn strings.Join(g.tags, \"/{t}.{m}/\") + g.s, nil\n}}\n",
                lo = t % 97,
                mul = t + 1,
                xor = m + 3,
                hi = 1000 + t,
                rep = m % 3 + 1,
            );
        }
    }
    code.push_str("func init() {\n\tkeep = append(keep,\n");
    for t in 0..TYPES {
        let _ = writeln!(code, "\t\t&Gen{t}{{}},");
    }
    code.push_str("\t)\n}\n");
    let gen_path = pkg.join("code.go");
    // Rewrite only on change so Go's build cache can skip the compile.
    if std::fs::read_to_string(&gen_path).ok().as_deref() != Some(code.as_str()) {
        std::fs::write(&gen_path, code)?;
    }
    let out = util::target_dir().join("xtask-go/bench/big-generated");
    let cache = util::target_dir().join("go-cache");
    eprintln!("bench: building the large binary (a few minutes the first time)");
    util::run(
        Command::new(go)
            .current_dir(&src)
            .args(["build", "-o"])
            .arg(&out)
            .arg("./big")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", cache.join("build"))
            .env("GOPATH", cache.join("path")),
    )?;
    Ok(out)
}

// ------------------------------------------------ leaktrace's probe points

/// Copy `bin` with ELF symbols at the points leaktrace probes: each `CALL
/// runtime.casgstatus` in newproc1, and the branch right after the stack
/// check of park_m and goexit0 (emulated by the kernel, so no single-step).
fn churn_points(go: &Path, bin: &Path) -> Result<ChurnPoints> {
    let out = Command::new(go)
        .args([
            "tool",
            "objdump",
            "-s",
            r"^runtime\.(newproc1|park_m|goexit0)$",
        ])
        .arg(bin)
        .output()
        .context("go tool objdump")?;
    if !out.status.success() {
        bail!(
            "go tool objdump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut func = String::new();
    let mut entry = None;
    let mut entries: BTreeMap<String, u64> = BTreeMap::new();
    let mut prev_stack_check = false;
    let mut spawn = Vec::new();
    let mut park = None;
    let mut exit = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("TEXT ") {
            func = rest.split('(').next().unwrap_or("").to_string();
            entry = None;
            prev_stack_check = false;
            continue;
        }
        let fields: Vec<&str> = line.split('\t').filter(|f| !f.is_empty()).collect();
        if fields.len() < 4 {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(fields[1].trim().trim_start_matches("0x"), 16) else {
            continue;
        };
        let asm = fields[3].trim();
        if entry.is_none() {
            entry = Some(addr);
            entries.insert(func.clone(), addr);
        }
        match func.as_str() {
            "runtime.newproc1" if asm.starts_with("CALL runtime.casgstatus(SB)") => {
                spawn.push(addr)
            }
            "runtime.park_m" if prev_stack_check && park.is_none() => park = Some((addr, asm)),
            "runtime.goexit0" if prev_stack_check && exit.is_none() => exit = Some((addr, asm)),
            _ => {}
        }
        prev_stack_check = asm.starts_with("CMPQ SP, 0x10(R14)");
    }
    let (park, park_asm) = park.context("no stack check found in runtime.park_m")?;
    let (exit, exit_asm) = exit.context("no stack check found in runtime.goexit0")?;
    if spawn.is_empty() {
        bail!("no CALL runtime.casgstatus in runtime.newproc1 (inlined? a PGO build?)");
    }
    let elf = std::fs::read(bin)?;
    let text_sh = elf_sections(&elf)?
        .into_iter()
        .find(|s| s.name == ".text")
        .context("no .text section")?;
    let copy = bin.with_file_name("churn.lt-points");
    let mut names: Vec<(String, u64)> = spawn
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("lt_spawn{i}"), *a))
        .collect();
    names.push(("lt_park".into(), park));
    names.push(("lt_exit".into(), exit));
    let mut objcopy = Command::new("objcopy");
    for (name, addr) in &names {
        objcopy.arg("--add-symbol").arg(format!(
            "{name}=.text:{:#x},global,function",
            addr - text_sh.addr
        ));
    }
    util::run(objcopy.arg(bin).arg(&copy)).context("objcopy (binutils)")?;
    // bpftrace refuses a symbol of size 0; the size is not used otherwise.
    let mut patched = std::fs::read(&copy)?;
    let n = elf_set_symbol_sizes(&mut patched, "lt_", 1)?;
    if n != names.len() {
        bail!("patched {n} symbols, expected {}", names.len());
    }
    std::fs::write(&copy, patched)?;
    let described = format!(
        "newproc1: {} × `CALL runtime.casgstatus` ({}); park_m+{:#x} (`{park_asm}`); goexit0+{:#x} (`{exit_asm}`)",
        spawn.len(),
        spawn
            .iter()
            .map(|a| format!("{a:#x}"))
            .collect::<Vec<_>>()
            .join(", "),
        park - entries.get("runtime.park_m").copied().unwrap_or(park),
        exit - entries.get("runtime.goexit0").copied().unwrap_or(exit),
    );
    Ok(ChurnPoints {
        bin: copy,
        spawn: names
            .iter()
            .filter(|(n, _)| n.starts_with("lt_spawn"))
            .map(|(n, _)| n.clone())
            .collect(),
        park: "lt_park".into(),
        exit: "lt_exit".into(),
        described,
    })
}

struct ElfSection {
    name: String,
    kind: u32,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
}

fn le_u16(b: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(at..at + 2).context("ELF truncated")?.try_into()?,
    ))
}
fn le_u32(b: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(at..at + 4).context("ELF truncated")?.try_into()?,
    ))
}
fn le_u64(b: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        b.get(at..at + 8).context("ELF truncated")?.try_into()?,
    ))
}

fn c_str(b: &[u8], at: usize) -> String {
    let tail = b.get(at..).unwrap_or_default();
    let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

/// Section headers of a little-endian ELF64 file.
fn elf_sections(b: &[u8]) -> Result<Vec<ElfSection>> {
    if b.get(..6) != Some(&b"\x7fELF\x02\x01"[..]) {
        bail!("not a little-endian ELF64 file");
    }
    let shoff = le_u64(b, 0x28)? as usize;
    let shentsize = le_u16(b, 0x3a)? as usize;
    let shnum = le_u16(b, 0x3c)? as usize;
    let shstrndx = le_u16(b, 0x3e)? as usize;
    let raw = |i: usize| -> Result<(u32, u32, u64, u64, u64, u32)> {
        let h = shoff + i * shentsize;
        Ok((
            le_u32(b, h)?,
            le_u32(b, h + 4)?,
            le_u64(b, h + 0x10)?,
            le_u64(b, h + 0x18)?,
            le_u64(b, h + 0x20)?,
            le_u32(b, h + 0x28)?,
        ))
    };
    let names_at = raw(shstrndx)?.3 as usize;
    (0..shnum)
        .map(|i| {
            let (name, kind, addr, offset, size, link) = raw(i)?;
            Ok(ElfSection {
                name: c_str(b, names_at + name as usize),
                kind,
                addr,
                offset,
                size,
                link,
            })
        })
        .collect()
}

/// Set `st_size` of every .symtab symbol whose name starts with `prefix`;
/// how many were set.
fn elf_set_symbol_sizes(b: &mut [u8], prefix: &str, size: u64) -> Result<usize> {
    const SHT_SYMTAB: u32 = 2;
    let sections = elf_sections(b)?;
    let symtab = sections
        .iter()
        .find(|s| s.kind == SHT_SYMTAB)
        .context("no .symtab")?;
    let strtab = sections
        .get(symtab.link as usize)
        .context("bad .symtab link")?
        .offset as usize;
    let mut n = 0;
    for at in (symtab.offset..symtab.offset + symtab.size).step_by(24) {
        let at = at as usize;
        let name = c_str(b, strtab + le_u32(b, at)? as usize);
        if name.starts_with(prefix) {
            b[at + 16..at + 24].copy_from_slice(&size.to_le_bytes());
            n += 1;
        }
    }
    Ok(n)
}

// ------------------------------------------------------------ processes

/// Lines of one output stream, read by a thread and time-stamped on arrival.
struct Lines {
    rx: Receiver<(Instant, String)>,
    all: Vec<String>,
}

impl Lines {
    fn new(r: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            all: Vec::new(),
        }
    }

    /// The first line (from now on) that `pred` accepts, and when it came.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, line)) => {
                    self.all.push(line.clone());
                    if pred(&line) {
                        return Ok((t, line));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("timed out after {timeout:?} waiting for {what}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("stream ended before {what}; last lines: {}", self.tail())
                }
            }
        }
    }

    /// Everything until the stream ends (or `timeout`).
    fn drain(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Ok((_, line)) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.all.push(line);
        }
        self.all.join("\n")
    }

    fn tail(&self) -> String {
        let n = self.all.len();
        self.all[n.saturating_sub(5)..].join(" | ")
    }
}

/// A child process with its output streams; killed if dropped while running,
/// so no benchmark process outlives an error.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
    err: Lines,
    label: String,
}

impl Proc {
    fn spawn(cmd: &mut Command, label: &str) -> Result<Self> {
        eprintln!("bench: + {}", util::show(cmd));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", util::show(cmd)))?;
        let out = Lines::new(child.stdout.take().context("stdout")?);
        let err = Lines::new(child.stderr.take().context("stderr")?);
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            label: label.to_string(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send_line(&mut self, s: &str) -> Result<()> {
        let w = self.stdin.as_mut().context("stdin closed")?;
        w.write_all(s.as_bytes())?;
        w.write_all(b"\n")?;
        w.flush()?;
        Ok(())
    }

    fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not finish within {timeout:?}; killed", self.label);
            }
            sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL if it is still there after `grace`.
    fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("TERM");
            if self.wait(grace).is_err() {
                eprintln!("bench: {} ignored SIGTERM; killed", self.label);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Run to completion with a time limit; (status, stdout, stderr).
fn capture(
    cmd: &mut Command,
    label: &str,
    timeout: Duration,
) -> Result<(ExitStatus, String, String)> {
    let mut p = Proc::spawn(cmd, label)?;
    p.stdin = None;
    let status = p.wait(timeout)?;
    let out = p.out.drain(Duration::from_secs(5));
    let err = p.err.drain(Duration::from_secs(5));
    Ok((status, out, err))
}

/// The pid of the only child of `pid` (leaktrace under /usr/bin/time).
fn only_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Run `leaktrace` under GNU time, which reports leaktrace's own peak RSS
/// and CPU (leaktrace has no children of its own in --pid mode).
fn timed(bin: &Path, time_file: &Path) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f")
        .arg("maxrss_kb %M user_s %U sys_s %S wall_s %e vcs %w")
        .arg("-o")
        .arg(time_file)
        .arg(bin);
    c
}

#[derive(Clone, Copy, Default)]
struct TimeReport {
    maxrss_kb: f64,
    cpu_s: f64,
    wall_s: f64,
    vcs: f64,
}

fn read_time(path: &Path) -> Result<TimeReport> {
    let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let get = |k: &str| num_after(&t, k).with_context(|| format!("{k} missing in {t:?}"));
    Ok(TimeReport {
        maxrss_kb: get("maxrss_kb ")?,
        cpu_s: get("user_s ")? + get("sys_s ")?,
        wall_s: get("wall_s ")?,
        vcs: get("vcs ")?,
    })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ------------------------------------------------------------ parsing

/// The number right after the first `key` in `text`.
fn num_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    let s: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | '+'))
        .collect();
    s.parse().ok()
}

/// Event totals of leaktrace's last JSON report in `path`.
#[derive(Clone, Copy, Debug, Default)]
struct Events {
    spawn: f64,
    park: f64,
    exit: f64,
    lost: f64,
    live: f64,
    /// tokio only (NaN in a Go report): polls and wakes, seen with --detailed.
    poll: f64,
    wake: f64,
}

impl Events {
    fn delivered(&self) -> f64 {
        self.spawn + self.park + self.exit
    }
}

fn last_report(path: &Path) -> Result<Events> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading leaktrace's report {}", path.display()))?;
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("\"events\""))
        .with_context(|| format!("no report in {}", path.display()))?;
    let ev = &last[last.find("\"events\"").unwrap_or(0)..];
    let get = |k: &str| num_after(ev, &format!("\"{k}\":")).unwrap_or(f64::NAN);
    Ok(Events {
        spawn: get("spawn"),
        park: get("park"),
        exit: get("exit"),
        lost: get("lost"),
        live: num_after(last, "\"live\":").unwrap_or(f64::NAN),
        poll: get("poll"),
        wake: get("wake"),
    })
}

fn ns_per_goroutine(out: &str) -> Result<f64> {
    num_after(out, "ns_per_goroutine ")
        .with_context(|| format!("no ns_per_goroutine in the program's output: {out:?}"))
}

/// Sum of one /proc/interrupts row over all CPUs (e.g. `IWI`, IRQ work).
fn interrupts(row: &str) -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.trim_start().starts_with(&format!("{row}:")))
                .map(|l| {
                    l.split_whitespace()
                        .skip(1)
                        .map_while(|w| w.parse::<u64>().ok())
                        .sum()
                })
        })
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The workspace's commit, `-dirty` with uncommitted changes.
fn git_describe() -> String {
    let root = util::workspace_root().display().to_string();
    command_out("git", &["-C", &root, "describe", "--always", "--dirty"]).unwrap_or_default()
}

fn command_out(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let s = if s.is_empty() {
        String::from_utf8_lossy(&o.stderr).trim().to_string()
    } else {
        s
    };
    Some(s.lines().next().unwrap_or("").to_string())
}

// ------------------------------------------------------------ statistics

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64], digits: usize) -> String {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.len() < 2 {
        return String::new();
    }
    let lo = f.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = f.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(" ({lo:.digits$}–{hi:.digits$})")
}

fn fmt_med(v: &[f64], digits: usize) -> String {
    let m = median(v);
    if m.is_nan() {
        return "–".into();
    }
    format!("{m:.digits$}{}", spread(v, digits))
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

// ------------------------------------------------------------ markdown

#[derive(Default)]
struct Markdown {
    text: String,
}

impl Markdown {
    fn h1(&mut self, s: &str) {
        let _ = writeln!(self.text, "# {s}\n");
    }
    fn h2(&mut self, s: &str) {
        let _ = writeln!(self.text, "## {s}\n");
    }
    fn line(&mut self, s: &str) {
        let _ = writeln!(self.text, "{s}\n");
    }
    fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.text, "| {} |", header.join(" | "));
        let _ = writeln!(
            self.text,
            "|{}",
            header.iter().map(|_| "---|").collect::<String>()
        );
        for r in rows {
            let _ = writeln!(self.text, "| {} |", r.join(" | "));
        }
        self.text.push('\n');
    }
}

fn machine_section(
    md: &mut Markdown,
    plan: &Plan,
    t: &Tools,
    did: &[String],
    load: &str,
) -> Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| num_after(&m, "MemTotal:"))
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let size_mb = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| format!("{:.1} MB", m.len() as f64 / 1e6))
            .unwrap_or_else(|_| "?".into())
    };
    md.h2("Machine and method");
    md.table(
        &["what", "value"],
        &[
            vec![
                "kernel (`uname -r`)".into(),
                command_out("uname", &["-r"]).unwrap_or_default(),
            ],
            vec![
                "CPUs (`nproc`)".into(),
                command_out("nproc", &[]).unwrap_or_default(),
            ],
            vec!["CPU model".into(), cpu],
            vec!["memory".into(), mem],
            vec!["load average at start (1, 5, 15 min)".into(), load.into()],
            vec![
                "Go toolchain (targets)".into(),
                format!(
                    "{} (`{}`)",
                    command_out(&t.go.display().to_string(), &["version"]).unwrap_or_default(),
                    t.go.display()
                ),
            ],
            vec![
                "leaktrace".into(),
                format!("`{}` at {}", t.leaktrace.display(), git_describe()),
            ],
            vec![
                "candidate leaktrace builds".into(),
                if t.candidates.is_empty() {
                    "none (--candidate)".into()
                } else {
                    t.candidates
                        .iter()
                        .map(|(n, p)| format!("{n}: `{}`", p.display()))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ],
            vec![
                "bpftrace".into(),
                command_out("bpftrace", &["--version"]).unwrap_or_else(|| "–".into()),
            ],
            vec![
                "wrk".into(),
                command_out("wrk", &["--version"])
                    .map(|s| s.split(" Copyright").next().unwrap_or("").to_string())
                    .unwrap_or_else(|| "–".into()),
            ],
            vec!["tools".into(), did.join("; ")],
            vec![
                "runs per figure".into(),
                format!(
                    "{} (median reported, min–max in parentheses){}",
                    plan.runs,
                    if plan.quick { "; --quick" } else { "" }
                ),
            ],
            vec![
                "large binary".into(),
                format!("`{}`, {}", t.big.display(), size_mb(&t.big)),
            ],
        ],
    );
    md.line(
        "Method: every configuration of a section runs once per round, rounds repeat (A, B, C, \
         A, B, C, …), so background load spreads over all of them; each figure is the median \
         over rounds, set against its baseline from the same rounds. The targets are the Go \
         programs in tests/fixtures/go/bench (and chan_send), built with the toolchain above. \
         leaktrace runs in its default mode (no flags but `--format json --output FILE`, plus \
         `--pid` or `-c`); every ratio is traced ÷ untraced (> 1 = slower) unless stated.",
    );
    Ok(())
}

// ------------------------------------------------------------ 1. churn

#[derive(Clone)]
enum ChurnCfg {
    Untraced,
    Leaktrace(PathBuf),
    /// leaktrace attached by pid, stopped (SIGSTOP) while the program runs:
    /// the probes still fire but nobody reads the ring.
    LeaktraceStopped(PathBuf),
    /// bpftrace `count()` at the three functions' entries (the brief's peer).
    BpftraceEntry,
    /// bpftrace `count()` at leaktrace's own probe points; a subset of them.
    BpftracePoints {
        spawn: bool,
        park: bool,
        exit: bool,
    },
}

struct ChurnRun {
    ns: f64,
    /// Probe hits per goroutine (bpftrace's counts or leaktrace's events).
    hits: f64,
    lost: f64,
    iwi: f64,
}

fn churn_once(t: &Tools, cfg: &ChurnCfg, n: u64) -> Result<ChurnRun> {
    let n_s = n.to_string();
    let iwi0 = interrupts("IWI");
    let limit = Duration::from_secs(600);
    let (ns, hits, lost) = match cfg {
        ChurnCfg::Untraced => {
            let (_, out, _) = capture(Command::new(&t.churn).args(["-n", &n_s]), "churn", limit)?;
            (ns_per_goroutine(&out)?, 0.0, 0.0)
        }
        ChurnCfg::Leaktrace(bin) => {
            let report = t.scratch.join("churn-report.jsonl");
            let _ = std::fs::remove_file(&report);
            let (status, out, err) = capture(
                Command::new(bin)
                    .args(["--format", "json", "--output"])
                    .arg(&report)
                    .arg("-c")
                    .arg(&t.churn)
                    .args(["-n", &n_s]),
                "leaktrace -c churn",
                limit,
            )?;
            if !status.success() {
                bail!("leaktrace -c churn: {status}: {err}");
            }
            let ev = last_report(&report)?;
            (ns_per_goroutine(&out)?, ev.delivered() / n as f64, ev.lost)
        }
        ChurnCfg::LeaktraceStopped(bin) => {
            let mut churn = Proc::spawn(
                Command::new(&t.churn).args(["-n", &n_s, "-wait"]),
                "churn -wait",
            )?;
            churn
                .out
                .wait_for("ready", Duration::from_secs(20), |l| l == "ready")?;
            let report = t.scratch.join("churn-stopped.jsonl");
            let _ = std::fs::remove_file(&report);
            let mut lt = Proc::spawn(
                Command::new(bin)
                    .args(["--format", "json", "--output"])
                    .arg(&report)
                    .args(["--pid", &churn.pid().to_string()]),
                "leaktrace --pid churn",
            )?;
            lt.err.wait_for("attach", Duration::from_secs(60), |l| {
                l.starts_with("Attaching")
            })?;
            sleep(Duration::from_millis(300));
            lt.signal("STOP");
            churn.send_line("go")?;
            churn.wait(limit)?;
            let out = churn.out.drain(Duration::from_secs(5));
            lt.signal("CONT");
            lt.wait(Duration::from_secs(60))?;
            let ev = last_report(&report)?;
            (
                ns_per_goroutine(&out)?,
                (ev.delivered() + ev.lost) / n as f64,
                ev.lost,
            )
        }
        ChurnCfg::BpftraceEntry | ChurnCfg::BpftracePoints { .. } => {
            let (bin, script) = bpftrace_script(t, cfg)?;
            let (_, out, err) = capture(
                Command::new("bpftrace")
                    .args(["-e", &script, "-c"])
                    .arg(format!("{} -n {n}", bin.display())),
                "bpftrace -c churn",
                limit,
            )?;
            let ns = ns_per_goroutine(&out).with_context(|| format!("bpftrace: {err}"))?;
            let hits: f64 = ["@s: ", "@p: ", "@e: "]
                .iter()
                .filter_map(|k| num_after(&out, k))
                .sum();
            (ns, hits / n as f64, 0.0)
        }
    };
    Ok(ChurnRun {
        ns,
        hits,
        lost,
        iwi: interrupts("IWI").saturating_sub(iwi0) as f64 / n as f64,
    })
}

fn bpftrace_script(t: &Tools, cfg: &ChurnCfg) -> Result<(PathBuf, String)> {
    match cfg {
        ChurnCfg::BpftraceEntry => {
            let b = t.churn.display();
            Ok((
                t.churn.clone(),
                format!(
                    "uprobe:{b}:runtime.newproc1 {{ @s = count() }} \
                     uprobe:{b}:runtime.park_m {{ @p = count() }} \
                     uprobe:{b}:runtime.goexit0 {{ @e = count() }}"
                ),
            ))
        }
        ChurnCfg::BpftracePoints { spawn, park, exit } => {
            let p = t
                .churn_points
                .as_ref()
                .context("leaktrace's probe points are not available")?;
            let b = p.bin.display();
            let mut s = String::new();
            if *spawn {
                let pts: Vec<String> = p.spawn.iter().map(|n| format!("uprobe:{b}:{n}")).collect();
                let _ = write!(s, "{} {{ @s = count() }} ", pts.join(","));
            }
            if *park {
                let _ = write!(s, "uprobe:{b}:{} {{ @p = count() }} ", p.park);
            }
            if *exit {
                let _ = write!(s, "uprobe:{b}:{} {{ @e = count() }} ", p.exit);
            }
            Ok((p.bin.clone(), s))
        }
        _ => unreachable!("not a bpftrace configuration"),
    }
}

fn churn_section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let mut cfgs: Vec<(String, ChurnCfg)> = vec![
        ("untraced".into(), ChurnCfg::Untraced),
        (
            "leaktrace -c".into(),
            ChurnCfg::Leaktrace(t.leaktrace.clone()),
        ),
    ];
    for (name, bin) in &t.candidates {
        cfgs.push((format!("{name} -c"), ChurnCfg::Leaktrace(bin.clone())));
    }
    cfgs.push((
        "bpftrace count(), function entries".into(),
        ChurnCfg::BpftraceEntry,
    ));
    if t.churn_points.is_some() {
        let all = ChurnCfg::BpftracePoints {
            spawn: true,
            park: true,
            exit: true,
        };
        cfgs.push(("bpftrace count(), leaktrace's points".into(), all));
    }
    let main_cfgs = cfgs.len();
    // The breakdown: which probe costs what, and what the ring's reader costs.
    cfgs.push((
        "leaktrace --pid, stopped (SIGSTOP) while the program runs".into(),
        ChurnCfg::LeaktraceStopped(t.leaktrace.clone()),
    ));
    for (name, bin) in &t.candidates {
        cfgs.push((
            format!("{name} --pid, stopped (SIGSTOP) while the program runs"),
            ChurnCfg::LeaktraceStopped(bin.clone()),
        ));
    }
    if t.churn_points.is_some() {
        for (name, spawn, park, exit) in [
            ("spawn", true, false, false),
            ("park", false, true, false),
            ("exit", false, false, true),
        ] {
            cfgs.push((
                format!("bpftrace count(), leaktrace's {name} point only"),
                ChurnCfg::BpftracePoints { spawn, park, exit },
            ));
        }
    }
    let mut runs: BTreeMap<usize, Vec<ChurnRun>> = BTreeMap::new();
    for round in 0..plan.runs {
        for (i, (name, cfg)) in cfgs.iter().enumerate() {
            eprintln!("bench: churn round {}/{}: {name}", round + 1, plan.runs);
            match churn_once(t, cfg, plan.churn_n) {
                Ok(r) => runs.entry(i).or_default().push(r),
                Err(e) => eprintln!("bench: churn {name}: {e:#}"),
            }
        }
    }
    let col = |i: usize, f: fn(&ChurnRun) -> f64| -> Vec<f64> {
        runs.get(&i)
            .map(|v| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    let base = median(&col(0, |r| r.ns));
    let lt = median(&col(1, |r| r.ns));
    let row = |i: usize, name: &str| -> Vec<String> {
        let ns = col(i, |r| r.ns);
        let m = median(&ns);
        let hits = median(&col(i, |r| r.hits));
        let per_hit = if hits > 0.0 {
            format!("{:.2}", (m - base) / hits / 1000.0)
        } else {
            "–".into()
        };
        vec![
            name.to_string(),
            format!("{}", runs.get(&i).map_or(0, Vec::len)),
            fmt_med(&ns.iter().map(|x| x / 1000.0).collect::<Vec<_>>(), 2),
            ratio(m, base),
            ratio(lt, m),
            if hits > 0.0 {
                format!("{hits:.2}")
            } else {
                "–".into()
            },
            per_hit,
            format!("{:.0}", median(&col(i, |r| r.lost))),
            format!("{:.3}", median(&col(i, |r| r.iwi))),
        ]
    };
    let header = [
        "configuration",
        "runs",
        "µs per goroutine",
        "× untraced",
        "leaktrace ÷ this",
        "probe hits per goroutine",
        "µs per hit over untraced",
        "events lost",
        "IRQ-work interrupts per goroutine",
    ];
    md.h2("1. Churn: what each goroutine costs");
    md.line(&format!(
        "bench/churn spawns a goroutine, parks once on an unbuffered channel and ends it, {} \
         times back to back, and times only that loop (`ns_per_goroutine`). One goroutine = one \
         spawn, one park, one exit = 3 probe hits. bpftrace runs `count()` in each probe, with \
         `-c` like leaktrace; \"leaktrace's points\" are {}.",
        plan.churn_n,
        t.churn_points
            .as_ref()
            .map(|p| p.described.clone())
            .unwrap_or_else(|| "not available".into())
    ));
    md.table(
        &header,
        &(0..main_cfgs)
            .map(|i| row(i, &cfgs[i].0))
            .collect::<Vec<_>>(),
    );
    let bt_points = (main_cfgs >= 2)
        .then(|| {
            cfgs.iter()
                .position(|(n, _)| n.contains("leaktrace's points"))
        })
        .flatten()
        .map(|i| median(&col(i, |r| r.ns)));
    let bt_entry = cfgs
        .iter()
        .position(|(_, c)| matches!(c, ChurnCfg::BpftraceEntry))
        .map(|i| median(&col(i, |r| r.ns)));
    md.line(&format!(
        "Headline: leaktrace {:.2} µs vs untraced {:.2} µs per goroutine ({}); bpftrace at \
         function entries {} ({} of leaktrace's time); bpftrace at leaktrace's own points {} \
         (leaktrace takes {} of that). The floor for 3 emulated probe hits is about 3 × 0.7 µs \
         over untraced.",
        lt / 1000.0,
        base / 1000.0,
        ratio(lt, base),
        bt_entry.map_or("–".into(), |v| format!("{:.2} µs", v / 1000.0)),
        bt_entry.map_or("–".into(), |v| ratio(v, lt)),
        bt_points.map_or("–".into(), |v| format!("{:.2} µs", v / 1000.0)),
        bt_points.map_or("–".into(), |v| ratio(lt, v)),
    ));
    md.line(
        "Breakdown (same rounds): leaktrace attached by pid but stopped, so its probes run and \
         reserve ring space until the ring is full, then count losses, with no reader to wake; \
         and bpftrace on one of leaktrace's points at a time.",
    );
    md.table(
        &header,
        &(main_cfgs..cfgs.len())
            .map(|i| row(i, &cfgs[i].0))
            .collect::<Vec<_>>(),
    );
    Ok(())
}

// ------------------------------------------------------------ 2. http

struct HttpRun {
    rps: f64,
    p99_ms: f64,
    parks_per_req: f64,
    lost: f64,
}

fn parse_wrk(out: &str) -> Result<(f64, f64, f64)> {
    let rps = num_after(out, "Requests/sec:").with_context(|| format!("wrk output: {out}"))?;
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .context("no 99% line (wrk --latency)")?;
    let v = line.split_whitespace().nth(1).context("99% value")?;
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let num: f64 = num.parse()?;
    let ms = match unit {
        "us" => num / 1000.0,
        "ms" => num,
        "s" => num * 1000.0,
        "m" => num * 60_000.0,
        _ => bail!("unknown wrk latency unit in {v}"),
    };
    let total = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    Ok((rps, ms, total))
}

fn http_once(t: &Tools, tracer: Option<&Path>, secs: u32) -> Result<HttpRun> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}/item?id=42");
    let mut server = Proc::spawn(Command::new(&t.http).args(["-addr", &addr]), "bench/http")?;
    server
        .out
        .wait_for("listening", Duration::from_secs(20), |l| {
            l.starts_with("listening")
        })?;
    let report = t.scratch.join("http-report.jsonl");
    let _ = std::fs::remove_file(&report);
    let mut lt = match tracer {
        Some(bin) => {
            let mut p = Proc::spawn(
                Command::new(bin)
                    .args(["--format", "json", "--output"])
                    .arg(&report)
                    .args(["--pid", &server.pid().to_string()]),
                "leaktrace --pid bench/http",
            )?;
            p.err.wait_for("attach", Duration::from_secs(60), |l| {
                l.starts_with("Attaching")
            })?;
            Some(p)
        }
        None => None,
    };
    let wrk = |d: &str| -> Result<String> {
        let (status, out, err) = capture(
            Command::new("wrk").args([
                "-t2",
                "-c32",
                "-d",
                d,
                "--latency",
                "--timeout",
                "2s",
                &url,
            ]),
            "wrk",
            Duration::from_secs(secs as u64 + 60),
        )?;
        if !status.success() {
            bail!("wrk: {status}: {err}");
        }
        Ok(out)
    };
    // Warm-up: connections, the server's goroutines and the tracer's caches.
    let (_, _, warm_total) = parse_wrk(&wrk("1s")?)?;
    let out = wrk(&format!("{secs}s"))?;
    let (rps, p99_ms, total) = parse_wrk(&out)?;
    let (mut parks_per_req, mut lost) = (f64::NAN, f64::NAN);
    if let Some(p) = lt.as_mut() {
        p.stop(Duration::from_secs(60));
        let ev = last_report(&report)?;
        // The runtime's own parks (timers, GC) count too: a slight overestimate.
        parks_per_req = ev.park / (warm_total + total);
        lost = ev.lost;
    }
    server.stop(Duration::from_secs(10));
    Ok(HttpRun {
        rps,
        p99_ms,
        parks_per_req,
        lost,
    })
}

fn http_section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let mut cfgs: Vec<(String, Option<PathBuf>)> = vec![
        ("untraced".into(), None),
        ("leaktrace --pid".into(), Some(t.leaktrace.clone())),
    ];
    for (name, bin) in &t.candidates {
        cfgs.push((format!("{name} --pid"), Some(bin.clone())));
    }
    let mut runs: BTreeMap<usize, Vec<HttpRun>> = BTreeMap::new();
    for round in 0..plan.runs {
        for (i, (name, tracer)) in cfgs.iter().enumerate() {
            eprintln!("bench: http round {}/{}: {name}", round + 1, plan.runs);
            match http_once(t, tracer.as_deref(), plan.http_secs) {
                Ok(r) => runs.entry(i).or_default().push(r),
                Err(e) => eprintln!("bench: http {name}: {e:#}"),
            }
        }
    }
    let col = |i: usize, f: fn(&HttpRun) -> f64| -> Vec<f64> {
        runs.get(&i)
            .map(|v| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    let base_rps = median(&col(0, |r| r.rps));
    let base_p99 = median(&col(0, |r| r.p99_ms));
    let rows: Vec<Vec<String>> = cfgs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let rps = median(&col(i, |r| r.rps));
            let p99 = median(&col(i, |r| r.p99_ms));
            vec![
                name.clone(),
                format!("{}", runs.get(&i).map_or(0, Vec::len)),
                fmt_med(&col(i, |r| r.rps), 0),
                ratio(rps, base_rps),
                fmt_med(&col(i, |r| r.p99_ms), 2),
                ratio(p99, base_p99),
                {
                    let p = median(&col(i, |r| r.parks_per_req));
                    if p.is_nan() {
                        "–".into()
                    } else {
                        format!("{p:.2}")
                    }
                },
                {
                    let l = median(&col(i, |r| r.lost));
                    if l.is_nan() {
                        "–".into()
                    } else {
                        format!("{l:.0}")
                    }
                },
            ]
        })
        .collect();
    md.h2("2. Service: a Go HTTP server under load");
    md.line(&format!(
        "bench/http (net/http, a small JSON handler) on 127.0.0.1, driven by `wrk -t2 -c32 \
         -d{}s --latency` after a 1 s warm-up; leaktrace attaches by pid before the warm-up and \
         stays attached. wrk shares the 2 CPUs with the server (and the tracer), as a loopback \
         test must.",
        plan.http_secs
    ));
    md.table(
        &[
            "configuration",
            "runs",
            "requests/s",
            "× untraced",
            "p99 latency (ms)",
            "× untraced",
            "parks per request",
            "events lost",
        ],
        &rows,
    );
    Ok(())
}

// ------------------------------------------------------------ 3. throughput

struct TpRun {
    goroutines_per_s: f64,
    lost: f64,
    delivered: f64,
    time: TimeReport,
}

/// One throughput case: goroutines/s asked (0: unpaced), extra parked
/// goroutines, and how long leaktrace is stopped mid-run (a reader that
/// falls behind, e.g. descheduled on a loaded host).
#[derive(Clone, Copy)]
struct TpCase {
    rate: u64,
    live: u64,
    stall: Duration,
}

fn throughput_once(t: &Tools, bin: &Path, case: TpCase, secs: u32) -> Result<TpRun> {
    let TpCase { rate, live, stall } = case;
    let mut churn = Proc::spawn(
        Command::new(&t.churn).args([
            "-wait",
            "-par",
            "2",
            "-rate",
            &rate.to_string(),
            "-for",
            &format!("{secs}s"),
            "-live",
            &live.to_string(),
        ]),
        "churn -wait",
    )?;
    churn
        .out
        .wait_for("ready", Duration::from_secs(60), |l| l == "ready")?;
    let report = t.scratch.join("tp-report.jsonl");
    let time_file = t.scratch.join("tp-time.txt");
    let _ = std::fs::remove_file(&report);
    let mut lt = Proc::spawn(
        timed(bin, &time_file)
            .args(["--format", "json", "--output"])
            .arg(&report)
            .args(["--pid", &churn.pid().to_string()]),
        "leaktrace --pid churn",
    )?;
    lt.err.wait_for("attach", Duration::from_secs(120), |l| {
        l.starts_with("Attaching")
    })?;
    sleep(Duration::from_millis(500));
    churn.send_line("go")?;
    if !stall.is_zero() {
        sleep(Duration::from_millis(500));
        let pid = only_child(lt.pid()).context("leaktrace's pid under /usr/bin/time")?;
        signal(pid, "STOP");
        sleep(stall);
        signal(pid, "CONT");
    }
    churn.wait(Duration::from_secs(secs as u64 + 120))?;
    let out = churn.out.drain(Duration::from_secs(5));
    // leaktrace ends by itself when its target exits.
    lt.wait(Duration::from_secs(300))?;
    let ev = last_report(&report)?;
    Ok(TpRun {
        goroutines_per_s: num_after(&out, "goroutines_per_s ").unwrap_or(f64::NAN),
        lost: ev.lost,
        delivered: ev.delivered(),
        time: read_time(&time_file)?,
    })
}

fn throughput_section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    let mut bins: Vec<(String, PathBuf)> = vec![("leaktrace".into(), t.leaktrace.clone())];
    bins.extend(t.candidates.iter().cloned());
    let case = |rate, live, stall| TpCase { rate, live, stall };
    let mut cases: Vec<TpCase> = plan
        .tp_rates
        .iter()
        .map(|&r| case(r, 0, Duration::ZERO))
        .collect();
    cases.extend(plan.tp_live.iter().map(|&l| case(0, l, Duration::ZERO)));
    cases.extend(plan.tp_stalls.iter().map(|&s| case(0, 0, s)));
    let mut runs: BTreeMap<(usize, usize), Vec<TpRun>> = BTreeMap::new();
    for round in 0..plan.tp_runs {
        for (c, &k) in cases.iter().enumerate() {
            for (b, (name, bin)) in bins.iter().enumerate() {
                eprintln!(
                    "bench: throughput round {}/{}: {name}, rate {}/s, live {}, stall {:?}",
                    round + 1,
                    plan.tp_runs,
                    k.rate,
                    k.live,
                    k.stall
                );
                match throughput_once(t, bin, k, plan.tp_secs) {
                    Ok(r) => runs.entry((c, b)).or_default().push(r),
                    Err(e) => eprintln!("bench: throughput {name}: {e:#}"),
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut best_clean: Vec<f64> = vec![0.0; bins.len()];
    let mut worst_rss: Vec<f64> = vec![0.0; bins.len()];
    for (c, k) in cases.iter().enumerate() {
        for (b, (name, _)) in bins.iter().enumerate() {
            let Some(v) = runs.get(&(c, b)) else { continue };
            let g = median(&v.iter().map(|r| r.goroutines_per_s).collect::<Vec<_>>());
            let lost = median(&v.iter().map(|r| r.lost).collect::<Vec<_>>());
            let delivered = median(&v.iter().map(|r| r.delivered).collect::<Vec<_>>());
            let rss = median(&v.iter().map(|r| r.time.maxrss_kb).collect::<Vec<_>>()) / 1024.0;
            let cpu = median(
                &v.iter()
                    .map(|r| 100.0 * r.time.cpu_s / r.time.wall_s.max(0.01))
                    .collect::<Vec<_>>(),
            );
            let vcs = median(&v.iter().map(|r| r.time.vcs).collect::<Vec<_>>());
            if k.stall.is_zero() && v.iter().all(|r| r.lost == 0.0) {
                best_clean[b] = best_clean[b].max(3.0 * g);
            }
            worst_rss[b] = worst_rss[b].max(rss);
            rows.push(vec![
                name.clone(),
                if k.rate == 0 {
                    "unpaced".into()
                } else {
                    format!("{}", k.rate)
                },
                format!("{}", k.live),
                if k.stall.is_zero() {
                    "–".into()
                } else {
                    format!("{:.1} s", k.stall.as_secs_f64())
                },
                format!("{}", v.len()),
                format!("{g:.0}"),
                format!("{:.0}", 3.0 * g),
                format!("{lost:.0}"),
                format!("{:.1} %", 100.0 * lost / (lost + delivered).max(1.0)),
                format!("{rss:.0}"),
                format!("{cpu:.0} %"),
                format!("{vcs:.0}"),
            ]);
        }
    }
    md.h2("3. Event throughput");
    md.line(&format!(
        "bench/churn with 2 workers (`-par 2`) at a paced rate for {} s, leaktrace attached by \
         pid (under GNU time for its own CPU and peak RSS) before the load starts. Events \
         offered = 3 × goroutines/s achieved (the probes themselves slow the program, so an \
         unpaced run finds the most the traced program can produce: on 2 CPUs the probes' \
         cost caps the rate before leaktrace's reader does). Rows with live > 0 keep that many \
         extra goroutines parked during the run, which leaktrace keeps re-reading. Rows with a \
         stall stop leaktrace (SIGSTOP) for that long, 0.5 s into the load, then let it go on: \
         what happens when the reader falls behind the {} KiB ring (~{} records).",
        plan.tp_secs,
        RING_KIB,
        RING_KIB * 1024 / 64
    ));
    md.table(
        &[
            "binary",
            "goroutines/s asked",
            "parked live",
            "reader stalled",
            "runs",
            "goroutines/s achieved",
            "events/s offered",
            "events lost",
            "lost %",
            "leaktrace peak RSS (MiB)",
            "leaktrace CPU",
            "leaktrace voluntary context switches",
        ],
        &rows,
    );
    for (b, (name, _)) in bins.iter().enumerate() {
        md.line(&format!(
            "{name}: highest rate with 0 events lost in every run without a stall: {:.0} \
             events/s (the most this machine's traced program offered); largest peak RSS in \
             this section: {:.0} MiB.",
            best_clean[b], worst_rss[b]
        ));
    }
    Ok(())
}

// ------------------------------------------------------------ 4/5. attach and memory

struct AttachRun {
    attach_s: f64,
    first_report_s: f64,
    total_s: f64,
    time: TimeReport,
    live: f64,
}

/// Attach to `pid` and take two reports 100 ms apart (the first one needs
/// the snapshot and one full read of every goroutine).
fn attach_once(t: &Tools, pid: u32, label: &str) -> Result<AttachRun> {
    trace_once(t, pid, label, &["--interval", "100ms", "--count", "2"])
}

/// Run leaktrace on `pid` with `args` until it exits by itself; when it
/// attached and when its first report appeared.
fn trace_once(t: &Tools, pid: u32, label: &str, args: &[&str]) -> Result<AttachRun> {
    let report = t.scratch.join("attach-report.jsonl");
    let time_file = t.scratch.join("attach-time.txt");
    let _ = std::fs::remove_file(&report);
    let t0 = Instant::now();
    let mut lt = Proc::spawn(
        timed(&t.leaktrace, &time_file)
            .args(["--format", "json", "--output"])
            .arg(&report)
            .args(["--pid", &pid.to_string()])
            .args(args),
        label,
    )?;
    let (attached, _) = lt.err.wait_for("attach", Duration::from_secs(300), |l| {
        l.starts_with("Attaching")
    })?;
    let first = loop {
        if std::fs::read(&report).is_ok_and(|b| b.contains(&b'\n')) {
            break Instant::now();
        }
        if let Some(s) = lt.child.try_wait()? {
            bail!(
                "leaktrace exited ({s}) before its first report: {}",
                lt.err.tail()
            );
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("no report within 600 s");
        }
        sleep(Duration::from_millis(2));
    };
    lt.wait(Duration::from_secs(600))?;
    let total_s = t0.elapsed().as_secs_f64();
    let ev = last_report(&report)?;
    Ok(AttachRun {
        attach_s: (attached - t0).as_secs_f64(),
        first_report_s: (first - t0).as_secs_f64(),
        total_s,
        time: read_time(&time_file)?,
        live: ev.live,
    })
}

fn chan_send(t: &Tools, n: u64) -> Result<Proc> {
    let mut p = Proc::spawn(
        Command::new(&t.chan_send).args(["-n", &n.to_string(), "-hold", "900s"]),
        "chan_send",
    )?;
    // The ground-truth block (a stop-the-world goroutine profile) comes
    // ~300 ms after the leak; wait for it so it cannot overlap a measurement.
    p.out
        .wait_for("chan_send's truth block", Duration::from_secs(300), |l| {
            l == "--- end ---"
        })?;
    Ok(p)
}

struct Gap {
    window_ms: f64,
    max_gap_ms: f64,
    /// When the largest gap ended, from the window's start.
    max_gap_end_ms: f64,
}

fn roll(p: &mut Proc) -> Result<Gap> {
    p.send_line("")?;
    let (_, l) = p
        .out
        .wait_for("a ticker window", Duration::from_secs(30), |l| {
            l.starts_with("window_ms")
        })?;
    Ok(Gap {
        window_ms: num_after(&l, "window_ms ").unwrap_or(f64::NAN),
        max_gap_ms: num_after(&l, "max_gap_us ").unwrap_or(f64::NAN) / 1000.0,
        max_gap_end_ms: num_after(&l, "max_gap_end_ms ").unwrap_or(f64::NAN),
    })
}

/// One traced window (attach, snapshot, two reports) and one equally long
/// untraced window right after it, on a ticker holding `n` goroutines.
fn ticker_once(t: &Tools, ticker: &mut Proc, args: &[&str]) -> Result<(Gap, Gap, AttachRun)> {
    roll(ticker)?;
    let run = trace_once(t, ticker.pid(), "leaktrace --pid bench/ticker", args)?;
    let traced = roll(ticker)?;
    sleep(Duration::from_secs_f64(traced.window_ms / 1000.0));
    let quiet = roll(ticker)?;
    Ok((traced, quiet, run))
}

/// Which part of leaktrace's run each traced window's largest gap
/// overlapped, counted (the window starts a few ms before leaktrace does).
fn gap_phases<'a>(runs: impl Iterator<Item = (&'a Gap, &'a AttachRun)>) -> String {
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for (g, r) in runs {
        let end = g.max_gap_end_ms / 1000.0;
        let start = end - g.max_gap_ms / 1000.0;
        // The final report and the probes' detach take its last moments.
        let exit_from = r.total_s - 0.2;
        let phase = if end <= r.attach_s {
            "a. start-up (reading the binary, attaching the probes)"
        } else if start >= exit_from {
            "d. its last 200 ms (final read and report, detaching the probes, exit)"
        } else if start >= r.first_report_s {
            "c. after the first report"
        } else if start >= r.attach_s {
            "b. attached, until the first report (snapshot, first full read)"
        } else {
            "a-b. across the attach"
        };
        *phases.entry(phase).or_default() += 1;
    }
    if phases.is_empty() {
        return "–".into();
    }
    phases
        .iter()
        .map(|(p, n)| format!("{p}: {n}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// leaktrace's ring buffer (leaktrace-common's RING_BYTES), for the text;
/// a record is 64 bytes with the ring's header.
const RING_KIB: u64 = 8 * 1024;

/// How long leaktrace traces in the steady-state runs.
const STEADY: &str = "6s";

/// Peak RSS (KiB) of leaktrace at 100 goroutines and at the large count,
/// and how many runs the latter is the median of: measured by the attach
/// section, reused by the memory section.
type AttachRss = Option<(f64, f64, usize)>;

fn attach_section(md: &mut Markdown, plan: &Plan, t: &Tools, rss: &mut AttachRss) -> Result<()> {
    let n = plan.attach_goroutines;
    let mut big = Proc::spawn(&mut Command::new(&t.big), "bench/big")?;
    big.out
        .wait_for("ready", Duration::from_secs(30), |l| l.starts_with("ready"))?;
    let mut small = chan_send(t, 100)?;
    let mut many = chan_send(t, n)?;
    let mut ticker = Proc::spawn(
        Command::new(&t.ticker).args(["-n", &n.to_string()]),
        "bench/ticker",
    )?;
    ticker
        .out
        .wait_for("ready", Duration::from_secs(120), |l| {
            l.starts_with("ready")
        })?;
    sleep(Duration::from_secs(1));

    let targets: [(&str, u32); 3] = [
        ("bench/big (large binary, idle)", big.pid()),
        ("chan_send -n 100", small.pid()),
        ("chan_send -n 100000", many.pid()),
    ];
    let mut runs: BTreeMap<usize, Vec<AttachRun>> = BTreeMap::new();
    let mut gaps: Vec<(Gap, Gap)> = Vec::new();
    let mut ticker_runs = Vec::new();
    // (attached, first report) in seconds from leaktrace's start, per ticker run.
    let mut steady: Vec<(Gap, Gap, AttachRun)> = Vec::new();
    for round in 0..plan.runs {
        for (i, (name, pid)) in targets.iter().enumerate() {
            eprintln!("bench: attach round {}/{}: {name}", round + 1, plan.runs);
            match attach_once(t, *pid, name) {
                Ok(r) => runs.entry(i).or_default().push(r),
                Err(e) => eprintln!("bench: attach {name}: {e:#}"),
            }
        }
        eprintln!("bench: attach round {}/{}: ticker", round + 1, plan.runs);
        match ticker_once(t, &mut ticker, &["--interval", "100ms", "--count", "2"]) {
            Ok((a, b, r)) => {
                gaps.push((a, b));
                ticker_runs.push(r);
            }
            Err(e) => eprintln!("bench: ticker: {e:#}"),
        }
        eprintln!(
            "bench: attach round {}/{}: ticker, steady",
            round + 1,
            plan.runs
        );
        match ticker_once(t, &mut ticker, &["--duration", STEADY]) {
            Ok((a, b, r)) => steady.push((a, b, r)),
            Err(e) => eprintln!("bench: ticker, steady: {e:#}"),
        }
    }
    big.stop(Duration::from_secs(10));
    small.stop(Duration::from_secs(10));
    many.stop(Duration::from_secs(30));
    ticker.stdin = None;
    ticker.stop(Duration::from_secs(30));

    let big_mb = std::fs::metadata(&t.big)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(f64::NAN);
    let mut all: Vec<(String, Vec<AttachRun>)> = targets
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.to_string(), runs.remove(&i).unwrap_or_default()))
        .collect();
    let phases = gap_phases(gaps.iter().map(|g| &g.0).zip(&ticker_runs));
    all.push((format!("bench/ticker -n {n}"), ticker_runs));
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(name, v)| {
            let f = |g: fn(&AttachRun) -> f64| v.iter().map(g).collect::<Vec<_>>();
            vec![
                name.clone(),
                format!("{}", v.len()),
                fmt_med(&f(|r| r.attach_s), 2),
                fmt_med(&f(|r| r.first_report_s), 2),
                fmt_med(&f(|r| r.total_s), 2),
                fmt_med(&f(|r| r.time.cpu_s), 2),
                fmt_med(&f(|r| r.time.maxrss_kb / 1024.0), 0),
                format!("{:.0}", median(&f(|r| r.live))),
            ]
        })
        .collect();
    md.h2("4. Attach and snapshot");
    md.line(&format!(
        "`leaktrace --pid PID --interval 100ms --count 2` on a running process: \"attached\" is \
         when it prints `Attaching` (binary read, probes attached), \"first report\" when its \
         first report is in the output file (after the snapshot of runtime.allgs and one full \
         read of every goroutine; 100 ms of it is the report interval), \"done\" when it has \
         written the final report and exited. The large binary is {big_mb:.1} MB ({}), with \
         DWARF.",
        if plan.generated_big {
            "bench/big plus 24,000 generated methods"
        } else {
            "bench/big alone: the standard-library-only version, used by --quick; the full run \
             uses one over 50 MB"
        }
    ));
    md.table(
        &[
            "target",
            "runs",
            "attached (s)",
            "first report (s)",
            "done (s)",
            "leaktrace CPU (s)",
            "leaktrace peak RSS (MiB)",
            "live goroutines reported",
        ],
        &rows,
    );
    let traced: Vec<f64> = gaps.iter().map(|g| g.0.max_gap_ms).collect();
    let quiet: Vec<f64> = gaps.iter().map(|g| g.1.max_gap_ms).collect();
    let window: Vec<f64> = gaps.iter().map(|g| g.0.window_ms / 1000.0).collect();
    md.line(&format!(
        "Is the target paused? bench/ticker holds {n} parked goroutines and ticks every 1 ms. \
         Largest gap between two ticks while leaktrace attached, snapshotted and reported \
         (windows of {} s): {} ms; in an equally long window right after, untraced: {} ms \
         (ratio {}). A 1 ms ticker in this VM normally shows gaps of a few ms.",
        fmt_med(&window, 1),
        fmt_med(&traced, 1),
        fmt_med(&quiet, 1),
        ratio(median(&traced), median(&quiet)),
    ));
    md.line(&format!(
        "Where the largest traced gap fell, per run: {phases}. (A gap is not necessarily a \
         pause by leaktrace: on 2 busy CPUs its own CPU use delays the ticker's thread too.)"
    ));
    let f = |g: fn(&(Gap, Gap, AttachRun)) -> f64| steady.iter().map(g).collect::<Vec<_>>();
    md.line(&format!(
        "Steady tracing with default settings (`--pid PID --duration {STEADY}`) of the same \
         ticker holding {n} goroutines, {} runs: leaktrace used {} % of one CPU (CPU time ÷ \
         wall time, attach included), peak RSS {} MiB; the ticker's largest gap was {} ms \
         traced vs {} ms in an equally long untraced window right after. Where the largest \
         traced gap fell, per run: {}.",
        steady.len(),
        fmt_med(
            &f(|s| 100.0 * s.2.time.cpu_s / s.2.time.wall_s.max(0.01)),
            0
        ),
        fmt_med(&f(|s| s.2.time.maxrss_kb / 1024.0), 0),
        fmt_med(&f(|s| s.0.max_gap_ms), 1),
        fmt_med(&f(|s| s.1.max_gap_ms), 1),
        gap_phases(steady.iter().map(|s| (&s.0, &s.2))),
    ));
    // Kept for the memory section.
    let small_rss = median(
        &all[1]
            .1
            .iter()
            .map(|r| r.time.maxrss_kb)
            .collect::<Vec<_>>(),
    );
    let many_rss = median(
        &all[2]
            .1
            .iter()
            .map(|r| r.time.maxrss_kb)
            .collect::<Vec<_>>(),
    );
    *rss = Some((small_rss, many_rss, all[2].1.len()));
    Ok(())
}

fn memory_section(md: &mut Markdown, plan: &Plan, t: &Tools, rss: AttachRss) -> Result<()> {
    let n = plan.attach_goroutines;
    let (small_rss, many_rss, many_runs) = match rss {
        Some(v) => v,
        None => {
            let mut small = chan_send(t, 100)?;
            let s = attach_once(t, small.pid(), "leaktrace --pid chan_send")?;
            small.stop(Duration::from_secs(10));
            let mut many = chan_send(t, n)?;
            let m = attach_once(t, many.pid(), "leaktrace --pid chan_send")?;
            many.stop(Duration::from_secs(30));
            (s.time.maxrss_kb, m.time.maxrss_kb, 1)
        }
    };
    let per = |rss_kb: f64, count: u64| (rss_kb - small_rss) * 1024.0 / count as f64;
    let mut rows = vec![
        vec![
            "100".into(),
            format!("{:.0}", small_rss / 1024.0),
            "–".into(),
            "baseline".into(),
        ],
        vec![
            format!("{n}"),
            format!("{:.0}", many_rss / 1024.0),
            format!("{:.0}", per(many_rss, n)),
            format!("median of {many_runs} (section 4)"),
        ],
    ];
    let mut note = String::new();
    if plan.one_million {
        let m = 1_000_000;
        eprintln!("bench: memory: chan_send -n {m} (takes a few minutes)");
        let r = (|| -> Result<(AttachRun, f64)> {
            let mut p = chan_send(t, m)?;
            let target_rss = std::fs::read_to_string(format!("/proc/{}/status", p.pid()))
                .ok()
                .and_then(|s| num_after(&s, "VmRSS:"))
                .unwrap_or(f64::NAN);
            let r = attach_once(t, p.pid(), "leaktrace --pid chan_send -n 1000000");
            p.stop(Duration::from_secs(60));
            Ok((r?, target_rss))
        })();
        match r {
            Ok((r, target_rss)) => {
                rows.push(vec![
                    format!("{m}"),
                    format!("{:.0}", r.time.maxrss_kb / 1024.0),
                    format!("{:.0}", per(r.time.maxrss_kb, m)),
                    format!(
                        "1 run: first report after {:.1} s, done after {:.1} s, {:.1} s CPU; \
                         the target itself had {:.0} MiB RSS",
                        r.first_report_s,
                        r.total_s,
                        r.time.cpu_s,
                        target_rss / 1024.0
                    ),
                ]);
            }
            Err(e) => note = format!("The 1,000,000-goroutine run failed: {e:#}"),
        }
    } else {
        note = "1,000,000 goroutines: not run with --quick (the full run does it once).".into();
    }
    md.h2("5. Memory");
    md.line(
        "leaktrace's peak RSS (GNU time's maximum resident set size; leaktrace has no child in \
         --pid mode) for `--interval 100ms --count 2` on chan_send holding N leaked goroutines \
         (plus N finished ones), and the growth over the 100-goroutine baseline per goroutine.",
    );
    md.table(
        &[
            "live goroutines",
            "peak RSS (MiB)",
            "bytes per goroutine over baseline",
            "notes",
        ],
        &rows,
    );
    if !note.is_empty() {
        md.line(&note);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_wrk() {
        assert_eq!(
            num_after("ns_per_goroutine 504.6\n", "ns_per_goroutine "),
            Some(504.6)
        );
        assert_eq!(num_after("{\"lost\":12,", "\"lost\":"), Some(12.0));
        let wrk = "Running 1s test\n  Latency Distribution\n     50%  1.00ms\n     99%  850.00us\n  \
                   1234 requests in 1.00s, 1 MB read\nRequests/sec:   1234.50\n";
        let (rps, p99, total) = parse_wrk(wrk).unwrap();
        assert_eq!(rps, 1234.5);
        assert!((p99 - 0.85).abs() < 1e-9);
        assert_eq!(total, 1234.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn only_replaces_its_own_sections() {
        let full = "# leaktrace benchmarks\n\n## Machine and method\n\nm\n\n## 1. Churn\n\nold 1\n\n\
                    ## 4. Attach\n\nold 4\n\n## Load\n\nl\n";
        let chunks = [
            (Section::Churn, "## 1. Churn\n\nnew 1\n\n".to_string()),
            (Section::Tokio, "## 6. Tokio\n\nnew 6\n\n".to_string()),
            (Section::Http, "## 2. Http\n\nnew 2\n\n".to_string()),
        ];
        assert_eq!(
            splice_sections(full, &chunks, "_n_\n\n"),
            "# leaktrace benchmarks\n\n## Machine and method\n\nm\n\n## 1. Churn\n\nnew 1\n\n_n_\n\n\
             ## 2. Http\n\nnew 2\n\n_n_\n\n## 4. Attach\n\nold 4\n\n## 6. Tokio\n\nnew 6\n\n_n_\n\n\
             ## Load\n\nl\n"
        );
    }
}
