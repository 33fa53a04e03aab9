//! Publishing objects: bytes to S3 (create-if-absent) before their row,
//! one publication of an object at a time in this process.

use std::sync::Arc;

use deadpool_postgres::GenericClient;

use super::Inner;
use super::index::{self};
use super::objects::Uploaded;
use crate::error::Result;
use crate::links::Links;
use crate::names::{Digest, StoreId};

impl Inner {
    /// Waits for this process's turn to publish object `digest`.
    pub(super) async fn publishing_turn(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut publishing = self.publishing.lock().expect("publishing turns");
            publishing.retain(|_, turn| Arc::strong_count(turn) > 1);
            Arc::clone(publishing.entry((store.clone(), digest)).or_default())
        };
        turn.lock_owned().await
    }

    /// Publishes a staged file: the object's lock (a session lock, shared)
    /// and the read of its row, sent together (the read always runs after
    /// the lock's statement); the upload, unless a recent row says the bytes are
    /// there; the row (and label), committed; then the lock let go. Any failure
    /// is a service error, on which the caller drops the connection, and
    /// with it the lock. Returns whether the object is new.
    pub(super) async fn publish_file_alone(
        &self,
        client: &deadpool_postgres::Object,
        store: &StoreId,
        (digest, size, staged): (Digest, u64, &std::path::Path),
        label: Option<&str>,
        links: &Links,
    ) -> Result<bool> {
        let times = self.now_and_fresh_after();
        let key = index::object_lock(store, digest);
        let lock = client
            .prepare_cached("SELECT 1 FROM pg_advisory_lock_shared($1)")
            .await;
        let lock = self.index(lock, "locking object")?;
        let unlock = client
            .prepare_cached("SELECT 1 FROM pg_advisory_unlock_shared($1)")
            .await;
        let unlock = self.index(unlock, "unlocking object")?;
        // The row is read by a statement that starts after the lock is
        // held, so it sees any collection that finished meanwhile.
        let key_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        let (locked, held) = futures_util::join!(
            client.execute(&lock, &key_param),
            index::object(client, store, digest, false)
        );
        self.index(locked, "locking object")?;
        let held = self.index(held, "looking up object")?;
        self.upload_unless_held(store, digest, staged, held, times.1)
            .await?;
        // The object's age is when its row is written, not when its upload
        // began: a long upload must not start its life already past the
        // grace period.
        let times = self.now_and_fresh_after();
        // Not sent together: the row's statement may need preparing first,
        // which would let the unlock overtake it.
        let added = index::add_object(client, store, digest, size, None, label, links, times).await;
        let added = self.index(added, "indexing object")?;
        let unlocked = client.execute(&unlock, &key_param).await;
        self.index(unlocked, "unlocking object")?;
        Ok(added)
    }

    /// Uploads a staged file unless its row (`held`, read under the
    /// object's lock) says the bytes are there: held inline, or stored
    /// after `fresh_after`. An older row's bytes are written again, which
    /// heals damaged ones.
    pub(super) async fn upload_unless_held(
        &self,
        store: &StoreId,
        digest: Digest,
        staged: &std::path::Path,
        held: Option<index::HeldObject>,
        fresh_after: i64,
    ) -> Result<()> {
        let overwrite = match held {
            None => false,
            Some(held) if held.inline.is_some() || held.stored_at >= fresh_after => return Ok(()),
            Some(_) => true,
        };
        let uploaded = self.objects.upload(store, digest, staged, overwrite).await;
        let _: Uploaded = self.object_store(uploaded, "publishing object")?;
        Ok(())
    }

    /// Publishes a staged file inside `transaction`: takes the object's
    /// lock in share mode, uploads unless a recent row says the bytes are
    /// there, then writes the row (and label). Returns whether it is new.
    pub(super) async fn publish_file(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
        store: &StoreId,
        (digest, size, staged): (Digest, u64, &std::path::Path),
        label: Option<&str>,
        links: &Links,
    ) -> Result<bool> {
        let (_, fresh_after) = self.now_and_fresh_after();
        let locked = transaction
            .execute(
                "SELECT 1 FROM pg_advisory_xact_lock_shared($1)",
                &[&index::object_lock(store, digest)],
            )
            .await;
        self.index(locked, "locking object")?;
        let held = index::object(transaction, store, digest, false).await;
        let held = self.index(held, "looking up object")?;
        self.upload_unless_held(store, digest, staged, held, fresh_after)
            .await?;
        // Aged from its row, as in `publish_file_alone`.
        let times = self.now_and_fresh_after();
        let added =
            index::add_object(transaction, store, digest, size, None, label, links, times).await;
        self.index(added, "indexing object")
    }
}
