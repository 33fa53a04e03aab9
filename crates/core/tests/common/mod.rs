//! Helpers shared by the core's integration tests.

// Each test binary uses some of these helpers, none uses all.
#![allow(dead_code)]

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

/// Where the store keeps an object's bytes: small content in the root's
/// index, larger content in a file (see ARCHITECTURE.md).
enum Place {
    File(PathBuf),
    Inline(rusqlite::Connection, i64),
}

fn place(root: &StoreRoot, store: &ContentStore, content_ref: &ContentRef) -> Place {
    let path = object_path(root, store, content_ref);
    if path.is_file() {
        return Place::File(path);
    }
    let db = rusqlite::Connection::open(root.path().unwrap().join("index.sqlite")).unwrap();
    let hash = blake3::Hash::from_hex(content_ref.hash()).unwrap();
    let id = db
        .query_row(
            "SELECT inline_id FROM objects WHERE store = ?1 AND hash = ?2",
            rusqlite::params![store.id(), &hash.as_bytes()[..]],
            |row| row.get(0),
        )
        .expect("the object is neither a file nor an inline row");
    Place::Inline(db, id)
}

/// Overwrites an object's stored bytes with `bytes`, wherever the store
/// keeps them, as a disk fault or a careless hand would.
pub fn damage(root: &StoreRoot, store: &ContentStore, content_ref: &ContentRef, bytes: &[u8]) {
    match place(root, store, content_ref) {
        Place::File(path) => std::fs::write(path, bytes).unwrap(),
        Place::Inline(db, id) => {
            db.execute(
                "UPDATE inline_content SET content = ?2 WHERE id = ?1",
                rusqlite::params![id, bytes],
            )
            .unwrap();
        }
    }
}

/// Deletes an object's stored bytes, leaving its index row.
pub fn lose_bytes(root: &StoreRoot, store: &ContentStore, content_ref: &ContentRef) {
    match place(root, store, content_ref) {
        Place::File(path) => std::fs::remove_file(path).unwrap(),
        Place::Inline(db, id) => {
            db.execute("DELETE FROM inline_content WHERE id = ?1", [id])
                .unwrap();
        }
    }
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

/// Adds one object and a label on it the way releases before inline
/// content did: the object's file under `store_dir`, then its index rows
/// (for fixtures of old roots).
pub fn write_legacy_object(
    db: &rusqlite::Connection,
    store_dir: &std::path::Path,
    (id, label, content): (&str, &str, &[u8]),
) {
    let hash = blake3::hash(content);
    let hex = hash.to_hex();
    let shard = store_dir.join("objects").join(&hex[..2]);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(&hex[2..]), content).unwrap();
    db.execute(
        "INSERT OR IGNORE INTO stores (id, created_at) VALUES (?1, 0)",
        [id],
    )
    .unwrap();
    db.execute(
        "INSERT INTO objects (store, hash, size, stored_at) VALUES (?1, ?2, ?3, 0)",
        rusqlite::params![id, &hash.as_bytes()[..], content.len() as i64],
    )
    .unwrap();
    db.execute(
        "INSERT INTO labels (store, name, hash) VALUES (?1, ?2, ?3)",
        rusqlite::params![id, label, &hash.as_bytes()[..]],
    )
    .unwrap();
}
