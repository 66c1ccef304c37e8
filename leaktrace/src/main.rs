//! `leaktrace`: parse the arguments, run a session, turn errors into
//! messages that name the fix, and exit with a meaningful code.
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;
use leaktrace::{
    cli::Args,
    runtime::go::binary::GoBinary,
    session::{self, Target},
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
            (GoBinary::open(&proc.exe_link)?, Target::Pid(proc))
        }
        (None, Some(cmd)) => {
            let program = resolve(cmd)?;
            check_privileges()?;
            check_kernel()?;
            let bin = GoBinary::open(&program)?;
            // Fork before any thread exists (the tokio runtime starts below).
            let child = HeldChild::spawn(&program, &args.command)?;
            (bin, Target::Command(child))
        }
        (None, None) => bail!("nothing to trace: give --pid PID or -c COMMAND (see --help)"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(session::run(args, &bin, target))
}
