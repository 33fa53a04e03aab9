//! What a store's labels reach: the graph of links between its objects
//! (refs written inside content, see links.rs), as garbage collection,
//! export and store removal walk it. Above the engine, whose recorded
//! links and content it reads.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use crate::engine::{Change, Engine, ObjectRow};
use crate::error::{Result, io_error};
use crate::links::{LinkScanner, with_prefix};
use crate::names::{Digest, StoreId};

/// The links between one store's objects, for working out what labels
/// reach through content. Built from the links recorded in the index plus
/// a scan of the objects not yet scanned.
#[derive(Debug, Default)]
pub(crate) struct LinkGraph {
    /// Each source's targets.
    edges: HashMap<Digest, Vec<Digest>>,
}

impl LinkGraph {
    /// Loads the links among `objects` (the store's objects as of a
    /// snapshot). Objects not yet scanned for links are scanned now, their
    /// content streamed; with `record`, what is found is recorded in the
    /// index and the objects marked as scanned, so later passes need not
    /// read them again. Blocking.
    pub(crate) fn load(
        engine: &dyn Engine,
        store: &StoreId,
        objects: &HashSet<Digest>,
        record: bool,
    ) -> Result<Self> {
        let mut graph = Self::default();
        // Each prefix stands for every held object it begins: in sorted
        // order those are side by side.
        let mut sorted: Vec<Digest> = objects.iter().copied().collect();
        sorted.sort_unstable();
        for (source, prefixes) in engine.links(store)? {
            let edges = graph.edges.entry(source).or_default();
            for prefix in prefixes {
                edges.extend(with_prefix(&sorted, &prefix));
            }
        }
        let unscanned = engine.unscanned_links(store)?;
        let mut found = Vec::new();
        for digest in unscanned {
            let targets = match engine.open_object(store, digest)? {
                Some(mut content) => scan_within(&mut content, objects, store, digest)?,
                None => Vec::new(),
            };
            graph.edges.entry(digest).or_default().extend(&targets);
            found.push((digest, targets));
        }
        if record && !found.is_empty() {
            let handle = tokio::runtime::Handle::current();
            for chunk in found.chunks(256) {
                let changes = chunk
                    .iter()
                    .map(|(digest, targets)| Change::SetLinks {
                        store: store.clone(),
                        digest: *digest,
                        targets: targets.clone(),
                    })
                    .collect();
                for recorded in handle.block_on(engine.apply_all(changes)) {
                    recorded?;
                }
            }
        }
        Ok(graph)
    }

    /// Everything reachable from `starts` through links, `starts`
    /// included. Iterative, so a chain of any length is walked in linear
    /// time without recursion.
    pub(crate) fn reachable(&self, starts: impl IntoIterator<Item = Digest>) -> HashSet<Digest> {
        self.reachable_beyond(starts, |_| false)
    }

    /// What is reachable from `starts` and not `known`, walking no further
    /// than a known object. When `known` holds sets that [`Self::reachable`]
    /// returned, which are closed under links, whatever lies past a known
    /// object is known too: gc asks what history and the grace period keep
    /// beyond what labels keep, which is usually nothing, without holding a
    /// second set of a million digests.
    pub(crate) fn reachable_beyond(
        &self,
        starts: impl IntoIterator<Item = Digest>,
        known: impl Fn(&Digest) -> bool,
    ) -> HashSet<Digest> {
        let mut stack: Vec<Digest> = starts.into_iter().filter(|start| !known(start)).collect();
        // Sized for the starts at once, rather than grown (and rehashed)
        // step by step up to a million of them.
        let mut seen = HashSet::with_capacity(stack.len());
        while let Some(digest) = stack.pop() {
            if !seen.insert(digest) {
                continue;
            }
            if let Some(targets) = self.edges.get(&digest) {
                stack.extend(
                    targets
                        .iter()
                        .filter(|target| !seen.contains(target) && !known(target)),
                );
            }
        }
        seen
    }

    /// `rows` ordered so that every object comes before the objects it
    /// links to: removing them in this order never meets an object still
    /// named by one not yet removed.
    pub(crate) fn referrers_first(&self, rows: Vec<ObjectRow>) -> Vec<ObjectRow> {
        let digests = rows.iter().map(|row| row.digest).collect();
        let mut rows: HashMap<Digest, ObjectRow> =
            rows.into_iter().map(|row| (row.digest, row)).collect();
        self.removal_order(digests)
            .into_iter()
            .filter_map(|digest| rows.remove(&digest))
            .collect()
    }

    /// For each of `rows`, the objects whose content links to it (itself
    /// left out): what must be gone before it may go.
    pub(crate) fn referrers_of(&self, rows: &[ObjectRow]) -> HashMap<Digest, Vec<Digest>> {
        let wanted: HashSet<Digest> = rows.iter().map(|row| row.digest).collect();
        let mut referrers: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for (source, targets) in &self.edges {
            for target in targets {
                if target != source && wanted.contains(target) {
                    referrers.entry(*target).or_default().push(*source);
                }
            }
        }
        referrers
    }

    /// [`LinkGraph::referrers_first`] of bare digests. (Content addressing
    /// rules out cycles; should the index hold one anyway, its members come
    /// last.)
    fn removal_order(&self, doomed: Vec<Digest>) -> Vec<Digest> {
        let members: HashSet<Digest> = doomed.iter().copied().collect();
        let mut named_by: HashMap<Digest, usize> = HashMap::new();
        for source in &doomed {
            for target in self.edges.get(source).into_iter().flatten() {
                if members.contains(target) && target != source {
                    *named_by.entry(*target).or_default() += 1;
                }
            }
        }
        let mut ready: Vec<Digest> = doomed
            .iter()
            .copied()
            .filter(|digest| !named_by.contains_key(digest))
            .collect();
        let mut order = Vec::with_capacity(doomed.len());
        let mut placed = HashSet::new();
        while let Some(digest) = ready.pop() {
            placed.insert(digest);
            order.push(digest);
            for target in self.edges.get(&digest).into_iter().flatten() {
                if let Some(count) = named_by.get_mut(target)
                    && *count > 0
                {
                    *count -= 1;
                    if *count == 0 {
                        ready.push(*target);
                    }
                }
            }
        }
        order.extend(doomed.into_iter().filter(|digest| !placed.contains(digest)));
        order
    }
}

/// The links in an object's content to any of `objects`, read piece by
/// piece. Blocking.
fn scan_within(
    content: &mut dyn Read,
    objects: &HashSet<Digest>,
    store: &StoreId,
    digest: Digest,
) -> Result<Vec<Digest>> {
    let mut scanner = LinkScanner::within(objects);
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = content.read(&mut buffer).map_err(|source| {
            let at = std::path::PathBuf::from(format!("<object {}>", digest.to_hex()));
            io_error(store, "scanning object for links", &at, source)
        })?;
        if read == 0 {
            return Ok(scanner.finish(digest).targets);
        }
        scanner.update(&buffer[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrers_come_before_what_they_name_and_walks_are_linear() {
        let digests: Vec<Digest> = (0..100_000u32)
            .map(|i| Digest::of(&i.to_le_bytes()))
            .collect();
        let mut graph = LinkGraph::default();
        for pair in digests.windows(2) {
            graph.edges.entry(pair[0]).or_default().push(pair[1]);
        }
        assert_eq!(graph.reachable([digests[0]]).len(), digests.len());
        assert_eq!(graph.reachable([digests[50_000]]).len(), 50_000);
        let mut shuffled = digests.clone();
        shuffled.reverse();
        let order = graph.removal_order(shuffled);
        assert_eq!(order, digests);
    }

    #[test]
    fn walks_beyond_a_closed_set_stop_at_it() {
        let [a, b, c, d, e, f] = [0u8, 1, 2, 3, 4, 5].map(|i| Digest::of(&[i]));
        let mut graph = LinkGraph::default();
        // a -> b -> c, d -> b, d -> e -> f.
        for (from, to) in [(a, b), (b, c), (d, b), (d, e), (e, f)] {
            graph.edges.entry(from).or_default().push(to);
        }
        let labelled = graph.reachable([a]);
        assert_eq!(labelled, HashSet::from([a, b, c]));
        let known = |digest: &Digest| labelled.contains(digest);
        assert_eq!(graph.reachable_beyond([d], known), HashSet::from([d, e, f]));
        assert!(graph.reachable_beyond([b, c], known).is_empty());
        // What is known is never walked into, even when it links onwards.
        assert_eq!(
            graph.reachable_beyond([e], |x: &Digest| *x == f),
            HashSet::from([e])
        );
    }
}
