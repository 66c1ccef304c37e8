//! One JSON object per report, one per line (JSON Lines when periodic).
use std::io::Write;

use anyhow::Result;

use super::model::Report;

pub fn write(out: &mut dyn Write, report: &Report) -> Result<()> {
    serde_json::to_writer(&mut *out, report)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}
