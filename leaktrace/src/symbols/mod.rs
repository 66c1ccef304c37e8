//! Address → function, file and line.
pub mod go;

use serde::Serialize;

/// One source-level frame (inlined calls are frames of their own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// As the Go runtime prints it, e.g. `main.(*Server).serve.func1`.
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl Frame {
    pub fn unknown(pc: u64) -> Self {
        Self {
            function: format!("{pc:#x}"),
            file: String::new(),
            line: 0,
        }
    }
}
