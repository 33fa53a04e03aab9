//! The export-package decoder: any bytes are either imported or refused;
//! never a panic, and a refusal leaves the store exactly as it was.
#![no_main]

use std::io::Cursor;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use theater_store::{ContentStore, StoreError, StoreRoot};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: ContentStore,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = StoreRoot::new(dir.path()).store("fuzz").unwrap();
    runtime
        .block_on(store.store_at_label("existing", "already here"))
        .unwrap();
    Fixture {
        runtime,
        store,
        _dir: dir,
    }
});

fuzz_target!(|bytes: &[u8]| {
    let fixture = &*FIXTURE;
    fixture.runtime.block_on(async {
        let before = (
            fixture.store.list_labels().await.unwrap(),
            fixture.store.stats().await.unwrap(),
        );
        match fixture
            .store
            .import_package(Cursor::new(bytes.to_vec()), Arc::new(()))
            .await
        {
            Ok(_) => {}
            Err(StoreError::InvalidPackage { .. } | StoreError::InvalidLabel { .. }) => {
                let after = (
                    fixture.store.list_labels().await.unwrap(),
                    fixture.store.stats().await.unwrap(),
                );
                assert_eq!(before, after, "a refused package changed the store");
            }
            Err(other) => panic!("unexpected error kind: {other}"),
        }
    });
});
