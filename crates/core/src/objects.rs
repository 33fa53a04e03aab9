//! Object files: where content bytes live on disk.
//!
//! `stores/<store-id>/objects/<first 2 hex>/<remaining 62 hex>`. An object is
//! written to `stores/<store-id>/tmp/` first and renamed into place, so a
//! reader or a crash sees either no file or the whole file. The shard level
//! keeps directories small (256 of them, each with 1/256 of the objects).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::names::{Digest, StoreId};
use crate::root::Durability;

/// File-level access to the objects of every store under one root.
#[derive(Debug)]
pub(crate) struct ObjectFiles {
    stores_dir: PathBuf,
    durability: Durability,
}

impl ObjectFiles {
    pub(crate) fn new(root: &Path, durability: Durability) -> Self {
        Self {
            stores_dir: root.join("stores"),
            durability,
        }
    }

    pub(crate) fn store_dir(&self, store: &StoreId) -> PathBuf {
        self.stores_dir.join(store.as_str())
    }

    pub(crate) fn tmp_dir(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("tmp")
    }

    pub(crate) fn objects_dir(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("objects")
    }

    pub(crate) fn object_path(&self, store: &StoreId, digest: Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.objects_dir(store).join(&hex[..2]).join(&hex[2..])
    }

    /// Whether the object's file is present (not whether it is intact).
    pub(crate) fn is_present(&self, store: &StoreId, digest: Digest) -> bool {
        self.object_path(store, digest).is_file()
    }

    /// Publishes `content` as the object `digest` with write-then-rename.
    ///
    /// Returns the shard directory the object was renamed into. In
    /// [`Durability::Synced`] mode the file itself has been fsync'd; the
    /// directory entry becomes durable when the caller fsyncs that directory,
    /// which the index writer does once per batch (group commit).
    pub(crate) fn publish(
        &self,
        store: &StoreId,
        digest: Digest,
        content: &[u8],
    ) -> Result<PathBuf> {
        let final_path = self.object_path(store, digest);
        let shard_dir = final_path
            .parent()
            .expect("object paths have a shard")
            .to_owned();
        let tmp_path = self
            .tmp_dir(store)
            .join(uuid::Uuid::new_v4().simple().to_string());
        let io_error = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                store: store.to_string(),
                action,
                path,
                source,
            }
        };

        let mut file = self
            .create_with_parents(&tmp_path)
            .map_err(io_error("creating temporary file", &tmp_path))?;
        let written = file
            .write_all(content)
            .and_then(|()| match self.durability {
                Durability::Synced => file.sync_data(),
                Durability::Buffered => Ok(()),
            });
        drop(file);
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp_path);
            return Err(io_error("writing object", &tmp_path)(source));
        }
        let renamed = fs::rename(&tmp_path, &final_path).or_else(|error| {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(error);
            }
            self.create_dir(&shard_dir)?;
            fs::rename(&tmp_path, &final_path)
        });
        if let Err(source) = renamed {
            let _ = fs::remove_file(&tmp_path);
            return Err(io_error("publishing object", &final_path)(source));
        }
        Ok(shard_dir)
    }

    /// Reads an object and checks that its bytes still hash to `digest`.
    pub(crate) fn read_verified(&self, store: &StoreId, digest: Digest) -> Result<Vec<u8>> {
        let path = self.object_path(store, digest);
        let bytes = fs::read(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StoreError::NotFound {
                    store: store.to_string(),
                    reference: digest.to_hex(),
                }
            } else {
                StoreError::Io {
                    store: store.to_string(),
                    action: "reading object",
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(StoreError::Corrupted {
                store: store.to_string(),
                reference: digest.to_hex(),
                actual: actual.to_hex(),
            });
        }
        Ok(bytes)
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

/// Makes the entries of `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
