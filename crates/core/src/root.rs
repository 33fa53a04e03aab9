//! A store root: one directory holding many stores, with one label index and
//! one writer thread shared by all of them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::sync::OnceCell;

use crate::error::{Result, StoreError};
use crate::index::{self, Readers, StoreStats, WriteOp, index_error};
use crate::names::StoreId;
use crate::objects::ObjectFiles;
use crate::store::ContentStore;
use crate::writer::Writer;

/// The environment variable that names the default root.
pub const ROOT_ENV_VAR: &str = "THEATER_STORE_ROOT";

/// How hard a write works to survive failures before it is acknowledged.
///
/// Either way, a write is atomic: no reader and no crash ever sees part of an
/// object or a half-made label change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// An acknowledged write survives the process being killed; a power loss
    /// or kernel crash may lose the last moments of writes (a lost object
    /// then reads as [`StoreError::Corrupted`] or `NotFound`, never as wrong
    /// bytes). No fsync on the write path.
    #[default]
    Buffered,
    /// An acknowledged write also survives power loss: object files, their
    /// directories and the index are fsync'd before the acknowledgement.
    /// Concurrent writes share those fsyncs (group commit).
    Synced,
}

/// One stores directory, e.g. `~/.local/share/theater-store`.
///
/// Cheap to clone; clones share the index connections and the writer thread.
/// Nothing is touched on disk until the first operation (or [`StoreRoot::open`]).
#[derive(Clone, Debug)]
pub struct StoreRoot {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: Option<PathBuf>,
    durability: Durability,
    engine: OnceCell<Arc<Engine>>,
}

/// The opened parts of a root, made on first use.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) objects: ObjectFiles,
    pub(crate) readers: Readers,
    pub(crate) writer: Writer,
}

/// A store's id and totals, as listed by [`StoreRoot::stores`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreSummary {
    /// The store id.
    pub id: String,
    /// Its totals.
    #[serde(flatten)]
    pub stats: StoreStats,
}

impl StoreRoot {
    /// A root at `path` with [`Durability::Buffered`]. Opens lazily.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_durability(path, Durability::default())
    }

    /// A root at `path` with the given durability. Opens lazily.
    pub fn with_durability(path: impl Into<PathBuf>, durability: Durability) -> Self {
        Self::from_parts(Some(path.into()), durability)
    }

    /// Opens (creating if needed) the root at `path` now, so that a bad path
    /// fails here rather than at the first store call.
    pub async fn open(path: impl Into<PathBuf>, durability: Durability) -> Result<Self> {
        let root = Self::with_durability(path, durability);
        root.engine().await?;
        Ok(root)
    }

    fn from_parts(path: Option<PathBuf>, durability: Durability) -> Self {
        Self {
            shared: Arc::new(Shared {
                path,
                durability,
                engine: OnceCell::new(),
            }),
        }
    }

    /// Where tools keep stores when not told otherwise: `$THEATER_STORE_ROOT`
    /// if set and non-empty, else `theater-store` in the platform data
    /// directory (`$XDG_DATA_HOME` or `~/.local/share` on Linux). `None` when
    /// neither is known.
    pub fn default_location() -> Option<PathBuf> {
        match std::env::var_os(ROOT_ENV_VAR) {
            Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
            _ => dirs::data_dir().map(|data| data.join("theater-store")),
        }
    }

    /// The process-wide root at [`StoreRoot::default_location`], used by
    /// [`ContentStore::new`] and [`ContentStore::from_id`]. Resolved once.
    pub fn global() -> StoreRoot {
        static GLOBAL: OnceLock<StoreRoot> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Self::from_parts(Self::default_location(), Durability::default()))
            .clone()
    }

    /// The root directory, if known.
    pub fn path(&self) -> Option<&Path> {
        self.shared.path.as_deref()
    }

    /// The durability every write through this root gets.
    pub fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// Makes a store with a fresh UUID v4 id and registers it, so that it is
    /// listed even before anything is stored in it.
    pub async fn create_store(&self) -> Result<ContentStore> {
        let store = ContentStore::in_root(self.clone(), StoreId::generate());
        let engine = self.engine().await?;
        let op = WriteOp::CreateStore {
            store: store.store_id().clone(),
        };
        engine.writer.write(op).await?;
        Ok(store)
    }

    /// The store with id `id` (which need not exist yet: writes create it).
    pub fn store(&self, id: &str) -> Result<ContentStore> {
        Ok(ContentStore::in_root(self.clone(), StoreId::parse(id)?))
    }

    /// Every store in the root, by id, with its totals.
    pub async fn stores(&self) -> Result<Vec<StoreSummary>> {
        let engine = self.engine().await?;
        let rows = blocking(move || engine.readers.read("listing stores", index::stores)).await?;
        Ok(rows
            .into_iter()
            .map(|(id, stats)| StoreSummary { id, stats })
            .collect())
    }

    /// The opened root, opening it on first use. A failed open is retried by
    /// the next call rather than remembered.
    pub(crate) async fn engine(&self) -> Result<Arc<Engine>> {
        let path = self.shared.path.clone().ok_or(StoreError::NoDefaultRoot)?;
        let durability = self.shared.durability;
        self.shared
            .engine
            .get_or_try_init(|| blocking(move || Engine::open(path, durability)))
            .await
            .cloned()
    }
}

impl Engine {
    fn open(path: PathBuf, durability: Durability) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&path).map_err(|source| StoreError::Io {
            store: "root".into(),
            action: "creating store root",
            path: path.clone(),
            source,
        })?;
        let db = path.join("index.sqlite");
        let mut connection = index::open_connection(&db, durability, true)
            .map_err(|source| index_error(&path, "opening", source))?;
        let objects = ObjectFiles::new(&path, durability);
        index::create_schema(&mut connection, |db, version| {
            if version == 1 {
                move_stores_to_case_safe_dirs(db, &objects)?;
            }
            Ok(())
        })
        .map_err(|source| index_error(&path, "creating or upgrading schema", source))?;
        Ok(Arc::new(Self {
            readers: Readers::new(db, path.clone()),
            writer: Writer::spawn(connection, path, objects.clone(), durability),
            objects,
        }))
    }
}

/// Upgrades a root made by the first release, which named store directories
/// by the id verbatim, to case-safe names (see `objects::store_dir_name`).
/// Runs inside the schema upgrade's transaction, so concurrent openers wait
/// and a crash half way is finished by the next open: moving is idempotent.
fn move_stores_to_case_safe_dirs(
    db: &rusqlite::Connection,
    objects: &ObjectFiles,
) -> std::result::Result<(), crate::error::BoxError> {
    let ids = index::store_ids(db)?;
    for id in ids
        .iter()
        .filter(|id| id.bytes().any(|b| b.is_ascii_uppercase()))
    {
        let store = StoreId::parse(id)?;
        let (old, new) = (objects.legacy_store_dir(id), objects.store_dir(&store));
        if !old.exists() || new.exists() {
            continue;
        }
        // On a case-insensitive file system, ids that differ only in case
        // shared one directory: copy this store's own objects out of it
        // rather than take the other store's files along.
        let shares_dir = ids.iter().any(|other| {
            other != id
                && other.eq_ignore_ascii_case(id)
                && same_dir(&old, &objects.legacy_store_dir(other))
        });
        if shares_dir {
            for digest in index::objects(db, &store)? {
                let target = objects.object_path(&store, digest);
                std::fs::create_dir_all(target.parent().expect("objects have a shard"))?;
                std::fs::copy(old.join(target.strip_prefix(&new)?), &target)?;
            }
        } else {
            std::fs::rename(&old, &new)?;
        }
    }
    Ok(())
}

/// Whether two paths name one directory (as two spellings do on a
/// case-insensitive file system).
#[cfg(unix)]
fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Without inode numbers, two spellings that both exist are taken to be
/// one directory: copying is right either way, renaming is not.
#[cfg(not(unix))]
fn same_dir(a: &Path, b: &Path) -> bool {
    a.exists() && b.exists()
}

/// Runs blocking filesystem or database work off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
    }
}
