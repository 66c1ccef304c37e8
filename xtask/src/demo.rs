//! `cargo xtask demo`: leaktrace's main job on a bundled leaking Go service.
//!
//! The demo service (tests/fixtures/go/demo) leaks a goroutine per request on
//! an unbuffered send nobody reads. We start it, let it leak for a moment,
//! attach by pid (the incident case: the leak is already there), and print
//! two reports; the last one names the leaking function and its wait reason.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// How long to trace.
    #[arg(long, default_value = "6s")]
    pub duration: String,
}

pub fn run(o: &Options) -> Result<()> {
    let installed = setup::run(&setup::Options::default())?;
    let bin = util::build_leaktrace()?;
    let go = installed
        .go
        .last()
        .context("no Go toolchain available for the demo")?;
    let demo = build_go_program(go, "demo")?;
    eprintln!("starting the demo service {}", demo.display());
    let mut service = Command::new(&demo)
        .args(["-leak-for", "60s", "-hold", "60s"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the demo service")?;
    sleep(Duration::from_secs(2));
    let result = util::as_root(&bin)
        .args([
            "--pid",
            &service.id().to_string(),
            "--duration",
            &o.duration,
        ])
        .args(["3", "--top", "4"])
        .status();
    let _ = service.kill();
    let _ = service.wait();
    let status = result?;
    if !status.success() {
        bail!("leaktrace exited with {status}");
    }
    Ok(())
}

/// Build `tests/fixtures/go/<name>` with `go`; the binary's path.
pub fn build_go_program(go: &Path, name: &str) -> Result<PathBuf> {
    let src = util::workspace_root().join("tests/fixtures/go");
    let out_dir = util::target_dir().join("xtask-go");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(name);
    let cache = util::target_dir().join("go-cache");
    util::run(
        Command::new(go)
            .current_dir(&src)
            .args(["build", "-o"])
            .arg(&out)
            .arg(format!("./{name}"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", cache.join("build"))
            .env("GOPATH", cache.join("path")),
    )?;
    Ok(out)
}
