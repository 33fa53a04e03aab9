//! [`HostError`]: why a host call refused or failed. The host works with
//! this type throughout and turns it into the WIT interface's error string
//! once, at the boundary (`From<HostError> for String`).

use std::time::Duration;

use theater_store::{ErrorKind, StoreError};

/// Why a store call made by an actor refused or failed. Every message
/// names the store, label, ref or limit concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The core store refused or failed (invalid input, not found, I/O...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store is granted read-only and the call writes.
    #[error(
        "access denied: store {store} is granted to this actor read-only, and this call writes"
    )]
    ReadOnly {
        /// The store.
        store: String,
    },
    /// The store was neither created by the actor nor granted to it.
    /// Stores an actor created stay its own across runs under the same
    /// actor id (its chain's); a run under another id, or with no chain,
    /// must be granted them.
    #[error(
        "access denied: store {store} was neither created by this actor nor granted to it \
         (a store stays its creator's across runs under the same actor id; otherwise grant it, \
         e.g. --grant {store})"
    )]
    NotGranted {
        /// The store.
        store: String,
    },
    /// Content passed to one call is over [`Limits::max_content_bytes`](crate::Limits).
    #[error("content of {size} bytes is over the limit of {limit} bytes per call (store {store})")]
    ContentTooLarge {
        /// The store written to.
        store: String,
        /// The content's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Content to be returned is larger than the actor may take in one call.
    #[error(
        "store {store}: content {reference} is {size} bytes, over the {limit} bytes one call \
         may return to this actor; read it through a reader or in ranges (`store-streams`)"
    )]
    ReadTooLarge {
        /// The store read from.
        store: String,
        /// The content's ref.
        reference: String,
        /// Its size.
        size: u64,
        /// The most one call may return.
        limit: u64,
    },
    /// A range read asks for more than the actor may take in one call.
    #[error(
        "store {store}: a range of {len} bytes of content {reference} was asked for, over the \
         {limit} bytes one call may return to this actor; read smaller ranges"
    )]
    RangeTooLarge {
        /// The store read from.
        store: String,
        /// The content's ref.
        reference: String,
        /// The length asked for.
        len: u64,
        /// The most one call may return.
        limit: u64,
    },
    /// The write would take the actor past its budget across all stores.
    #[error(
        "actor quota exceeded: this actor has added {added} bytes across its stores in this \
         run, the quota is {quota} bytes, and this call to store {store} adds {adds} bytes"
    )]
    ActorQuota {
        /// The store written to.
        store: String,
        /// What the actor has added so far.
        added: u64,
        /// Its budget.
        quota: u64,
        /// What the call would add.
        adds: u64,
    },
    /// The actor has created as many stores as one run may.
    #[error("this actor has created {created} stores, the most one run may create")]
    TooManyStores {
        /// How many it created.
        created: usize,
    },
    /// The actor holds as many open readers and writers as it may.
    #[error(
        "cannot open another stream on store {store}: this actor has {open} readers and \
         writers open, the most it may (finish or drop one first)"
    )]
    TooManyStreams {
        /// The store the new stream was for.
        store: String,
        /// Streams open now.
        open: usize,
        /// The limit ([`Limits::max_open_streams`](crate::Limits::max_open_streams)).
        limit: usize,
    },
    /// A listing would be longer than one call may return.
    #[error(
        "store {store} has too many {what} to list in one call (the limit is {max_entries} \
         entries and {max_bytes} bytes); list them page by page from the host \
         (`theater-store labels --limit N --after LAST`)"
    )]
    ListingTooLong {
        /// The store.
        store: String,
        /// "labels" or "objects".
        what: &'static str,
        /// The most entries one listing may return.
        max_entries: usize,
        /// The most bytes one listing may return.
        max_bytes: usize,
    },
    /// A batch call carries more keys or bytes than one call may.
    #[error(
        "store {store}: this batch carries {amount} {what}, over the limit of {limit} per call"
    )]
    BatchTooLarge {
        /// The store (bucket).
        store: String,
        /// "keys" (keys or labels) or "bytes".
        what: &'static str,
        /// How many it carries.
        amount: u64,
        /// The most one call may carry.
        limit: u64,
    },
    /// A key's value is not what the call needs (`increment` of text that
    /// is not a number, or a sum that overflows).
    #[error("store {store}: key {key:?} cannot be used so: {reason}")]
    BadValue {
        /// The store (bucket).
        store: String,
        /// The key (label).
        key: String,
        /// Why.
        reason: String,
    },
    /// Other writers changed a label under every attempt of a
    /// read-modify-write.
    #[error("store {store}: label {label:?} changed under {attempts} attempts in a row; try again")]
    Contended {
        /// The store.
        store: String,
        /// The label.
        label: String,
        /// How many attempts were made.
        attempts: usize,
    },
    /// The actor's deadline passed while the call waited for the store.
    #[error(
        "timed out: the actor's {timeout:?} deadline passed while this call waited for the store"
    )]
    TimedOut {
        /// The actor's time limit.
        timeout: Duration,
    },
}

impl HostError {
    /// The kind of failure: what each interface's error type is chosen by
    /// (once per interface), and, by [`ErrorKind::as_str`], what event
    /// chains record.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A guest naming a store id that could not be one is refused
            // like one naming a store it was not granted.
            Self::Store(store) => match store.kind() {
                ErrorKind::InvalidStoreId => ErrorKind::AccessDenied,
                kind => kind,
            },
            Self::ReadOnly { .. } | Self::NotGranted { .. } => ErrorKind::AccessDenied,
            Self::ContentTooLarge { .. }
            | Self::ReadTooLarge { .. }
            | Self::RangeTooLarge { .. }
            | Self::BatchTooLarge { .. }
            | Self::ListingTooLong { .. } => ErrorKind::TooLarge,
            Self::ActorQuota { .. } | Self::TooManyStores { .. } | Self::TooManyStreams { .. } => {
                ErrorKind::QuotaExceeded
            }
            Self::TimedOut { .. } => ErrorKind::TimedOut,
            Self::BadValue { .. } => ErrorKind::BadValue,
            Self::Contended { .. } => ErrorKind::Contended,
        }
    }
}

/// What the guest receives: the message.
/// The error string of a `theater:simple/store` call: the message, then
/// the kind in brackets (`… [not-found]`), which the guest crate reads so
/// that actors tell failures apart without matching words.
impl From<HostError> for String {
    fn from(error: HostError) -> Self {
        format!("{error} [{}]", error.kind())
    }
}
