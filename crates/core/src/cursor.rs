//! Cursors: how far a consumer of a store's change log (a keyvalue
//! watcher, a follower) has got, kept in the root so that it carries on
//! from there after a restart or a crash.

use serde::{Deserialize, Serialize};

use crate::chain::validate_actor_id;
use crate::error::{Result, StoreError};
use crate::names::{ContentRef, StoreId};
use crate::store::ContentStore;

/// The reserved store where cursors live: one label per (store,
/// consumer, prefix).
pub(crate) const CURSORS_STORE: &str = "_cursors";

/// How far one consumer has handled the changes to one store's labels
/// under one prefix: the `seq` of the last change it is done with. Made
/// by [`ContentStore::cursor`]; kept in the root's reserved `_cursors`
/// store, so it lasts as long as the root and is shared by every process
/// (and, on a shared root, every host) using it.
#[derive(Clone, Debug)]
pub struct ChangeCursor {
    cursors: ContentStore,
    /// The store's id, a `/`, then a digest of the consumer and prefix,
    /// which may hold anything a label may.
    label: String,
    record: CursorRecord,
}

/// What a cursor's content holds: the names in full (the label only has
/// their digest) and the position.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct CursorRecord {
    store: String,
    consumer: String,
    prefix: String,
    seq: u64,
}

impl ContentStore {
    /// The cursor of `consumer` (an actor id, as
    /// [`validate_actor_id`] takes them) over this store's changes to labels
    /// starting with `prefix`. Consumers with different names, or
    /// following different prefixes, keep separate positions.
    pub fn cursor(&self, consumer: &str, prefix: &str) -> Result<ChangeCursor> {
        validate_actor_id(consumer)?;
        let mut named = Vec::with_capacity(consumer.len() + 1 + prefix.len());
        named.extend_from_slice(consumer.as_bytes());
        named.push(0);
        named.extend_from_slice(prefix.as_bytes());
        let digest = ContentRef::for_content(&named);
        Ok(ChangeCursor {
            cursors: ContentStore::in_root(self.root().clone(), StoreId::reserved(CURSORS_STORE)),
            label: format!("{}/{}", self.id(), &digest.hash()[..32]),
            record: CursorRecord {
                store: self.id().to_owned(),
                consumer: consumer.to_owned(),
                prefix: prefix.to_owned(),
                seq: 0,
            },
        })
    }
}

impl ChangeCursor {
    /// The `seq` of the last change recorded as handled, or `None` when
    /// this consumer has recorded nothing for this store and prefix.
    pub async fn position(&self) -> Result<Option<u64>> {
        let Some(bytes) = self.cursors.get_content_by_label(&self.label).await? else {
            return Ok(None);
        };
        let record: CursorRecord =
            serde_json::from_slice(&bytes).map_err(|error| StoreError::CursorDamaged {
                store: self.record.store.clone(),
                consumer: self.record.consumer.clone(),
                reason: error.to_string(),
            })?;
        Ok(Some(record.seq))
    }

    /// Records that every change up to and including `seq` is handled.
    /// Durable as the root's writes are ([`crate::Durability`]).
    pub async fn advance(&self, seq: u64) -> Result<()> {
        let record = CursorRecord {
            seq,
            ..self.record.clone()
        };
        let bytes = serde_json::to_vec(&record).expect("a cursor record serializes");
        self.cursors.store_at_label(&self.label, bytes).await?;
        Ok(())
    }
}
