//! `leaktrace`: parse the arguments, run a session, turn errors into
//! messages that name the fix, and exit with a meaningful code.
use std::{path::Path, process::ExitCode};

use anyhow::{Result, bail};
use clap::Parser;
use leaktrace::{
    cli::Args,
    runtime::{
        go::binary::{GoBinary, InspectError},
        tokio::{binary::TokioError, tracer::TokioTracer},
    },
    session::{self, Runtime, Target},
    target::{
        launch::{HeldChild, resolve},
        process::{Process, check_kernel, check_privileges},
    },
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("leaktrace: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<i32> {
    // Everything that can be checked before touching the kernel is checked
    // first, so bad input fails fast and clearly.
    let (bin, target) = match (args.pid, args.command.first()) {
        (Some(pid), _) => {
            let proc = Process::open(pid)?;
            check_privileges()?;
            check_kernel()?;
            (inspect(&proc.exe_link)?, Target::Pid(proc))
        }
        (None, Some(cmd)) => {
            let program = resolve(cmd)?;
            check_privileges()?;
            check_kernel()?;
            let bin = inspect(&program)?;
            // Fork before any thread exists (the tokio runtime starts below).
            let child = HeldChild::spawn(&program, &args.command)?;
            (bin, Target::Command(child))
        }
        (None, None) => bail!("nothing to trace: give --pid PID or -c COMMAND (see --help)"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(session::run(args, bin, target))
}

/// Go or tokio? An error that says what the program is not, and why.
fn inspect(path: &Path) -> Result<Runtime> {
    match GoBinary::open(path) {
        Ok(bin) => Ok(Runtime::Go(Box::new(bin))),
        Err(go @ InspectError::NotGo { .. }) => match TokioTracer::open(path) {
            Ok(tracer) => Ok(Runtime::Tokio(Box::new(tracer))),
            Err(TokioError::NotTokio(why)) => bail!(
                "{go}; and not a tokio program either ({why}). leaktrace traces Go programs and \
                 Rust programs using tokio ≥ 1.23"
            ),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}
