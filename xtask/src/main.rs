//! Developer tasks: `cargo xtask setup | run | demo | test | bench | fuzz`.
//!
//! Every task runs the setup steps it needs, so on a fresh machine
//! `cargo xtask demo` and `cargo xtask test` do everything.
mod bench;
mod demo;
mod fuzz;
mod run;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "leaktrace development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, bpf-linker, Go toolchains). Idempotent.
    Setup(setup::Options),
    /// Build everything and run leaktrace as root: `cargo xtask run -- --pid 1234`.
    Run(run::Options),
    /// Build and start a bundled leaking Go service, trace it, print the report.
    Demo(demo::Options),
    /// Lints, unit tests and end-to-end tests that attach real probes to real processes.
    Test(test::Options),
    /// Measure what leaktrace costs the traced process (writes bench/RESULTS.md).
    Bench(bench::Options),
    /// Fuzz every parser of untrusted bytes (cargo-fuzz, nightly): 600 s per target, `--smoke` 30 s.
    Fuzz(fuzz::Options),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup(o) => setup::run(&o).map(|_| ()),
        Task::Run(o) => run::run(&o),
        Task::Demo(o) => demo::run(&o),
        Task::Test(o) => test::run(&o),
        Task::Bench(o) => bench::run(&o),
        Task::Fuzz(o) => fuzz::run(&o),
    }
}
