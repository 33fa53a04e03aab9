//! What an actor may do: which stores it may reach (grants) and how much it
//! may use (limits). Both are set by the embedder per actor.

use std::collections::HashMap;
use std::time::Duration;

/// How far a grant reaches into a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// `get`, `exists`, `get-by-label`, the listings and the size.
    ReadOnly,
    /// Everything, including storing and changing labels.
    ReadWrite,
}

/// The stores an actor may use besides those it creates itself with `new`.
/// The default grants nothing (deny by default).
#[derive(Clone, Debug, Default)]
pub struct Grants {
    any_store: Option<Access>,
    stores: HashMap<String, Access>,
}

impl Grants {
    /// No access beyond the actor's own stores.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds access to the store with this id.
    pub fn store(mut self, id: impl Into<String>, access: Access) -> Self {
        self.stores.insert(id.into(), access);
        self
    }

    /// Adds access to every store in the root: Theater's share-by-id model,
    /// where knowing a store's id is enough to use it.
    pub fn any_store(mut self, access: Access) -> Self {
        self.any_store = Some(access);
        self
    }

    /// The access granted to `id`, the wider of its own grant and any-store.
    pub fn access_to(&self, id: &str) -> Option<Access> {
        self.stores.get(id).copied().max(self.any_store)
    }
}

/// Resource limits for one actor. The defaults suit trusted-but-buggy
/// actors on a small machine; tighten them for untrusted code.
///
/// Space is counted as it is taken on disk
/// ([`theater_store::StoreStats::footprint`]): content, plus a per-object
/// overhead, plus labels.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest content one `store`-family call may pass, and one `get` may return.
    pub max_content_bytes: usize,
    /// Largest footprint a store may reach through this actor's writes:
    /// content, per-object overhead, labels and change log entries,
    /// checked inside each write's transaction, so that writes by other
    /// actors, processes and hosts count too
    /// (`theater_store::ContentStore::within_quota`).
    pub max_store_bytes: u64,
    /// Most distinct objects a store may hold once written by an actor
    /// (checked the same way).
    pub max_store_objects: u64,
    /// Most footprint the actor may add in one run, across every store it
    /// writes and its event chain, so that many stores each under quota
    /// cannot fill the disk. Writes in progress count as they go; the
    /// chain's last event may pass it by at most
    /// [`theater_store::MAX_EVENT_BYTES`].
    pub max_actor_bytes: u64,
    /// Most stores the actor may create with `new` in one run.
    pub max_stores_created: usize,
    /// Most entries one `list-labels` or `list-all-content` may return;
    /// larger stores must be listed page by page from the host side.
    pub max_list_entries: usize,
    /// Most bytes of text one listing may return.
    pub max_list_bytes: usize,
    /// Most memory the actor may have: the sum over all its linear memories,
    /// plus its tables at 8 bytes per element.
    pub max_memory_bytes: usize,
    /// Most core instances, linear memories and tables the actor may make
    /// (each count on its own).
    pub max_instances: usize,
    /// See [`Limits::max_instances`].
    pub max_memories: usize,
    /// See [`Limits::max_instances`].
    pub max_tables: usize,
    /// Wall-clock budget for one call into the actor (`init`), host calls
    /// included: a host call still waiting when it passes gives up.
    pub timeout: Duration,
    /// Most log lines kept per call; further lines are counted, not kept.
    pub max_log_lines: usize,
    /// Most content readers and writers (`store-streams`) the actor may
    /// have open at once. Each open reader holds about 1 MiB of host
    /// memory and a file handle at most; an open writer holds its staging
    /// file and no thread.
    pub max_open_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_bytes: 64 << 20,
            max_store_bytes: 1 << 30,
            max_store_objects: 1_000_000,
            max_actor_bytes: 1 << 30,
            max_stores_created: 100,
            max_list_entries: 10_000,
            max_list_bytes: 4 << 20,
            max_memory_bytes: 256 << 20,
            max_instances: 64,
            max_memories: 16,
            max_tables: 64,
            timeout: Duration::from_secs(30),
            max_log_lines: 10_000,
            max_open_streams: 64,
        }
    }
}
