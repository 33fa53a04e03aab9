//! Label handling: validation matches the documented rule, and every valid
//! label round-trips through a real store as a distinct key, found by a
//! prefix listing of itself.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use theater_store::{ContentRef, ContentStore, MAX_LABEL_BYTES, StoreRoot, validate_label};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: ContentStore,
    content: ContentRef,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = StoreRoot::new(dir.path()).store("fuzz").unwrap();
    let content = runtime.block_on(store.store("target")).unwrap();
    Fixture {
        runtime,
        store,
        content,
        _dir: dir,
    }
});

fuzz_target!(|label: &str| {
    let valid = !label.is_empty() && label.len() <= MAX_LABEL_BYTES && !label.contains('\0');
    assert_eq!(validate_label(label).is_ok(), valid, "{label:?}");
    let fixture = &*FIXTURE;
    fixture.runtime.block_on(async {
        let labelled = fixture.store.label(label, &fixture.content).await;
        assert_eq!(labelled.is_ok(), valid, "{label:?}: {labelled:?}");
        if valid {
            assert_eq!(
                fixture.store.get_by_label(label).await.unwrap(),
                Some(fixture.content.clone())
            );
            let page = fixture
                .store
                .list_labels_page(label, None, 1)
                .await
                .unwrap();
            assert_eq!(page[0].label, label);
            fixture.store.remove_label(label).await.unwrap();
            assert_eq!(fixture.store.get_by_label(label).await.unwrap(), None);
        }
    });
});
