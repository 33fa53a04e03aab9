//! Standard output for what commands print. A reader that stops early
//! (`theater-store labels s | head`) closes the pipe; the command then
//! stops quietly, as Unix tools do, where `println!` would panic.
//! `#![deny(clippy::print_stdout)]` in main.rs keeps every line here.

use std::fmt;
use std::io::{self, Write};

/// Prints one formatted line to standard output, or stops the process
/// quietly once its reader has gone (see the module).
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints formatted text to standard output with no newline, as
/// [`outln`] prints a line.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Writes `args` and a newline to standard output (see [`outln`]).
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(error) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        stop(error);
    }
}

/// Writes `args` to standard output (see [`out`]).
pub fn text(args: fmt::Arguments<'_>) {
    if let Err(error) = io::stdout().lock().write_fmt(args) {
        stop(error);
    }
}

/// Ends the process after `error` writing to standard output: with
/// status 0 and nothing said when the reader closed the pipe (it took
/// what it wanted), with the error otherwise. Nothing is lost: what a
/// command printed was already done, and a write in flight was never
/// acknowledged.
fn stop(error: io::Error) -> ! {
    if error.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to standard output: {error}");
    std::process::exit(1);
}

/// `n` and a noun, singular for one (`1 object`, `2 objects`).
pub fn count(n: impl Into<u64>, noun: &'static str) -> Counted {
    Counted { n: n.into(), noun }
}

/// What [`count`] returns, shown as `n noun` or `n nouns`.
pub struct Counted {
    n: u64,
    noun: &'static str,
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.n == 1 { "" } else { "s" };
        write!(f, "{} {}{plural}", self.n, self.noun)
    }
}
