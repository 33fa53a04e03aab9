//! The durability steps of a write, recorded in unit tests so that their
//! order can be checked; in other builds recording compiles to nothing.

use std::path::PathBuf;

/// One step on the way from a staged write to its acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A staged file's contents were fsync'd.
    FileSynced(PathBuf),
    /// A staged file was renamed into place (from, to).
    Published(PathBuf, PathBuf),
    /// A directory was fsync'd.
    DirSynced(PathBuf),
    /// A write transaction committed.
    Committed,
    /// A caller was answered.
    Acknowledged,
}

/// Held by unit tests that write through a root, so that the one that
/// checks the recorded steps sees only its own.
#[cfg(test)]
pub(crate) static WRITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(test)]
pub(crate) static RECORDED: std::sync::Mutex<Vec<Step>> = std::sync::Mutex::new(Vec::new());

/// Records `step` (in unit tests only).
#[inline]
pub(crate) fn record(step: impl FnOnce() -> Step) {
    #[cfg(test)]
    RECORDED.lock().unwrap().push(step());
    #[cfg(not(test))]
    let _ = step;
}
