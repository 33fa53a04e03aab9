//! A content-addressed store for Theater actors.
//!
//! Content is addressed by its BLAKE3 digest and stored once per store;
//! labels are mutable names that point at content. Many stores live under
//! one [`StoreRoot`] directory: small content inside its SQLite index,
//! larger content in files. This crate knows nothing of WebAssembly: the
//! wasm host (`theater-store-host`) and the command line build on it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), theater_store::StoreError> {
//! use theater_store::{ContentRef, StoreRoot};
//!
//! let root = StoreRoot::new("/tmp/example-root");
//! let store = root.store("my-store-id")?;
//! let content_ref = store.store_at_label("app:config", b"{\"debug\":true}".to_vec()).await?;
//! assert_eq!(store.get_by_label("app:config").await?, Some(content_ref.clone()));
//! assert_eq!(store.get(&ContentRef::new(content_ref.hash())).await?, b"{\"debug\":true}");
//! # Ok(()) }
//! ```
//!
//! See ARCHITECTURE.md for the on-disk layout and the durability model.

#![warn(missing_docs)]

mod chain;
mod cursor;
mod durability;
mod engine;
mod error;
mod feed;
mod links;
mod maintenance;
mod names;
mod options;
mod package;
mod past;
mod reach;
mod recent;
mod root;
mod stats;
mod store;
mod stream;
mod sync;
mod task;
mod tree;

pub use chain::{
    BrokenLink, ChainEntry, ChainEvent, ChainReport, Checkpoint, Event, EventChain,
    MAX_ACTOR_ID_BYTES, MAX_EVENT_BYTES, MAX_RECORDED_NAME_BYTES, Outcome, Record, TrimBefore,
    TrimReport, validate_actor_id,
};
pub use cursor::ChangeCursor;
pub use durability::Durability;
pub use error::{BoxError, ErrorKind, Result, StoreError};
pub use feed::{
    ChangePage, LabelChange, MAX_CHANGES_PAGE, OutageBackoff, Revert, Watch, through_outages,
};
pub use maintenance::{
    GcOptions, GcReport, IndexCheck, PrefixUsage, Quarantined, RECOVERED_PREFIX, ReindexReport,
    RemoveStoreReport, TEMP_FILE_STALE_AFTER, Unreachable, VerifyReport,
};
pub use names::{ContentRef, MAX_LABEL_BYTES, MAX_STORE_ID_BYTES, StoreId, validate_label};
pub use options::Options;
pub use package::{ImportConflict, ImportOptions, PACKAGE_MAGIC, PACKAGE_VERSION, PackageSummary};
pub use past::{PastView, Point};
pub use root::{ROOT_ENV_VAR, StoreRoot, StoreSummary};
pub use stats::{
    CHANGE_OVERHEAD_BYTES, InFlightWrites, LABEL_OVERHEAD_BYTES, OBJECT_OVERHEAD_BYTES, OverQuota,
    StoreQuota, StoreStats, change_footprint, label_footprint,
};
pub use store::{AtMost, ContentStore, LabelEntry, REFRESH_AFTER, Stored};
pub use stream::{ContentReader, ContentWriter, VerifiedPiece};
pub use sync::{SyncConflict, SyncOptions, SyncReport};
pub use task::Progress;
