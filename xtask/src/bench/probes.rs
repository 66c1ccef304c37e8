//! Where leaktrace probes a program, in its own words: `leaktrace
//! --explain-probes PROGRAM` prints the points it would attach to (no root
//! needed, no process started) as one JSON object. The benchmark compares
//! leaktrace with bpftrace at exactly those points; finding them again by
//! other means (disassembling the runtime) would go on measuring the old
//! points, silently, once leaktrace moved one.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::proc::capture;

/// What `--explain-probes` prints.
#[derive(Debug, Deserialize)]
pub(super) struct Listing {
    /// `go`, or `rust-tokio` for a tokio program.
    pub(super) runtime: String,
    /// e.g. `go1.22.10`.
    pub(super) runtime_version: Option<String>,
    pub(super) probes: Vec<Probe>,
}

/// One probe point. Its `cookie` is not read.
#[derive(Debug, Deserialize)]
pub(super) struct Probe {
    /// What it reports: `spawn`, `park`, `exit` (Go); `spawn`, `complete`,
    /// `shutdown`, `poll`, `wake` (tokio).
    pub(super) event: Option<String>,
    /// The eBPF program attached there: `go_spawn`, `go_park`, `go_exit`,
    /// or `tokio_task`.
    pub(super) program: String,
    /// The function it is in and the offset in it (null when stripped).
    pub(super) symbol: Option<String>,
    pub(super) symbol_offset: Option<u64>,
    /// The link-time virtual address, and where that is in the file.
    pub(super) va: u64,
    pub(super) file_offset: u64,
    /// For people: `runtime.newproc1+0x7b (CALL runtime.casgstatus)`.
    pub(super) what: Option<String>,
}

impl Probe {
    /// `what`, or failing that the symbol and offset, or the address.
    pub(super) fn describe(&self) -> String {
        match (&self.what, &self.symbol) {
            (Some(w), _) => w.clone(),
            (None, Some(s)) => format!("{s}+{:#x}", self.symbol_offset.unwrap_or(0)),
            (None, None) => format!("{:#x}", self.va),
        }
    }
}

/// The points the leaktrace binary `leaktrace` would probe in `program`
/// with these options (e.g. `--detailed`; none: its default mode).
pub(super) fn explain_with(leaktrace: &Path, program: &Path, options: &[&str]) -> Result<Listing> {
    let (status, out, err) = capture(
        Command::new(leaktrace)
            .args(options)
            .arg("--explain-probes")
            .arg(program),
        "leaktrace --explain-probes",
        // It reads the binary (DWARF included) and nothing else.
        Duration::from_secs(120),
    )?;
    if !status.success() {
        if unknown_flag(&err) {
            bail!(
                "{} does not know --explain-probes, which the benchmark needs to learn where \
                 leaktrace probes (bpftrace is measured at the same points): build a leaktrace \
                 that has it. leaktrace said: {}",
                leaktrace.display(),
                err.trim()
            );
        }
        bail!(
            "`{} --explain-probes {}` failed ({status}): {}",
            leaktrace.display(),
            program.display(),
            err.trim()
        );
    }
    parse(&out).with_context(|| {
        format!(
            "`{} --explain-probes {}` printed no probe listing",
            leaktrace.display(),
            program.display()
        )
    })
}

/// Whether leaktrace's error says it has no such flag (clap's wording).
fn unknown_flag(err: &str) -> bool {
    err.contains("--explain-probes")
        && ["unexpected argument", "wasn't expected", "unrecognized"]
            .iter()
            .any(|w| err.contains(w))
}

fn parse(out: &str) -> Result<Listing> {
    let listing: Listing = serde_json::from_str(out.trim()).with_context(|| {
        let head: String = out.chars().take(300).collect();
        format!("not the expected JSON object: {head:?}")
    })?;
    if listing.probes.is_empty() {
        bail!("no probes listed (runtime {})", listing.runtime);
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listing() {
        let l = parse(
            r#"{"runtime":"go","runtime_version":"go1.22.10","probes":[
              {"program":"go_spawn","event":"spawn","symbol":"runtime.newproc1","symbol_offset":123,
               "va":4567,"file_offset":890,"cookie":1,"what":"runtime.newproc1+0x7b (CALL runtime.casgstatus)"},
              {"program":"go_park","event":"park","symbol":null,"symbol_offset":null,
               "va":4660,"file_offset":900,"cookie":2}]}"#,
        )
        .unwrap();
        assert_eq!(l.runtime, "go");
        assert_eq!(l.runtime_version.as_deref(), Some("go1.22.10"));
        assert_eq!(l.probes.len(), 2);
        assert_eq!(
            l.probes[0].describe(),
            "runtime.newproc1+0x7b (CALL runtime.casgstatus)"
        );
        assert_eq!((l.probes[0].va, l.probes[0].file_offset), (4567, 890));
        assert_eq!(l.probes[1].describe(), "0x1234");
        assert!(parse("error: no such file").is_err());
        assert!(parse(r#"{"runtime":"go","probes":[]}"#).is_err());
    }

    #[test]
    fn knows_clap_rejecting_the_flag() {
        assert!(unknown_flag(
            "error: unexpected argument '--explain-probes' found\n\nUsage: leaktrace [OPTIONS]"
        ));
        assert!(!unknown_flag("--explain-probes: /x: No such file"));
    }
}
