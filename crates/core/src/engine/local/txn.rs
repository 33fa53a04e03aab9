//! The local engine's side of applying a change: the writer's open SQLite
//! transaction, plus the object files it publishes, as the reads and
//! writes that `engine::apply` asks for. What a change means is decided
//! there; this file only persists it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::Connection;

use super::sql::{self, Acting, Place};
use crate::engine::apply::{self, HeldObject, Transaction};
use crate::engine::layout::{ObjectFiles, remove_staged};
use crate::engine::{ChainHead, Change, Staged};
use crate::error::{Result, io_error};
use crate::links::Links;
use crate::names::{Digest, StoreId};
use crate::stats::StoreStats;

/// Applies one change inside the writer's open transaction. Directories
/// that got a new entry are added to `touched`, for fsync in synced mode.
/// An `Ok(Err(_))` is a refusal: the caller rolls this change back alone,
/// and the files it published for new objects are removed here (a quota
/// refused after the rename), so a refused write leaves nothing behind.
pub(super) fn apply_in(
    db: &Connection,
    acting: &Acting,
    layout: &ObjectFiles,
    refresh_after: i64,
    change: Change,
    touched: &mut BTreeSet<PathBuf>,
) -> rusqlite::Result<Result<bool>> {
    let mut txn = LocalTxn {
        db,
        layout,
        touched,
        published: Vec::new(),
        acting,
    };
    let applied = apply::apply(&mut txn, change, refresh_after)?;
    if applied.is_err() {
        for (store, digest) in &txn.published {
            // A leftover would only wait for gc's sweep of unindexed bytes.
            let _ = layout.remove_object(store, *digest);
        }
    }
    Ok(applied)
}

struct LocalTxn<'a> {
    db: &'a Connection,
    layout: &'a ObjectFiles,
    touched: &'a mut BTreeSet<PathBuf>,
    /// Files renamed into place for objects new to their store, which a
    /// refusal later in the change takes away again.
    published: Vec<(StoreId, Digest)>,
    /// Who makes the change being applied, as the log's triggers ask
    /// (see [`Transaction::act_as`]).
    acting: &'a Acting,
}

impl Transaction for LocalTxn<'_> {
    type Fault = rusqlite::Error;
    type Place = Place;

    fn ensure_store(&mut self, store: &StoreId) -> rusqlite::Result<bool> {
        sql::ensure_store(self.db, store)
    }

    fn label_target(&mut self, store: &StoreId, label: &str) -> rusqlite::Result<Option<Digest>> {
        sql::label_target(self.db, store, label)
    }

    fn chain_tip(&mut self, store: &StoreId, label: &str) -> rusqlite::Result<Option<ChainHead>> {
        sql::chain_tip(self.db, store, label)
    }

    fn has_object(&mut self, store: &StoreId, digest: Digest) -> rusqlite::Result<bool> {
        sql::has_object(self.db, store, digest)
    }

    fn object(
        &mut self,
        store: &StoreId,
        digest: Digest,
    ) -> rusqlite::Result<Option<HeldObject<Place>>> {
        let held = sql::object_info(self.db, store, digest)?;
        Ok(held.map(|(_, stored_at, place)| HeldObject { stored_at, place }))
    }

    fn bytes_present(&mut self, store: &StoreId, digest: Digest, place: Place) -> bool {
        bytes_present(self.layout, store, digest, place)
    }

    fn held_by_label(&mut self, store: &StoreId, digest: Digest) -> rusqlite::Result<bool> {
        sql::held_by_label(self.db, store, digest)
    }

    fn awaits_scan(&mut self, store: &StoreId) -> rusqlite::Result<bool> {
        sql::awaits_scan(self.db, store)
    }

    fn totals(&mut self, store: &StoreId) -> rusqlite::Result<StoreStats> {
        sql::store_stats(self.db, store)
    }

    fn change_seq(&mut self, store: &StoreId) -> rusqlite::Result<u64> {
        sql::change_seq(self.db, store)
    }

    fn write_object(
        &mut self,
        store: &StoreId,
        digest: Digest,
        size: u64,
        staged: Staged,
        links: &Links,
        held: Option<Place>,
    ) -> rusqlite::Result<Result<()>> {
        let inline = match held {
            None => match staged {
                Staged::Inline(bytes) => Some(sql::insert_inline(self.db, &bytes)?),
                Staged::File(path) => {
                    if let Err(refused) = publish(self.layout, store, digest, &path, self.touched) {
                        return Ok(Err(refused));
                    }
                    self.published.push((store.clone(), digest));
                    None
                }
            },
            Some(place) => match self.republish(store, digest, place, staged)? {
                Ok(inline) => inline,
                Err(refused) => return Ok(Err(refused)),
            },
        };
        let column = links.column();
        sql::upsert_object(
            self.db,
            store,
            digest,
            size,
            inline.as_ref(),
            column.as_deref(),
        )?;
        Ok(Ok(()))
    }

    fn discard(&mut self, staged: Staged) {
        discard(staged);
    }

    fn refresh_targets(
        &mut self,
        store: &StoreId,
        targets: &[Digest],
        fresh_after: i64,
    ) -> rusqlite::Result<()> {
        sql::refresh_targets(self.db, store, targets, fresh_after)
    }

    fn mark_unscanned(
        &mut self,
        store: &StoreId,
        digest: Digest,
        unscanned: bool,
    ) -> rusqlite::Result<()> {
        sql::mark_unscanned(self.db, store, digest, unscanned)
    }

    fn put_label(&mut self, store: &StoreId, label: &str, target: Digest) -> rusqlite::Result<()> {
        sql::put_label(self.db, store, label, target)
    }

    fn delete_label(&mut self, store: &StoreId, label: &str) -> rusqlite::Result<()> {
        sql::delete_label(self.db, store, label)
    }

    fn delete_labels(&mut self, store: &StoreId, limit: usize) -> rusqlite::Result<usize> {
        sql::delete_labels(self.db, store, limit)
    }

    fn set_chain_head(
        &mut self,
        store: &StoreId,
        label: &str,
        head: ChainHead,
        exists: bool,
    ) -> rusqlite::Result<()> {
        sql::set_chain_head(self.db, store, label, &head, exists)
    }

    fn add_segment(
        &mut self,
        store: &StoreId,
        digest: Digest,
        segment: Vec<u8>,
    ) -> rusqlite::Result<()> {
        sql::insert_event(self.db, store, digest, &segment).map(drop)
    }

    fn set_links(
        &mut self,
        store: &StoreId,
        digest: Digest,
        column: Option<Vec<u8>>,
    ) -> rusqlite::Result<bool> {
        sql::set_links(self.db, store, digest, column.as_deref())
    }

    fn delete_object(
        &mut self,
        store: &StoreId,
        digest: Digest,
        place: Place,
    ) -> rusqlite::Result<Result<()>> {
        // Inline bytes go with the row (by trigger).
        sql::forget_object(self.db, store, digest)?;
        if place != Place::File {
            return Ok(Ok(()));
        }
        // Moved aside, not deleted: a kill before the commit must not
        // leave a row whose bytes are gone (see `ObjectFiles::doom_object`).
        Ok(self.layout.doom_object(store, digest).map_err(|source| {
            let path = self.layout.object_path(store, digest);
            io_error(store, "removing object", &path, source)
        }))
    }

    fn act_as(&mut self, store: &StoreId, actor: Option<&str>) -> rusqlite::Result<()> {
        self.acting.set(store, actor);
        Ok(())
    }

    fn trim_changes(
        &mut self,
        store: &StoreId,
        before: i64,
        keep_last: u64,
    ) -> rusqlite::Result<bool> {
        Ok(sql::trim_changes(self.db, store, before, keep_last)? > 0)
    }

    fn delete_empty_store(
        &mut self,
        store: &StoreId,
        cutoff: i64,
    ) -> rusqlite::Result<Result<bool>> {
        if !sql::delete_empty_store(self.db, store, cutoff)? {
            return Ok(Ok(false));
        }
        Ok(self.layout.remove_store_files(store).map(|()| true))
    }

    /// verify found the object damaged a while ago; someone may have
    /// stored the same bytes since, which rewrote them. So it is checked
    /// again, here, under the write lock, and healed content is never
    /// taken away.
    fn quarantine(&mut self, store: &StoreId, digest: Digest) -> rusqlite::Result<Result<bool>> {
        let (db, layout) = (self.db, self.layout);
        if let Some((_, Some(bytes))) = sql::object_content(db, store, digest)? {
            if Digest::of(&bytes) == digest {
                return Ok(Ok(false));
            }
            if let Err(source) = layout.quarantine_bytes(store, digest, &bytes) {
                let path = layout.store_dir(store).join("quarantine");
                return Ok(Err(io_error(store, "quarantining object", &path, source)));
            }
            sql::forget_object(db, store, digest)?;
            return Ok(Ok(true));
        }
        match layout.is_intact(store, digest) {
            Ok(true) => return Ok(Ok(false)),
            Ok(false) => {}
            Err(refused) => return Ok(Err(refused)),
        }
        sql::forget_object(db, store, digest)?;
        match layout.quarantine(store, digest) {
            Ok(_) => Ok(Ok(true)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Ok(false)),
            Err(source) => {
                let path = layout.object_path(store, digest);
                Ok(Err(io_error(store, "quarantining object", &path, source)))
            }
        }
    }

    fn remove_unindexed(
        &mut self,
        store: &StoreId,
        digest: Digest,
        cutoff: SystemTime,
    ) -> rusqlite::Result<Result<bool>> {
        Ok(self.layout.remove_unindexed(store, digest, cutoff))
    }

    fn keep_outboard(&mut self, store: &StoreId, digest: Digest, place: Place, staged: &Path) {
        if place == Place::File && self.layout.is_present(store, digest) {
            self.layout.place_outboard(store, staged, digest);
        }
    }

    fn index_file(&mut self, store: &StoreId, digest: Digest) -> rusqlite::Result<Result<bool>> {
        let Ok(metadata) = std::fs::metadata(self.layout.object_path(store, digest)) else {
            return Ok(Ok(false));
        };
        sql::upsert_object(self.db, store, digest, metadata.len(), None, None)?;
        Ok(Ok(true))
    }
}

impl LocalTxn<'_> {
    /// Writes an object that is already held, but not recently, again: the
    /// rewrite heals bytes damaged or lost since. Returns the inline row to
    /// record, if the object moves into the index.
    fn republish(
        &mut self,
        store: &StoreId,
        digest: Digest,
        place: Place,
        staged: Staged,
    ) -> rusqlite::Result<Result<Option<sql::InlineRow>>> {
        let (db, layout) = (self.db, self.layout);
        match (place, staged) {
            (Place::Inline(id) | Place::InlineMissing(id), Staged::Inline(bytes)) => {
                sql::rewrite_inline(db, store, digest, id, &bytes)?;
                Ok(Ok(None))
            }
            (Place::Inline(_), staged @ Staged::File(_)) => {
                // Held inline (under a larger threshold): the file is not needed.
                discard(staged);
                Ok(Ok(None))
            }
            (Place::InlineMissing(_), Staged::File(path)) => {
                if let Err(refused) = publish(layout, store, digest, &path, self.touched) {
                    return Ok(Err(refused));
                }
                sql::move_to_file(db, store, digest)?;
                Ok(Ok(None))
            }
            (Place::File, Staged::File(path)) => {
                Ok(publish(layout, store, digest, &path, self.touched).map(|()| None))
            }
            (Place::File, Staged::Inline(bytes)) => {
                // Held as a file (written before content went inline, or
                // under a smaller threshold). An intact file stays; a
                // missing or damaged one is replaced by a row.
                match layout.is_intact(store, digest) {
                    Ok(true) => Ok(Ok(None)),
                    Ok(false) => {
                        let _ = layout.quarantine(store, digest);
                        Ok(Ok(Some(sql::insert_inline(db, &bytes)?)))
                    }
                    Err(refused) => Ok(Err(refused)),
                }
            }
        }
    }
}

/// Renames a staged file into place as object `digest`, noting the
/// directory whose entry changed; on failure the staged file is removed.
fn publish(
    layout: &ObjectFiles,
    store: &StoreId,
    digest: Digest,
    staged: &Path,
    touched: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    match layout.publish(store, staged, digest) {
        Ok(shard) => {
            touched.insert(shard);
            Ok(())
        }
        Err(source) => {
            remove_staged(staged);
            let at = layout.object_path(store, digest);
            Err(io_error(store, "publishing object", &at, source))
        }
    }
}

/// Whether an indexed object's bytes are there: an inline row (unless the
/// row was lost), or a file (which a crash or a hand may have removed).
pub(super) fn bytes_present(
    layout: &ObjectFiles,
    store: &StoreId,
    digest: Digest,
    place: Place,
) -> bool {
    match place {
        Place::Inline(_) => true,
        Place::InlineMissing(_) => false,
        Place::File => layout.is_present(store, digest),
    }
}

/// Drops staged content that will not be published.
pub(super) fn discard(staged: Staged) {
    if let Staged::File(path) = staged {
        remove_staged(&path);
    }
}
