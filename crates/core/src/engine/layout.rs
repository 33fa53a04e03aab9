//! Object files: where content bytes live on disk.
//!
//! `stores/<store dir>/objects/<first 2 hex>/<remaining 62 hex>`, where the
//! store directory is the store id with each capital letter written as `^`
//! plus its small letter ([`store_dir_name`]), so that ids differing only in
//! case never share a directory on a case-insensitive file system. An object
//! is written to `stores/<store dir>/tmp/` first and renamed into place, so a
//! reader or a crash sees either no file or the whole file. The shard level
//! keeps directories small (256 of them, each with 1/256 of the objects).
//!
//! Only content above the root's inline threshold gets a file; smaller
//! content lives in the index (`sql.rs`). A log root keeps the same layout
//! under its directory for content above its file threshold (`mem.rs`),
//! and smaller content in its log. A file object over 16 KiB has its
//! BLAKE3 outboard (`crate::tree`) at `outboards/<2 hex>/<62 hex>`. The
//! outboard is derived data: it is staged beside its object as
//! `tmp/<name>.obao`, moved into place with it, removed with it, never
//! fsync'd, and rebuilt from the object whenever it is missing or wrong. Only the index writer renames
//! files into `objects/` or deletes them, and only while it holds the
//! index's write lock (see `writer.rs`); on a log root, only a change
//! applied under the root's lock.

use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use super::steps::{Step, record};
use super::{ObjectSource, QuarantinedBytes, Scan, Staged, StagingSink};
use crate::durability::Durability;
use crate::error::{Result, io_error};
use crate::names::{Digest, StoreId};
use crate::task::Progress;
use crate::tree::{RandomAccess, TreeHasher};

/// File-level access to the objects of every store under one root.
#[derive(Clone, Debug)]
pub(crate) struct ObjectFiles {
    stores_dir: PathBuf,
    durability: Durability,
}

/// The start of the name a removal gives an object's file in `tmp/`.
const DOOMED_PREFIX: &str = "removing-";

impl ObjectFiles {
    pub(crate) fn new(root: &Path, durability: Durability) -> Self {
        Self {
            stores_dir: root.join("stores"),
            durability,
        }
    }

    pub(crate) fn store_dir(&self, store: &StoreId) -> PathBuf {
        self.stores_dir.join(store_dir_name(store.as_str()))
    }

    /// The ids of every store that has a directory here, indexed or not
    /// (a write killed before its store's first commit leaves one).
    pub(crate) fn store_dir_ids(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.stores_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir()
                && let Some(id) = entry.file_name().to_str().and_then(store_id_of_dir)
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Where the first release kept store `id`: its id verbatim.
    pub(crate) fn legacy_store_dir(&self, id: &str) -> PathBuf {
        self.stores_dir.join(id)
    }

    /// Whether the object's file holds exactly the bytes of `digest` now
    /// (`false` when it is missing or damaged).
    pub(crate) fn is_intact(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        let path = self.object_path(store, digest);
        Ok(self.hash_file(store, &path)? == Some(digest))
    }

    /// Removes what a store with no indexed object leaves on disk: its
    /// `objects/` (only unindexed leftovers can be there), its quarantine,
    /// and its directories once empty. Temporary files of writes in flight
    /// stay, so that those writes still publish (recreating what they
    /// need). Only the index writer calls this, under the write lock.
    pub(crate) fn remove_store_files(&self, store: &StoreId) -> Result<()> {
        let dir = self.store_dir(store);
        let trees = [
            self.objects_dir(store),
            dir.join("outboards"),
            dir.join("quarantine"),
        ];
        for tree in trees {
            match fs::remove_dir_all(&tree) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(io_error(store, "removing store files", &tree, source)),
            }
        }
        // Both fail harmlessly while a write in flight has a file in tmp/.
        let _ = fs::remove_dir(self.tmp_dir(store));
        let _ = fs::remove_dir(&dir);
        Ok(())
    }

    pub(crate) fn tmp_dir(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("tmp")
    }

    /// Where a collection moves an object's file while the removal of its
    /// row is not yet committed (see [`ObjectFiles::doom_object`]).
    fn doomed_path(&self, store: &StoreId, digest: Digest) -> PathBuf {
        self.tmp_dir(store)
            .join(format!("{DOOMED_PREFIX}{}", digest.to_hex()))
    }

    /// Moves an object's file aside for a removal whose row deletion is not
    /// yet committed, and drops its outboard. A process killed before the
    /// commit leaves the row and the moved file: reads put the file back
    /// ([`ObjectFiles::open_file`]), and the next collection finishes or
    /// undoes the removal ([`ObjectFiles::doomed_files`]), so an
    /// interrupted gc never looks like lost content.
    pub(crate) fn doom_object(&self, store: &StoreId, digest: Digest) -> io::Result<()> {
        let _ = fs::remove_file(self.outboard_path(store, digest));
        let doomed = self.doomed_path(store, digest);
        if let Some(dir) = doomed.parent() {
            fs::create_dir_all(dir)?;
        }
        match fs::rename(self.object_path(store, digest), doomed) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Puts back an object's file that an interrupted removal moved aside;
    /// whether there was one to put back.
    pub(crate) fn restore_doomed(&self, store: &StoreId, digest: Digest) -> bool {
        let doomed = self.doomed_path(store, digest);
        doomed.is_file() && fs::rename(doomed, self.object_path(store, digest)).is_ok()
    }

    /// Files moved aside by removals (finished or interrupted), with the
    /// object each held.
    pub(crate) fn doomed_files(&self, store: &StoreId) -> Result<Vec<(Digest, PathBuf)>> {
        Ok(list_dir(store, &self.tmp_dir(store))?
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?;
                let digest = Digest::parse(name.strip_prefix(DOOMED_PREFIX)?).ok()?;
                Some((digest, path))
            })
            .collect())
    }

    /// Opens an object's file, putting it back first if an interrupted
    /// removal moved it aside.
    pub(crate) fn open_file(&self, store: &StoreId, digest: Digest) -> io::Result<File> {
        let path = self.object_path(store, digest);
        match File::open(&path) {
            Err(error)
                if error.kind() == io::ErrorKind::NotFound
                    && self.restore_doomed(store, digest) =>
            {
                File::open(&path)
            }
            opened => opened,
        }
    }

    pub(crate) fn objects_dir(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("objects")
    }

    pub(crate) fn object_path(&self, store: &StoreId, digest: Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.objects_dir(store).join(&hex[..2]).join(&hex[2..])
    }

    /// Where the outboard of a file object lives.
    pub(crate) fn outboard_path(&self, store: &StoreId, digest: Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.store_dir(store)
            .join("outboards")
            .join(&hex[..2])
            .join(&hex[2..])
    }

    /// The outboard of an object, open for reading, when it is there with
    /// the size `outboard_len` says; `None` otherwise (to be rebuilt).
    pub(crate) fn open_outboard(
        &self,
        store: &StoreId,
        digest: Digest,
        outboard_len: u64,
    ) -> Option<File> {
        let file = File::open(self.outboard_path(store, digest)).ok()?;
        let len = file.metadata().ok()?.len();
        (len == outboard_len).then_some(file)
    }

    /// Hashes an object file and computes its outboard in the same pass;
    /// `None` if the file has vanished.
    pub(crate) fn hash_with_outboard(
        &self,
        store: &StoreId,
        path: &Path,
    ) -> Result<Option<(Digest, Vec<u8>)>> {
        match hash_tree(path, Vec::new()) {
            Ok(hashed) => Ok(Some(hashed)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(store, "hashing object", path, source)),
        }
    }

    /// Whether the kept outboard of an intact object is `expected`, or
    /// there is none (it is built when needed). A wrong one is removed.
    pub(crate) fn outboard_agrees(&self, store: &StoreId, digest: Digest, expected: &[u8]) -> bool {
        let path = self.outboard_path(store, digest);
        match fs::read(&path) {
            Ok(kept) if kept != expected => {
                let _ = fs::remove_file(&path);
                false
            }
            _ => true,
        }
    }

    /// Moves a staged outboard (see [`staged_outboard`]) into place for
    /// object `digest`; without one, removes any outboard the object had,
    /// so that a stale one never outlives a rewrite. Best effort: a missing
    /// outboard is rebuilt when needed.
    pub(crate) fn place_outboard(&self, store: &StoreId, staged: &Path, digest: Digest) {
        let target = self.outboard_path(store, digest);
        let outboard = staged_outboard(staged);
        if !outboard.is_file() {
            let _ = fs::remove_file(&target);
            return;
        }
        let moved = fs::rename(&outboard, &target).or_else(|_| {
            self.create_dir(target.parent().expect("outboard paths have a shard"))?;
            fs::rename(&outboard, &target)
        });
        if moved.is_err() {
            let _ = fs::remove_file(&outboard);
        }
    }

    /// Removes an object's file and its outboard; a missing file is fine.
    pub(crate) fn remove_object(&self, store: &StoreId, digest: Digest) -> io::Result<()> {
        let _ = fs::remove_file(self.outboard_path(store, digest));
        match fs::remove_file(self.object_path(store, digest)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Whether the object's file is present (not whether it is intact).
    pub(crate) fn is_present(&self, store: &StoreId, digest: Digest) -> bool {
        self.object_path(store, digest).is_file()
    }

    /// Hashes an object file without loading it whole; `None` if the file
    /// has vanished (a concurrent collection removed it).
    pub(crate) fn hash_file(&self, store: &StoreId, path: &Path) -> Result<Option<Digest>> {
        let mut hasher = blake3::Hasher::new();
        match File::open(path).and_then(|file| hasher.update_reader(file).map(drop)) {
            Ok(()) => Ok(Some(Digest(*hasher.finalize().as_bytes()))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(store, "reading object", path, source)),
        }
    }

    /// Writes `content` to a new temporary file of `store` (fsync'd in
    /// synced mode) and returns its path. It becomes an object only when the
    /// index writer renames it into place ([`ObjectFiles::publish`]).
    pub(crate) fn write_temp(&self, store: &StoreId, content: &[u8]) -> Result<PathBuf> {
        let tmp_path = self.new_temp_path(store);
        let written = self.create_with_parents(&tmp_path).and_then(|mut file| {
            file.write_all(content)?;
            self.finish_temp(&tmp_path, &file)
        });
        written.map_err(|source| {
            let _ = fs::remove_file(&tmp_path);
            io_error(store, "writing temporary object", &tmp_path, source)
        })?;
        Ok(tmp_path)
    }

    /// A fresh path in the store's temporary directory.
    pub(crate) fn new_temp_path(&self, store: &StoreId) -> PathBuf {
        self.tmp_dir(store)
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Creates a new temporary file for streaming into (see [`Self::finish_temp`]).
    pub(crate) fn create_temp(&self, store: &StoreId) -> Result<(PathBuf, File)> {
        let tmp_path = self.new_temp_path(store);
        let file = self
            .create_with_parents(&tmp_path)
            .map_err(|source| io_error(store, "creating temporary object", &tmp_path, source))?;
        Ok((tmp_path, file))
    }

    /// Makes a fully written temporary file's contents durable in synced
    /// mode. Writers do this on their own threads, before they queue the
    /// file for publication, so that concurrent writers flush in parallel
    /// and the writer thread only has directories and the log to flush.
    pub(crate) fn finish_temp(&self, path: &Path, file: &File) -> io::Result<()> {
        match self.durability {
            Durability::Synced => {
                file.sync_data()?;
                record(|| Step::FileSynced(path.to_owned()));
                Ok(())
            }
            Durability::Buffered => Ok(()),
        }
    }

    /// Renames a temporary file into place as object `digest` and returns
    /// the shard directory, whose fsync makes the rename durable. Only the
    /// index writer calls this, inside its transaction, so that publishing
    /// and garbage collection never interleave, even across processes.
    pub(crate) fn publish(
        &self,
        store: &StoreId,
        tmp_path: &Path,
        digest: Digest,
    ) -> io::Result<PathBuf> {
        let final_path = self.object_path(store, digest);
        let shard_dir = final_path
            .parent()
            .expect("object paths have a shard")
            .to_owned();
        fs::rename(tmp_path, &final_path).or_else(|error| {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(error);
            }
            self.create_dir(&shard_dir)?;
            fs::rename(tmp_path, &final_path)
        })?;
        record(|| Step::Published(tmp_path.to_owned(), final_path.clone()));
        self.place_outboard(store, tmp_path, digest);
        Ok(shard_dir)
    }

    /// Moves a damaged object aside into `quarantine/`, for inspection.
    pub(crate) fn quarantine(&self, store: &StoreId, digest: Digest) -> io::Result<PathBuf> {
        let moved = self.quarantine_path(store, digest)?;
        let _ = fs::remove_file(self.outboard_path(store, digest));
        fs::rename(self.object_path(store, digest), &moved)?;
        Ok(moved)
    }

    /// What quarantine moved aside in `store`, with each file's path
    /// (named `<hex>-<unix seconds>`; other files there are not ours).
    pub(crate) fn quarantined(
        &self,
        store: &StoreId,
    ) -> Result<Vec<(super::QuarantinedBytes, PathBuf)>> {
        let dir = self.store_dir(store).join("quarantine");
        let mut found = Vec::new();
        for path in list_dir(store, &dir)? {
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            let Some((hex, stamp)) = name.split_once('-') else {
                continue;
            };
            let (Ok(digest), Ok(secs)) = (Digest::parse(hex), stamp.parse::<u64>()) else {
                continue;
            };
            let size = match fs::symlink_metadata(&path) {
                Ok(metadata) => metadata.len(),
                // Purged by another process meanwhile.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io_error(store, "inspecting", &path, source)),
            };
            let moved_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            found.push(((digest, size, moved_at), path));
        }
        Ok(found)
    }

    /// A new name in the store's `quarantine/` for damaged bytes of `digest`.
    fn quarantine_path(&self, store: &StoreId, digest: Digest) -> io::Result<PathBuf> {
        let dir = self.store_dir(store).join("quarantine");
        self.create_dir(&dir)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        Ok(dir.join(format!("{}-{stamp}", digest.to_hex())))
    }

    /// Every file under the store's `objects/`: its digest when the name is
    /// a well-formed object name, and its path and metadata.
    pub(crate) fn object_files(&self, store: &StoreId) -> Result<Vec<ObjectFile>> {
        let mut found = Vec::new();
        for shard in list_dir(store, &self.objects_dir(store))? {
            let shard_name = shard
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let entries = if shard.is_dir() {
                list_dir(store, &shard)?
            } else {
                vec![shard.clone()]
            };
            for path in entries {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let digest = if path == shard {
                    None
                } else {
                    Digest::parse(&format!("{shard_name}{name}")).ok()
                };
                // A file removed since the listing (a concurrent
                // collection) is simply gone.
                let Some(metadata) = inspect(store, &path)? else {
                    continue;
                };
                found.push(ObjectFile {
                    digest,
                    path,
                    metadata,
                });
            }
        }
        Ok(found)
    }

    /// Every file in the store's temporary directory, with its metadata.
    pub(crate) fn temp_files(&self, store: &StoreId) -> Result<Vec<(PathBuf, fs::Metadata)>> {
        let mut found = Vec::new();
        for path in list_dir(store, &self.tmp_dir(store))? {
            // Temporary files vanish as writers publish them.
            if let Some(metadata) = inspect(store, &path)? {
                found.push((path, metadata));
            }
        }
        Ok(found)
    }

    /// Staging files of `store` last modified before `cutoff`: writes that
    /// crashed rather than writes in progress.
    pub(crate) fn stale_temp_files(
        &self,
        store: &StoreId,
        cutoff: std::time::SystemTime,
    ) -> Result<Vec<PathBuf>> {
        // Files moved aside by removals are a collection's to finish or
        // undo, by what the index says ([`ObjectFiles::doomed_files`]).
        let doomed = |path: &Path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(DOOMED_PREFIX))
        };
        Ok(self
            .temp_files(store)?
            .into_iter()
            .filter(|(path, metadata)| {
                !doomed(path) && metadata.modified().is_ok_and(|at| at < cutoff)
            })
            .map(|(path, _)| path)
            .collect())
    }

    /// An object file's bytes, or `None` when the file is gone.
    pub(crate) fn read(&self, store: &StoreId, digest: Digest) -> Result<Option<Vec<u8>>> {
        let path = self.object_path(store, digest);
        let mut bytes = Vec::new();
        match self
            .open_file(store, digest)
            .and_then(|mut file| file.read_to_end(&mut bytes))
        {
            Ok(_) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(store, "reading object", &path, source)),
        }
    }

    /// Writes bytes found damaged aside into `quarantine/`, for
    /// inspection (inline content has no file to move).
    pub(crate) fn quarantine_bytes(
        &self,
        store: &StoreId,
        digest: Digest,
        bytes: &[u8],
    ) -> io::Result<PathBuf> {
        let moved = self.quarantine_path(store, digest)?;
        fs::write(&moved, bytes)?;
        Ok(moved)
    }

    /// An object's file opened for reading, with its outboard when one of
    /// the right size is kept (else it is rebuilt on first read); `None`
    /// when the file is gone.
    pub(crate) fn open_source(
        &self,
        store: &StoreId,
        digest: Digest,
        size: u64,
    ) -> Result<Option<ObjectSource>> {
        let data = match self.open_file(store, digest) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                let path = self.object_path(store, digest);
                return Err(io_error(store, "reading object", &path, source));
            }
        };
        let outboard = self
            .open_outboard(store, digest, crate::tree::outboard_len(size))
            .map(|file| Box::new(file) as Box<dyn RandomAccess>);
        let data = Box::new(data);
        Ok(Some(ObjectSource::File { data, outboard }))
    }

    /// An object's file, to be read through; `None` when it is gone.
    pub(crate) fn open_reader(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<Box<dyn Read + Send>>> {
        match self.open_file(store, digest) {
            Ok(file) => Ok(Some(Box::new(file))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => {
                let path = self.object_path(store, digest);
                Err(io_error(store, "reading object", &path, source))
            }
        }
    }

    /// Hashes an object's file into a staged outboard beside a new
    /// temporary path; the digest the bytes have and that path, or `None`
    /// when the file is gone.
    pub(crate) fn build_outboard(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<(Digest, PathBuf)>> {
        let path = self.object_path(store, digest);
        let staged = self.new_temp_path(store);
        let outboard_path = staged_outboard(&staged);
        let built = self.create_temp_at(&outboard_path).and_then(|outboard| {
            let (actual, outboard) = hash_tree(&path, io::BufWriter::new(outboard))?;
            outboard
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?;
            Ok(actual)
        });
        match built {
            Ok(actual) => Ok(Some((actual, staged))),
            Err(error) => {
                remove_staged(&staged);
                if error.kind() == io::ErrorKind::NotFound && !path.exists() {
                    return Ok(None);
                }
                Err(io_error(store, "building outboard", &path, error))
            }
        }
    }

    /// Re-hashes every file under the store's `objects/` into `scan`:
    /// intact ones `indexed` claims, unindexed ones, damaged ones, and
    /// things that are not objects at all. A kept outboard found wrong is
    /// removed and noted.
    pub(crate) fn scan_files(
        &self,
        store: &StoreId,
        files: Vec<ObjectFile>,
        indexed: &dyn Fn(&Digest) -> bool,
        scan: &mut Scan,
        progress: &dyn Progress,
    ) -> Result<()> {
        for file in files {
            let digest = match file.digest {
                Some(digest) if file.metadata.is_file() => digest,
                _ => {
                    scan.stray.push(file.path);
                    continue;
                }
            };
            // A file that vanished since the listing was removed by a
            // concurrent collection: nothing to check.
            if let Some((actual, outboard)) = self.hash_with_outboard(store, &file.path)? {
                if actual == digest && !self.outboard_agrees(store, digest, &outboard) {
                    scan.damaged_outboards.push(digest);
                }
                scan.tally(
                    digest,
                    file.metadata.len(),
                    actual,
                    indexed(&digest),
                    progress,
                );
            }
        }
        Ok(())
    }

    /// Deletes an object file no index row claims (and its outboard), if
    /// last modified before `cutoff`; returns whether it did.
    pub(crate) fn remove_unindexed(
        &self,
        store: &StoreId,
        digest: Digest,
        cutoff: std::time::SystemTime,
    ) -> Result<bool> {
        let path = self.object_path(store, digest);
        let old_enough = fs::symlink_metadata(&path)
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| modified < cutoff);
        if !old_enough {
            return Ok(false);
        }
        self.remove_object(store, digest)
            .map(|()| true)
            .map_err(|source| io_error(store, "removing unindexed object", &path, source))
    }

    /// Object files of `store` no index row claims, last modified before
    /// `cutoff`.
    pub(crate) fn unindexed(
        &self,
        store: &StoreId,
        cutoff: std::time::SystemTime,
        indexed: impl Fn(&Digest) -> bool,
    ) -> Result<Vec<Digest>> {
        Ok(self
            .object_files(store)?
            .into_iter()
            .filter(|file| file.metadata.modified().is_ok_and(|at| at < cutoff))
            .filter_map(|file| file.digest)
            .filter(|digest| !indexed(digest))
            .collect())
    }

    /// Finishes or undoes the removals a collection left (files moved
    /// aside, see [`ObjectFiles::doom_object`]): a file whose object is no
    /// longer `held` is deleted, one whose object is held is put back.
    /// Returns how many were deleted and put back.
    pub(crate) fn finish_removals(
        &self,
        store: &StoreId,
        mut held: impl FnMut(Digest) -> Result<bool>,
    ) -> Result<(u64, u64)> {
        let (mut deleted, mut restored) = (0, 0);
        for (digest, path) in self.doomed_files(store)? {
            let held = held(digest)?;
            if held && self.restore_doomed(store, digest) {
                restored += 1;
            } else if !held && fs::remove_file(&path).is_ok() {
                deleted += 1;
            }
        }
        Ok((deleted, restored))
    }

    /// What quarantine moved aside in `store`, as the engine reports it.
    pub(crate) fn quarantined_bytes(&self, store: &StoreId) -> Result<Vec<QuarantinedBytes>> {
        let found = self.quarantined(store)?;
        Ok(found.into_iter().map(|(entry, _)| entry).collect())
    }

    /// Deletes what quarantine moved aside in `store` before `cutoff`;
    /// returns how many pieces went.
    pub(crate) fn purge_quarantine(
        &self,
        store: &StoreId,
        cutoff: std::time::SystemTime,
    ) -> Result<u64> {
        let mut purged = 0;
        for ((_, _, moved_at), path) in self.quarantined(store)? {
            if moved_at >= cutoff {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => purged += 1,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(io_error(store, "purging quarantine", &path, source)),
            }
        }
        Ok(purged)
    }

    /// Whether content is written durably before it is published.
    pub(crate) fn is_synced(&self) -> bool {
        self.durability == Durability::Synced
    }

    /// Creates a new temporary file at `path` (in a store's `tmp/`).
    pub(crate) fn create_temp_at(&self, path: &Path) -> io::Result<File> {
        self.create_with_parents(path)
    }

    /// Creates a new file, creating missing parent directories on the first
    /// failure only, so the common path costs one `open`.
    fn create_with_parents(&self, path: &Path) -> io::Result<File> {
        let create = || File::options().write(true).create_new(true).open(path);
        create().or_else(|error| {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(error);
            }
            self.create_dir(path.parent().expect("temporary files have a parent"))?;
            create()
        })
    }

    /// Creates a directory and its missing parents; in synced mode also makes
    /// each new entry durable by fsyncing the directory that holds it.
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut cursor = dir;
        while !cursor.is_dir() {
            missing.push(cursor);
            cursor = match cursor.parent() {
                Some(parent) => parent,
                None => break,
            };
        }
        fs::create_dir_all(dir)?;
        if self.durability == Durability::Synced {
            for created in missing {
                if let Some(parent) = created.parent() {
                    sync_dir(parent)?;
                }
            }
        }
        Ok(())
    }
}

/// Hashes the file at `path`, writing its outboard to `outboard`.
pub(crate) fn hash_tree<W: Write>(path: &Path, outboard: W) -> io::Result<(Digest, W)> {
    let mut hasher = TreeHasher::new(outboard);
    let mut file = io::BufReader::with_capacity(1 << 20, File::open(path)?);
    loop {
        let bytes = file.fill_buf()?;
        if bytes.is_empty() {
            return hasher.finish();
        }
        let len = bytes.len();
        hasher.update(bytes)?;
        file.consume(len);
    }
}

/// Removes files; returns how many went.
pub(crate) fn remove_files(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter(|path| fs::remove_file(path).is_ok())
        .count() as u64
}

/// Keeps an outboard computed while content was staged beside the
/// staged file (content staged in memory needs none).
pub(crate) fn attach_outboard(staged: &Staged, outboard: &[u8]) {
    if let Staged::File(path) = staged
        && !outboard.is_empty()
    {
        let _ = fs::write(staged_outboard(path), outboard);
    }
}

/// Where the outboard of the staged object at `staged` is written.
pub(crate) fn staged_outboard(staged: &Path) -> PathBuf {
    staged.with_extension("obao")
}

/// Removes a staged object and its staged outboard.
pub(crate) fn remove_staged(staged: &Path) {
    let _ = fs::remove_file(staged_outboard(staged));
    let _ = fs::remove_file(staged);
}

/// The directory name of store `id`: the id, with each ASCII capital letter
/// written as `^` and its small letter. `^` is not allowed in ids, so the
/// mapping is one-to-one, and two ids that differ only in case get names
/// that differ even to a file system that ignores case (macOS, Windows).
pub(crate) fn store_dir_name(id: &str) -> String {
    let mut name = String::with_capacity(id.len());
    for c in id.chars() {
        if c.is_ascii_uppercase() {
            name.push('^');
            name.push(c.to_ascii_lowercase());
        } else {
            name.push(c);
        }
    }
    name
}

/// The store id a directory name stands for ([`store_dir_name`] undone);
/// `None` for a name no id maps to.
fn store_id_of_dir(name: &str) -> Option<String> {
    let mut id = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match c {
            '^' => id.push(
                chars
                    .next()
                    .filter(char::is_ascii_lowercase)?
                    .to_ascii_uppercase(),
            ),
            c if c.is_ascii_uppercase() => return None,
            c => id.push(c),
        }
    }
    Some(id)
}

/// A file found under a store's `objects/` directory.
#[derive(Debug)]
pub(crate) struct ObjectFile {
    /// The object it holds, or `None` for a file whose name is not an object name.
    pub(crate) digest: Option<Digest>,
    pub(crate) path: PathBuf,
    pub(crate) metadata: fs::Metadata,
}

/// The metadata of `path`, or `None` if it no longer exists.
fn inspect(store: &StoreId, path: &Path) -> Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error(store, "inspecting", path, source)),
    }
}

/// The entries of `dir`, or none when it does not exist.
fn list_dir(store: &StoreId, dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_error(store, "listing", dir, source)),
    };
    entries
        .map(|entry| {
            entry
                .map(|e| e.path())
                .map_err(|source| io_error(store, "listing", dir, source))
        })
        .collect()
}

/// Makes the entries of `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    record(|| Step::DirSynced(dir.to_owned()));
    Ok(())
}

/// A sink that keeps content in memory up to `inline_threshold` and
/// spills it, with its outboard, into a temporary file of `layout`.
pub(crate) fn spill_sink(
    store: &StoreId,
    layout: ObjectFiles,
    inline_threshold: usize,
) -> Box<dyn StagingSink> {
    Box::new(SpillSink {
        store: store.clone(),
        layout,
        inline_threshold,
        memory: Vec::new(),
        outboard_memory: Vec::new(),
        file: None,
    })
}

/// Content being streamed in: kept in memory while it fits under the
/// inline threshold, then in a temporary file with its outboard beside it.
struct SpillSink {
    store: StoreId,
    layout: ObjectFiles,
    inline_threshold: usize,
    memory: Vec<u8>,
    outboard_memory: Vec<u8>,
    file: Option<SpillFiles>,
}

/// The temporary files of a [`SpillSink`] that outgrew memory.
struct SpillFiles {
    path: PathBuf,
    data: io::BufWriter<File>,
    outboard: io::BufWriter<File>,
}

impl SpillSink {
    /// Moves what is in memory to new temporary files.
    fn spill(&mut self) -> io::Result<&mut SpillFiles> {
        let (path, data) = self
            .layout
            .create_temp(&self.store)
            .map_err(io::Error::other)?;
        let files = SpillFiles {
            outboard: io::BufWriter::new(File::create(staged_outboard(&path))?),
            // Pieces of 256 KiB and more go straight to the file.
            data: io::BufWriter::with_capacity(256 << 10, data),
            path,
        };
        let files = self.file.insert(files);
        files.data.write_all(&std::mem::take(&mut self.memory))?;
        files
            .outboard
            .write_all(&std::mem::take(&mut self.outboard_memory))?;
        Ok(files)
    }
}

impl Write for SpillSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some(files) = &mut self.file {
            return files.data.write(bytes);
        }
        if self.memory.len() + bytes.len() <= self.inline_threshold {
            self.memory.extend_from_slice(bytes);
            return Ok(bytes.len());
        }
        self.spill()?.data.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StagingSink for SpillSink {
    fn write_outboard(&mut self, pairs: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(files) => files.outboard.write_all(pairs),
            None => {
                self.outboard_memory.extend_from_slice(pairs);
                Ok(())
            }
        }
    }

    fn finish(self: Box<Self>) -> Result<Staged> {
        let Some(files) = self.file else {
            return Ok(Staged::Inline(std::sync::Arc::new(self.memory)));
        };
        let SpillFiles {
            path,
            data,
            outboard,
        } = files;
        let finished = data
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .and_then(|data| self.layout.finish_temp(&path, &data));
        // The outboard is derived data: a failure here only costs a rebuild.
        if outboard.into_inner().is_err() {
            let _ = std::fs::remove_file(staged_outboard(&path));
        }
        match finished {
            Ok(()) => Ok(Staged::File(path)),
            Err(source) => {
                remove_staged(&path);
                Err(io_error(
                    &self.store,
                    "writing staged object",
                    &path,
                    source,
                ))
            }
        }
    }

    fn abandon(self: Box<Self>) {
        if let Some(files) = self.file {
            remove_staged(&files.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{store_dir_name, store_id_of_dir};

    #[test]
    fn store_dir_names_differ_for_ids_that_differ_only_in_case() {
        assert_eq!(store_dir_name("abc-1.x_y"), "abc-1.x_y");
        assert_eq!(store_dir_name("ABc"), "^a^bc");
        let ids = ["abc", "ABC", "Abc", "aBC", "aBc"];
        let folded: std::collections::BTreeSet<String> = ids
            .iter()
            .map(|id| store_dir_name(id).to_lowercase())
            .collect();
        assert_eq!(folded.len(), ids.len());
        for id in ids {
            assert_eq!(store_id_of_dir(&store_dir_name(id)).as_deref(), Some(id));
        }
        assert_eq!(store_id_of_dir("^"), None);
        assert_eq!(store_id_of_dir("Abc"), None);
    }
}
