//! The content store for actors built for `wasm32-wasip2`.
//!
//! [`ContentStore`] wraps the `theater:simple/store` imports with the same
//! names the host-side Rust API uses, so code reads the same on both sides.
//! The raw bindings are in [`bindings`]; implement [`Actor`] and export it
//! with [`export_actor!`].
//!
//! ```no_run
//! use theater_store_guest::{Actor, ContentStore, log};
//!
//! struct Counter;
//!
//! impl Actor for Counter {
//!     fn init(state: Option<Vec<u8>>, (param,): (String,)) -> Result<(Option<Vec<u8>>,), String> {
//!         let store = match state {
//!             Some(id) => ContentStore::from_id(String::from_utf8(id).map_err(|e| e.to_string())?),
//!             None => ContentStore::new()?,
//!         };
//!         let count: u64 = store.get_json_by_label("count")?.unwrap_or(0);
//!         store.store_json_at_label("count", &(count + 1))?;
//!         log(&format!("{param}: count is now {}", count + 1));
//!         Ok((Some(store.id().as_bytes().to_vec()),))
//!     }
//! }
//!
//! theater_store_guest::export_actor!(Counter);
//! ```
//!
//! # Errors
//!
//! Every call returns this crate's [`Error`], whichever interface served
//! it; [`Error::kind`] tells "not found" from "access denied" or "over
//! quota" without reading the message, and `?` turns it into the `String`
//! `init` returns.
//!
//! # What gc keeps
//!
//! A label keeps the content it points at, and every piece of content
//! whose ref is written (as 64 hex digits) inside kept content, however
//! deep. So a structure needs one label at its top: a [`ContentRef`]
//! inside your JSON (`{"hash":"…"}`) keeps what it names. Content no
//! label reaches is removed by the operator's `gc` once it is older than
//! the grace period (an hour by default), never sooner.
//!
//! # A versioned document, worked through
//!
//! Each version names the one before, so the `head` label keeps the whole
//! history; a `version/N` label makes each one easy to find. Publishing
//! moves both labels in one transaction, and only if nobody published
//! since we read `head`, so concurrent editors never lose a version:
//!
//! ```no_run
//! use theater_store_guest::serde::{Deserialize, Serialize};
//! use theater_store_guest::{ContentRef, ContentStore, Error, ErrorKind, Result};
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(crate = "theater_store_guest::serde")]
//! struct Version {
//!     number: u64,
//!     text: String,
//!     previous: Option<ContentRef>, // keeps the older versions from gc
//! }
//!
//! fn publish(store: &ContentStore, text: &str) -> Result<u64> {
//!     for _ in 0..10 {
//!         let head = store.get_by_label("head")?;
//!         let number = match &head {
//!             Some(head) => store.get_json::<Version>(head)?.number + 1,
//!             None => 1,
//!         };
//!         let version = Version { number, text: text.into(), previous: head.clone() };
//!         let stored = store.store_json(&version)?;
//!         let label = format!("version/{number}");
//!         let moved = store.compare_and_swap_labels(&[
//!             ("head", head.as_ref(), Some(&stored)),
//!             (&label, None, Some(&stored)),
//!         ])?;
//!         if moved {
//!             return Ok(number);
//!         }
//!         // Someone published first: read the new head and try again.
//!     }
//!     Err(Error::new(ErrorKind::Conflict, "too many concurrent publishers"))
//! }
//! ```

#![warn(missing_docs)]

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The serde this crate's JSON helpers use, for `#[derive(serde::Serialize,
/// serde::Deserialize)]` on your own types without a dependency of your own.
pub use serde;
/// The serde_json this crate's JSON helpers use.
pub use serde_json;

/// Bindings generated from `wit/` by wit-bindgen.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "store-actor",
        pub_export_macro: true,
        export_macro_name: "export_actor",
        default_bindings_module: "theater_store_guest::bindings",
        generate_all,
    });
}

mod streams;

pub use bindings::export_actor;
pub use bindings::exports::theater::simple::actor::Guest as Actor;
pub use bindings::theater::simple::runtime::{get_chain, log, shutdown};
/// The event chain `get_chain` returns: every store call this actor made.
pub use bindings::theater::simple::types::{Chain, Event as ChainEvent, MetaEvent};
pub use streams::{ChangePage, ContentReader, ContentWriter, LabelChange};

use bindings::theater::simple::store as wit;

/// What kind of failure an [`Error`] is, whichever interface it came
/// from, so that code can tell "not found" from "access denied" without
/// reading messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The store holds no such content, or no such store exists.
    NotFound,
    /// The store was not granted to this actor, or only read-only.
    AccessDenied,
    /// Content, a range, a batch or a listing is over the actor's limits.
    TooLarge,
    /// The write would take the store or the actor over its quota.
    QuotaExceeded,
    /// The stored bytes no longer match their ref.
    Corrupted,
    /// A label, ref, store id or value that could not be one.
    Invalid,
    /// Other writers kept changing what this call depends on.
    Conflict,
    /// The call ran out of the actor's time.
    TimedOut,
    /// The change log no longer holds the changes asked for.
    Trimmed,
    /// The store failed (disk, index, network).
    Io,
    /// A value could not be encoded or decoded (JSON).
    Encoding,
    /// Anything else: an error the actor made itself, or a host that
    /// does not say (Theater's own store).
    Other,
}

impl ErrorKind {
    /// The kind a host names at the end of a `store` interface error
    /// (`… [not-found]`).
    fn from_tag(tag: &str) -> Option<Self> {
        Some(match tag {
            "not-found" => Self::NotFound,
            "access-denied" => Self::AccessDenied,
            "too-large" => Self::TooLarge,
            "quota-exceeded" => Self::QuotaExceeded,
            "corrupted" => Self::Corrupted,
            "invalid-label" | "invalid-ref" | "invalid-store-id" | "bad-value" => Self::Invalid,
            "contended" => Self::Conflict,
            "timed-out" => Self::TimedOut,
            "trimmed" => Self::Trimmed,
            "io" => Self::Io,
            _ => return None,
        })
    }
}

/// Every failure of this crate's calls, from any of the store interfaces
/// or from encoding a value: a [`ErrorKind`] and a message naming the
/// store, label, ref or limit concerned. Converts into the `String` that
/// `init` returns and into [`std::io::Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// An error of the actor's own ([`ErrorKind::Other`]).
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, naming what failed.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An error string from the `store` interface: this crate's host ends it
/// with its kind in brackets, which is read and taken off; other hosts'
/// strings are [`ErrorKind::Other`].
impl From<String> for Error {
    fn from(message: String) -> Self {
        let tagged = message
            .strip_suffix(']')
            .and_then(|rest| rest.rsplit_once(" ["))
            .and_then(|(text, tag)| Some((text, ErrorKind::from_tag(tag)?)));
        match tagged {
            Some((text, kind)) => Self::new(kind, text),
            None => Self::other(message),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::new(ErrorKind::Encoding, format!("JSON: {error}"))
    }
}

impl From<Error> for String {
    fn from(error: Error) -> Self {
        error.message
    }
}

impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match error.kind {
            ErrorKind::NotFound => Io::NotFound,
            ErrorKind::AccessDenied => Io::PermissionDenied,
            ErrorKind::QuotaExceeded => Io::StorageFull,
            ErrorKind::Corrupted | ErrorKind::Encoding => Io::InvalidData,
            ErrorKind::Invalid => Io::InvalidInput,
            ErrorKind::TimedOut => Io::TimedOut,
            ErrorKind::TooLarge => Io::FileTooLarge,
            ErrorKind::Trimmed => Io::NotFound,
            ErrorKind::Conflict | ErrorKind::Io | ErrorKind::Other => Io::Other,
        };
        std::io::Error::new(kind, error.message)
    }
}

/// Result of every store call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A reference to stored content: the lowercase hex BLAKE3 digest of its
/// bytes. As JSON (inside your own serialized values) it is an object,
/// `{"hash":"<64 hex digits>"}`, the same as Theater's WIT record; store it
/// so, and gc follows it from the content that holds it.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ContentRef {
    hash: String,
}

impl ContentRef {
    /// Wraps a hash; the host checks it when it is used.
    pub fn new(hash: impl Into<String>) -> Self {
        Self { hash: hash.into() }
    }

    /// The hex digest.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub(crate) fn to_wit(&self) -> wit::ContentRef {
        wit::ContentRef {
            hash: self.hash.clone(),
        }
    }
}

impl From<wit::ContentRef> for ContentRef {
    fn from(content_ref: wit::ContentRef) -> Self {
        Self::new(content_ref.hash)
    }
}

impl std::fmt::Display for ContentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hash)
    }
}

/// A store this actor created or was granted, by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentStore {
    id: String,
}

impl ContentStore {
    /// Creates a store owned by this actor.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Result<Self> {
        Ok(Self { id: wit::new()? })
    }

    /// A handle to store `id`; calls fail unless the host granted it.
    pub fn from_id(id: impl Into<String>) -> Self {
        Self { id: id.into() }
    }

    /// The store id, to hand to other actors.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stores bytes; the same bytes always give the same ref.
    pub fn store(&self, content: impl AsRef<[u8]>) -> Result<ContentRef> {
        Ok(wit::store(&self.id, content.as_ref())?.into())
    }

    /// The bytes behind a ref, verified by the host.
    pub fn get(&self, content_ref: &ContentRef) -> Result<Vec<u8>> {
        Ok(wit::get(&self.id, &content_ref.to_wit())?)
    }

    /// Whether the store holds a ref.
    pub fn exists(&self, content_ref: &ContentRef) -> Result<bool> {
        Ok(wit::exists(&self.id, &content_ref.to_wit())?)
    }

    /// Points a label at stored content, creating the label or moving it
    /// from whatever it pointed at.
    pub fn label(&self, label: &str, content_ref: &ContentRef) -> Result<()> {
        Ok(wit::label(&self.id, label, &content_ref.to_wit())?)
    }

    /// The same as [`ContentStore::label`]: both create or move the label.
    /// Theater's interface has both names, kept for compatibility. To move
    /// a label only if it still points where you last saw it, use
    /// [`ContentStore::compare_and_swap`].
    pub fn replace_at_label(&self, label: &str, content_ref: &ContentRef) -> Result<()> {
        Ok(wit::replace_at_label(
            &self.id,
            label,
            &content_ref.to_wit(),
        )?)
    }

    /// What a label points at.
    pub fn get_by_label(&self, label: &str) -> Result<Option<ContentRef>> {
        Ok(wit::get_by_label(&self.id, label)?.map(ContentRef::from))
    }

    /// The content a label points at.
    pub fn get_content_by_label(&self, label: &str) -> Result<Option<Vec<u8>>> {
        match self.get_by_label(label)? {
            Some(content_ref) => self.get(&content_ref).map(Some),
            None => Ok(None),
        }
    }

    /// Stores bytes and points a label at them, creating or moving it.
    pub fn store_at_label(&self, label: &str, content: impl AsRef<[u8]>) -> Result<ContentRef> {
        Ok(wit::store_at_label(&self.id, label, content.as_ref())?.into())
    }

    /// The same as [`ContentStore::store_at_label`] (Theater has both
    /// names): stores bytes and creates or moves the label to them.
    pub fn replace_content_at_label(
        &self,
        label: &str,
        content: impl AsRef<[u8]>,
    ) -> Result<ContentRef> {
        Ok(wit::replace_content_at_label(&self.id, label, content.as_ref())?.into())
    }

    /// Deletes a label; the content stays.
    pub fn remove_label(&self, label: &str) -> Result<()> {
        Ok(wit::remove_label(&self.id, label)?)
    }

    /// Deletes a label only while it points at `content_ref`.
    pub fn remove_from_label(&self, label: &str, content_ref: &ContentRef) -> Result<()> {
        Ok(wit::remove_from_label(
            &self.id,
            label,
            &content_ref.to_wit(),
        )?)
    }

    /// Every label, in byte order.
    pub fn list_labels(&self) -> Result<Vec<String>> {
        Ok(wit::list_labels(&self.id)?)
    }

    /// Every ref the store holds.
    pub fn list_all_content(&self) -> Result<Vec<ContentRef>> {
        let refs = wit::list_all_content(&self.id)?;
        Ok(refs.into_iter().map(ContentRef::from).collect())
    }

    /// Bytes of distinct content held.
    pub fn calculate_total_size(&self) -> Result<u64> {
        Ok(wit::calculate_total_size(&self.id)?)
    }

    /// Stores a value as JSON.
    pub fn store_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<ContentRef> {
        self.store(serde_json::to_vec(value)?)
    }

    /// Reads a JSON value back by ref.
    pub fn get_json<T: DeserializeOwned>(&self, content_ref: &ContentRef) -> Result<T> {
        Ok(serde_json::from_slice(&self.get(content_ref)?)?)
    }

    /// Stores a value as JSON and points a label at it.
    pub fn store_json_at_label<T: Serialize + ?Sized>(
        &self,
        label: &str,
        value: &T,
    ) -> Result<ContentRef> {
        self.store_at_label(label, serde_json::to_vec(value)?)
    }

    /// Reads the JSON value a label points at, if the label is defined.
    pub fn get_json_by_label<T: DeserializeOwned>(&self, label: &str) -> Result<Option<T>> {
        match self.get_content_by_label(label)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Read-modify-write of the JSON value at `label`, safe against other
    /// writers of the same label (other actors, other runs of this one):
    /// reads the value (`None`: no label), lets `update` make the new one,
    /// stores it and moves the label with compare-and-swap, and starts
    /// again from the new value if someone moved the label meanwhile.
    /// Returns the new value and its ref. A value stored by a lost attempt
    /// is left unlabelled, for gc. Gives up after 100 lost attempts.
    ///
    /// ```no_run
    /// # fn main() -> theater_store_guest::Result<()> {
    /// let store = theater_store_guest::ContentStore::from_id("counters");
    /// let (count, _) = store.update_json_at_label("visits", |count: Option<u64>| {
    ///     count.unwrap_or(0) + 1
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn update_json_at_label<T, F>(&self, label: &str, mut update: F) -> Result<(T, ContentRef)>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let current = self.get_by_label(label)?;
            let old = match &current {
                Some(content_ref) => Some(self.get_json(content_ref)?),
                None => None,
            };
            let new = update(old);
            let stored = self.store_json(&new)?;
            if self.compare_and_swap(label, current.as_ref(), Some(&stored))? {
                return Ok((new, stored));
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "label {label} of store {} kept changing: {MAX_UPDATE_ATTEMPTS} updates in a row \
                 lost to other writers",
                self.id
            ),
        ))
    }
}

/// How often [`ContentStore::update_json_at_label`] tries before it gives up.
const MAX_UPDATE_ATTEMPTS: usize = 100;
