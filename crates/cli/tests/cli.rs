//! The real `theater-store` binary, driven against temporary roots.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;
use serde_json::{Value, json};
use tempfile::TempDir;

struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("theater-store").unwrap();
        cmd.arg("--root")
            .arg(self.root())
            .env_remove("THEATER_STORE_ROOT");
        cmd
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Stores one content in `store` and points every label of `names`
    /// at it, in one `label --from` batch.
    fn label_one_content(&self, store: &str, names: impl Iterator<Item = String>) {
        let content = self.put(store, "one content, many names", None);
        let batch: String = names.map(|name| format!("{name} {content}\n")).collect();
        let batch = self.file("batch", batch.as_bytes());
        self.cmd()
            .args(["label", store, "--from"])
            .arg(&batch)
            .assert()
            .success();
    }

    /// `put` and return the printed ref.
    fn put(&self, store: &str, content: &str, label: Option<&str>) -> String {
        let mut cmd = self.cmd();
        cmd.args(["put", store, "-"]).write_stdin(content);
        if let Some(label) = label {
            cmd.args(["--label", label]);
        }
        let out = cmd.assert().success().get_output().stdout.clone();
        String::from_utf8(out).unwrap().trim().to_owned()
    }

    /// What a successful command printed.
    fn stdout(&self, args: &[&str]) -> String {
        let out = self
            .cmd()
            .args(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = std::iter::once("--json")
            .chain(args.iter().copied())
            .collect();
        serde_json::from_str(&self.stdout(&args)).unwrap()
    }
}

/// A small object's bytes as the root's index holds them: its content
/// row, then the last bytes its object row may keep (see ARCHITECTURE.md).
fn small_object(root: &Path, store: &str, hash: &str) -> Vec<u8> {
    let db = rusqlite::Connection::open(root.join("index.sqlite")).unwrap();
    let hash = blake3::Hash::from_hex(hash).unwrap();
    let (mut head, tail): (Vec<u8>, Option<Vec<u8>>) = db
        .query_row(
            "SELECT c.content, o.inline_tail FROM objects o
             JOIN inline_content c ON c.id = o.inline_id
             WHERE o.store = ?1 AND o.hash = ?2",
            rusqlite::params![store, &hash.as_bytes()[..]],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    head.extend(tail.unwrap_or_default());
    head
}

/// Overwrites a small object's bytes where the store keeps them, in the
/// root's index (see ARCHITECTURE.md), as a disk fault would.
fn damage_small_object(root: &Path, store: &str, hash: &str, bytes: &[u8]) {
    let db = rusqlite::Connection::open(root.join("index.sqlite")).unwrap();
    let hash = blake3::Hash::from_hex(hash).unwrap();
    let changed = db
        .execute(
            "UPDATE inline_content SET content = ?3 WHERE id =
             (SELECT inline_id FROM objects WHERE store = ?1 AND hash = ?2)",
            rusqlite::params![store, &hash.as_bytes()[..], bytes],
        )
        .unwrap();
    assert_eq!(changed, 1, "the object is not inline");
    db.execute(
        "UPDATE objects SET inline_tail = NULL WHERE store = ?1 AND hash = ?2",
        rusqlite::params![store, &hash.as_bytes()[..]],
    )
    .unwrap();
}

#[test]
fn usage_errors_exit_with_status_2() {
    let env = Env::new();
    env.cmd().assert().code(2);
    env.cmd().arg("no-such-command").assert().code(2);
    env.cmd()
        .args(["run", "x.wasm", "--grant", "../etc"])
        .assert()
        .code(2)
        .stderr(contains("invalid store id"));
    env.cmd()
        .args(["run", "x.wasm", "--memory-limit", "lots"])
        .assert()
        .code(2);
    env.cmd()
        .args(["run", "x.wasm", "--timeout", "0"])
        .assert()
        .code(2);
    env.cmd()
        .args(["gc", "--grace", "1 fortnight"])
        .assert()
        .code(2);
    env.cmd().args(["cat", "s"]).assert().code(2);
}

#[test]
fn put_cat_label_unlabel_and_labels() {
    let env = Env::new();
    let hash = env.put("docs", "hello world", Some("greeting"));
    assert_eq!(hash, blake3::hash(b"hello world").to_hex().as_str());
    env.cmd()
        .args(["cat", "docs", &hash])
        .assert()
        .success()
        .stdout("hello world");
    env.cmd()
        .args(["cat", "docs", "--label", "greeting"])
        .assert()
        .success()
        .stdout("hello world");

    let file = env.file("data.bin", &[0, 1, 2, 255]);
    let out = env
        .cmd()
        .args(["put", "docs"])
        .arg(&file)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let file_hash = String::from_utf8(out).unwrap().trim().to_owned();
    env.cmd()
        .args(["label", "docs", "log:2", &file_hash])
        .assert()
        .success();
    env.cmd()
        .args(["label", "docs", "log:1", &hash])
        .assert()
        .success();
    env.cmd()
        .args(["labels", "docs"])
        .assert()
        .success()
        .stdout(format!(
            "greeting\t{hash}\nlog:1\t{hash}\nlog:2\t{file_hash}\n"
        ));
    env.cmd()
        .args(["labels", "docs", "--prefix", "log:", "--limit", "1"])
        .assert()
        .success()
        .stdout(format!("log:1\t{hash}\n"));
    env.cmd()
        .args(["labels", "docs", "--prefix", "log:", "--after", "log:1"])
        .assert()
        .success()
        .stdout(format!("log:2\t{file_hash}\n"));
    let listed = env.json(&["labels", "docs", "--prefix", "log:"]);
    assert_eq!(listed[1]["label"], "log:2");
    assert_eq!(listed[1]["ref"], file_hash.as_str());

    env.cmd()
        .args(["unlabel", "docs", "greeting"])
        .assert()
        .success();
    env.cmd()
        .args(["cat", "docs", "--label", "greeting"])
        .assert()
        .code(3)
        .stderr(contains("no label \"greeting\"").and(contains("docs")));
    // The content is still there after unlabelling.
    env.cmd()
        .args(["cat", "docs", &hash])
        .assert()
        .success()
        .stdout("hello world");
    let put = env.json(&["put", "docs", file.to_str().unwrap(), "--label", "again"]);
    assert_eq!(put["ref"], file_hash.as_str());
    assert_eq!(put["bytes"], 4);
}

#[test]
fn json_covers_label_unlabel_and_errors_with_their_kind() {
    let env = Env::new();
    let hash = env.put("docs", "hello", None);
    let labelled = env.json(&["label", "docs", "greeting", &hash]);
    assert_eq!(
        labelled,
        json!({"store": "docs", "label": "greeting", "ref": hash})
    );
    let removed = env.json(&["unlabel", "docs", "greeting"]);
    assert_eq!(removed["ref"], hash.as_str());
    // With --json, an error is a JSON object on stderr naming its kind.
    let error_of = |args: &[&str], code: i32| -> Value {
        let out = env
            .cmd()
            .arg("--json")
            .args(args)
            .assert()
            .code(code)
            .get_output()
            .stderr
            .clone();
        serde_json::from_slice(&out).unwrap()
    };
    let missing = error_of(&["cat", "docs", "--label", "greeting"], 3);
    assert_eq!(missing["kind"], "not-found");
    assert!(missing["error"].as_str().unwrap().contains("no label"));
    let invalid = error_of(&["cat", "docs", "not-a-ref"], 1);
    assert_eq!(invalid["kind"], "invalid-ref", "{invalid}");
}

#[test]
fn store_errors_name_what_failed_and_what_is_missing_exits_3() {
    let env = Env::new();
    // A root that is not there is named, and not created.
    env.cmd()
        .args(["cat", "docs", "not-a-ref"])
        .assert()
        .code(3)
        .stderr(contains("store root").and(contains("does not exist")));
    assert!(!env.root().exists());
    env.put("docs", "x", None);
    let absent = blake3::hash(b"absent").to_hex().to_string();
    env.cmd()
        .args(["cat", "docs", "not-a-ref"])
        .assert()
        .code(1)
        .stderr(contains("invalid content ref"));
    env.cmd()
        .args(["cat", "docs", &absent])
        .assert()
        .code(3)
        .stderr(contains(format!("store docs: content {absent} not found")));
    env.cmd()
        .args(["label", "docs", "l", &absent])
        .assert()
        .code(3)
        .stderr(contains("not found"));
    for args in [&["labels", "nodocs"][..], &["unlabel", "docs", "nolabel"]] {
        env.cmd()
            .args(args)
            .assert()
            .code(3)
            .stderr(contains("does not exist").or(contains("no label")));
    }
    env.cmd()
        .args(["put", "../escape", "-"])
        .write_stdin("x")
        .assert()
        .code(1)
        .stderr(contains("invalid store id"));
    env.cmd()
        .args(["put", "docs", "/no/such/file"])
        .assert()
        .code(1)
        .stderr(contains("/no/such/file"));
    let oversize = "l".repeat(2000);
    env.cmd()
        .args(["label", "docs", &oversize, &absent])
        .assert()
        .code(1)
        .stderr(contains("invalid label"));
    env.cmd()
        .args(["import", "docs", "/no/such/package"])
        .assert()
        .code(1)
        .stderr(contains("/no/such/package"));
}

#[test]
fn stores_lists_totals() {
    let env = Env::new();
    env.put("alpha", "12345", Some("a"));
    env.put("alpha", "12345", Some("b"));
    env.put("beta", "xyz", None);
    env.cmd()
        .arg("stores")
        .assert()
        .success()
        .stdout(contains("alpha").and(contains("beta")));
    let stores = env.json(&["stores"]);
    assert_eq!(stores[0]["store"], "alpha");
    assert_eq!(
        (
            stores[0]["objects"].clone(),
            stores[0]["bytes"].clone(),
            stores[0]["labels"].clone()
        ),
        (1.into(), 5.into(), 2.into())
    );
    assert_eq!(stores[1]["labels"], 0);
}

#[test]
fn the_root_comes_from_the_environment_variable() {
    let env = Env::new();
    let mut cmd = Command::cargo_bin("theater-store").unwrap();
    cmd.env("THEATER_STORE_ROOT", env.root())
        .args(["put", "viaenv", "-", "--label", "l"])
        .write_stdin("x")
        .assert()
        .success();
    assert!(env.root().join("index.sqlite").is_file());
    Command::cargo_bin("theater-store")
        .unwrap()
        .env("THEATER_STORE_ROOT", env.root())
        .args(["cat", "viaenv", "--label", "l"])
        .assert()
        .success()
        .stdout("x");
}

#[test]
fn verify_catches_corruption_and_quarantines_it() {
    let env = Env::new();
    let good = env.put("s", "good", Some("good"));
    let bad = env.put("s", "bad", Some("bad"));
    env.cmd()
        .args(["verify"])
        .assert()
        .success()
        .stdout(contains("s: ok (2 objects, 7 bytes checked)"));
    damage_small_object(&env.root(), "s", &bad, b"evil");
    env.cmd()
        .args(["verify", "s"])
        .assert()
        .code(1)
        .stdout(contains(format!("corrupt object {bad}")).and(contains("dangling label \"bad\"")));
    assert_eq!(
        std::fs::read_dir(env.root().join("stores/s/quarantine"))
            .unwrap()
            .count(),
        1
    );
    env.cmd()
        .args(["cat", "s", &good])
        .assert()
        .success()
        .stdout("good");
    let report = env
        .cmd()
        .args(["--json", "verify"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let report: Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["clean"], false);
    assert_eq!(report["stores"][0]["dangling_labels"][0]["label"], "bad");

    // The quarantine is listed; a purge keeps what is recent, then takes it.
    let listed = env.json(&["quarantine"]);
    assert_eq!(listed[0]["store"], "s");
    assert_eq!(listed[0]["quarantined"][0]["ref"], bad.as_str());
    assert_eq!(listed[0]["quarantined"][0]["size"], 4);
    env.cmd()
        .args(["quarantine", "s"])
        .assert()
        .success()
        .stdout(contains(bad.as_str()));
    let kept = env.json(&["quarantine", "s", "--purge"]);
    assert_eq!(kept[0]["purged"], 0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let purged = env.json(&["quarantine", "s", "--purge", "--older-than", "0s"]);
    assert_eq!(purged[0]["purged"], 1);
    assert_eq!(purged[0]["quarantined"], json!([]));
    env.cmd().args(["quarantine", "nosuch"]).assert().code(3);
}

#[test]
fn gc_keeps_everything_a_label_reaches() {
    let env = Env::new();
    let kept = env.put("s", "kept", Some("keep"));
    let orphan = env.put("s", "orphan", None);
    let old = env.put("s", "old version", Some("doc"));
    env.put("s", "new version", Some("doc"));
    // Within the default grace period nothing goes.
    env.cmd()
        .args(["gc", "s"])
        .assert()
        .success()
        .stdout(contains("freed 0 bytes in 0 objects"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    // The old version is history (the change log names it): kept.
    env.cmd()
        .args(["gc", "--dry-run", "--grace", "10ms"])
        .assert()
        .success()
        .stdout(contains("would free 6 bytes in 1 object").and(contains("1 for history")));
    env.cmd().args(["cat", "s", &orphan]).assert().success();
    let report = env.json(&["gc", "s", "--grace", "10ms"]);
    assert_eq!(
        (
            report[0]["objects_removed"].clone(),
            report[0]["bytes_freed"].clone(),
            report[0]["kept_for_history"].clone()
        ),
        (1.into(), 6.into(), 1.into())
    );
    env.cmd()
        .args(["cat", "s", &old])
        .assert()
        .success()
        .stdout("old version");
    // Keeping no history frees it too.
    let report = env.json(&[
        "gc",
        "s",
        "--grace",
        "10ms",
        "--history",
        "0s",
        "--history-min",
        "0",
    ]);
    assert_eq!(
        (
            report[0]["objects_removed"].clone(),
            report[0]["bytes_freed"].clone()
        ),
        (1.into(), 11.into())
    );
    env.cmd().args(["cat", "s", &old]).assert().code(3);
    env.cmd().args(["cat", "s", &orphan]).assert().code(3);
    env.cmd()
        .args(["cat", "s", &kept])
        .assert()
        .success()
        .stdout("kept");
    env.cmd()
        .args(["cat", "s", "--label", "doc"])
        .assert()
        .success()
        .stdout("new version");
    env.cmd().args(["verify", "s"]).assert().success();
}

#[test]
fn export_and_import_round_trip_into_an_empty_root() {
    let env = Env::new();
    env.put("src", "alpha", Some("app:a"));
    env.put("src", "beta", Some("app:b"));
    env.put("src", "alpha", Some("app:alias"));
    env.put("src", "private", Some("other"));
    let package = env.dir.path().join("app.pkg");
    env.cmd()
        .args(["export", "src", "--prefix", "app:", "-o"])
        .arg(&package)
        .assert()
        .success()
        .stdout(contains("exported 2 objects (9 bytes) and 3 labels"));

    let other = Env::new();
    other
        .cmd()
        .args(["import", "dst"])
        .arg(&package)
        .assert()
        .success()
        .stdout(contains("imported 2 objects (2 new"));
    other
        .cmd()
        .args(["labels", "dst"])
        .assert()
        .success()
        .stdout(
            contains("app:a\t")
                .and(contains("app:alias"))
                .and(contains("other").not()),
        );
    other
        .cmd()
        .args(["cat", "dst", "--label", "app:b"])
        .assert()
        .success()
        .stdout("beta");
    other.cmd().args(["verify"]).assert().success();

    // A truncated package is refused and leaves the target unchanged.
    let bytes = std::fs::read(&package).unwrap();
    let truncated = other.file("truncated.pkg", &bytes[..bytes.len() / 2]);
    other
        .cmd()
        .args(["import", "fresh"])
        .arg(&truncated)
        .assert()
        .code(1)
        .stderr(contains("truncated").and(contains("nothing was imported")));
    other
        .cmd()
        .args(["labels", "fresh"])
        .assert()
        .code(3)
        .stderr(contains("store fresh does not exist"));
    let mut tampered = bytes.clone();
    let at = tampered.windows(4).position(|w| w == b"beta").unwrap();
    tampered[at] = b'B';
    let tampered = other.file("tampered.pkg", &tampered);
    other
        .cmd()
        .args(["import", "dst"])
        .arg(&tampered)
        .assert()
        .code(1)
        .stderr(contains("altered"));
    let summary = other.json(&[
        "export",
        "dst",
        "-o",
        other.dir.path().join("again.pkg").to_str().unwrap(),
    ]);
    assert_eq!(
        (summary["objects"].clone(), summary["labels"].clone()),
        (2.into(), 3.into())
    );
}

fn actor_file(env: &Env, name: &str, bytes: &[u8]) -> PathBuf {
    env.file(name, bytes)
}

#[test]
fn run_prints_state_logs_and_exit_status() {
    let env = Env::new();
    let actor = actor_file(&env, "patterns.wasm", theater_store_examples::SEED_PATTERNS);
    let out = env
        .cmd()
        .arg("run")
        .arg(&actor)
        .args(["--param", r#"{"pattern":"basic"}"#])
        .assert()
        .success()
        .stderr(contains("[actor] running pattern basic").and(contains("created store")))
        .get_output()
        .stdout
        .clone();
    let state: Value = serde_json::from_slice(&out).unwrap();
    let store = state["store"].as_str().unwrap();
    let hash = state["ref"]["hash"].as_str().unwrap();
    env.cmd()
        .args(["cat", store, hash])
        .assert()
        .success()
        .stdout("Important information");

    // An actor's own error: exit 1 with its message.
    env.cmd()
        .arg("run")
        .arg(&actor)
        .args(["--param", r#"{"pattern":"nope"}"#])
        .assert()
        .code(1)
        .stderr(contains("unknown pattern"));
    // A store the actor was not granted.
    env.cmd()
        .arg("run")
        .arg(&actor)
        .args([
            "--param",
            r#"{"pattern":"share","role":"reader","store":"secret"}"#,
        ])
        .assert()
        .code(1)
        .stderr(contains("access denied: store secret"));
    // Granted read-only, reading works.
    env.put("secret", r#"{"x":1}"#, Some("shared:resource"));
    env.cmd()
        .arg("run")
        .arg(&actor)
        .args([
            "--param",
            r#"{"pattern":"share","role":"reader","store":"secret"}"#,
            "--grant",
            "secret:ro",
        ])
        .assert()
        .success()
        .stdout(contains(r#""read":{"x":1}"#));
    // Not a component at all.
    let junk = env.file("junk.wasm", b"not wasm");
    env.cmd()
        .arg("run")
        .arg(&junk)
        .assert()
        .code(1)
        .stderr(contains("junk.wasm"));
}

#[test]
fn run_keeps_state_in_a_file_across_runs() {
    let env = Env::new();
    let actor = actor_file(&env, "patterns.wasm", theater_store_examples::SEED_PATTERNS);
    let state = env.dir.path().join("state.json");
    let param = r#"{"pattern":"actor-state","actor_id":"a1"}"#;
    for expected_runs in 1..=3 {
        env.cmd()
            .arg("run")
            .arg(&actor)
            .args(["--param", param, "--grant-any", "--state"])
            .arg(&state)
            .assert()
            .success()
            .stdout("");
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(saved["runs"], expected_runs);
    }
    let json = env.json(&[
        "run",
        actor.to_str().unwrap(),
        "--param",
        r#"{"pattern":"dedupe"}"#,
    ]);
    assert_eq!(json["ok"], true);
    assert!(
        json["state"]
            .as_str()
            .unwrap()
            .contains("\"same_ref\":true")
    );
}

#[test]
fn run_stops_runaway_actors() {
    let env = Env::new();
    let actor = actor_file(&env, "hostile.wasm", theater_store_examples::HOSTILE);
    env.cmd()
        .arg("run")
        .arg(&actor)
        .args([
            "--param",
            r#"{"attack":"infinite-loop"}"#,
            "--timeout",
            "0.5",
        ])
        .assert()
        .code(1)
        .stderr(contains("deadline"));
    env.cmd()
        .arg("run")
        .arg(&actor)
        .args([
            "--param",
            r#"{"attack":"memory-bomb"}"#,
            "--memory-limit",
            "32MiB",
        ])
        .assert()
        .code(1)
        .stderr(contains("memory past the 33554432 byte limit"));
}

#[test]
fn demo_runs_every_seed_pattern() {
    let env = Env::new();
    let out = env
        .cmd()
        .arg("demo")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for title in [
        "1. Creating and managing stores",
        "8. A linked list of refs",
        "15. Synchronization between stores",
    ] {
        assert!(text.contains(title), "{title} missing from:\n{text}");
    }
    assert!(
        text.contains("document:latest") && text.contains("log:events") && text.contains("sync:a")
    );
    let report = env.json(&["demo"]);
    let patterns = report.as_array().unwrap();
    assert_eq!(patterns.len(), 15);
    assert_eq!(
        patterns[8]["result"]["computed"], false,
        "the second cache run must hit the cache"
    );
    assert_eq!(patterns[3]["result"]["runs"], 3);
    assert_eq!(patterns[10]["result"]["well_formed"], true);
    env.cmd().arg("verify").assert().success();
}

#[test]
fn rm_store_removes_one_store_and_dry_run_changes_nothing() {
    let env = Env::new();
    let hash = env.put("doomed", "going", Some("a"));
    env.put("doomed", "unlabelled", None);
    env.put("kept", "staying", Some("a"));
    let dry = env.json(&["rm-store", "doomed", "--dry-run"]);
    assert_eq!(
        (
            dry["labels_removed"].clone(),
            dry["objects_removed"].clone()
        ),
        (1.into(), 2.into())
    );
    env.cmd()
        .args(["cat", "doomed", &hash])
        .assert()
        .success()
        .stdout("going");
    env.cmd()
        .args(["rm-store", "doomed"])
        .assert()
        .success()
        .stdout(contains("doomed: removed 1 label and 2 objects"));
    let stores = env.json(&["stores"]);
    let ids: Vec<&str> = stores
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kept"]);
    env.cmd()
        .args(["cat", "doomed", &hash])
        .assert()
        .code(3)
        .stderr(contains("store doomed does not exist"));
    env.cmd()
        .args(["cat", "kept", "--label", "a"])
        .assert()
        .success()
        .stdout("staying");
}

#[test]
fn concurrent_exports_into_one_directory_each_write_a_whole_package() {
    let env = Env::new();
    let big: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    let file = env.file("big.bin", &big);
    env.cmd()
        .args(["put", "src", "--label", "big"])
        .arg(&file)
        .assert()
        .success();
    let out = env.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for round in 0..3 {
        let exports: Vec<_> = ["backup.a", "backup.b"]
            .iter()
            .map(|name| {
                let mut cmd =
                    std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"));
                cmd.arg("--root")
                    .arg(env.root())
                    .args(["export", "src", "-o"])
                    .arg(out.join(name))
                    .stdout(std::process::Stdio::null());
                cmd.spawn().unwrap()
            })
            .collect();
        for mut export in exports {
            assert!(export.wait().unwrap().success(), "round {round}");
        }
        for name in ["backup.a", "backup.b"] {
            let target = Env::new();
            target
                .cmd()
                .args(["import", "dst"])
                .arg(out.join(name))
                .assert()
                .success();
            target
                .cmd()
                .args(["cat", "dst", "--label", "big"])
                .assert()
                .success();
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(leftovers.len(), 2, "temporary files left behind");
}

#[test]
fn label_text_cannot_forge_lines_or_steer_the_terminal() {
    let env = Env::new();
    let hash = env.put("s", "content", None);
    let forged = format!("innocent\t{hash}\nforged\x1b[2K");
    env.cmd()
        .args(["label", "s", &forged, &hash])
        .assert()
        .success();
    let out = env
        .cmd()
        .args(["labels", "s"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(out.contains(r"innocent\t"), "{out:?}");
    // JSON keeps the label exact.
    let labels = env.json(&["labels", "s"]);
    assert_eq!(labels[0]["label"], forged.as_str());
}

/// Runs `actor` with `args`, which must succeed, and parses its state.
fn run_state(env: &Env, actor: &Path, args: &[&str]) -> Value {
    let out = env
        .cmd()
        .arg("run")
        .arg(actor)
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn run_takes_store_and_actor_quotas() {
    let env = Env::new();
    let actor = actor_file(&env, "hostile.wasm", theater_store_examples::HOSTILE);
    let state = run_state(
        &env,
        &actor,
        &[
            "--max-stores",
            "3",
            "--param",
            r#"{"attack":"store-flood"}"#,
        ],
    );
    assert_eq!(state["attempts"][0]["what"], "new after 3 stores");

    let state = run_state(
        &env,
        &actor,
        &[
            "--store-quota",
            "1MiB",
            "--param",
            r#"{"attack":"label-flood"}"#,
        ],
    );
    let error = state["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("quota is 1048576 bytes"), "{error}");

    let state = run_state(
        &env,
        &actor,
        &[
            "--actor-quota",
            "2MiB",
            "--param",
            r#"{"attack":"fill-stores","chunk":262144}"#,
        ],
    );
    let error = state["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("actor quota exceeded"), "{error}");
}

/// Runs the binary with stdin from `input` and stdout into `output`;
/// returns its exit code and peak resident memory in KiB (from `wait4`).
fn run_measured(env: &Env, args: &[&str], input: &Path, output: &Path) -> (i32, i64) {
    // Reaped by `wait4` below, which also reports the peak memory that
    // `Child::wait` cannot.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"))
        .arg("--root")
        .arg(env.root())
        .args(args)
        .env_remove("THEATER_STORE_ROOT")
        .stdin(std::fs::File::open(input).unwrap())
        .stdout(std::fs::File::create(output).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid for the call.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32);
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

/// What a run of the binary peaked at: resident memory (from `wait4`),
/// and threads and open files (sampled from /proc every few ms).
#[derive(Debug)]
struct Peak {
    code: i32,
    rss_kib: i64,
    threads: usize,
    fds: usize,
}

/// Runs the binary with `args`, sampling its threads and open files until
/// it exits.
fn run_sampled(env: &Env, args: &[&str]) -> Peak {
    // Reaped by `wait4` below.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"))
        .arg("--root")
        .arg(env.root())
        .args(args)
        .env_remove("THEATER_STORE_ROOT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (mut threads, mut fds) = (0, 0);
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: polls our own child; both pointers are valid for the call.
        let waited = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if waited == pid {
            return Peak {
                code: libc::WEXITSTATUS(status),
                rss_kib: usage.ru_maxrss,
                threads,
                fds,
            };
        }
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let now = text
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|count| count.trim().parse().ok())
                .unwrap_or(0);
            threads = threads.max(now);
        }
        if let Ok(open) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            fds = fds.max(open.count());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn an_actor_holding_its_stream_cap_keeps_host_memory_fds_and_threads_bounded() {
    let env = Env::new();
    let actor = actor_file(&env, "hostile.wasm", theater_store_examples::HOSTILE);
    let actor = actor.to_str().unwrap();
    let four_mib: String = (0..4 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let content = env.put("s", &four_mib, Some("big"));
    let run = |attack: Value| {
        let param = attack.to_string();
        let peak = run_sampled(&env, &["run", actor, "--grant", "s", "--param", &param]);
        assert_eq!(peak.code, 0, "{attack}: {peak:?}");
        peak
    };
    // Each run holds what it opened for 1.5 s while it is sampled.
    let idle = run(
        json!({"attack": "many-readers", "store": "s", "ref": content,
                          "readers": 0, "hold_ms": 1500}),
    );
    let readers = run(
        json!({"attack": "many-readers", "store": "s", "ref": content,
                             "readers": 1000, "hold_ms": 1500}),
    );
    let writers = run(json!({"attack": "many-writers", "store": "s",
                             "writers": 600, "hold_ms": 1500}));
    // Before the cap: 1,000 readers took 2.34 GB and about 2,000 files;
    // 600 writers, 518 threads and 1,041 files. Now at most 64 streams,
    // each reader holding two 256 KiB windows and two files (content and
    // outboard), no writer a thread.
    for (what, peak) in [("readers", &readers), ("writers", &writers)] {
        assert!(
            peak.rss_kib < idle.rss_kib + (96 << 10),
            "{what}: {peak:?} against {idle:?}"
        );
        assert!(
            peak.fds <= idle.fds + 2 * 64 + 8,
            "{what}: {peak:?} against {idle:?}"
        );
        // A writer takes a thread only while its queued bytes drain, so
        // never more than the cap's worth, however many the actor asks for.
        assert!(
            peak.threads <= idle.threads + 64 + 8,
            "{what}: {peak:?} against {idle:?}"
        );
    }
    eprintln!("idle {idle:?}\nreaders {readers:?}\nwriters {writers:?}");
}

#[test]
fn put_and_cat_stream_large_content_in_bounded_memory() {
    let env = Env::new();
    // 256 MiB of varied bytes, written in pieces so the test stays small too.
    let input = env.dir.path().join("large.bin");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for i in 0..256u32 {
            for (j, byte) in block.iter_mut().enumerate() {
                *byte =
                    (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8 ^ (j >> 11) as u8;
            }
            file.write_all(&block).unwrap();
        }
    }
    let printed = env.dir.path().join("ref.txt");
    let (code, put_kib) = run_measured(
        &env,
        &["put", "big", "-", "--label", "data"],
        &input,
        &printed,
    );
    assert_eq!(code, 0);
    let hash = std::fs::read_to_string(&printed).unwrap().trim().to_owned();
    let expected = {
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(std::fs::File::open(&input).unwrap())
            .unwrap();
        hasher.finalize().to_hex().to_string()
    };
    assert_eq!(hash, expected);
    // Measured against the same binary doing almost nothing, so that what
    // is compared is what the content costs, not the binary's own size.
    let idle = env.dir.path().join("idle.txt");
    let (_, idle_kib) = run_measured(&env, &["stores"], &input, &idle);
    let bound = idle_kib + (48 << 10);
    assert!(
        put_kib < bound,
        "put of 256 MiB peaked at {put_kib} KiB (idle: {idle_kib} KiB)"
    );

    let output = env.dir.path().join("out.bin");
    let (code, cat_kib) = run_measured(&env, &["cat", "big", &hash], &input, &output);
    assert_eq!(code, 0);
    assert!(
        cat_kib < bound,
        "cat of 256 MiB peaked at {cat_kib} KiB (idle: {idle_kib} KiB)"
    );
    assert!(std::fs::read(&output).unwrap() == std::fs::read(&input).unwrap());

    // Ranges: verified, end exclusive, open-ended, refused past the end.
    let whole = std::fs::read(&input).unwrap();
    let mid = 100 << 20;
    env.cmd()
        .args([
            "cat",
            "big",
            "--label",
            "data",
            "--range",
            &format!("{mid}..{}", mid + 4096),
        ])
        .assert()
        .success()
        .stdout(predicate::eq(&whole[mid..mid + 4096]));
    let tail = whole.len() - 10;
    env.cmd()
        .args(["cat", "big", &hash, "--range", &format!("{tail}..")])
        .assert()
        .success()
        .stdout(predicate::eq(&whole[tail..]));
    env.cmd()
        .args([
            "cat",
            "big",
            &hash,
            "--range",
            &format!("{tail}..{}", whole.len() + 1),
        ])
        .assert()
        .code(1)
        .stderr(contains("is outside content").and(contains(&hash)));
    env.cmd()
        .args(["cat", "big", &hash, "--range", "9..3"])
        .assert()
        .code(2);

    // One flipped byte: ranges over it fail naming store and ref, others work.
    let object = env
        .root()
        .join("stores/big/objects")
        .join(&hash[..2])
        .join(&hash[2..]);
    let mut damaged = std::fs::read(&object).unwrap();
    damaged[mid + 100] ^= 1;
    std::fs::write(&object, &damaged).unwrap();
    env.cmd()
        .args([
            "cat",
            "big",
            &hash,
            "--range",
            &format!("{mid}..{}", mid + 4096),
        ])
        .assert()
        .code(1)
        .stderr(
            contains("corrupted")
                .and(contains("store big"))
                .and(contains(&hash)),
        );
    env.cmd()
        .args(["cat", "big", &hash, "--range", "0..4096"])
        .assert()
        .success()
        .stdout(predicate::eq(&whole[..4096]));
}

#[test]
fn chain_lists_an_actors_calls_and_verify_chain_names_a_tampered_event() {
    let env = Env::new();
    let actor = actor_file(&env, "compat.wasm", theater_store_examples::THEATER_COMPAT);
    env.cmd()
        .arg("run")
        .arg(&actor)
        .args(["--actor", "billing-7"])
        .assert()
        .success()
        .stderr(contains("event chain of actor billing-7"));

    let events = env.json(&["chain", "billing-7"]);
    let events = events.as_array().unwrap();
    // The run's start, its 14 calls, its end; newest first.
    assert_eq!(events.len(), 16);
    assert_eq!(events[0]["type"], "run-end");
    assert_eq!(events[0]["outcome"]["status"], "ok");
    assert_eq!(events[1]["type"], "calculate-total-size");
    assert_eq!(events[14]["type"], "new");
    assert_eq!(events[15]["type"], "run-start");
    assert_eq!(events[1]["seq"], 14);
    assert_eq!(events[1]["event"], events[0]["parent"]);
    let limited = env.json(&["chain", "billing-7", "--limit", "3"]);
    assert_eq!(limited.as_array().unwrap().len(), 3);
    env.cmd()
        .args(["chain", "billing-7"])
        .assert()
        .success()
        .stdout(
            contains("#13")
                .and(contains("store-at-label"))
                .and(contains("label=\"doc:latest\"")),
        );
    env.cmd()
        .args(["verify-chain", "billing-7"])
        .assert()
        .success()
        .stdout(contains("chain intact (16 events"));
    // Chains are kept by gc and checked by verify with every store.
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    env.cmd().arg("verify").assert().success();
    assert_eq!(
        env.json(&["chain", "billing-7"]).as_array().unwrap().len(),
        16
    );

    // One event's bytes altered inside the sealed segment that holds it:
    // verify-chain names the event and exits 1.
    let victim = events[7]["event"].as_str().unwrap();
    let segment = events[7]["stored_in"]
        .as_str()
        .expect("an older event is sealed");
    let mut stored = small_object(&env.root(), "_chains", segment);
    let at = stored
        .windows(9)
        .position(|window| window == br#"{"seq":8,"#)
        .expect("the segment holds event #8");
    stored[at + 3] ^= 1;
    damage_small_object(&env.root(), "_chains", segment, &stored);
    env.cmd()
        .args(["verify-chain", "billing-7"])
        .assert()
        .code(1)
        .stdout(contains("BROKEN at event #8").and(contains(victim)));
    // An actor id that could not be one.
    env.cmd()
        .args(["chain", "../etc"])
        .assert()
        .code(1)
        .stderr(contains("invalid actor id"));
}

#[test]
fn a_lost_index_is_refused_until_the_operator_reindexes_the_content_files() {
    let env = Env::new();
    let large = "kept in a file ".repeat(2_000);
    let large_ref = env.put("app", &large, Some("big"));
    env.put("app", "small, inside the index", Some("small"));
    for name in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let _ = std::fs::remove_file(env.root().join(name));
    }
    // Every command refuses, naming both ways back; nothing is changed.
    for args in [&["stores"][..], &["gc", "--grace", "0s"]] {
        env.cmd()
            .args(args)
            .assert()
            .code(1)
            .stderr(contains("index (index.sqlite) is missing").and(contains("reindex")));
    }
    assert!(!env.root().join("index.sqlite").exists());
    env.cmd()
        .arg("reindex")
        .assert()
        .success()
        .stdout(contains("app: 1 object").and(contains("restore them from a package")));
    env.cmd()
        .args(["cat", "app", "--label", &format!("recovered/{large_ref}")])
        .assert()
        .success()
        .stdout(large);
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    env.cmd().arg("verify").assert().success();
}

#[test]
fn an_operator_trims_a_chain_and_it_still_verifies() {
    let env = Env::new();
    let actor = actor_file(&env, "compat.wasm", theater_store_examples::THEATER_COMPAT);
    for _ in 0..3 {
        env.cmd()
            .arg("run")
            .arg(&actor)
            .args(["--actor", "billing-7"])
            .assert()
            .success();
    }
    let trimmed = env.json(&["chain", "billing-7", "--trim-before", "30"]);
    let starts_at = trimmed["starts_at"].as_u64().unwrap();
    assert!((20..=30).contains(&starts_at), "{trimmed}");
    assert_eq!(trimmed["events_trimmed"].as_u64(), Some(starts_at));
    env.cmd()
        .args(["verify-chain", "billing-7"])
        .assert()
        .success()
        .stdout(contains(format!("chain intact ({} events", 48 - starts_at)))
        .stdout(contains(format!("events before #{starts_at} trimmed")));
    let events = env.json(&["chain", "billing-7"]);
    let oldest = events.as_array().unwrap().last().unwrap();
    assert_eq!(oldest["seq"].as_u64(), Some(starts_at));
    // The dropped segments go at the next gc; the chain still verifies.
    let collected = env.json(&["gc", "_chains", "--grace", "0s"]);
    assert!(
        collected[0]["objects_removed"].as_u64().unwrap() > 0,
        "{collected}"
    );
    env.cmd()
        .args(["verify-chain", "billing-7"])
        .assert()
        .success();
    // By age: everything older than an hour is nothing here.
    env.cmd()
        .args(["chain", "billing-7", "--trim-before", "1h"])
        .assert()
        .success()
        .stdout(contains("nothing trimmed"));
    env.cmd()
        .args(["chain", "nobody", "--trim-before", "3"])
        .assert()
        .code(3)
        .stderr(contains("actor nobody has no event chain"));
    env.cmd()
        .args(["chain", "billing-7", "--trim-before", "soon"])
        .assert()
        .code(2)
        .stderr(contains("neither an event position"));
}

#[test]
fn run_executes_wasi_commands_with_keyvalue_and_caches_the_compiled_component() {
    let env = Env::new();
    let command = actor_file(&env, "kv.wasm", theater_store_examples::KV_COUNTER);
    // `run kv.wasm ARGS...`: the grants, `--` and the command's own argv.
    let run_kv = |args: &[&str]| {
        let mut cmd = env.cmd();
        cmd.arg("run").arg(&command).args(args);
        cmd.assert()
    };
    run_kv(&["--grant", "app", "--", "app", "set", "greeting", "hello"])
        .success()
        .stdout("ok\n")
        // A granted store the run brought into being is named, once.
        .stderr(contains("created granted store app"));
    run_kv(&["--grant", "app", "--", "app", "set", "greeting", "hello"])
        .success()
        .stderr(contains("created granted store").not());
    // The key is a label like any other.
    env.cmd()
        .args(["cat", "app", "--label", "greeting"])
        .assert()
        .success()
        .stdout("hello");
    run_kv(&["--grant", "app:ro", "--", "app", "get", "greeting"])
        .success()
        .stdout("value=hello\n");
    // Environment variables are given one by one (`--env NAME=VALUE`, or
    // `--env NAME` to pass this one's), never the whole environment.
    // `-` names the bucket by $IDENTIFIER, which the host holds here.
    let get_by_env = |options: &[&str]| {
        let mut cmd = env.cmd();
        cmd.env("IDENTIFIER", "app").env_remove("NOT_HERE");
        cmd.arg("run").arg(&command);
        cmd.args(["--grant", "app:ro"]).args(options);
        cmd.args(["--", "-", "get", "greeting"]).assert()
    };
    get_by_env(&["--env", "IDENTIFIER=app"])
        .success()
        .stdout("value=hello\n");
    get_by_env(&["--env", "IDENTIFIER"])
        .success()
        .stdout("value=hello\n");
    get_by_env(&[])
        .code(1)
        .stderr(contains("IDENTIFIER is not set"));
    get_by_env(&["--env", "NOT_HERE"])
        .code(1)
        .stderr(contains("--env NOT_HERE: NOT_HERE is not set"));
    // The command's exit status passes through: 1 for a refused call (its
    // message on stderr) and for bad usage (WASI 0.2 carries success or
    // failure, so its `exit(2)` arrives as 1).
    run_kv(&["--grant", "app:ro", "--", "app", "set", "greeting", "bye"])
        .code(1)
        .stderr(contains("access denied"));
    run_kv(&["--grant", "app", "--", "app", "frobnicate"])
        .code(1)
        .stderr(contains("unknown command"));
    // Arguments after `--` are for commands only.
    let actor = actor_file(&env, "compat.wasm", theater_store_examples::THEATER_COMPAT);
    env.cmd()
        .arg("run")
        .arg(&actor)
        .args(["--", "x"])
        .assert()
        .code(1)
        .stderr(contains("arguments after `--` are for WASI commands"));

    // Both components were compiled once and kept in the root's cache, a
    // label per component hash and engine.
    let root = theater_store::StoreRoot::new(env.root());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cached = runtime
        .block_on(root.component_cache().list_labels())
        .unwrap();
    assert_eq!(cached.len(), 2, "{cached:?}");
    let kv_hash = blake3::hash(theater_store_examples::KV_COUNTER).to_hex();
    assert!(
        cached
            .iter()
            .any(|label| label.starts_with(kv_hash.as_str()))
    );
    // gc may drop the cache; runs then compile again and refill it.
    std::thread::sleep(std::time::Duration::from_millis(20));
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    let cached = runtime
        .block_on(root.component_cache().list_labels())
        .unwrap();
    assert!(cached.is_empty(), "{cached:?}");
    env.cmd()
        .arg("run")
        .arg(&command)
        .args([
            "--no-cache",
            "--grant",
            "app:ro",
            "--",
            "app",
            "get",
            "greeting",
        ])
        .assert()
        .success()
        .stdout("value=hello\n");
    let cached = runtime
        .block_on(root.component_cache().list_labels())
        .unwrap();
    assert!(cached.is_empty(), "--no-cache filled the cache: {cached:?}");
}

/// Fills `store` in the root at `root` with `count` labels `doc:NNNN`, each
/// pointing at its own content tagged `version`.
fn fill(root: &Path, store: &str, count: usize, version: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = theater_store::StoreRoot::new(root).store(store).unwrap();
        for i in 0..count {
            let label = format!("doc:{i:04}");
            store
                .store_at_label(&label, format!("{version} {i}"))
                .await
                .unwrap();
        }
    });
}

/// How many `doc:NNNN` labels in the root at `root` hold `version`.
fn count_at_version(root: &Path, store: &str, count: usize, version: &str) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = theater_store::StoreRoot::new(root).store(store).unwrap();
        let mut matching = 0;
        for i in 0..count {
            let content = store
                .get_content_by_label(&format!("doc:{i:04}"))
                .await
                .unwrap();
            matching += usize::from(content == Some(format!("{version} {i}").into_bytes()));
        }
        matching
    })
}

#[test]
fn sync_copies_between_roots_reports_conflicts_and_refuses_urls() {
    let env = Env::new();
    let (from, to) = (env.dir.path().join("a"), env.dir.path().join("b"));
    fill(&from, "docs", 20, "v1");
    let sync = |args: &[&str]| {
        let mut cmd = Command::cargo_bin("theater-store").unwrap();
        cmd.arg("sync").arg(&from).arg(&to).args(args);
        cmd
    };
    sync(&["--dry-run"])
        .assert()
        .success()
        .stdout(contains("docs: would copy 20 objects"));
    assert_eq!(count_at_version(&to, "docs", 20, "v1"), 0);
    sync(&[])
        .assert()
        .success()
        .stdout(contains("docs: copied 20 objects").and(contains("20 moved")));
    assert_eq!(count_at_version(&to, "docs", 20, "v1"), 20);

    // Changed on both sides: reported, exit 1, the destination's value kept.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let a = theater_store::StoreRoot::new(&from).store("docs").unwrap();
        let b = theater_store::StoreRoot::new(&to).store("docs").unwrap();
        a.store_at_label("doc:0003", "from a").await.unwrap();
        b.store_at_label("doc:0003", "from b").await.unwrap();
    });
    let out = sync(&["docs", "--json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let reports: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(reports[0]["store"], "docs");
    assert_eq!(reports[0]["conflicts"][0]["label"], "doc:0003");
    sync(&[])
        .assert()
        .code(1)
        .stdout(contains("conflict in docs: label doc:0003 is "));
    Command::cargo_bin("theater-store")
        .unwrap()
        .arg("--root")
        .arg(&to)
        .args(["cat", "docs", "--label", "doc:0003"])
        .assert()
        .success()
        .stdout("from b");

    Command::cargo_bin("theater-store")
        .unwrap()
        .arg("sync")
        .arg(&to)
        .arg(env.dir.path().join("b/../b"))
        .assert()
        .code(1)
        .stderr(contains("are the same root"));
    // A malformed root string is named, without its password.
    Command::cargo_bin("theater-store")
        .unwrap()
        .args(["sync", "postgres://theater:hunter2@127.0.0.1:5432/db"])
        .arg(&to)
        .assert()
        .code(1)
        .stderr(
            contains("postgres://theater:***@127.0.0.1:5432/db")
                .and(contains("objects=s3://"))
                .and(contains("hunter2").not()),
        );
    // An unreachable server is named by host and port.
    let unreachable = format!(
        "postgres://theater:hunter2@127.0.0.1:1/db?objects=s3://bucket/p&cache={}",
        env.dir.path().join("cache").display()
    );
    Command::cargo_bin("theater-store")
        .unwrap()
        .args(["sync", &unreachable])
        .arg(&to)
        .assert()
        .code(1)
        .stderr(
            contains("PostgreSQL at 127.0.0.1:1")
                .and(contains("connecting"))
                .and(contains("hunter2").not()),
        );
}

/// A sync killed at any point and run again (after the source changed
/// again) converges, with no label reported as a conflict: the labels it
/// had moved count as unchanged.
#[test]
fn a_killed_sync_resumes_and_converges() {
    const LABELS: usize = 3000;
    let env = Env::new();
    let (from, to) = (env.dir.path().join("a"), env.dir.path().join("b"));
    fill(&from, "docs", LABELS, "v1");
    let sync = || {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"));
        cmd.arg("sync").arg(&from).arg(&to);
        cmd
    };
    assert!(sync().output().unwrap().status.success());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let watched = theater_store::StoreRoot::new(&to).store("docs").unwrap();
    // Kill points: as the first label moves, half way through the labels,
    // and while content is still being copied.
    let kill_when = [Some(0), Some(LABELS / 2), None];
    for (cycle, (version, kill_at)) in ["v2", "v3", "v4"].into_iter().zip(kill_when).enumerate() {
        fill(&from, "docs", LABELS, version);
        let mut child = sync().stdout(std::process::Stdio::null()).spawn().unwrap();
        let started = std::time::Instant::now();
        if let Some(i) = kill_at {
            let (label, wanted) = (format!("doc:{i:04}"), format!("{version} {i}").into_bytes());
            while started.elapsed() < std::time::Duration::from_secs(20) {
                let now = runtime
                    .block_on(watched.get_content_by_label(&label))
                    .unwrap();
                if now.as_ref() == Some(&wanted) {
                    break;
                }
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let moved = count_at_version(&to, "docs", LABELS, version);
        println!("cycle {cycle}: killed after {moved} of {LABELS} labels moved");

        // The source moves on before the sync runs again: labels the killed
        // sync moved must still count as unchanged on the destination.
        let version = format!("{version}+");
        fill(&from, "docs", LABELS, &version);
        let out = sync().arg("--json").output().unwrap();
        assert!(
            out.status.success(),
            "the resumed sync did not converge: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reports[0]["conflicts"], Value::Array(vec![]));
        assert_eq!(count_at_version(&to, "docs", LABELS, &version), LABELS);
    }
}

/// The CLI on `root` (a path or a root string), whatever the environment
/// names.
fn on(root: &str) -> Command {
    let mut cmd = Command::cargo_bin("theater-store").unwrap();
    cmd.args(["--root", root]).env_remove("THEATER_STORE_ROOT");
    cmd
}

/// A fresh root on this test process's PostgreSQL + S3 pair, with its
/// read cache in `env`; the `AWS_*` variables the CLI inherits point there.
fn new_shared_root(env: &Env) -> String {
    let services = theater_store_testing::Services::shared();
    services.configure_environment();
    services.new_root(&env.dir.path().join("cache"))
}

/// A shared root (PostgreSQL + S3 on this process's private servers) as
/// users name it: the demo runs on it, and `sync` copies local to shared
/// and shared to local, with the content verified at the far end.
#[test]
fn shared_roots_run_the_demo_and_sync_with_local_ones() {
    let env = Env::new();
    let shared = new_shared_root(&env);
    let demo = on(&shared).arg("demo").assert().success();
    let text = String::from_utf8(demo.get_output().stdout.clone()).unwrap();
    assert!(
        text.contains("15. Synchronization between stores"),
        "{text}"
    );
    on(&shared).arg("verify").assert().success();

    // Local → shared: small and large content, with labels.
    let large = "large content ".repeat(10_000);
    env.put("docs", "small content", Some("doc:small"));
    env.put("docs", &large, Some("doc:large"));
    let local = env.root().display().to_string();
    on(&shared)
        .args(["sync", &local, &shared, "docs"])
        .assert()
        .success();
    on(&shared)
        .args(["cat", "docs", "--label", "doc:large"])
        .assert()
        .success()
        .stdout(large.clone());

    // Changed on the shared side, then shared → a second local root.
    on(&shared)
        .args(["put", "docs", "-", "--label", "doc:small"])
        .write_stdin("changed on the shared root")
        .assert()
        .success();
    let second = env.dir.path().join("second").display().to_string();
    on(&second)
        .args(["sync", &shared, &second])
        .assert()
        .success();
    on(&second)
        .args(["cat", "docs", "--label", "doc:small"])
        .assert()
        .success()
        .stdout("changed on the shared root");
    on(&second)
        .args(["cat", "docs", "--label", "doc:large"])
        .assert()
        .success()
        .stdout(large);
    // Syncing back moves the change to the first local root, no conflict.
    env.cmd()
        .args(["sync", &shared, &local, "docs"])
        .assert()
        .success();
    env.cmd()
        .args(["cat", "docs", "--label", "doc:small"])
        .assert()
        .success()
        .stdout("changed on the shared root");
}

/// Two `sync` processes at once, in opposite directions between a local
/// and a shared root: no label is silently lost. Each side's labels reach
/// the other (after one more round, for what each process listed before
/// the other wrote), and a label changed on both sides is reported as a
/// conflict, with neither value overwritten.
#[test]
fn syncs_in_opposite_directions_as_two_processes_lose_no_label() {
    let env = Env::new();
    let shared = new_shared_root(&env);
    let local = env.root().display().to_string();
    let put = |root: &str, label: &str, content: &str| {
        on(root)
            .args(["put", "docs", "-", "--label", label])
            .write_stdin(content.to_owned())
            .assert()
            .success();
    };
    put(&local, "both", "agreed");
    on(&local)
        .args(["sync", &local, &shared])
        .assert()
        .success();
    for i in 0..100 {
        put(&local, &format!("local:{i:03}"), &format!("from local {i}"));
        put(
            &shared,
            &format!("shared:{i:03}"),
            &format!("from shared {i}"),
        );
    }
    put(&local, "both", "changed locally");
    put(&shared, "both", "changed on the shared root");

    let spawn = |from: &str, to: &str| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"))
            .args(["sync", from, to, "docs"])
            .env_remove("THEATER_STORE_ROOT")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (there, back) = (spawn(&local, &shared), spawn(&shared, &local));
    for child in [there, back] {
        let output = child.wait_with_output().unwrap();
        // 1: the label changed on both sides is reported.
        assert_eq!(output.status.code(), Some(1));
        let text = String::from_utf8_lossy(&output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(
            text.contains("conflict in docs: label both"),
            "{text}\n{errors}"
        );
    }
    for (from, to) in [(&local, &shared), (&shared, &local)] {
        on(from).args(["sync", from, to, "docs"]).assert().code(1);
    }
    for root in [&local, &shared] {
        for i in (0..100).step_by(9) {
            for (side, text) in [("local", "from local"), ("shared", "from shared")] {
                on(root)
                    .args(["cat", "docs", "--label", &format!("{side}:{i:03}")])
                    .assert()
                    .success()
                    .stdout(format!("{text} {i}"));
            }
        }
        let labels = on(root)
            .args(["--json", "labels", "docs", "--limit", "1000"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let labels: Value = serde_json::from_slice(&labels).unwrap();
        assert_eq!(labels.as_array().unwrap().len(), 201, "{root}");
    }
    // Neither side's change to the conflicting label was overwritten.
    on(&local)
        .args(["cat", "docs", "--label", "both"])
        .assert()
        .stdout("changed locally");
    on(&shared)
        .args(["cat", "docs", "--label", "both"])
        .assert()
        .stdout("changed on the shared root");
}

/// An S3 that takes only signed requests (SeaweedFS with one identity):
/// the standard `AWS_*` keys sign every request, and content over the
/// inline threshold goes up and comes back on another host's cache. No
/// keys, or a wrong secret, fails naming the object store's endpoint, and
/// never prints the secret.
#[test]
fn signed_s3_access_uses_the_aws_keys_and_never_prints_the_secret() {
    let credentials = theater_store_testing::Credentials {
        access_key: "theater-test-key".into(),
        secret_key: "s3cr3t-never-printed".into(),
    };
    let services = theater_store_testing::Services::start_with(Some(credentials.clone()));
    let env = Env::new();
    let cache = env.dir.path().join("cache").display().to_string();
    let root = services.new_root(Path::new(&cache));
    // The same root seen from a host with an empty cache of its own.
    let other_host = root.replace(&cache, &format!("{cache}-of-another-host"));
    let on = |root: &str, secret: Option<&str>| {
        let mut cmd = on(root);
        cmd.env("AWS_ENDPOINT_URL", services.s3_endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        if let Some(secret) = secret {
            cmd.env("AWS_ACCESS_KEY_ID", &credentials.access_key)
                .env("AWS_SECRET_ACCESS_KEY", secret);
        }
        cmd
    };
    let large = "signed content ".repeat(5_000);
    on(&root, Some(&credentials.secret_key))
        .args(["put", "docs", "-", "--label", "doc"])
        .write_stdin(large.clone())
        .assert()
        .success();
    on(&other_host, Some(&credentials.secret_key))
        .args(["cat", "docs", "--label", "doc"])
        .assert()
        .success()
        .stdout(large.clone());

    for secret in [None, Some("wrong-secret-never-printed")] {
        let refused = on(&root, secret)
            .args(["put", "docs", "-", "--label", "refused"])
            .write_stdin(format!("{large} and more"))
            .assert()
            .failure();
        let errors = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
        assert!(errors.contains(&services.s3_endpoint()), "{errors}");
        assert!(!errors.contains("never-printed"), "{errors}");
    }
    // The refused writes left no label behind.
    on(&root, Some(&credentials.secret_key))
        .args(["cat", "docs", "--label", "refused"])
        .assert()
        .failure();
}

/// Every run of exactly 64 hex digits in `text`.
fn hex_refs(text: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let run = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if run == 64 {
            refs.push(text[start..start + 64].to_lowercase());
        }
        start += run.max(1);
    }
    refs
}

/// Every (store, ref) the root's labels reach, through refs written
/// inside content too, found with `labels` and `cat` as an operator would.
fn reachable_through_content(env: &Env) -> std::collections::BTreeSet<(String, String)> {
    let stores = env.json(&["stores"]);
    let mut reached = std::collections::BTreeSet::new();
    for store in stores.as_array().unwrap() {
        let id = store["store"].as_str().unwrap().to_owned();
        let labels = env.json(&["labels", &id]);
        let mut pending = hex_refs(&labels.to_string());
        while let Some(content_ref) = pending.pop() {
            if reached.contains(&(id.clone(), content_ref.clone())) {
                continue;
            }
            let out = env.cmd().args(["cat", &id, &content_ref]).output().unwrap();
            if !out.status.success() {
                continue; // A 64-hex string that names nothing in this store.
            }
            reached.insert((id.clone(), content_ref));
            pending.extend(hex_refs(&String::from_utf8_lossy(&out.stdout)));
        }
    }
    reached
}

#[test]
fn gc_after_the_demo_keeps_every_structure_readable_end_to_end() {
    let env = Env::new();
    env.cmd().arg("demo").assert().success();
    let before = reachable_through_content(&env);
    assert!(before.len() > 20, "{before:?}");
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    for (store, content_ref) in &before {
        env.cmd()
            .args(["cat", store, content_ref])
            .assert()
            .success();
    }
    assert_eq!(reachable_through_content(&env), before);
}

#[test]
fn export_writes_into_fifos_symlinks_and_stdout_without_replacing_them() {
    let env = Env::new();
    env.put("src", "alpha", Some("a"));
    // Standard output.
    let out = env
        .cmd()
        .args(["export", "src", "-o", "-"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(out.stdout.starts_with(b"THEATER-STORE-PK"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported 1 object"));
    // A symlink: the target is written, the link stays a link.
    let target = env.file("target.pkg", b"old");
    let link = env.dir.path().join("link.pkg");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    env.cmd()
        .args(["export", "src", "-o"])
        .arg(&link)
        .assert()
        .success();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&target).unwrap(), out.stdout);
    // A FIFO stays a FIFO, and its reader gets the package.
    let fifo = env.dir.path().join("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    env.cmd()
        .args(["export", "src", "-o"])
        .arg(&fifo)
        .assert()
        .success();
    assert_eq!(reader.join().unwrap(), out.stdout);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn import_keeps_newer_labels_unless_told_and_a_dry_run_changes_nothing() {
    let env = Env::new();
    env.put("app", "v1", Some("cfg"));
    let package = env.dir.path().join("backup.pkg");
    env.cmd()
        .args(["export", "app", "-o"])
        .arg(&package)
        .assert()
        .success();
    let v2 = env.put("app", "v2", Some("cfg"));
    env.put("app", "kept", Some("extra"));
    env.cmd()
        .args(["import", "app", "--dry-run"])
        .arg(&package)
        .assert()
        .code(1)
        .stdout(contains("would import").and(contains("conflict in app: label cfg")));
    env.cmd()
        .args(["import", "app"])
        .arg(&package)
        .assert()
        .code(1)
        .stdout(contains("1 in conflict"));
    env.cmd()
        .args(["labels", "app"])
        .assert()
        .success()
        .stdout(contains(&v2).and(contains("extra")));
    env.cmd()
        .args(["import", "app", "--overwrite"])
        .arg(&package)
        .assert()
        .success();
    env.cmd()
        .args(["cat", "app", "--label", "cfg"])
        .assert()
        .success()
        .stdout("v1");
    // A dry run into an empty store writes nothing.
    env.cmd()
        .args(["import", "fresh", "--dry-run"])
        .arg(&package)
        .assert()
        .success();
    env.cmd()
        .args(["stores"])
        .assert()
        .success()
        .stdout(contains("fresh").not());
}

#[test]
fn maintenance_of_a_missing_store_or_chain_fails_naming_it() {
    let env = Env::new();
    env.put("app", "v1", Some("cfg"));
    for args in [
        &["verify", "nosuchstore"][..],
        &["gc", "nosuchstore"],
        &["export", "nosuchstore", "-o", "x.pkg"],
        &["rm-store", "nosuchstore"],
        &["cat", "nosuchstore", "--label", "cfg"],
        &[
            "cat",
            "nosuchstore",
            "0000000000000000000000000000000000000000000000000000000000000000",
        ],
    ] {
        env.cmd()
            .args(args)
            .assert()
            .code(3)
            .stderr(contains("store nosuchstore does not exist"));
    }
    env.cmd()
        .args(["verify-chain", "no-such-actor"])
        .assert()
        .code(3)
        .stderr(contains("actor no-such-actor has no event chain"));
}

#[test]
fn a_whole_root_and_its_chains_are_backed_up_and_restored_in_one_command() {
    let env = Env::new();
    env.cmd().arg("demo").assert().success();
    let package = env.dir.path().join("full.pkg");
    env.cmd()
        .args(["export", "--all", "-o"])
        .arg(&package)
        .assert()
        .success()
        .stdout(contains("from _chains"));
    let restored = Env::new();
    restored
        .cmd()
        .args(["import", "--all"])
        .arg(&package)
        .assert()
        .success();
    let stores = env.json(&["stores"]);
    for store in stores.as_array().unwrap() {
        let id = store["store"].as_str().unwrap();
        let labels = |env: &Env| env.cmd().args(["labels", id]).output().unwrap().stdout;
        assert_eq!(labels(&env), labels(&restored), "store {id}");
    }
    let heads = env
        .cmd()
        .args(["labels", "_chains"])
        .output()
        .unwrap()
        .stdout;
    let heads = String::from_utf8(heads).unwrap();
    let actors: Vec<&str> = heads
        .lines()
        .filter_map(|line| line.strip_prefix("head/")?.split('\t').next())
        .collect();
    assert!(!actors.is_empty(), "{heads}");
    for actor in &actors {
        let verified = |env: &Env| {
            env.cmd()
                .args(["verify-chain", actor])
                .assert()
                .success()
                .get_output()
                .stdout
                .clone()
        };
        assert_eq!(verified(&env), verified(&restored));
    }
    // One actor's chain on its own.
    let one = env.dir.path().join("one.pkg");
    env.cmd()
        .args([
            "export",
            "_chains",
            "--prefix",
            &format!("head/{}", actors[0]),
            "-o",
        ])
        .arg(&one)
        .assert()
        .success();
    let third = Env::new();
    third
        .cmd()
        .args(["import", "_chains"])
        .arg(&one)
        .assert()
        .success()
        .stdout(contains("into _chains"));
    third
        .cmd()
        .args(["verify-chain", actors[0]])
        .assert()
        .success()
        .stdout(contains("chain intact"));
}

#[test]
fn bulk_label_and_unlabel_are_all_or_nothing() {
    let env = Env::new();
    let a = env.put("docs", "alpha", None);
    let b = env.put("docs", "beta", None);
    let list = format!("# versions\nv1/a {a}\n\nv1/b {b}\nwith space {a}\n");
    env.cmd()
        .args(["label", "docs", "--from", "-"])
        .write_stdin(list)
        .assert()
        .success()
        .stdout(contains("3 labels set"));
    let labels = env.json(&["labels", "docs"]);
    assert_eq!(labels.as_array().unwrap().len(), 3);
    // A ref not stored: nothing changes, and the line is named.
    let missing = "0".repeat(64);
    env.cmd()
        .args(["label", "docs", "--from", "-"])
        .write_stdin(format!("v2/a {a}\nv2/b {missing}\n"))
        .assert()
        .failure()
        .stderr(contains(missing.as_str()));
    env.cmd()
        .args(["label", "docs", "--from", "-"])
        .write_stdin("v3/a not-a-ref\n")
        .assert()
        .failure()
        .stderr(contains("stdin line 1"));
    assert_eq!(env.json(&["labels", "docs"]).as_array().unwrap().len(), 3);
    // One absent label: none is removed (exit 3, as for one label).
    env.cmd()
        .args(["unlabel", "docs", "--from", "-"])
        .write_stdin("v1/a\nnope\n")
        .assert()
        .code(3)
        .stderr(contains("nope"));
    assert_eq!(env.json(&["labels", "docs"]).as_array().unwrap().len(), 3);
    env.cmd()
        .args(["--json", "unlabel", "docs", "--from", "-"])
        .write_stdin("v1/a\nv1/b\n")
        .assert()
        .success()
        .stdout(contains(r#""unlabelled":2"#));
    let labels = env.json(&["labels", "docs"]);
    assert_eq!(labels[0]["label"], "with space");
    assert_eq!(labels.as_array().unwrap().len(), 1);
}

#[test]
fn du_groups_labels_by_prefix_and_counts_shared_content_once_per_group() {
    let env = Env::new();
    let a = env.put("docs", "alpha", Some("v1/a"));
    env.put("docs", "beta!", Some("v1/b"));
    env.cmd()
        .args(["label", "docs", "v1/again", &a])
        .assert()
        .success();
    env.cmd()
        .args(["label", "docs", "v2/x/a", &a])
        .assert()
        .success();
    let usage = env.json(&["du", "docs"]);
    assert_eq!(
        usage,
        json!([
            {"prefix": "v1/", "labels": 3, "objects": 2, "bytes": 10},
            {"prefix": "v2/", "labels": 1, "objects": 1, "bytes": 5},
        ])
    );
    let deeper = env.json(&["du", "docs", "--prefix", "v2/", "--depth", "2"]);
    assert_eq!(
        deeper,
        json!([{"prefix": "v2/x/", "labels": 1, "objects": 1, "bytes": 5}])
    );
    env.cmd().args(["du", "nosuchstore"]).assert().code(3);
}

#[test]
fn actors_and_reserved_stores_are_listed() {
    let env = Env::new();
    env.cmd().arg("actors").assert().failure().code(3);
    env.cmd().arg("demo").assert().success();
    let actors = env.json(&["actors"]);
    let actors = actors.as_array().unwrap();
    assert_eq!(actors.len(), 1, "{actors:?}");
    let actor = actors[0]["actor"].as_str().unwrap();
    let events = actors[0]["events"].as_u64().unwrap();
    assert!(events > 0);
    assert_eq!(actors[0]["kept"], events);
    // The id is what `chain` takes, and it lists as many events.
    let chain = env.json(&["chain", actor, "--limit", "100000"]);
    assert_eq!(chain.as_array().unwrap().len() as u64, events);
    let plain = env.json(&["stores"]);
    assert!(
        plain
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !s["store"].as_str().unwrap().starts_with('_'))
    );
    let all = env.json(&["stores", "--all"]);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|s| s["store"] == "_chains")
    );
}

#[test]
fn labels_unlabelled_lists_what_gc_would_take() {
    let env = Env::new();
    env.put("app", "kept", Some("keep"));
    let loose = env.put("app", "loose", None);
    let listed = env.json(&["labels", "app", "--unlabelled", "--grace", "0s"]);
    assert_eq!(
        listed,
        json!([{"ref": loose, "size": 5, "stored_at_millis": listed[0]["stored_at_millis"], "kept_by_grace": false}])
    );
    env.cmd()
        .args(["labels", "app", "--unlabelled"])
        .assert()
        .success()
        .stdout(contains(loose.as_str()).and(contains("kept by the grace period")));
    env.cmd()
        .args(["labels", "app", "--unlabelled", "--prefix", "x"])
        .assert()
        .code(2);
}

/// Checks docs/JSON.md's vocabulary on one value: a store is `"store"`
/// (never `"id"`), and every `"ref"` or list of `"refs"` holds hex strings.
fn check_vocabulary(command: &str, value: &Value) {
    match value {
        Value::Array(items) => items
            .iter()
            .for_each(|item| check_vocabulary(command, item)),
        Value::Object(fields) => {
            assert!(!fields.contains_key("id"), "{command}: \"id\" in {value}");
            assert!(
                !fields.contains_key("content_ref"),
                "{command}: \"content_ref\" in {value}"
            );
            for (name, field) in fields {
                let is_ref = |v: &Value| v.as_str().is_some_and(|s| s.len() == 64);
                match name.as_str() {
                    // `revert`'s top-level "to" is a sequence number.
                    "to" if field.is_number() => {}
                    "ref" | "head" | "old" | "new" | "from" | "to" if !field.is_null() => {
                        assert!(is_ref(field), "{command}: {name} is {field}");
                    }
                    "refs" | "missing" | "unindexed" | "vanished" => {
                        let all = field.as_array().unwrap();
                        assert!(all.iter().all(is_ref), "{command}: {name} is {field}");
                    }
                    _ => check_vocabulary(command, field),
                }
            }
        }
        _ => {}
    }
}

#[test]
fn every_command_prints_json_in_one_vocabulary() {
    let env = Env::new();
    let a = env.put("docs", "alpha", Some("a"));
    env.put("docs", "loose", None);
    let actor = actor_file(&env, "seed.wasm", theater_store_examples::SEED_PATTERNS);
    let package = env.dir.path().join("docs.pkg");
    let other = env.dir.path().join("other");
    let mut outputs = vec![(
        "put",
        env.json(&["put", "docs", env.file("b", b"beta").to_str().unwrap()]),
    )];
    let run = env
        .cmd()
        .args(["--json", "run"])
        .arg(&actor)
        .args(["--param", r#"{"pattern":"basic"}"#, "--actor", "seed"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    outputs.push(("run", serde_json::from_slice(&run).unwrap()));
    for args in [
        &["label", "docs", "b", a.as_str()][..],
        &["unlabel", "docs", "b"],
        &["labels", "docs"],
        &["labels", "docs", "--unlabelled", "--grace", "0s"],
        &["stores", "--all"],
        &["du", "docs"],
        &["actors"],
        &["verify"],
        &["quarantine"],
        &["gc", "--dry-run"],
        &["chain", "seed"],
        &["chain", "seed", "--trim-before", "0"],
        &["verify-chain", "seed"],
        &["export", "docs", "-o", package.to_str().unwrap()],
        &["rm-store", "docs", "--dry-run"],
        &["changes", "docs", "--limit", "1"],
        &["history", "docs", "a", "--limit", "1"],
        &["labels", "docs", "--at", "1"],
        &["revert", "docs", "--to", "1", "--dry-run"],
    ] {
        outputs.push((args[0], env.json(args)));
    }
    let imported = Command::cargo_bin("theater-store")
        .unwrap()
        .env_remove("THEATER_STORE_ROOT")
        .args(["--json", "--root"])
        .arg(&other)
        .args(["import", "docs"])
        .arg(&package)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    outputs.push(("import", serde_json::from_slice(&imported).unwrap()));
    let synced = env
        .cmd()
        .args(["--json", "sync"])
        .arg(env.root())
        .arg(&other)
        .arg("docs")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    outputs.push(("sync", serde_json::from_slice(&synced).unwrap()));
    for (command, value) in &outputs {
        assert!(!value.is_null(), "{command} printed null");
        check_vocabulary(command, value);
    }
    // Errors are one JSON object on stderr, with the kind.
    let failed = env
        .cmd()
        .args(["--json", "labels", "nosuch"])
        .assert()
        .code(3)
        .get_output()
        .stderr
        .clone();
    let error: Value = serde_json::from_slice(&failed).unwrap();
    assert_eq!(error["kind"], "not-found");
    assert!(error["error"].as_str().unwrap().contains("nosuch"));
}

#[test]
fn verify_repairs_lost_and_corrupt_content_from_another_root() {
    let env = Env::new();
    let backup = env.dir.path().join("backup");
    let small = env.put("docs", "small and precious", Some("small"));
    let large_text = "large and precious ".repeat(2_000);
    let large = env.put("docs", &large_text, Some("large"));
    let unique = env.put("docs", "only here", Some("unique"));
    for content in ["small and precious", large_text.as_str()] {
        Command::cargo_bin("theater-store")
            .unwrap()
            .env_remove("THEATER_STORE_ROOT")
            .arg("--root")
            .arg(&backup)
            .args(["put", "docs", "-"])
            .write_stdin(content)
            .assert()
            .success();
    }
    damage_small_object(&env.root(), "docs", &small, b"rot");
    std::fs::remove_file(
        env.root()
            .join("stores/docs/objects")
            .join(&large[..2])
            .join(&large[2..]),
    )
    .unwrap();
    damage_small_object(&env.root(), "docs", &unique, b"gone for good");

    env.cmd()
        .args(["verify", "docs", "--repair"])
        .arg(&backup)
        .assert()
        .code(1)
        .stdout(contains("repaired 2 objects").and(contains("1 not held whole there either")));
    env.cmd()
        .args(["cat", "docs", &small])
        .assert()
        .success()
        .stdout("small and precious");
    env.cmd()
        .args(["cat", "docs", &large])
        .assert()
        .success()
        .stdout(large_text.clone());
    // What the backup lacked is still reported, by its label.
    let report = env
        .cmd()
        .args(["--json", "verify", "docs"])
        .assert()
        .code(1);
    let report: Value = serde_json::from_slice(&report.get_output().stdout).unwrap();
    assert_eq!(report["stores"][0]["dangling_labels"][0]["label"], "unique");
    assert_eq!(
        report["stores"][0]["dangling_labels"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn changes_and_watch_print_the_change_log_one_line_each() {
    let env = Env::new();
    let first = env.put("feed", "one", Some("app/config"));
    let second = env.put("feed", "two", Some("app/config"));
    env.put("feed", "x", Some("line\nbreak"));
    env.cmd()
        .env("USER", "alice")
        .args(["unlabel", "feed", "app/config"])
        .assert()
        .success();
    // Text: seq, time, label (escaped), old, new, actor; `-` for none.
    let out = env
        .cmd()
        .args(["changes", "feed", "--since", "1"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0][0], "2");
    // CLI writes are the operator's: `cli:` and the user.
    assert_eq!(&lines[0][2..5], ["app/config", &first, &second]);
    assert!(lines[0][5].starts_with("cli:"), "{text}");
    assert_eq!(lines[1][2], "line\\nbreak");
    assert_eq!(&lines[2][2..], ["app/config", &second, "-", "cli:alice"]);
    assert!(lines[0][1].starts_with("20") && lines[0][1].ends_with('Z'));
    // JSON: one object per line.
    let out = env
        .cmd()
        .args(["--json", "changes", "feed", "--limit", "2"])
        .assert()
        .success()
        .stderr(contains("--since 2"))
        .get_output()
        .stdout
        .clone();
    let objects: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0]["seq"], 1);
    assert_eq!(objects[0]["old"], Value::Null);
    assert_eq!(objects[0]["new"], json!(first));
    assert_eq!(objects[1]["old"], json!(first));
    assert!(objects[1]["time"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(objects[1]["actor"].as_str().unwrap().starts_with("cli:"));
    // A typo is an error, not an empty log.
    env.cmd()
        .args(["changes", "nosuchstore"])
        .assert()
        .code(3)
        .stderr(contains("nosuchstore does not exist"));

    // `watch` replays from --since, then follows another process's writes.
    let mut watcher = std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"))
        .arg("--root")
        .arg(env.root())
        .args([
            "--json", "watch", "feed", "--prefix", "app/", "--since", "3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(watcher.stdout.take().unwrap()));
    let replayed: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (replayed["seq"].clone(), replayed["new"].clone()),
        (json!(4), Value::Null)
    );
    env.put("feed", "noise", Some("elsewhere"));
    let third = env.put("feed", "three", Some("app/next"));
    let live: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(live["label"], "app/next");
    assert_eq!(live["new"], json!(third));
    assert_eq!(live["seq"], 6);
    watcher.kill().unwrap();
    watcher.wait().unwrap();
}

#[test]
fn a_watch_killed_and_resumed_from_its_last_line_misses_nothing_and_repeats_nothing() {
    let env = Env::new();
    for i in 0..5 {
        env.put("jobs", &format!("job {i}"), Some(&format!("job/{i}")));
    }
    let watch = |since: u64| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"))
            .arg("--root")
            .arg(env.root())
            .args(["--json", "watch", "jobs", "--since", &since.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let read = |child: &mut std::process::Child, count: usize| -> Vec<Value> {
        let stdout = child.stdout.as_mut().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        (0..count)
            .map(|_| serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap())
            .collect()
    };
    let mut first = watch(0);
    let mut seen = read(&mut first, 3);
    // SIGKILL: no chance to say where it stopped; the last line is that.
    first.kill().unwrap();
    first.wait().unwrap();
    for i in 5..8 {
        env.put("jobs", &format!("job {i}"), Some(&format!("job/{i}")));
    }
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();
    let mut second = watch(last);
    seen.extend(read(&mut second, 5));
    second.kill().unwrap();
    second.wait().unwrap();
    let labels: Vec<&str> = seen.iter().map(|c| c["label"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..8).map(|i| format!("job/{i}")).collect();
    assert_eq!(labels, expected);
    let seqs: Vec<u64> = seen.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
}

#[test]
fn a_keyvalue_watcher_killed_and_started_again_carries_on_and_misses_no_change() {
    let env = Env::new();
    let watcher = actor_file(&env, "kv_watcher.wasm", theater_store_examples::KV_WATCHER);
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"));
        cmd.arg("--root").arg(env.root()).arg("run").arg(&watcher);
        cmd.args([
            "--grant", "src:ro", "--grant", "mirror", "--actor", "mirror-1",
        ]);
        cmd.args(["--watch", "src"]).args(extra);
        cmd.stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let journal = || -> Vec<String> {
        let out = env
            .cmd()
            .args(["labels", "mirror", "--prefix", "journal/"])
            .output()
            .unwrap();
        let listing = String::from_utf8(out.stdout).unwrap();
        listing
            .lines()
            .map(|line| {
                let label = line.split('\t').next().unwrap();
                let out = env
                    .cmd()
                    .args(["cat", "mirror", "--label", label])
                    .output()
                    .unwrap();
                String::from_utf8(out.stdout).unwrap()
            })
            .collect()
    };
    let wait_for_journal = |count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // A change delivered twice (the one a kill cut short) counts once.
        while {
            let mut lines = journal();
            lines.dedup();
            lines.len() < count
        } {
            assert!(
                std::time::Instant::now() < deadline,
                "the journal never reached {count}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    for i in 0..3 {
        env.put("src", &"x".repeat(i + 1), Some(&format!("before/{i}")));
    }
    let mut first = run(&["--watch-since", "0"]);
    wait_for_journal(3);
    for i in 0..4 {
        env.put("src", &"y".repeat(i + 1), Some(&format!("during/{i}")));
    }
    wait_for_journal(5);
    // SIGKILL, perhaps in the middle of a call: that change comes again.
    first.kill().unwrap();
    first.wait().unwrap();
    env.cmd()
        .args(["unlabel", "src", "before/0"])
        .assert()
        .success();
    env.put("src", "zzz", Some("stopped/0"));
    let second = run(&[]);
    wait_for_journal(9);
    // SIGTERM: stops between two calls, and says what it did.
    assert_eq!(unsafe { libc::kill(second.id() as i32, libc::SIGTERM) }, 0);
    let output = second.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("watching bucket src after change"),
        "{stderr}"
    );
    assert!(stderr.contains("changes delivered"), "{stderr}");

    let mut lines = journal();
    lines.dedup();
    assert_eq!(
        lines,
        [
            "set before/0 1",
            "set before/1 2",
            "set before/2 3",
            "set during/0 1",
            "set during/1 2",
            "set during/2 3",
            "set during/3 4",
            "delete before/0",
            "set stopped/0 3",
        ]
    );
    env.cmd()
        .args(["cat", "mirror", "--label", "during/3"])
        .assert()
        .success()
        .stdout("yyyy");
    env.cmd()
        .args(["cat", "mirror", "--label", "before/0"])
        .assert()
        .code(3);
}

#[test]
fn run_watch_is_refused_without_a_grant_or_for_a_component_that_is_no_watcher() {
    let env = Env::new();
    env.put("src", "one", Some("a"));
    let watcher = actor_file(&env, "kv_watcher.wasm", theater_store_examples::KV_WATCHER);
    env.cmd()
        .arg("run")
        .arg(&watcher)
        .args(["--grant", "mirror", "--watch", "src"])
        .assert()
        .code(1)
        .stderr(contains("cannot watch bucket src").and(contains("grant")));
    env.cmd()
        .arg("run")
        .arg(&watcher)
        .args(["--grant", "src"])
        .assert()
        .failure()
        .stderr(contains("--watch BUCKET"));
    let counter = actor_file(&env, "kv.wasm", theater_store_examples::KV_COUNTER);
    env.cmd()
        .arg("run")
        .arg(&counter)
        .args(["--grant", "src", "--watch", "src"])
        .assert()
        .failure()
        .stderr(contains("does not export wasi:keyvalue/watcher"));
}

#[test]
fn an_operator_reads_exports_and_reverts_to_a_time_before_a_bad_deploy() {
    let env = Env::new();
    let good = env.put("app", "{\"replicas\":3}", Some("config"));
    env.put("app", "v1 assets", Some("assets"));
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before_deploy = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(std::time::Duration::from_millis(50));
    env.put("app", "{\"replicas\":0}", Some("config"));
    env.cmd()
        .args(["unlabel", "app", "assets"])
        .assert()
        .success();
    // gc with no grace keeps what history names.
    env.cmd()
        .args(["gc", "app", "--grace", "0s"])
        .assert()
        .success();

    env.cmd()
        .args(["cat", "app", "--label", "config", "--at", &before_deploy])
        .assert()
        .success()
        .stdout("{\"replicas\":3}");
    env.cmd()
        .args(["cat", "app", "--label", "config", "--at", "0"])
        .assert()
        .code(3)
        .stderr(contains("label config did not exist right after change 0"));
    env.cmd()
        .args(["labels", "app", "--at", &before_deploy])
        .assert()
        .success()
        .stdout(contains("assets").and(contains(good.as_str())));
    env.cmd()
        .args(["cat", "app", "--at", "1", "deadbeef"])
        .assert()
        .code(2);
    let package = env.dir.path().join("before.pkg");
    env.cmd()
        .args(["export", "app", "--at", &before_deploy, "-o"])
        .arg(&package)
        .assert()
        .success();
    let other = env.dir.path().join("other");
    Command::cargo_bin("theater-store")
        .unwrap()
        .env_remove("THEATER_STORE_ROOT")
        .arg("--root")
        .arg(&other)
        .args(["import", "app"])
        .arg(&package)
        .assert()
        .success();
    Command::cargo_bin("theater-store")
        .unwrap()
        .env_remove("THEATER_STORE_ROOT")
        .arg("--root")
        .arg(&other)
        .args(["cat", "app", "--label", "assets"])
        .assert()
        .success()
        .stdout("v1 assets");
    // One label alone, or every label.
    env.cmd()
        .args([
            "revert",
            "app",
            "--to",
            &before_deploy,
            "--label",
            "config",
            "--dry-run",
        ])
        .assert()
        .success()
        .stderr(contains("would move 1 label back"));
    env.cmd()
        .args(["revert", "app", "--to", &before_deploy])
        .assert()
        .success()
        .stderr(contains("moved 2 labels back"));
    env.cmd()
        .args(["cat", "app", "--label", "config"])
        .assert()
        .success()
        .stdout("{\"replicas\":3}");
    // An age works as a point too: a minute ago the store had no label.
    env.cmd()
        .args(["labels", "app", "--at", "1m"])
        .assert()
        .success()
        .stdout("");
    env.cmd()
        .args(["labels", "app", "--at", "yesterday-ish"])
        .assert()
        .code(2)
        .stderr(contains("neither a change number"));
}

/// One HTTP/1.1 request over a fresh connection; the whole answer as text.
fn http(address: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_answers_http_until_stopped_and_needs_tokens_beyond_loopback() {
    let env = Env::new();
    let stored = env.put("docs", "served over http", Some("readme"));
    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"))
        .arg("--root")
        .arg(env.root())
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-body",
            "4KiB",
            "--header-timeout",
            "1s",
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stdout.take().unwrap()));
    let banner = lines.next().unwrap().unwrap();
    assert!(banner.contains("reads only"), "{banner}");
    let address = banner
        .strip_prefix("serving http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let answer = http(
        &address,
        "GET /v1/stores/docs/labels/readme HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("etag: \"{stored}\"")), "{answer}");
    assert!(answer.ends_with("served over http"), "{answer}");
    let refused = http(
        &address,
        "PUT /v1/stores/docs/labels/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let too_big = http(
        &address,
        "POST /v1/stores/docs/content HTTP/1.1\r\nHost: x\r\nContent-Length: 8192\r\nConnection: close\r\n\r\n",
    );
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
    // A client that never sends its headers is let go after
    // --header-timeout (1 s), before this read gives up (5 s; the
    // default would wait 10 s).
    let mut silent = std::net::TcpStream::connect(&address).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut nothing = Vec::new();
    std::io::Read::read_to_end(&mut silent, &mut nothing)
        .expect("the server closes a connection that sends no headers");
    assert_eq!(unsafe { libc::kill(server.id() as i32, libc::SIGTERM) }, 0);
    let output = server.wait_with_output().unwrap();
    assert!(output.status.success());
    // One JSON log line per request, with its route and status.
    let logs = String::from_utf8(output.stderr).unwrap();
    let requests: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &Value| line["fields"]["message"] == "request")
        .collect();
    assert_eq!(requests.len(), 3, "{logs}");
    assert_eq!(
        requests[0]["span"]["route"], "/v1/stores/{store}/labels/{label}",
        "{logs}"
    );
    assert_eq!(requests[1]["fields"]["status"], "403", "{logs}");

    env.cmd()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .assert()
        .failure()
        .stderr(contains("only on loopback"));
    let tokens = env.file("tokens", b"short docs\n");
    env.cmd()
        .args(["serve", "--listen", "0.0.0.0:0", "--tokens"])
        .arg(&tokens)
        .assert()
        .failure()
        .stderr(contains("line 1").and(contains("16 characters")));
}

#[test]
fn a_listing_cut_short_by_its_reader_ends_quietly() {
    use std::io::Read;
    let env = Env::new();
    // 2,000 lines of about 80 bytes: more than a pipe holds, so the
    // listing is still writing when its reader goes.
    env.label_one_content("s", (0..2000).map(|i| format!("label/{i:05}")));
    for listing in [&["labels", "s"][..], &["--json", "labels", "s"][..]] {
        // As `theater-store labels s | head -c 16` does.
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("theater-store"))
            .arg("--root")
            .arg(env.root())
            .args(listing)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 16];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{listing:?}: {:?} {stderr}",
            output.status
        );
        assert!(stderr.is_empty(), "{listing:?}: {stderr}");
    }
}

#[test]
fn labels_are_listed_whole_and_in_order_across_pages() {
    let env = Env::new();
    // More than one page of the listing (10,000 labels a page).
    env.label_one_content("s", (0..10_005).map(|i| format!("n/{i:05}")));
    let names = |args: &[&str]| -> Vec<String> {
        env.stdout(args)
            .lines()
            .map(|line| line.split('\t').next().unwrap().to_owned())
            .collect()
    };
    let all = names(&["labels", "s"]);
    let expected: Vec<String> = (0..10_005).map(|i| format!("n/{i:05}")).collect();
    assert_eq!(all, expected);
    let json = env.json(&["labels", "s"]);
    let json: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["label"].as_str().unwrap())
        .collect();
    assert_eq!(json, expected);
    assert_eq!(
        names(&["labels", "s", "--limit", "10001"]),
        expected[..10_001]
    );
    assert_eq!(
        names(&["labels", "s", "--after", "n/00003", "--limit", "10000"]),
        expected[4..10_004]
    );
    assert_eq!(env.json(&["labels", "s", "--prefix", "none/"]), json!([]));
}

#[test]
fn a_log_root_is_written_read_and_kept_by_one_process_at_a_time() {
    let env = Env::new();
    let root = format!("log:{}", env.root().display());
    let cmd = || {
        let mut cmd = Command::cargo_bin("theater-store").unwrap();
        cmd.arg("--root")
            .arg(&root)
            .env_remove("THEATER_STORE_ROOT");
        cmd
    };
    // Like a local root: only commands that write create it.
    cmd()
        .args(["stores"])
        .assert()
        .code(3)
        .stderr(contains("does not exist"));
    assert!(!env.root().exists());
    let input = env.file("note.txt", b"kept in one log");
    cmd()
        .args(["put", "docs", "--label", "note"])
        .arg(&input)
        .assert()
        .success();
    cmd()
        .args(["cat", "docs", "--label", "note"])
        .assert()
        .success()
        .stdout("kept in one log");
    cmd().args(["verify"]).assert().success();
    assert!(env.root().join("log").is_file());
    // While one process holds it, another is told so.
    let lock = std::fs::File::open(env.root().join("lock")).unwrap();
    lock.try_lock().unwrap();
    cmd()
        .args(["cat", "docs", "--label", "note"])
        .assert()
        .code(1)
        .stderr(contains("is open in another process"));
}
