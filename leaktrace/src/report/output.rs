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

    pub fn write(&mut self, report: &Report) -> Result<()> {
        match &mut self.form {
            Form::Json => json::write(self.out.as_mut(), report),
            Form::Text(style) => text::write(self.out.as_mut(), report, style),
            Form::Tui(tui) => tui.show(self.out.as_mut(), report),
        }
    }
}
