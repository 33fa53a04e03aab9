//! A store root: one directory holding many stores, with one label index and
//! one writer thread shared by all of them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::sync::OnceCell;

use crate::durability::Durability;
use crate::engine::{Engine, Location};
use crate::error::{Result, StoreError};
use crate::options::Options;
use crate::recent::{AsOf, RecentReads};
use crate::stats::StoreStats;
use crate::task::blocking;

/// The environment variable that names the default root.
pub const ROOT_ENV_VAR: &str = "THEATER_STORE_ROOT";

/// The reserved store where hosts keep compiled components.
pub(crate) const COMPONENT_CACHE_STORE: &str = "_compiled";

/// The reserved store where hosts record which actor created which store.
pub(crate) const OWNERS_STORE: &str = "_owners";

/// Where stores live: a directory, e.g. `~/.local/share/theater-store`,
/// or (with the `shared` feature) a PostgreSQL database and an S3 bucket
/// shared by many hosts ([`StoreRoot::at`]).
///
/// Cheap to clone; clones share the index connections and the writer thread.
/// Nothing is touched on disk until the first operation (or [`StoreRoot::open`]).
#[derive(Clone, Debug)]
pub struct StoreRoot {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    location: Option<Location>,
    options: Options,
    engine: OnceCell<Arc<dyn Engine>>,
    recent: RecentReads,
}

/// A store's id and totals, as listed by [`StoreRoot::stores`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreSummary {
    /// The store id (`"store"` in JSON, as everywhere else).
    #[serde(rename = "store")]
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
        Self::from_parts(Some(Location::Dir(path.into())), options)
    }

    /// The root a root string names: a directory path, or
    /// `postgres://USER@HOST:PORT/DB?objects=s3://BUCKET/PREFIX` for the
    /// shared engine (add `&cache=DIR` for this host's read cache, and
    /// `&cache_bytes=N` to bound it; the object store is configured by the
    /// standard `AWS_*` variables), `mem:NAME` for a root in this
    /// process's memory, or `log:DIR` for a root kept as one append-only
    /// log in directory `DIR`. Opens lazily; a malformed string fails here,
    /// naming what is wrong and never printing a password.
    ///
    /// A log root writes each change as one append to its log and keeps
    /// its index in memory, rebuilt from the log when opened: small writes
    /// and reads cost a fraction of a local root's. It belongs to one
    /// process at a time (others are refused while it is open; handles in
    /// that process share it), and its index takes memory in proportion
    /// to its labels and objects (see docs/DESIGN.md, "The log engine").
    ///
    /// A memory root behaves like the others (the same suites run on every
    /// engine) and keeps nothing on disk: for unit tests of code built on
    /// the store. `mem:NAME` opens the same root each time in this process,
    /// until it exits; `mem:` alone makes a fresh one, gone with its last
    /// handle ([`StoreRoot::describe`] names it for other handles).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use theater_store::{Options, StoreRoot};
    /// let root = StoreRoot::at("mem:", Options::default())?;
    /// let store = root.store("notes")?;
    /// let stored = store.store_at_label("today", "no disk touched").await?;
    /// assert_eq!(store.get_by_label("today").await?, Some(stored));
    /// # Ok::<(), theater_store::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn at(root: &str, options: Options) -> Result<Self> {
        let mut options = options;
        let location = Location::parse(root, &mut options)?;
        Ok(Self::from_parts(Some(location), options))
    }

    /// Opens (creating if needed) the root at `path` now, so that a bad path
    /// fails here rather than at the first store call.
    pub async fn open(path: impl Into<PathBuf>, durability: Durability) -> Result<Self> {
        let root = Self::with_durability(path, durability);
        root.engine().await?;
        Ok(root)
    }

    fn from_parts(location: Option<Location>, options: Options) -> Self {
        Self {
            shared: Arc::new(Shared {
                location,
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
    /// [`crate::ContentStore::new`] and [`crate::ContentStore::from_id`]. Resolved once.
    pub fn global() -> StoreRoot {
        static GLOBAL: OnceLock<StoreRoot> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let mut options = Options::default();
                let location = Self::default_location().map(|path| {
                    let root = path.to_string_lossy();
                    Location::parse(&root, &mut options).unwrap_or(Location::Dir(path))
                });
                Self::from_parts(location, options)
            })
            .clone()
    }

    /// The directory the root keeps its files in: a local root's, or a
    /// log root's (`log:DIR`). `None` for memory and shared roots.
    pub fn path(&self) -> Option<&Path> {
        self.shared.location.as_ref()?.dir()
    }

    /// How the root is named in messages: its directory, or its root
    /// string without the password. `None` when no root is known.
    pub fn describe(&self) -> Option<String> {
        self.shared.location.as_ref().map(Location::describe)
    }

    /// The durability every write through this root gets.
    pub fn durability(&self) -> Durability {
        self.shared.options.durability
    }

    /// The options this root was made with.
    pub fn options(&self) -> &Options {
        &self.shared.options
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

    /// Whether `other` is this very root (the same directory, or the same
    /// database and bucket), however each was named.
    pub fn same_root_as(&self, other: &StoreRoot) -> bool {
        self.identity() == other.identity()
    }

    /// The same name for this root from every host and process: its
    /// canonical directory, or a shared root's database and bucket.
    pub(crate) fn identity(&self) -> String {
        self.shared
            .location
            .as_ref()
            .map(Location::identity)
            .unwrap_or_default()
    }

    /// The opened root, opening it on first use. A failed open is retried by
    /// the next call rather than remembered.
    pub(crate) async fn engine(&self) -> Result<Arc<dyn Engine>> {
        // Every call comes here first: outside Tokio, say so rather than
        // panic at the first blocking step.
        tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
        if let Some(engine) = self.shared.engine.get() {
            return Ok(Arc::clone(engine));
        }
        let location = self
            .shared
            .location
            .clone()
            .ok_or(StoreError::NoDefaultRoot)?;
        let options = self.shared.options.clone();
        let open = || blocking(move || crate::engine::open(&location, &options));
        self.shared.engine.get_or_try_init(open).await.cloned()
    }

    /// This root's remembered reads, as of `engine`'s state now.
    pub(crate) fn recent(&self, engine: &dyn Engine) -> AsOf<'_> {
        self.shared.recent.as_of(engine.settled())
    }
}
