//! How long work runs: off the async executor, reporting its progress.
//! Below every other layer, so the engines and the API share it.

use crate::error::Result;

/// Receives progress of long operations (verify, gc, export, import), so
/// that a front end can draw a progress bar. Both methods default to nothing.
pub trait Progress: Send + Sync {
    /// The amount of work ahead (bytes or items, as the operation says).
    fn start(&self, _total: u64) {}
    /// Some of that work is done.
    fn advance(&self, _done: u64) {}
}

/// No progress reporting: pass `()` where a progress argument is asked.
impl Progress for () {}

/// A shared reporter reports through what it shares.
impl<P: Progress + ?Sized> Progress for std::sync::Arc<P> {
    fn start(&self, total: u64) {
        (**self).start(total);
    }

    fn advance(&self, done: u64) {
        (**self).advance(done);
    }
}

/// Runs blocking filesystem or database work off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
    }
}
