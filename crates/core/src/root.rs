//! A store root: one directory holding many stores, with one label index and
//! one writer thread shared by all of them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::sync::OnceCell;

use crate::durability::Durability;
use crate::engine::{Change, Engine};
use crate::error::{Result, StoreError};
use crate::names::StoreId;
use crate::options::Options;
use crate::recent::{AsOf, RecentReads};
use crate::stats::StoreStats;
use crate::store::ContentStore;

/// The environment variable that names the default root.
pub const ROOT_ENV_VAR: &str = "THEATER_STORE_ROOT";

/// The reserved store where hosts keep compiled components.
pub(crate) const COMPONENT_CACHE_STORE: &str = "_compiled";

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
    options: Options,
    engine: OnceCell<Arc<Engine>>,
    recent: RecentReads,
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
        Self::with_options(
            path,
            Options {
                durability,
                ..Options::default()
            },
        )
    }

    /// A root at `path` with the given options. Opens lazily; options that
    /// are out of range fail the first operation.
    pub fn with_options(path: impl Into<PathBuf>, options: Options) -> Self {
        Self::from_parts(Some(path.into()), options)
    }

    /// Opens (creating if needed) the root at `path` now, so that a bad path
    /// fails here rather than at the first store call.
    pub async fn open(path: impl Into<PathBuf>, durability: Durability) -> Result<Self> {
        let root = Self::with_durability(path, durability);
        root.engine().await?;
        Ok(root)
    }

    fn from_parts(path: Option<PathBuf>, options: Options) -> Self {
        Self {
            shared: Arc::new(Shared {
                path,
                recent: RecentReads::new(options.read_cache_bytes),
                options,
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
            .get_or_init(|| Self::from_parts(Self::default_location(), Options::default()))
            .clone()
    }

    /// The root directory, if known.
    pub fn path(&self) -> Option<&Path> {
        self.shared.path.as_deref()
    }

    /// The durability every write through this root gets.
    pub fn durability(&self) -> Durability {
        self.shared.options.durability
    }

    /// The options this root was made with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// Makes a store with a fresh UUID v4 id and registers it, so that it is
    /// listed even before anything is stored in it.
    pub async fn create_store(&self) -> Result<ContentStore> {
        let store = ContentStore::in_root(self.clone(), StoreId::generate());
        let engine = self.engine().await?;
        let change = Change::CreateStore {
            store: store.store_id().clone(),
        };
        engine.apply(change).await?;
        Ok(store)
    }

    /// The store with id `id` (which need not exist yet: writes create it).
    pub fn store(&self, id: &str) -> Result<ContentStore> {
        Ok(ContentStore::in_root(self.clone(), StoreId::parse(id)?))
    }

    /// Every store in the root, by id, with its totals. The root's own
    /// stores are not listed (see [`StoreRoot::reserved_stores`]).
    pub async fn stores(&self) -> Result<Vec<StoreSummary>> {
        let engine = self.engine().await?;
        let rows = blocking(move || engine.stores()).await?;
        Ok(rows
            .into_iter()
            .filter(|(id, _)| !id.starts_with('_'))
            .map(|(id, stats)| StoreSummary { id, stats })
            .collect())
    }

    /// The reserved store where hosts keep compiled components, labelled
    /// by what they were compiled from and for. It is a cache: `gc` drops
    /// entries stored before its grace period, labels and all, and no
    /// caller can name it by id.
    pub fn component_cache(&self) -> ContentStore {
        ContentStore::in_root(self.clone(), StoreId::reserved(COMPONENT_CACHE_STORE))
    }

    /// The root's own stores that exist (the event chains, the component
    /// cache), for maintenance: `verify` and `gc` over every store should
    /// cover these too.
    pub async fn reserved_stores(&self) -> Result<Vec<ContentStore>> {
        let engine = self.engine().await?;
        let rows = blocking(move || engine.stores()).await?;
        Ok(rows
            .into_iter()
            .filter(|(id, _)| id.starts_with('_'))
            .map(|(id, _)| ContentStore::in_root(self.clone(), StoreId::reserved(id)))
            .collect())
    }

    /// The opened root, opening it on first use. A failed open is retried by
    /// the next call rather than remembered.
    pub(crate) async fn engine(&self) -> Result<Arc<Engine>> {
        if let Some(engine) = self.shared.engine.get() {
            return Ok(Arc::clone(engine));
        }
        let path = self.shared.path.clone().ok_or(StoreError::NoDefaultRoot)?;
        let options = self.shared.options.clone();
        let open = || blocking(move || Engine::open(&path, &options).map(Arc::new));
        self.shared.engine.get_or_try_init(open).await.cloned()
    }

    /// This root's remembered reads, as of `engine`'s state now.
    pub(crate) fn recent(&self, engine: &Engine) -> AsOf<'_> {
        self.shared.recent.as_of(engine.settled())
    }
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
