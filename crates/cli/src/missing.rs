//! "Not there": a store, label, ref, actor or root the command names does
//! not exist. Scripts tell it from other failures by its exit status, 3.

use std::process::ExitCode;

use theater_store::StoreError;

/// The exit status for something named that does not exist.
pub const MISSING: u8 = 3;

/// Something the command named does not exist; the message says what.
#[derive(Debug)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Missing {}

/// The kind of a failed command's error, as `--json` reports it: the
/// store's own kind (`not-found`, `corrupted`, `invalid-ref`, ...) where
/// the store said, `not-found` for what the command named and is not
/// there, `failed` otherwise.
pub fn kind(error: &anyhow::Error) -> &'static str {
    for cause in error.chain() {
        if cause.is::<Missing>() {
            return theater_store::ErrorKind::NotFound.as_str();
        }
        if let Some(store) = cause.downcast_ref::<StoreError>() {
            return store.kind().as_str();
        }
    }
    "failed"
}

/// The exit status for a failed command: [`MISSING`] when what it named
/// is not there (its own [`Missing`], or content the store did not find),
/// 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    let missing = error.chain().any(|cause| {
        cause.is::<Missing>()
            || matches!(
                cause.downcast_ref::<StoreError>(),
                Some(StoreError::NotFound { .. })
            )
    });
    if missing {
        ExitCode::from(MISSING)
    } else {
        ExitCode::FAILURE
    }
}
