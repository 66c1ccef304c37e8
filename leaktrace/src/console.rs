//! Messages for the person at the terminal (stderr), which must never bring
//! leaktrace down: `eprintln!` panics when stderr is a closed pipe, and a
//! panic in the middle of a session would skip the final report and leave a
//! `-c` command untraced. A message that cannot be written is dropped.
use std::{fmt, io::Write};

/// One line on stderr; dropped if stderr is closed.
pub fn line(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Text without a newline (a progress line redrawn with `\r`); dropped if
/// stderr is closed.
pub fn partial(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{args}");
    let _ = err.flush();
}

/// `say!("…{x}")`: [`line`] with `format!` syntax.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::line(format_args!($($arg)*)) };
}

/// `say_partial!("…\r")`: [`partial`] with `format!` syntax.
#[macro_export]
macro_rules! say_partial {
    ($($arg:tt)*) => { $crate::console::partial(format_args!($($arg)*)) };
}
