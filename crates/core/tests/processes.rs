//! Several OS processes writing and labelling one store lose nothing.
//!
//! The test re-runs this test binary as child processes (selecting the
//! `child_writer` test by name); each child writes its own objects and
//! labels, plus shared content and compare-and-swap increments of one shared
//! counter label. The parent then checks that every write is there.

use std::process::{Command, Stdio};

use theater_store::{ContentStore, StoreRoot};

const CHILDREN: usize = 3;
const WRITES_PER_CHILD: usize = 40;
const INCREMENTS_PER_CHILD: usize = 15;

async fn increment(store: &ContentStore) {
    loop {
        let current = store.get_by_label("counter").await.unwrap();
        let value: u64 = match &current {
            Some(r) => String::from_utf8(store.get(r).await.unwrap())
                .unwrap()
                .parse()
                .unwrap(),
            None => 0,
        };
        let next = store.store((value + 1).to_string()).await.unwrap();
        if store
            .compare_and_swap_label("counter", current.as_ref(), Some(&next))
            .await
            .unwrap()
        {
            return;
        }
    }
}

/// The child's work, run only as a child of the test below.
#[tokio::test]
#[ignore = "run as a child process by processes_sharing_a_store_lose_nothing"]
async fn child_writer() {
    let root = std::env::var("CHILD_ROOT").expect("started by the parent test");
    let child = std::env::var("CHILD_NUMBER").expect("started by the parent test");
    let store = StoreRoot::new(root).store("shared").unwrap();
    for i in 0..WRITES_PER_CHILD {
        store
            .store_at_label(&format!("child:{child}:{i}"), format!("{child}/{i}"))
            .await
            .unwrap();
        store.store("identical in every process").await.unwrap();
        if i < INCREMENTS_PER_CHILD {
            increment(&store).await;
        }
    }
}

#[tokio::test]
async fn processes_sharing_a_store_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|child| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child_writer", "--ignored", "--quiet"])
                .stdout(Stdio::piped())
                .env("CHILD_ROOT", dir.path())
                .env("CHILD_NUMBER", child.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "a child process failed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    let store = StoreRoot::new(dir.path()).store("shared").unwrap();
    for child in 0..CHILDREN {
        for i in 0..WRITES_PER_CHILD {
            let content = store
                .get_content_by_label(&format!("child:{child}:{i}"))
                .await
                .unwrap();
            assert_eq!(content, Some(format!("{child}/{i}").into_bytes()));
        }
    }
    let counter = store
        .get_content_by_label("counter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(counter).unwrap(),
        (CHILDREN * INCREMENTS_PER_CHILD).to_string()
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.labels as usize, CHILDREN * WRITES_PER_CHILD + 1);
    let identical = theater_store::ContentRef::for_content(b"identical in every process");
    assert!(store.exists(&identical).await.unwrap());
    // Every object is counted once, and the total matches the listed content.
    let listed = store.list_all_content().await.unwrap();
    assert_eq!(listed.len() as u64, stats.objects);
    let mut total = 0;
    for content_ref in &listed {
        total += store.get(content_ref).await.unwrap().len() as u64;
    }
    assert_eq!(store.calculate_total_size().await.unwrap(), total);
}
