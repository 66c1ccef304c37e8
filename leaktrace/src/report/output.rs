//! Where reports go, and in which form.
use std::io::Write;

use anyhow::Result;

use super::{json, model::Report, text, tui::Tui};

pub use text::TextStyle;

pub enum Form {
    Text(TextStyle),
    Json,
    /// `--tui`: a full-screen table, then the final report as text.
    Tui(Tui),
}

pub struct Output {
    out: Box<dyn Write>,
    form: Form,
}

impl Output {
    pub fn new(out: Box<dyn Write>, form: Form) -> Self {
        Self { out, form }
    }

    /// Write one report, flushed. A failure is an [`OutputFailed`]: the
    /// reader of a pipe went away, stdout was closed, the disk is full.
    pub fn write(&mut self, report: &Report) -> Result<(), OutputFailed> {
        match &mut self.form {
            Form::Json => json::write(self.out.as_mut(), report),
            Form::Text(style) => text::write(self.out.as_mut(), report, style),
            Form::Tui(tui) => tui.show(self.out.as_mut(), report),
        }
        .and_then(|()| Ok(self.out.flush()?))
        .map_err(OutputFailed)
    }
}

/// The report output cannot be written any more. leaktrace then stops
/// tracing (detaching everything) and exits with `cli::EXIT_OUTPUT_FAILED`.
#[derive(Debug)]
pub struct OutputFailed(pub anyhow::Error);

impl std::fmt::Display for OutputFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing the report failed: {:#}", self.0)
    }
}

impl std::error::Error for OutputFailed {}
