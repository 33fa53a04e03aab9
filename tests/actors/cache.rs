//! Compiled components kept in the root: a second load deserializes, and
//! a damaged cache entry costs a compile, never a wrong component.

use std::sync::Arc;

use theater_store_examples::THEATER_COMPAT;
use theater_store_host::RunOptions;

use crate::Harness;

#[tokio::test]
async fn a_damaged_cache_entry_is_compiled_again() {
    let h = Harness::start();
    let first = h.host.load_cached(THEATER_COMPAT).await.unwrap();
    let cache = h.root().component_cache();
    let labels = cache.list_labels().await.unwrap();
    assert_eq!(labels.len(), 1);
    let entry = cache.get_by_label(&labels[0]).await.unwrap().unwrap();
    assert_eq!(
        first.default_actor_id(),
        h.load(THEATER_COMPAT).default_actor_id()
    );

    // Loaded from the cache, it runs.
    let cached = h.host.load_cached(THEATER_COMPAT).await.unwrap();
    let run = h
        .host
        .run_init(&cached, RunOptions::default(), None, "x")
        .await;
    run.outcome.unwrap();

    // Bytes of the entry damaged on disk: the read fails its hash check,
    // the component is compiled again, and it still runs.
    let path = h.root().path().unwrap().join("stores/_compiled/objects");
    let object = path.join(&entry.hash()[..2]).join(&entry.hash()[2..]);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let recompiled = h.host.load_cached(THEATER_COMPAT).await.unwrap();
    let run = h
        .host
        .run_init(&recompiled, RunOptions::default(), None, "y")
        .await;
    run.outcome.unwrap();
    // `verify` finds the damaged entry and quarantines it; the next load
    // fills the cache again with whole bytes.
    let report = cache.verify(Arc::new(())).await.unwrap();
    assert_eq!(report.quarantined, std::slice::from_ref(&entry));
    h.host.load_cached(THEATER_COMPAT).await.unwrap();
    assert!(!cache.get(&entry).await.unwrap().is_empty());
}
