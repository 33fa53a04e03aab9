//! Helpers shared by the core's integration tests.

use std::path::PathBuf;

use tempfile::TempDir;
use theater_store::{ContentRef, ContentStore, StoreRoot};

/// A root in a fresh temporary directory (kept alive by the returned guard).
pub fn temp_root() -> (TempDir, StoreRoot) {
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().join("root"));
    (dir, root)
}

/// Where the store keeps an object's file, for tests that damage it.
pub fn object_path(root: &StoreRoot, store: &ContentStore, content_ref: &ContentRef) -> PathBuf {
    let hash = content_ref.hash();
    root.path()
        .unwrap()
        .join("stores")
        .join(store_dir_name(store.id()))
        .join("objects")
        .join(&hash[..2])
        .join(&hash[2..])
}

/// The directory name the store uses for `id`: capital letters are written
/// as `^` plus the small letter (see ARCHITECTURE.md).
pub fn store_dir_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_uppercase() {
                format!("^{}", c.to_ascii_lowercase())
            } else {
                c.to_string()
            }
        })
        .collect()
}
