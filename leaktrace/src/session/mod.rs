//! A tracing session: one process across the programs it executes
//! (`--pid`, `-c`; [`one`]) or a command and every Go or tokio program it
//! starts (`-f`), or every Go and tokio process on the host (`--all`;
//! [`agent`]). Each program is traced by the same loop ([`trace`]); this
//! module starts them, tells them when to stop (signals, `--duration`), and
//! turns their outcomes into leaktrace's exit status. Every way out ends
//! each trace with a final report and drops its probes, which detaches
//! them; an error drops them on its way out too.
mod agent;
mod execs;
mod exports;
mod follow;
mod one;
mod serve;
mod standin;
mod stops;
mod trace;
mod traces;
mod work;

use std::{cell::RefCell, fs::File, io::IsTerminal, rc::Rc};

use anyhow::{Context as _, Result};

pub use self::trace::Target;
use self::{
    stops::Signals,
    trace::{Ctx, Outcome, verdict_rank},
};
use crate::{
    aggregate::verdict::Verdict,
    cli::{Args, Color, EXIT_FAIL_ON, FailOn, Format},
    report::{
        output::{Form, Output, TextStyle},
        tui::Tui,
    },
    runtime::{Options, Runtime},
    symbols::debuginfo::Search,
    target::{host::HostFilter, launch::HeldChild},
};

/// What to trace.
pub enum Launch {
    /// One process, its runtime known.
    One {
        rt: Box<dyn Runtime>,
        target: Target,
    },
    /// `-f -c CMD`: the command (held before its exec) and its descendants.
    Follow { child: HeldChild },
    /// `--all`: every Go and tokio process the filter admits.
    All { filter: HostFilter },
}

/// The host agent's rings (`--all`): each traced process's events ring
/// and Go exit-walk ring, instead of 8 and 16 MiB. leaktrace maps them, so
/// they count in its RSS (twice: a ring's data pages are mapped twice).
const AGENT_RING_BYTES: u32 = 2 << 20;

/// Ring sizes other than the defaults, for `--all`'s budget.
fn ring_bytes(args: &Args) -> Option<u32> {
    args.all.then_some(AGENT_RING_BYTES)
}

/// How the runtimes are to open each program traced.
pub fn runtime_options(args: &Args) -> Options {
    Options {
        exit_ring_bytes: ring_bytes(args),
        detailed: args.detailed,
        debuginfo: Search::from_env(
            args.debuginfo.clone(),
            args.debug_dir.clone(),
            !args.follow && !args.all,
        ),
    }
}

pub async fn run(args: &Args, launch: Launch) -> Result<i32> {
    let exports = exports::Exports::new(args)?;
    if let Some(addr) = args.listen {
        serve::spawn(serve::bind(addr)?, exports.latest.clone());
    }
    let signals = Signals::new(args)?;
    let ctx = Rc::new(Ctx {
        args: args.clone(),
        out: RefCell::new(output(args)?),
        exports,
        deadline: signals.deadline,
        show_cmdline: !matches!(launch, Launch::One { .. }),
    });
    match launch {
        Launch::One { rt, target } => one::run(ctx, signals, rt, target).await,
        Launch::Follow { child } => {
            let local = tokio::task::LocalSet::new();
            local.run_until(follow::run(ctx, child, signals)).await
        }
        Launch::All { filter } => {
            let local = tokio::task::LocalSet::new();
            local.run_until(agent::run(ctx, signals, filter)).await
        }
    }
}

/// The command's own status, unless `--fail-on` matched a final report.
fn exit_code(args: &Args, status: i32, outcomes: &[Outcome]) -> i32 {
    let Some(fail_on) = args.fail_on else {
        return status;
    };
    let worst_allowed = match fail_on {
        FailOn::Leak => verdict_rank(Verdict::Leak),
        FailOn::Suspect => verdict_rank(Verdict::Suspect),
    };
    if outcomes
        .iter()
        .any(|o| verdict_rank(o.worst) <= worst_allowed)
    {
        EXIT_FAIL_ON
    } else {
        status
    }
}

fn output(args: &Args) -> Result<Output> {
    let out: Box<dyn std::io::Write> = match &args.output {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    let form = match args.format {
        _ if args.tui => Form::Tui(Tui::start(args.stacks)?),
        Format::Json => Form::Json,
        Format::Text => Form::Text(TextStyle {
            color: match args.color {
                Color::Always => true,
                Color::Never => false,
                Color::Auto => args.output.is_none() && std::io::stdout().is_terminal(),
            },
            stacks: args.stacks,
            trend: args.output.is_none() && std::io::stdout().is_terminal(),
        }),
    };
    Ok(Output::new(out, form))
}
