//! Writes made under a store quota (`ContentStore::within_quota`): the
//! check runs inside each write's transaction, on every engine.

mod common;

use std::process::{Command, Stdio};

use common::{stored_outside_index, temp_root};
use theater_store::{ContentRef, Options, StoreError, StoreQuota, StoreRoot, StoreStats};

fn quota(bytes: u64, objects: u64) -> StoreQuota {
    StoreQuota { bytes, objects }
}

#[tokio::test]
async fn a_write_past_the_quota_is_refused_whole_and_names_the_store() {
    let (_dir, root) = temp_root();
    let store = root.store("capped").unwrap();
    let bounded = store.within_quota(quota(10_000, 100));
    bounded
        .store_at_label("first", vec![1u8; 3_000])
        .await
        .unwrap();
    let before = store.stats().await.unwrap();
    let refused = bounded
        .store_at_label("second", vec![2u8; 3_000])
        .await
        .unwrap_err();
    match &refused {
        StoreError::QuotaExceeded {
            store: id,
            footprint,
            quota_bytes,
            adds,
            ..
        } => {
            assert_eq!(id, "capped");
            assert_eq!(*footprint, before.footprint());
            assert_eq!(*quota_bytes, 10_000);
            assert!(*adds > 3_000, "the content and its overhead: {adds}");
        }
        other => panic!("expected a quota refusal, got {other:?}"),
    }
    assert!(refused.to_string().contains("store capped quota exceeded"));
    assert_eq!(refused.kind(), theater_store::ErrorKind::QuotaExceeded);
    // Nothing of it was kept: no label, no object, no log entry.
    assert_eq!(store.stats().await.unwrap(), before);
    assert_eq!(store.get_by_label("second").await.unwrap(), None);
    let second = ContentRef::for_content(&[2u8; 3_000]);
    assert!(!store.exists(&second).await.unwrap());
}

#[tokio::test]
async fn the_object_count_is_a_quota_too() {
    let (_dir, root) = temp_root();
    let store = root.store("few").unwrap();
    let bounded = store.within_quota(quota(u64::MAX, 2));
    bounded.store(b"one".to_vec()).await.unwrap();
    bounded.store(b"two".to_vec()).await.unwrap();
    let refused = bounded.store(b"three".to_vec()).await.unwrap_err();
    assert!(matches!(
        refused,
        StoreError::QuotaExceeded { objects: 2, .. }
    ));
    // Content already held adds no object: it is not refused.
    bounded
        .store_at_label("again", b"one".to_vec())
        .await
        .unwrap();
    assert_eq!(store.stats().await.unwrap().objects, 2);
}

#[tokio::test]
async fn footprint_added_is_what_the_totals_grew_by() {
    let (_dir, root) = temp_root();
    let store = root.store("counted").unwrap();
    let bounded = store.within_quota(quota(1 << 30, 1_000));
    let before = store.stats().await.unwrap();
    let stored = bounded
        .store_at_label("doc", vec![7u8; 5_000])
        .await
        .unwrap();
    bounded.label("alias", &stored).await.unwrap();
    // The same content again: only the label's log entry is new.
    bounded
        .store_at_label("doc", vec![7u8; 5_000])
        .await
        .unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(
        bounded.footprint_added(),
        after.footprint() - before.footprint()
    );
    // A fresh handle counts from zero; one without a quota counts nothing.
    let fresh = store.within_quota(quota(1 << 30, 1_000));
    assert_eq!(fresh.footprint_added(), 0);
    fresh.remove_label("alias").await.unwrap();
    assert_eq!(fresh.footprint_added(), 0, "removing frees space");
    assert_eq!(store.footprint_added(), 0);
}

/// A write refused for the quota is rolled back after its totals were
/// read; the next check must not start from them (it would see the store
/// shrink and let a write past the quota through), and must count what
/// the store grew by from what it really held.
#[tokio::test]
async fn a_refused_write_leaves_no_totals_for_the_next_check() {
    let (_dir, root) = temp_root();
    let store = root.store("checked").unwrap();
    let bounded = store.by_actor("writer").within_quota(quota(20_000, 100));
    bounded
        .store_at_label("small", vec![1u8; 3_000])
        .await
        .unwrap();
    let before = store.stats().await.unwrap();
    let big = bounded.store_at_label("big", vec![2u8; 20_000]).await;
    assert!(
        matches!(big, Err(StoreError::QuotaExceeded { .. })),
        "{big:?}"
    );
    // Smaller than the refused write, still past the quota.
    let past = bounded.store_at_label("past", vec![3u8; 10_000]).await;
    assert!(
        matches!(past, Err(StoreError::QuotaExceeded { .. })),
        "{past:?}"
    );
    assert_eq!(store.stats().await.unwrap(), before);
    bounded
        .store_at_label("fits", vec![4u8; 500])
        .await
        .unwrap();
    let after = store.stats().await.unwrap();
    let first = after.footprint() - before.footprint();
    assert!(first > 500, "the content and its overhead: {first}");
    assert_eq!(
        bounded.footprint_added(),
        after.footprint() - StoreStats::default().footprint(),
        "counted from what the store held"
    );
}

/// Another root handle (as another process has) writing between two
/// checked writes: the second check reads the store's totals again, so
/// the writer is not charged for the other's write.
#[tokio::test]
async fn a_write_through_another_handle_is_not_charged_to_a_checked_writer() {
    if common::kept_by_this_process() {
        return; // A memory or log root is one process's alone.
    }
    let (dir, root) = temp_root();
    let other = StoreRoot::at(
        &common::root_string_for(&root, dir.path(), "other"),
        Options::default(),
    )
    .unwrap();
    let store = root.store("metered").unwrap();
    let bounded = store
        .by_actor("metered")
        .within_quota(quota(1 << 30, 1_000));
    bounded
        .store_at_label("mine", vec![1u8; 1_000])
        .await
        .unwrap();
    let mine = bounded.footprint_added();
    let before_other = store.stats().await.unwrap();
    other
        .store("metered")
        .unwrap()
        .store_at_label("theirs", vec![2u8; 50_000])
        .await
        .unwrap();
    let after_other = store.stats().await.unwrap();
    assert!(after_other.footprint() > before_other.footprint() + 50_000);
    bounded
        .store_at_label("mine-too", vec![3u8; 1_000])
        .await
        .unwrap();
    let end = store.stats().await.unwrap();
    assert_eq!(
        bounded.footprint_added(),
        mine + (end.footprint() - after_other.footprint()),
        "charged for its own writes only"
    );
}

#[tokio::test]
async fn writes_that_free_space_pass_in_a_store_over_its_quota() {
    let (_dir, root) = temp_root();
    let store = root.store("shrunk").unwrap();
    for n in 0..4u8 {
        store
            .store_at_label(&format!("l{n}"), vec![n; 2_000])
            .await
            .unwrap();
    }
    let footprint = store.stats().await.unwrap().footprint();
    // The quota is now below what the store holds.
    let bounded = store.within_quota(quota(footprint / 2, 100));
    bounded.remove_label("l0").await.unwrap();
    let target = store.get_by_label("l1").await.unwrap().unwrap();
    let moved = bounded.label("l2", &target).await;
    assert!(
        matches!(moved, Err(StoreError::QuotaExceeded { .. })),
        "moving a label adds a log entry: {moved:?}"
    );
    assert!(matches!(
        bounded.store(b"more".to_vec()).await,
        Err(StoreError::QuotaExceeded { .. })
    ));
}

#[tokio::test]
async fn concurrent_writers_cannot_overflow_the_quota_together() {
    let (_dir, root) = temp_root();
    let store = root.store("contended").unwrap();
    let limit = 20 * (1_000 + theater_store::OBJECT_OVERHEAD_BYTES);
    let mut writers = Vec::new();
    for n in 0..64u32 {
        // One handle per writer, as a host gives each call its own.
        let bounded = store.within_quota(quota(limit, 1_000));
        writers.push(tokio::spawn(async move {
            let content = [n.to_le_bytes().to_vec(), vec![0u8; 996]].concat();
            bounded.store(content).await
        }));
    }
    let mut stored = 0;
    for writer in writers {
        match writer.await.unwrap() {
            Ok(_) => stored += 1,
            Err(StoreError::QuotaExceeded { .. }) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    let stats: StoreStats = store.stats().await.unwrap();
    assert!(
        stats.footprint() <= limit,
        "{} > {limit}",
        stats.footprint()
    );
    assert_eq!(stats.objects, stored);
    assert!((15..=20).contains(&stored), "{stored} writes fit");
}

#[tokio::test]
async fn a_refused_large_write_leaves_no_bytes_behind() {
    let (_dir, root) = temp_root();
    let store = root.store("big").unwrap();
    store.store(b"first".to_vec()).await.unwrap();
    let before = stored_outside_index(&root, "big");
    // Large enough to be staged as a file (or uploaded) on every engine.
    let large = vec![9u8; 3 << 20];
    let refused = store
        .within_quota(quota(1 << 20, 100))
        .store_at_label("large", large.clone())
        .await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded { .. })));
    assert_eq!(stored_outside_index(&root, "big"), before);
    assert!(
        !store
            .exists(&ContentRef::for_content(&large))
            .await
            .unwrap()
    );
    // The same write fits a larger quota.
    store
        .within_quota(quota(1 << 30, 100))
        .store_at_label("large", large)
        .await
        .unwrap();
}

#[tokio::test]
async fn streamed_and_batched_writes_are_bounded_too() {
    let (_dir, root) = temp_root();
    let store = root.store("streamed").unwrap();
    let bounded = store.within_quota(quota(10_000, 100));
    let mut writer = bounded.writer().await.unwrap();
    writer.write(&[5u8; 8_000]).await.unwrap();
    let refused = writer.finish_at_label("streamed").await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded { .. })));
    assert_eq!(store.stats().await.unwrap(), StoreStats::default());

    let small = store.store(b"x".to_vec()).await.unwrap();
    let footprint = store.stats().await.unwrap().footprint();
    let labels: Vec<(String, Option<ContentRef>)> = (0..40)
        .map(|n| (format!("many-{n:03}"), Some(small.clone())))
        .collect();
    let refused = store
        .within_quota(quota(footprint + 1_000, 100))
        .set_labels(&labels)
        .await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded { .. })));
    assert_eq!(store.stats().await.unwrap().labels, 0);
    store
        .within_quota(quota(footprint + 100_000, 100))
        .set_labels(&labels)
        .await
        .unwrap();
    assert_eq!(store.stats().await.unwrap().labels, 40);
}

/// The quota of the store the processes below share.
const SHARED_QUOTA: StoreQuota = StoreQuota {
    bytes: 200 * (1_000 + theater_store::OBJECT_OVERHEAD_BYTES),
    objects: 1_000,
};

/// A child process: stores distinct 1,000-byte pieces under the shared
/// quota from four tasks until each is refused, and says how many fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by processes_writing_one_store_cannot_overflow_its_quota"]
async fn quota_child() {
    let root = std::env::var("QUOTA_ROOT").expect("started by the parent test");
    let name = std::env::var("QUOTA_CHILD").unwrap();
    let store = StoreRoot::at(&root, Options::default())
        .unwrap()
        .store("shared")
        .unwrap();
    let tasks: Vec<_> = (0..4u32)
        .map(|task| {
            let store = store.within_quota(SHARED_QUOTA);
            let name = name.clone();
            tokio::spawn(async move {
                let mut stored = 0u32;
                loop {
                    let content = format!("{name}/{task}/{stored}").into_bytes();
                    let content = [content, vec![0u8; 1_000]].concat()[..1_000].to_vec();
                    match store.store(content).await {
                        Ok(_) => stored += 1,
                        Err(StoreError::QuotaExceeded { .. }) => return stored,
                        Err(other) => panic!("unexpected: {other}"),
                    }
                }
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    println!("stored {stored}");
}

#[tokio::test]
async fn processes_writing_one_store_cannot_overflow_its_quota() {
    if common::kept_by_this_process() {
        return; // Other processes cannot open a memory root.
    }
    let (dir, root) = temp_root();
    let children: Vec<_> = (0..3)
        .map(|n| {
            let name = format!("child-{n}");
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "quota_child", "--ignored", "--nocapture"])
                .env(
                    "QUOTA_ROOT",
                    common::root_string_for(&root, dir.path(), &name),
                )
                .env("QUOTA_CHILD", &name)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut stored = 0;
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "a child failed:\n{stdout}");
        let count = stdout
            .lines()
            .find_map(|line| line.strip_prefix("stored "))
            .unwrap_or_else(|| panic!("no count in:\n{stdout}"));
        stored += count.trim().parse::<u64>().unwrap();
    }
    let stats = root.store("shared").unwrap().stats().await.unwrap();
    assert_eq!(stats.objects, stored, "every write that fit was kept");
    assert!(
        stats.footprint() <= SHARED_QUOTA.bytes,
        "{} > {}",
        stats.footprint(),
        SHARED_QUOTA.bytes
    );
    assert_eq!(stats.objects, 200, "the store was filled exactly");
}
