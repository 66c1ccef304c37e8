//! `leaktrace`: parse the arguments, run a session, turn errors into
//! messages that name the fix, and exit with a meaningful code.
use std::{io::Write as _, path::Path, process::ExitCode};

use anyhow::{Result, bail};
use clap::Parser;
use leaktrace::{
    cli::{Args, EXIT_OUTPUT_FAILED},
    probes::tracefs,
    report::output::OutputFailed,
    runtime::{self, Options},
    session::{self, Launch, Target},
    target::{
        elf::ElfFile,
        host::{Cgroup, HostFilter},
        launch::{HeldChild, resolve},
        privileges::{ChildRights, Credentials, check_may_trace, check_privileges, refuse_setuid},
        process::{Process, check_kernel},
    },
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        // A closed output is said on stderr if that still works, and has
        // its own status, so `leaktrace … | head` is not taken for a failure
        // to trace.
        Err(e) if e.downcast_ref::<OutputFailed>().is_some() => {
            leaktrace::say!("leaktrace: {e:#}");
            ExitCode::from(EXIT_OUTPUT_FAILED as u8)
        }
        Err(e) => {
            leaktrace::say!("leaktrace: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<i32> {
    let options = session::runtime_options(args);
    if let Some(program) = &args.explain_probes {
        explain_probes(program, options)?;
        return Ok(0);
    }
    let creds = Credentials::current();
    refuse_setuid(&creds)?;
    let child_rights = ChildRights::for_caller(&creds);
    args.check_all_options().map_err(anyhow::Error::msg)?;
    // Everything that can be checked before touching the kernel is checked
    // first, so bad input fails fast and clearly.
    let launch = match (args.pid, args.command.first()) {
        _ if args.all => {
            let cgroup = args.cgroup.as_deref().map(Cgroup::resolve).transpose()?;
            check_privileges(&creds)?;
            check_kernel()?;
            Launch::All {
                filter: HostFilter {
                    cgroup,
                    exes: args.exes.clone(),
                    own_pid: std::process::id(),
                },
            }
        }
        (None, Some(cmd)) if args.follow => {
            let program = resolve(cmd)?;
            check_privileges(&creds)?;
            check_kernel()?;
            // Fork before any thread exists (the tokio runtime starts below).
            Launch::Follow {
                child: HeldChild::spawn(&program, &args.command, child_rights)?,
            }
        }
        (Some(pid), _) => {
            let proc = Process::open(pid)?;
            check_privileges(&creds)?;
            check_may_trace(&creds, pid)?;
            check_kernel()?;
            Launch::One {
                rt: runtime::open(&proc.exe_link, options)?,
                target: Target::Pid(proc),
            }
        }
        (None, Some(cmd)) => {
            let program = resolve(cmd)?;
            check_privileges(&creds)?;
            check_kernel()?;
            let rt = runtime::open(&program, options).map_err(|e| {
                e.context(format!(
                    "{} is not a Go or tokio program; to trace the Go or tokio programs it \
                     starts (a script, a wrapper, `go test`), add -f",
                    program.display()
                ))
            })?;
            // Fork before any thread exists (the tokio runtime starts below).
            let child = HeldChild::spawn(&program, &args.command, child_rights)?;
            Launch::One {
                rt,
                target: Target::Command(child),
            }
        }
        (None, None) => bail!("nothing to trace: give --pid PID, -c COMMAND or --all (see --help)"),
    };
    // While single-threaded: a tracefs leaktrace has to mount goes into a
    // mount namespace of its own (`probes/tracefs.rs`). A failure is said
    // where tracefs is needed (threads, execs).
    let _ = tracefs::ensure_mounted();
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = tokio_rt.block_on(session::run(args, launch));
    // Work a stop cut short (an attach, a read of the tasks) may still run
    // on a blocking thread: leaktrace does not wait for it. Its exit ends it,
    // and the kernel detaches the probes of a process that is gone.
    tokio_rt.shutdown_background();
    result
}

/// `--explain-probes`: the probe plan of a program, as JSON on stdout.
fn explain_probes(program: &Path, options: Options) -> Result<()> {
    let rt = runtime::open(program, options)?;
    let elf = ElfFile::open(program)?;
    let probes: Vec<serde_json::Value> = rt
        .plan()?
        .into_iter()
        .map(|p| {
            let symbol = p.function.clone().or_else(|| {
                elf.function_containing(p.point.va)
                    .map(|(name, entry)| (name.to_string(), entry))
            });
            serde_json::json!({
                "program": p.program,
                "event": p.event,
                "symbol": symbol.as_ref().map(|(name, _)| name),
                "symbol_offset": symbol.as_ref().map(|(_, entry)| p.point.va - entry),
                "va": p.point.va,
                "file_offset": p.point.file_offset,
                "cookie": p.point.cookie,
                "what": p.point.what,
            })
        })
        .collect();
    let listing = serde_json::json!({
        "runtime": rt.kind().name,
        "runtime_version": rt.describe().version,
        "probes": probes,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{listing}")
        .and_then(|()| out.flush())
        .map_err(|e| OutputFailed(e.into()))?;
    Ok(())
}
