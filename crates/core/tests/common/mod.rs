//! Helpers shared by the core's integration tests.

// Each test binary uses some of these helpers, none uses all.
#![allow(dead_code)]

use std::path::PathBuf;

use rusqlite::types::Value;
use tempfile::TempDir;
use theater_store::{ContentRef, ContentStore, StoreRoot};

/// The engine the suites run against: `THEATER_STORE_TEST_ENGINE=shared`
/// selects the shared engine (PostgreSQL + S3, on private servers this
/// process starts), `mem` the memory engine, `log` the log engine;
/// anything else, the local one.
pub fn shared_engine() -> bool {
    std::env::var("THEATER_STORE_TEST_ENGINE").is_ok_and(|engine| engine == "shared")
}

/// Whether the suites run against the memory engine, whose content lives
/// in this process only: tests of damaged or lost bytes on a disk or in a
/// bucket have nothing to damage there, and return early.
pub fn memory_engine() -> bool {
    std::env::var("THEATER_STORE_TEST_ENGINE").is_ok_and(|engine| engine == "mem")
}

/// Whether the suites run against the log engine (`log:DIR`), whose
/// content is in one log file rather than files of its own.
pub fn log_engine() -> bool {
    std::env::var("THEATER_STORE_TEST_ENGINE").is_ok_and(|engine| engine == "log")
}

/// Whether the root under test belongs to this process alone, its bytes
/// out of a test's reach: the memory engine's, or the log engine's (one
/// log file, locked by the process that has it open; the log engine's own
/// tests damage it). Tests that damage bytes by hand, or open the root from
/// other processes, return early.
pub fn kept_by_this_process() -> bool {
    memory_engine() || log_engine()
}

/// The root string another process (or another root in this one) opens
/// `root` by, with a read cache of its own under `dir` named `name` for
/// the shared engine; a local root is its directory.
pub fn root_string_for(root: &StoreRoot, dir: &std::path::Path, name: &str) -> String {
    let described = root.describe().unwrap();
    if !shared_engine() {
        return described;
    }
    let (base, _) = described.split_once("&cache=").unwrap();
    format!(
        "{base}&cache={}",
        dir.join(format!("cache-{name}")).display()
    )
}

/// A fresh, empty root on the engine under test, with default options
/// (kept alive by the returned guard: its directory, or its read cache).
pub fn temp_root() -> (TempDir, StoreRoot) {
    temp_root_with(theater_store::Options::default())
}

/// [`temp_root`] whose change logs keep nothing past a collection, so
/// that gc takes whatever no label reaches now (history keeps nothing).
pub fn temp_root_without_history() -> (TempDir, StoreRoot) {
    temp_root_with(theater_store::Options {
        change_retention: std::time::Duration::ZERO,
        change_retention_min: 0,
        ..theater_store::Options::default()
    })
}

/// [`temp_root`] with the given options.
pub fn temp_root_with(options: theater_store::Options) -> (TempDir, StoreRoot) {
    let dir = tempfile::tempdir().unwrap();
    if memory_engine() {
        let root = StoreRoot::at("mem:", options).expect("a memory root string");
        return (dir, root);
    }
    if log_engine() {
        let root_string = format!("log:{}", dir.path().join("root").display());
        let root = StoreRoot::at(&root_string, options).expect("a log root string");
        return (dir, root);
    }
    if shared_engine() {
        let services = theater_store_testing::Services::shared();
        services.configure_environment();
        let root_string = services.new_root(&dir.path().join("cache"));
        let root = StoreRoot::at(&root_string, options).expect("a shared root string");
        return (dir, root);
    }
    let root = StoreRoot::with_options(dir.path().join("root"), options);
    (dir, root)
}

/// `size` deterministic bytes that do not repeat, so that nothing
/// dedups them.
pub fn unrepeated(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
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

/// A shared root's database and object prefix (both named alike by
/// `Services::new_root`), and its read cache directory.
fn shared_parts(root: &StoreRoot) -> (String, PathBuf) {
    let described = root.describe().unwrap();
    let (before, query) = described.split_once('?').unwrap();
    let database = before.rsplit('/').next().unwrap().to_owned();
    let cache = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("cache="))
        .unwrap();
    (database, PathBuf::from(cache))
}

/// On the shared engine: the object's key URL in the bucket, whether its
/// bytes are inline (in its row), and drops this host's cached copy.
fn shared_place(
    root: &StoreRoot,
    store: &ContentStore,
    content_ref: &ContentRef,
) -> (String, bool) {
    let services = theater_store_testing::Services::shared();
    let (database, cache) = shared_parts(root);
    let hash = content_ref.hash();
    let dir = store_dir_name(store.id());
    let cached = cache.join(format!(
        "stores/{dir}/objects/{}/{}",
        &hash[..2],
        &hash[2..]
    ));
    let _ = std::fs::remove_file(cached);
    let inline = services.psql(
        &database,
        &format!(
            "SELECT inline IS NOT NULL FROM theater_objects WHERE store = '{}' AND digest = '\\x{hash}'",
            store.id()
        ),
    );
    let url = format!(
        "{}/{}/{database}/stores/{dir}/objects/{}/{}",
        services.s3_endpoint(),
        theater_store_testing::BUCKET,
        &hash[..2],
        &hash[2..]
    );
    (url, inline == "t")
}

/// Runs SQL on a shared root's database.
fn shared_sql(root: &StoreRoot, sql: &str) -> String {
    theater_store_testing::Services::shared().psql(&shared_parts(root).0, sql)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn curl(args: &[&str]) {
    let status = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "curl {args:?}");
}

/// The keys in the test bucket under a shared root's `stores/<dir>/<folder>/`.
fn bucket_keys(root: &StoreRoot, dir: &str, folder: &str) -> Vec<String> {
    let (database, _) = shared_parts(root);
    let services = theater_store_testing::Services::shared();
    let listing = std::process::Command::new("curl")
        .arg("-sf")
        .arg(format!(
            "{}/{}?list-type=2&prefix={database}/stores/{dir}/{folder}/",
            services.s3_endpoint(),
            theater_store_testing::BUCKET
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&listing.stdout)
        .split("<Key>")
        .skip(1)
        .map(|rest| rest.split("</Key>").next().unwrap().to_owned())
        .collect()
}

/// Writes `bytes` at `url` in the test bucket.
fn put_in_bucket(url: &str, bytes: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let data = format!("@{}", file.path().display());
    curl(&["-X", "PUT", "--data-binary", &data, url]);
}

/// Sets a shared root's inline bytes of an object to `value` (SQL).
fn set_inline(root: &StoreRoot, store: &ContentStore, content_ref: &ContentRef, value: &str) {
    shared_sql(
        root,
        &format!(
            "UPDATE theater_objects SET inline = {value} WHERE store = '{}' AND digest = '\\x{}'",
            store.id(),
            content_ref.hash()
        ),
    );
}

/// Objects of store `id` kept outside the index (files, or objects in the
/// bucket), and staging files left in the store's temporary directory.
pub fn stored_outside_index(root: &StoreRoot, id: &str) -> (usize, usize) {
    let dir = store_dir_name(id);
    if kept_by_this_process() {
        return (0, 0);
    }
    if shared_engine() {
        let (_, cache) = shared_parts(root);
        let keys = bucket_keys(root, &dir, "objects").len();
        return (keys, files_in(&cache.join(format!("stores/{dir}/tmp"))));
    }
    let at = root.path().unwrap().join("stores").join(dir);
    (files_in(&at.join("objects")), files_in(&at.join("tmp")))
}

fn files_in(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            if entry.path().is_dir() {
                files_in(&entry.path())
            } else {
                1
            }
        })
        .sum()
}

/// Overwrites an object's stored bytes with `bytes`, wherever the store
/// keeps them, as a disk fault or a careless hand would.
pub fn damage(root: &StoreRoot, store: &ContentStore, content_ref: &ContentRef, bytes: &[u8]) {
    if shared_engine() {
        let (url, inline) = shared_place(root, store, content_ref);
        if inline {
            set_inline(root, store, content_ref, &format!("'\\x{}'", hex(bytes)));
        } else {
            put_in_bucket(&url, bytes);
        }
        return;
    }
    match place(root, store, content_ref) {
        Place::File(path) => std::fs::write(path, bytes).unwrap(),
        Place::Inline(db, id) => {
            // The whole content in its row, none kept in the object's row.
            db.execute(
                "UPDATE inline_content SET content = ?2 WHERE id = ?1",
                rusqlite::params![id, bytes],
            )
            .unwrap();
            db.execute(
                "UPDATE objects SET inline_tail = NULL WHERE inline_id = ?1",
                [id],
            )
            .unwrap();
        }
    }
}

/// Deletes an object's stored bytes, leaving its index row.
pub fn lose_bytes(root: &StoreRoot, store: &ContentStore, content_ref: &ContentRef) {
    if shared_engine() {
        let (url, inline) = shared_place(root, store, content_ref);
        if inline {
            // A row without inline bytes says they are in the bucket: gone.
            set_inline(root, store, content_ref, "NULL");
        } else {
            curl(&["-X", "DELETE", &url]);
        }
        return;
    }
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

/// The directory where new content of store `id` is staged: the root's,
/// or (shared engine) this host's read cache's.
pub fn staging_dir(root: &StoreRoot, id: &str) -> PathBuf {
    let base = if shared_engine() {
        shared_parts(root).1
    } else {
        root.path().unwrap().to_owned()
    };
    base.join("stores").join(store_dir_name(id)).join("tmp")
}

/// The bytes of every object of store `id` moved aside by quarantine.
pub fn quarantined(root: &StoreRoot, id: &str) -> Vec<Vec<u8>> {
    let dir = store_dir_name(id);
    if shared_engine() {
        let services = theater_store_testing::Services::shared();
        let bucket = format!(
            "{}/{}",
            services.s3_endpoint(),
            theater_store_testing::BUCKET
        );
        return bucket_keys(root, &dir, "quarantine")
            .into_iter()
            .map(|key| {
                let fetched = std::process::Command::new("curl")
                    .arg("-sf")
                    .arg(format!("{bucket}/{key}"))
                    .output()
                    .unwrap();
                fetched.stdout
            })
            .collect();
    }
    let quarantine = root
        .path()
        .unwrap()
        .join(format!("stores/{dir}/quarantine"));
    std::fs::read_dir(&quarantine)
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect()
}

/// Puts `content` where the store keeps objects without indexing it, as a
/// crash between publishing and indexing leaves it (backdated two hours
/// where the engine allows). Returns a check of whether it is still there.
pub fn place_unindexed(
    root: &StoreRoot,
    store: &ContentStore,
    content: &[u8],
) -> Box<dyn Fn() -> bool> {
    let content_ref = ContentRef::for_content(content);
    if shared_engine() {
        let (url, _) = shared_place(root, store, &content_ref);
        put_in_bucket(&url, content);
        return Box::new(move || {
            std::process::Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "-I", &url])
                .status()
                .unwrap()
                .success()
        });
    }
    let path = object_path(root, store, &content_ref);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    Box::new(move || path.exists())
}

/// Reads actor `actor`'s open segment (the newest events, kept in its
/// chain head label's row) as stored.
pub fn open_segment(root: &StoreRoot, actor: &str) -> Vec<u8> {
    head_column(root, actor, "chain_open")
}

/// Reads the ref of actor `actor`'s newest sealed segment, as its chain
/// head label's row keeps it (32 bytes).
pub fn sealed_segment(root: &StoreRoot, actor: &str) -> Vec<u8> {
    head_column(root, actor, "chain_sealed")
}

/// Writes the ref of actor `actor`'s newest sealed segment by hand.
pub fn set_sealed_segment(root: &StoreRoot, actor: &str, digest: &[u8]) {
    set_head_column(
        root,
        actor,
        ["chain_sealed"; 2],
        Value::Blob(digest.to_vec()),
    );
}

/// One bytes column of actor `actor`'s chain head row (named alike in
/// both engines).
fn head_column(root: &StoreRoot, actor: &str, column: &str) -> Vec<u8> {
    let name = format!("head/{actor}");
    if shared_engine() {
        let hex_bytes = shared_sql(
            root,
            &format!(
                "SELECT encode({column}, 'hex') FROM theater_labels \
                 WHERE store = '_chains' AND name = '{name}'"
            ),
        );
        return (0..hex_bytes.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex_bytes[at..at + 2], 16).unwrap())
            .collect();
    }
    index_db(root)
        .query_row(
            &format!("SELECT {column} FROM labels WHERE store = '_chains' AND name = ?1"),
            [&name],
            |row| row.get(0),
        )
        .unwrap()
}

/// Writes actor `actor`'s open segment as a hand editing the index would.
pub fn set_open_segment(root: &StoreRoot, actor: &str, bytes: &[u8]) {
    set_head_column(root, actor, ["chain_open"; 2], Value::Blob(bytes.to_vec()));
}

/// Points actor `actor`'s chain head at `target` by hand, leaving the
/// length and open segment beside it as they are.
pub fn move_chain_head(root: &StoreRoot, actor: &str, target: &ContentRef) {
    let hash = blake3::Hash::from_hex(target.hash()).unwrap();
    set_head_column(
        root,
        actor,
        ["hash", "target"],
        Value::Blob(hash.as_bytes().to_vec()),
    );
}

/// Sets the length recorded with actor `actor`'s chain head, as the
/// appends of an older build (one object per event) left it.
pub fn set_chain_length(root: &StoreRoot, actor: &str, length: u64) {
    set_head_column(
        root,
        actor,
        ["chain_length"; 2],
        Value::Integer(length as i64),
    );
}

/// Sets one column of actor `actor`'s chain head row by hand; `columns`
/// names it in the local and the shared engine's labels table.
fn set_head_column(root: &StoreRoot, actor: &str, [local, shared]: [&str; 2], value: Value) {
    let name = format!("head/{actor}");
    if shared_engine() {
        let literal = match &value {
            Value::Blob(bytes) => format!("'\\x{}'", hex(bytes)),
            Value::Integer(number) => number.to_string(),
            other => unreachable!("no head column holds {other:?}"),
        };
        shared_sql(
            root,
            &format!(
                "UPDATE theater_labels SET {shared} = {literal} \
                 WHERE store = '_chains' AND name = '{name}'"
            ),
        );
        return;
    }
    index_db(root)
        .execute(
            &format!("UPDATE labels SET {local} = ?2 WHERE store = '_chains' AND name = ?1"),
            rusqlite::params![name, value],
        )
        .unwrap();
}

/// Replaces one event's bytes where they are stored (its sealed segment,
/// or the head's open segment) with `forged`, as a hand editing the store
/// would. Returns what that place held before, for [`restore_events`].
pub async fn alter_event(
    root: &StoreRoot,
    actor: &str,
    event: &theater_store::ChainEntry,
    forged: &[u8],
) -> Vec<u8> {
    let stored = match &event.stored_in {
        Some(segment) => root.chain_store().get(segment).await.unwrap(),
        None => open_segment(root, actor),
    };
    let at = stored
        .windows(event.bytes.len())
        .position(|window| window == event.bytes.as_slice())
        .expect("the event is where the chain says");
    let altered = [&stored[..at], forged, &stored[at + event.bytes.len()..]].concat();
    restore_events(root, actor, event, &altered);
    stored
}

/// Writes back what [`alter_event`] returned, where `event` is stored.
pub fn restore_events(
    root: &StoreRoot,
    actor: &str,
    event: &theater_store::ChainEntry,
    bytes: &[u8],
) {
    match &event.stored_in {
        Some(segment) => damage(root, &root.chain_store(), segment, bytes),
        None => set_open_segment(root, actor, bytes),
    }
}

/// A connection to a local root's index, as a hand editing it would open
/// one. The change log's triggers ask the writing connection who acts
/// (`theater_actor(store)`); this one answers no one.
fn index_db(root: &StoreRoot) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(root.path().unwrap().join("index.sqlite")).unwrap();
    db.create_scalar_function(
        "theater_actor",
        1,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |_| Ok(None::<String>),
    )
    .unwrap();
    db
}

/// Contents the model and cross-engine property tests draw from: small
/// ones live in the index, the last one (over the 16 KiB inline
/// threshold) in a file on the engines that have files.
pub const CONTENTS: [&[u8]; 5] = [
    b"",
    b"alpha",
    b"beta",
    b"a longer piece of content",
    &[7u8; 20_000],
];

/// Labels the property tests draw from: nested, with separators, and in
/// both orders of a prefix.
pub const LABELS: [&str; 4] = ["a", "a:b", "log/1", "z"];
