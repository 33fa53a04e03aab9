//! The host's side of the WIT resources a guest holds handles to: what
//! each handle keeps. Below the generated bindings, which name these
//! types; their behaviour is in streams.rs and keyvalue.rs.

use theater_store::{ContentRef, ContentStore, ContentWriter};

use crate::meter::{Admitted, StreamSlot};

/// A guest's `content-writer`: the core writer, the room it holds on the
/// actor's meter, and its open-stream slot.
pub struct WriterHandle {
    pub(crate) store: ContentStore,
    /// The handle the writer writes through and what it has reserved so
    /// far; `None` once finished or refused.
    pub(crate) admitted: Option<Admitted>,
    /// `None` once finished or refused.
    pub(crate) writer: Option<ContentWriter>,
    pub(crate) _slot: StreamSlot,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("store", &self.store.id())
            .finish_non_exhaustive()
    }
}

/// An opened bucket: the store it names. Grants are checked again at
/// every call, as for `theater:simple/store`.
pub struct Bucket {
    pub(crate) store: ContentStore,
}

/// A `cas` handle: a key and the value (by ref) it had when remembered.
pub struct Cas {
    pub(crate) bucket: ContentStore,
    pub(crate) key: String,
    pub(crate) expected: Option<ContentRef>,
}
