//! Behaviour of every public `ContentStore` operation and every error.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;

use common::{damage, temp_root};
use theater_store::{AtMost, ContentRef, ContentStore, Durability, Options, StoreError, StoreRoot};

/// Every file below `dir`, relative to it.
fn files_below(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.insert(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn store_and_get_round_trip_with_blake3_refs() {
    let (_dir, root) = temp_root();
    let store = root.store("basic").unwrap();
    let content_ref = store.store("Important information").await.unwrap();
    assert_eq!(
        content_ref.hash(),
        blake3::hash(b"Important information").to_hex().as_str()
    );
    assert_eq!(
        store.get(&content_ref).await.unwrap(),
        b"Important information"
    );
    assert!(store.exists(&content_ref).await.unwrap());
    let empty = store.store(Vec::new()).await.unwrap();
    assert_eq!(store.get(&empty).await.unwrap(), Vec::<u8>::new());
}

#[tokio::test]
async fn a_store_exists_from_its_first_write_or_its_creation() {
    let (_dir, root) = temp_root();
    let store = root.store("later").unwrap();
    assert!(!store.is_created().await.unwrap());
    store.store_at_label("first", b"x".to_vec()).await.unwrap();
    assert!(store.is_created().await.unwrap());
    let created = root.create_store().await.unwrap();
    assert!(created.is_created().await.unwrap());
    assert!(!root.store("never").unwrap().is_created().await.unwrap());
}

#[tokio::test]
async fn identical_content_is_stored_once() {
    let (_dir, root) = temp_root();
    let store = root.store("dedupe").unwrap();
    let first = store.store("Duplicate content").await.unwrap();
    let second = store.store("Duplicate content").await.unwrap();
    assert_eq!(first, second);
    assert_eq!(store.list_all_content().await.unwrap(), vec![first.clone()]);
    assert_eq!(store.calculate_total_size().await.unwrap(), 17);
    store.store("other").await.unwrap();
    assert_eq!(store.calculate_total_size().await.unwrap(), 22);
    assert_eq!(store.stats().await.unwrap().objects, 2);
}

#[tokio::test]
async fn concurrent_identical_writes_end_as_one_object() {
    let (_dir, root) = temp_root();
    // Small content is kept in the index, larger content in one file.
    for (id, size) in [("race-small", 4096), ("race-large", 64 << 10)] {
        let store = root.store(id).unwrap();
        let writers: Vec<_> = (0..32)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.store(vec![7u8; size]).await.unwrap() })
            })
            .collect();
        let mut refs = BTreeSet::new();
        for writer in writers {
            refs.insert(writer.await.unwrap());
        }
        assert_eq!(refs.len(), 1);
        assert_eq!(store.stats().await.unwrap().objects, 1);
        assert_eq!(store.calculate_total_size().await.unwrap(), size as u64);
        let files = usize::from(
            size > Options::default().inline_threshold && !common::kept_by_this_process(),
        );
        let (outside, staging) = common::stored_outside_index(&root, id);
        assert_eq!(outside, files);
        assert_eq!(staging, 0, "temporary files left behind");
    }
}

#[tokio::test]
async fn labels_point_at_one_ref_and_follow_theater_semantics() {
    let (_dir, root) = temp_root();
    let store = root.store("labels").unwrap();
    assert_eq!(store.get_by_label("app:config").await.unwrap(), None);
    assert_eq!(
        store.get_content_by_label("app:config").await.unwrap(),
        None
    );

    let v1 = store.store_at_label("app:config", "v1").await.unwrap();
    assert_eq!(
        store.get_by_label("app:config").await.unwrap(),
        Some(v1.clone())
    );
    let v2 = store
        .replace_content_at_label("app:config", "v2")
        .await
        .unwrap();
    assert_eq!(
        store.get_content_by_label("app:config").await.unwrap(),
        Some(b"v2".to_vec())
    );

    store.replace_at_label("app:config", &v1).await.unwrap();
    assert_eq!(
        store.get_by_label("app:config").await.unwrap(),
        Some(v1.clone())
    );
    store.label("other", &v2).await.unwrap();

    // remove-from-label only removes a label pointing at the given ref.
    assert!(!store.remove_from_label("app:config", &v2).await.unwrap());
    assert_eq!(
        store.get_by_label("app:config").await.unwrap(),
        Some(v1.clone())
    );
    assert!(store.remove_from_label("app:config", &v1).await.unwrap());
    assert_eq!(store.get_by_label("app:config").await.unwrap(), None);

    // Removing labels never deletes content, and removing a missing label is fine.
    store.remove_label("other").await.unwrap();
    store.remove_label("never-existed").await.unwrap();
    assert_eq!(store.get(&v1).await.unwrap(), b"v1");
    assert_eq!(store.get(&v2).await.unwrap(), b"v2");
    assert_eq!(store.list_labels().await.unwrap(), Vec::<String>::new());
    assert_eq!(store.stats().await.unwrap().labels, 0);
}

#[tokio::test]
async fn labelling_missing_content_fails_and_changes_nothing() {
    let (_dir, root) = temp_root();
    let store = root.store("missing").unwrap();
    let absent = ContentRef::for_content(b"never stored");
    for result in [
        store.label("x", &absent).await,
        store.replace_at_label("x", &absent).await,
    ] {
        match result {
            Err(StoreError::NotFound { store, reference }) => {
                assert_eq!(store, "missing");
                assert_eq!(reference, absent.hash());
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    assert_eq!(store.get_by_label("x").await.unwrap(), None);
    let err = store.get(&absent).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert!(err.to_string().contains(absent.hash()) && err.to_string().contains("missing"));
    assert!(!store.exists(&absent).await.unwrap());
}

#[tokio::test]
async fn compare_and_swap_applies_only_on_the_expected_value() {
    let (_dir, root) = temp_root();
    let store = root.store("cas").unwrap();
    let a = store.store("a").await.unwrap();
    let b = store.store("b").await.unwrap();
    assert!(
        store
            .compare_and_swap_label("head", None, Some(&a))
            .await
            .unwrap()
    );
    assert!(
        !store
            .compare_and_swap_label("head", None, Some(&b))
            .await
            .unwrap()
    );
    assert!(
        !store
            .compare_and_swap_label("head", Some(&b), Some(&b))
            .await
            .unwrap()
    );
    assert_eq!(store.get_by_label("head").await.unwrap(), Some(a.clone()));
    assert!(
        store
            .compare_and_swap_label("head", Some(&a), Some(&b))
            .await
            .unwrap()
    );
    assert!(
        store
            .compare_and_swap_label("head", Some(&b), None)
            .await
            .unwrap()
    );
    assert_eq!(store.get_by_label("head").await.unwrap(), None);
    let absent = ContentRef::for_content(b"absent");
    assert!(matches!(
        store
            .compare_and_swap_label("head", None, Some(&absent))
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn concurrent_cas_increments_lose_no_update() {
    let (_dir, root) = temp_root();
    let store = root.store("counter").unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let current = store.get_by_label("count").await.unwrap();
                        let value: u64 = match &current {
                            Some(r) => String::from_utf8(store.get(r).await.unwrap())
                                .unwrap()
                                .parse()
                                .unwrap(),
                            None => 0,
                        };
                        let next = store.store((value + 1).to_string()).await.unwrap();
                        if store
                            .compare_and_swap_label("count", current.as_ref(), Some(&next))
                            .await
                            .unwrap()
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        store.get_content_by_label("count").await.unwrap(),
        Some(b"200".to_vec())
    );
}

#[tokio::test]
async fn hostile_labels_are_distinct_index_keys_or_clear_errors() {
    let (dir, root) = temp_root();
    let store = root.store("hostile").unwrap();
    let content = store.store("payload").await.unwrap();
    let odd = [
        "../x",
        "/etc/passwd",
        "a/b",
        "a:b",
        "..",
        ".",
        "actor:1:state",
        "ünï",
        " ",
    ];
    for label in odd {
        store.label(label, &content).await.unwrap();
    }
    let listed: BTreeSet<String> = store.list_labels().await.unwrap().into_iter().collect();
    assert_eq!(listed, odd.iter().map(|l| l.to_string()).collect());

    for bad in ["", "a\0b", &"x".repeat(4096)] {
        match store.label(bad, &content).await {
            Err(StoreError::InvalidLabel { .. }) => {}
            other => panic!(
                "label {:?}: expected InvalidLabel, got {other:?}",
                &bad[..bad.len().min(8)]
            ),
        }
        assert!(matches!(
            store.get_by_label(bad).await,
            Err(StoreError::InvalidLabel { .. })
        ));
        assert!(matches!(
            store.store_at_label(bad, "x").await,
            Err(StoreError::InvalidLabel { .. })
        ));
    }
    // Nothing was written outside the root.
    let outside: BTreeSet<String> = files_below(dir.path())
        .into_iter()
        .filter(|path| !path.starts_with("root"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

#[tokio::test]
async fn malformed_refs_are_invalid_ref_errors_before_any_disk_access() {
    let (_dir, root) = temp_root();
    let store = root.store("refs").unwrap();
    store.store("x").await.unwrap();
    for bad in [
        "",
        "../../../../etc/passwd",
        "/etc/passwd",
        "ABC",
        &"g".repeat(64),
        &"A".repeat(64),
    ] {
        let r = ContentRef::new(bad);
        assert!(matches!(
            store.get(&r).await,
            Err(StoreError::InvalidRef { .. })
        ));
        assert!(matches!(
            store.exists(&r).await,
            Err(StoreError::InvalidRef { .. })
        ));
        assert!(matches!(
            store.label("l", &r).await,
            Err(StoreError::InvalidRef { .. })
        ));
        assert!(matches!(
            store.remove_from_label("l", &r).await,
            Err(StoreError::InvalidRef { .. })
        ));
    }
}

#[tokio::test]
async fn store_ids_are_validated_and_stores_are_isolated() {
    let (_dir, root) = temp_root();
    for bad in ["../x", "/etc/passwd", "", "a/b", "a\0b", ".."] {
        match root.store(bad) {
            Err(StoreError::InvalidStoreId { .. }) => {}
            other => panic!("{bad:?}: expected InvalidStoreId, got {other:?}"),
        }
    }
    let a = root.store("a").unwrap();
    let b = root.store("b").unwrap();
    let r = a.store_at_label("shared-name", "only in a").await.unwrap();
    assert!(!b.exists(&r).await.unwrap());
    assert_eq!(b.get_by_label("shared-name").await.unwrap(), None);
    assert!(matches!(b.get(&r).await, Err(StoreError::NotFound { .. })));
    // Another handle to the same id sees the same store.
    let a_again = root.store("a").unwrap();
    assert_eq!(
        a_again.get_content_by_label("shared-name").await.unwrap(),
        Some(b"only in a".to_vec())
    );
}

#[tokio::test]
async fn created_stores_have_uuid_ids_and_are_listed_with_totals() {
    let (_dir, root) = temp_root();
    let created = root.create_store().await.unwrap();
    assert!(uuid::Uuid::parse_str(created.id()).is_ok());
    let named = root.store("named").unwrap();
    named.store_at_label("l", "12345").await.unwrap();
    let stores = root.stores().await.unwrap();
    let ids: Vec<&str> = stores.iter().map(|s| s.id.as_str()).collect();
    assert!(ids.contains(&created.id()) && ids.contains(&"named"));
    let summary = stores.iter().find(|s| s.id == "named").unwrap();
    assert_eq!(
        (
            summary.stats.objects,
            summary.stats.bytes,
            summary.stats.labels
        ),
        (1, 5, 1)
    );
}

#[tokio::test]
async fn label_pages_follow_prefix_and_cursor() {
    let (_dir, root) = temp_root();
    let store = root.store("pages").unwrap();
    let content = store.store("x").await.unwrap();
    for label in ["log:1", "log:2", "log:3", "log:30", "logx", "loh", "a"] {
        store.label(label, &content).await.unwrap();
    }
    let names = |page: Vec<theater_store::LabelEntry>| {
        page.into_iter().map(|e| e.label).collect::<Vec<_>>()
    };
    assert_eq!(
        names(store.list_labels_page("log:", None, 2).await.unwrap()),
        ["log:1", "log:2"]
    );
    assert_eq!(
        names(
            store
                .list_labels_page("log:", Some("log:2"), 10)
                .await
                .unwrap()
        ),
        ["log:3", "log:30"]
    );
    assert_eq!(
        names(
            store
                .list_labels_page("log:", Some("log:30"), 10)
                .await
                .unwrap()
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        names(store.list_labels_page("log", None, 10).await.unwrap()),
        ["log:1", "log:2", "log:3", "log:30", "logx"]
    );
    assert_eq!(
        names(
            store
                .list_labels_page("", Some("log:30"), 10)
                .await
                .unwrap()
        ),
        ["logx", "loh"]
    );
    let page = store.list_labels_page("a", None, 10).await.unwrap();
    assert_eq!(page[0].content_ref, content);
}

#[tokio::test]
async fn corrupted_objects_are_reported_never_returned() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: bytes are damaged by hand below.
    }
    let (_dir, root) = temp_root();
    let store = root.store("corrupt").unwrap();
    // Small content lives in the index, large content in a file: both are
    // checked on every read.
    let large = "the real bytes ".repeat(10_000);
    for content in ["the real bytes", large.as_str()] {
        let content_ref = store.store_at_label("doc", content).await.unwrap();
        damage(&root, &store, &content_ref, b"tampered bytes");
        expect_corrupted(&store, &content_ref).await;
    }
}

/// A read answered from memory returns the bytes as they were verified
/// when first read: damage done on disk since is never returned, and the
/// next commit to the root makes reads go back to disk and report it.
#[tokio::test]
async fn remembered_reads_never_return_damaged_bytes() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: bytes are damaged by hand below.
    }
    if common::shared_engine() {
        // Remembered reads belong to the local engine: the shared engine
        // answers only from its verified, content-addressed cache.
        return;
    }
    let (_dir, root) = temp_root();
    let store = root.store("corrupt").unwrap();
    let content_ref = store.store_at_label("doc", "the real bytes").await.unwrap();
    assert_eq!(store.get(&content_ref).await.unwrap(), b"the real bytes");
    damage(&root, &store, &content_ref, b"tampered bytes");
    assert_eq!(store.get(&content_ref).await.unwrap(), b"the real bytes");
    root.store("elsewhere")
        .unwrap()
        .store("any write")
        .await
        .unwrap();
    expect_corrupted(&store, &content_ref).await;
}

#[tokio::test]
async fn bounded_reads_give_the_size_instead_of_reading_too_much() {
    let (_dir, root) = temp_root();
    let store = root.store("bounded").unwrap();
    let content_ref = store.store_at_label("doc", vec![7u8; 1000]).await.unwrap();
    for _ in 0..2 {
        // The second time from memory.
        assert_eq!(
            store.get_at_most(&content_ref, 999).await.unwrap(),
            AtMost::TooLarge { size: 1000 }
        );
        assert_eq!(
            store.get_at_most(&content_ref, 1000).await.unwrap(),
            AtMost::Content(vec![7u8; 1000])
        );
        let (labelled, content) = store.get_label_at_most("doc", 10).await.unwrap().unwrap();
        assert_eq!(labelled, content_ref);
        assert_eq!(content, AtMost::TooLarge { size: 1000 });
    }
    assert_eq!(
        store.get_label_at_most("undefined", 10).await.unwrap(),
        None
    );
    let missing = ContentRef::for_content(b"never stored");
    match store.get_at_most(&missing, 10).await {
        Err(StoreError::NotFound { store, reference }) => {
            assert_eq!(
                (store.as_str(), reference.as_str()),
                ("bounded", missing.hash())
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        store.get_label_at_most("bad\0label", 10).await,
        Err(StoreError::InvalidLabel { .. })
    ));
}

async fn expect_corrupted(store: &ContentStore, content_ref: &ContentRef) {
    for result in [
        store.get(content_ref).await,
        store
            .get_content_by_label("doc")
            .await
            .map(Option::unwrap_or_default),
    ] {
        match result {
            Err(StoreError::Corrupted {
                store: s,
                reference,
                actual,
            }) => {
                assert_eq!(s, "corrupt");
                assert_eq!(reference, content_ref.hash());
                assert_eq!(actual, blake3::hash(b"tampered bytes").to_hex().as_str());
            }
            other => panic!("expected Corrupted, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn data_survives_reopening_the_root_in_both_durability_modes() {
    for durability in [Durability::Buffered, Durability::Synced] {
        let dir = tempfile::tempdir().unwrap();
        let content_ref = {
            let root = StoreRoot::open(dir.path(), durability).await.unwrap();
            assert_eq!(root.durability(), durability);
            root.store("s")
                .unwrap()
                .store_at_label("k", "persisted")
                .await
                .unwrap()
        };
        let reopened = StoreRoot::new(dir.path()).store("s").unwrap();
        assert_eq!(reopened.get_by_label("k").await.unwrap(), Some(content_ref));
        assert_eq!(reopened.calculate_total_size().await.unwrap(), 9);
    }
}

#[tokio::test]
async fn an_unusable_root_path_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "x").unwrap();
    let err = StoreRoot::open(&file, Durability::Buffered)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-directory"), "{err}");
}

#[tokio::test]
async fn the_default_root_comes_from_the_environment() {
    // Only this test touches the process environment or the global root.
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: no other test in this binary reads or writes the environment.
    unsafe { std::env::set_var(theater_store::ROOT_ENV_VAR, dir.path()) };
    assert_eq!(StoreRoot::default_location().as_deref(), Some(dir.path()));
    let store = ContentStore::new();
    assert!(uuid::Uuid::parse_str(store.id()).is_ok());
    let content_ref = store.store_at_label("seed", "global").await.unwrap();
    let same = ContentStore::from_id(store.id()).unwrap();
    assert_eq!(same.get(&content_ref).await.unwrap(), b"global");
    assert!(dir.path().join("index.sqlite").is_file());
    assert!(matches!(
        ContentStore::from_id("../x"),
        Err(StoreError::InvalidStoreId { .. })
    ));
}

#[test]
fn a_call_outside_a_tokio_runtime_is_a_clear_error_not_a_panic() {
    let (_dir, root) = common::temp_root();
    let store = root.store("s").unwrap();
    // A minimal executor that is not Tokio.
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut call = std::pin::pin!(store.store(b"x".to_vec()));
    match call.as_mut().poll(&mut context) {
        std::task::Poll::Ready(Err(StoreError::NoRuntime)) => {}
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

/// Content whose bytes were lost is damage, named as such; a ref the store
/// never held is plain "not found". An operator can tell the two apart.
#[tokio::test]
async fn lost_bytes_are_missing_not_merely_not_found() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: bytes are deleted by hand below.
    }
    let (_dir, root) = temp_root();
    let store = root.store("lossy").unwrap();
    for content in ["small".to_owned(), "large ".repeat(5_000)] {
        let content_ref = store.store_at_label("doc", content).await.unwrap();
        common::lose_bytes(&root, &store, &content_ref);
        match store.get(&content_ref).await {
            Err(error @ StoreError::Missing { .. }) => {
                assert_eq!(error.kind(), theater_store::ErrorKind::Corrupted);
                assert!(error.to_string().contains(content_ref.hash()), "{error}");
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(matches!(
            store.reader(&content_ref).await.map(drop),
            Err(StoreError::Missing { .. })
        ));
    }
    let never = ContentRef::for_content(b"never stored");
    assert!(matches!(
        store.get(&never).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Progress is optional: `()` reports nothing, and a shared reporter
/// (what a progress bar is) is taken as it is.
#[tokio::test]
async fn progress_arguments_take_nothing_or_a_shared_reporter() {
    use std::sync::atomic::{AtomicU64, Ordering};
    #[derive(Default)]
    struct Counted(AtomicU64);
    impl theater_store::Progress for Counted {
        fn advance(&self, done: u64) {
            self.0.fetch_add(done, Ordering::Relaxed);
        }
    }
    let (_dir, root) = temp_root();
    let store = root.store("progress").unwrap();
    store.store_at_label("a", "twelve bytes").await.unwrap();
    assert!(store.verify(()).await.unwrap().is_clean());
    let counted = std::sync::Arc::new(Counted::default());
    store.verify(counted.clone()).await.unwrap();
    assert_eq!(counted.0.load(Ordering::Relaxed), 12);
}

#[tokio::test]
async fn exists_sees_content_collected_after_it_was_asked() {
    let (_dir, root) = common::temp_root_without_history();
    let store = root.store("remembered").unwrap();
    let content_ref = store.store(b"here for now".to_vec()).await.unwrap();
    assert!(store.exists(&content_ref).await.unwrap());
    assert!(store.exists(&content_ref).await.unwrap());
    // Past the millisecond of the write, so that it is older than the cutoff.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let options = theater_store::GcOptions {
        grace: std::time::Duration::ZERO,
        dry_run: false,
    };
    let report = store
        .collect_garbage(options, std::sync::Arc::new(()))
        .await
        .unwrap();
    assert_eq!(report.objects_removed, 1);
    assert!(!store.exists(&content_ref).await.unwrap());
    // Another handle to the same store sees the same.
    assert!(
        !root
            .store("remembered")
            .unwrap()
            .exists(&content_ref)
            .await
            .unwrap()
    );
}
