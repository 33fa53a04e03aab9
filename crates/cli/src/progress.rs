//! Progress bars on stderr, shown only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use theater_store::Progress;

/// A bar for one long operation; hidden when stderr is not a terminal.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar labelled `message`, counting bytes or items.
    pub fn new(message: &str, bytes: bool) -> Arc<Self> {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        let template = if bytes {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
        } else {
            "{msg} [{bar:30}] {pos}/{len}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.to_owned());
        Arc::new(Self(bar))
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }

    fn advance(&self, done: u64) {
        self.0.inc(done);
    }
}
