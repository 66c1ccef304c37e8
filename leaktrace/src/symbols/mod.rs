//! Address → function, file and line, for native code (DWARF, `.symtab`,
//! `.eh_frame` unwinding). Go's pclntab lives with Go (`runtime::go::pclntab`).
pub mod debuginfo;
pub mod dwarf;
pub mod native;

use std::sync::Arc;

use serde::Serialize;

/// One source-level frame (inlined calls are frames of their own).
///
/// Strings are shared (`Arc<str>`): the same few frames appear in the view of
/// every one of possibly a million goroutines, so a clone must not allocate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frame {
    /// As the Go runtime prints it, e.g. `main.(*Server).serve.func1`.
    pub function: Arc<str>,
    pub file: Arc<str>,
    pub line: u32,
}

impl Frame {
    pub fn unknown(pc: u64) -> Self {
        Self {
            function: format!("{pc:#x}").into(),
            file: "".into(),
            line: 0,
        }
    }
}
