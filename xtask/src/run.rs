//! `cargo xtask run -- <leaktrace args>`: the development loop.
use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Arguments for leaktrace, after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(o: &Options) -> Result<()> {
    setup::run(&setup::Options::default())?;
    let bin = util::build_leaktrace()?;
    let status = util::as_root(&bin).args(&o.args).status()?;
    if !status.success() {
        bail!("leaktrace exited with {status}");
    }
    Ok(())
}
