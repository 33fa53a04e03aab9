//! Recent point reads, answered again from memory while the index has not
//! changed: a label's target, an object's size, a small object's verified
//! bytes. A hot key read over and over then costs a map lookup rather than
//! an index query and a re-hash.
//!
//! Everything remembered is tagged with the engine's settled token
//! ([`crate::engine::Engine::settled`]) taken *before* the read. Any
//! commit, by any process, changes the token, and the next lookup forgets
//! everything, so a read never returns what a finished write replaced.
//! The memory is bounded by [`crate::Options::read_cache_bytes`]: when it
//! is full, it starts over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::names::{Digest, StoreId};

/// Objects up to this size have their bytes remembered; larger ones only
/// their size (their reads are dominated by copying, not by the lookup).
pub(crate) const RECENT_OBJECT_MAX_BYTES: usize = 16 << 10;

/// What an entry costs beyond its key and bytes, roughly.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// A root's remembered reads, shared by its clones in one process.
#[derive(Debug)]
pub(crate) struct RecentReads {
    budget: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The token everything here was read under.
    token: u64,
    stores: HashMap<StoreId, StoreReads>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct StoreReads {
    labels: HashMap<String, Option<Digest>>,
    objects: HashMap<Digest, RecentObject>,
}

/// An object as last read.
#[derive(Clone, Debug)]
pub(crate) struct RecentObject {
    pub(crate) size: u64,
    /// Its bytes, already verified against its digest, if remembered.
    pub(crate) bytes: Option<Arc<[u8]>>,
}

/// [`RecentReads`] as of one token: lookups answer only under it, and
/// reads made after taking it are remembered under it.
pub(crate) struct AsOf<'a> {
    reads: &'a RecentReads,
    token: Option<u64>,
}

impl RecentReads {
    /// Remembers up to about `budget` bytes; 0 remembers nothing.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            state: Mutex::default(),
        }
    }

    /// A view under `token` (see [`crate::engine::Engine::settled`]).
    pub(crate) fn as_of(&self, token: Option<u64>) -> AsOf<'_> {
        AsOf {
            reads: self,
            token: token.filter(|_| self.budget > 0),
        }
    }
}

impl AsOf<'_> {
    /// Runs `lookup` on what was read under this view's token, if anything.
    fn lookup<T>(
        &self,
        store: &StoreId,
        lookup: impl FnOnce(&StoreReads) -> Option<T>,
    ) -> Option<T> {
        let found = self.token.and_then(|token| {
            let state = self.reads.state.lock().unwrap_or_else(|e| e.into_inner());
            (state.token == token)
                .then(|| state.stores.get(store).and_then(lookup))
                .flatten()
        });
        // Literal labels: the key is built at compile time.
        match found {
            Some(_) => metrics::counter!("theater_store_read_cache_total", "result" => "hit"),
            None => metrics::counter!("theater_store_read_cache_total", "result" => "miss"),
        }
        .increment(1);
        found
    }

    /// Remembers a read of `cost` bytes, made under this view's token.
    fn remember(&self, store: &StoreId, cost: usize, insert: impl FnOnce(&mut StoreReads)) {
        let Some(token) = self.token else {
            return;
        };
        let cost = cost + ENTRY_OVERHEAD_BYTES;
        if cost > self.reads.budget {
            return;
        }
        let mut state = self.reads.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.token != token || state.bytes + cost > self.reads.budget {
            *state = State {
                token,
                ..State::default()
            };
        }
        state.bytes += cost;
        insert(state.stores.entry(store.clone()).or_default());
    }

    /// What `label` pointed at when last read (`Some(None)`: undefined).
    pub(crate) fn label(&self, store: &StoreId, label: &str) -> Option<Option<Digest>> {
        self.lookup(store, |reads| reads.labels.get(label).copied())
    }

    /// [`AsOf::label`], with what is remembered of its target object, in
    /// one lookup.
    pub(crate) fn label_and_object(
        &self,
        store: &StoreId,
        label: &str,
    ) -> Option<(Option<Digest>, Option<RecentObject>)> {
        self.lookup(store, |reads| {
            let target = *reads.labels.get(label)?;
            let object = target.and_then(|digest| reads.objects.get(&digest).cloned());
            Some((target, object))
        })
    }

    pub(crate) fn remember_label(&self, store: &StoreId, label: &str, target: Option<Digest>) {
        self.remember(store, label.len(), |reads| {
            reads.labels.insert(label.to_owned(), target);
        });
    }

    pub(crate) fn object(&self, store: &StoreId, digest: Digest) -> Option<RecentObject> {
        self.lookup(store, |reads| reads.objects.get(&digest).cloned())
    }

    pub(crate) fn remember_size(&self, store: &StoreId, digest: Digest, size: u64) {
        self.remember(store, 0, |reads| {
            reads
                .objects
                .entry(digest)
                .or_insert(RecentObject { size, bytes: None });
        });
    }

    /// Remembers `bytes`, which the caller has verified against `digest`,
    /// if they are small enough.
    pub(crate) fn remember_bytes(&self, store: &StoreId, digest: Digest, bytes: &[u8]) {
        if bytes.len() > RECENT_OBJECT_MAX_BYTES {
            return self.remember_size(store, digest, bytes.len() as u64);
        }
        self.remember(store, bytes.len(), |reads| {
            let object = RecentObject {
                size: bytes.len() as u64,
                bytes: Some(Arc::from(bytes)),
            };
            reads.objects.insert(digest, object);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> StoreId {
        StoreId::parse("s").unwrap()
    }

    #[test]
    fn reads_are_answered_only_under_the_token_they_were_made_under() {
        let reads = RecentReads::new(1 << 20);
        let digest = Digest(*blake3::hash(b"v").as_bytes());
        reads
            .as_of(Some(7))
            .remember_label(&store(), "k", Some(digest));
        reads.as_of(Some(7)).remember_bytes(&store(), digest, b"v");
        assert_eq!(
            reads.as_of(Some(7)).label(&store(), "k"),
            Some(Some(digest))
        );
        let object = reads.as_of(Some(7)).object(&store(), digest).unwrap();
        assert_eq!(object.bytes.as_deref(), Some(&b"v"[..]));
        assert_eq!(reads.as_of(Some(8)).label(&store(), "k"), None);
        assert_eq!(reads.as_of(None).label(&store(), "k"), None);
        // A read under a newer token forgets the older ones.
        reads.as_of(Some(8)).remember_label(&store(), "other", None);
        assert_eq!(reads.as_of(Some(7)).label(&store(), "k"), None);
        assert_eq!(reads.as_of(Some(8)).label(&store(), "other"), Some(None));
    }

    #[test]
    fn memory_stays_within_the_budget_and_a_zero_budget_remembers_nothing() {
        let reads = RecentReads::new(10 * (ENTRY_OVERHEAD_BYTES + 8));
        for i in 0..1000 {
            reads
                .as_of(Some(1))
                .remember_label(&store(), &format!("{i:08}"), None);
        }
        let state = reads.state.lock().unwrap();
        assert!(state.bytes <= reads.budget);
        assert!(state.stores[&store()].labels.contains_key("00000999"));
        drop(state);
        let none = RecentReads::new(0);
        none.as_of(Some(1)).remember_label(&store(), "k", None);
        assert_eq!(none.as_of(Some(1)).label(&store(), "k"), None);
    }
}
