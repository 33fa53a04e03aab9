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
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest content one `store`-family call may pass.
    pub max_content_bytes: usize,
    /// Largest total of distinct content a store may hold once written by
    /// an actor (checked before each write).
    pub max_store_bytes: u64,
    /// Most distinct objects a store may hold once written by an actor.
    pub max_store_objects: u64,
    /// Largest linear memory the actor may grow to.
    pub max_memory_bytes: usize,
    /// Wall-clock budget for one call into the actor (`init`), host calls included.
    pub timeout: Duration,
    /// Most log lines kept per call; further lines are counted, not kept.
    pub max_log_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_bytes: 64 << 20,
            max_store_bytes: 1 << 30,
            max_store_objects: 1_000_000,
            max_memory_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            max_log_lines: 10_000,
        }
    }
}
