//! The shared engine with its servers killed (SIGKILL) and restarted mid
//! run: calls fail with errors that name the server, succeed again once
//! it is back, and nothing acknowledged is lost. Its own test binary, as
//! it kills the servers this process's tests share. (Built only with the
//! `shared` feature.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use theater_store::{ContentStore, Options, StoreError, StoreRoot};
use theater_store_testing::Services;

/// Retries `attempt` until it succeeds, for a server that is starting.
async fn eventually<T>(what: &str, mut attempt: impl AsyncFnMut() -> Result<T, StoreError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => panic!("{what} never succeeded after the restart: {error}"),
        }
    }
}

fn large(i: u32) -> Vec<u8> {
    format!("large object {i} ").repeat(4_000).into_bytes()
}

async fn check(store: &ContentStore, acknowledged: &[(String, Vec<u8>)]) {
    for (label, content) in acknowledged {
        let read = store.get_content_by_label(label).await.unwrap();
        assert_eq!(read.as_deref(), Some(&content[..]), "{label} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_killed_mid_run_fail_clearly_and_come_back() {
    let services = Services::shared();
    services.configure_environment();
    let dir = tempfile::tempdir().unwrap();
    let root_string = services.new_root(&dir.path().join("cache"));
    let root = StoreRoot::at(&root_string, Options::default()).unwrap();
    let store = root.store("faults").unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (small, big) = (format!("small {i}").into_bytes(), large(i));
        store
            .store_at_label(&format!("s{i}"), small.clone())
            .await
            .unwrap();
        store
            .store_at_label(&format!("l{i}"), big.clone())
            .await
            .unwrap();
        acknowledged.push((format!("s{i}"), small));
        acknowledged.push((format!("l{i}"), big));
    }

    // A watcher from here on, through both outages: it must see every
    // change made meanwhile once, in order, on another host's root.
    let watching = StoreRoot::at(&format!("{root_string}-watcher"), Options::default()).unwrap();
    let since = store.last_change().await.unwrap();
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watch = watching.store("faults").unwrap().watch("", since);
    let watcher = tokio::spawn(async move {
        while let Some(change) = watch.next().await {
            if seen.send(change).is_err() {
                return;
            }
        }
    });

    // The object store down: large content cannot be stored, and the
    // error names it; small content (rows only) still can.
    services.kill_s3();
    let endpoint = services.s3_endpoint();
    let refused = store.store_at_label("l-down", large(99)).await.unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("the object store at s3://theater/"),
        "{message}"
    );
    assert!(message.contains(&endpoint), "{message}");
    store
        .store_at_label("s-down", "stored while S3 was down")
        .await
        .unwrap();
    acknowledged.push(("s-down".into(), b"stored while S3 was down".to_vec()));
    // A host without a cached copy cannot read large content meanwhile.
    let other = format!("{root_string}-other");
    let other = StoreRoot::at(&other, Options::default()).unwrap();
    let unread = other
        .store("faults")
        .unwrap()
        .get_content_by_label("l0")
        .await;
    assert!(unread.unwrap_err().to_string().contains(&endpoint));

    services.restart_s3();
    let stored = eventually("storing large content", async || {
        store.store_at_label("l-after", large(100)).await
    })
    .await;
    assert_eq!(stored, theater_store::ContentRef::for_content(&large(100)));
    acknowledged.push(("l-after".into(), large(100)));

    // PostgreSQL down: every call needing the index fails, naming it.
    services.kill_postgres();
    let at = format!("PostgreSQL at 127.0.0.1:{}", services.postgres_port());
    let refused = store.get_by_label("s0").await.unwrap_err().to_string();
    assert!(refused.contains(&at), "{refused}");
    let refused = store
        .store_at_label("s-pg-down", "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains(&at), "{refused}");

    services.restart_postgres();
    eventually("storing after PostgreSQL came back", async || {
        store.store_at_label("s-after", "after the restart").await
    })
    .await;
    acknowledged.push(("s-after".into(), b"after the restart".to_vec()));

    // Nothing acknowledged is lost, here or on a host with an empty
    // cache, and verify is clean.
    check(&store, &acknowledged).await;
    let fresh = format!("{root_string}-fresh");
    let fresh = StoreRoot::at(&fresh, Options::default()).unwrap();
    check(&fresh.store("faults").unwrap(), &acknowledged).await;
    let report = store.verify(Arc::new(())).await.unwrap();
    assert!(report.is_clean(), "{report:?}");

    // The watcher waited out PostgreSQL's restart and missed nothing.
    let mut labels = Vec::new();
    let mut expected_seq = since + 1;
    while labels.last().map(String::as_str) != Some("s-after") {
        let change = tokio::time::timeout(std::time::Duration::from_secs(30), seen_rx.recv())
            .await
            .expect("the watcher goes on after the restart")
            .expect("the watch does not end")
            .expect("the watch yields no error");
        assert_eq!(change.seq, expected_seq, "once each, in order");
        expected_seq += 1;
        labels.push(change.label);
    }
    assert_eq!(labels, ["s-down", "l-after", "s-after"]);
    watcher.abort();
}
