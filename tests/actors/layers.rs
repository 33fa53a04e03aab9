//! The core and host crates are built in layers: each module imports only
//! modules of lower layers, so there is no import cycle and the engine
//! knows nothing of the API above it. Adding a module means placing it.

use std::path::Path;

use theater_store_testing::layers::violations;

fn crate_src(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates")
        .join(name)
        .join("src")
}

#[test]
fn the_core_imports_only_downwards() {
    let layers: &[&[&str]] = &[
        &["error", "durability", "stats"],
        &["names", "options", "task"],
        &["tree", "links", "recent"],
        // The engine boundary: below it, storage; above it, the API.
        &["engine"],
        &["root", "reach"],
        &["store"],
        &["stream", "chain", "feed"],
        &["maintenance", "package", "cursor", "past"],
        &["sync"],
    ];
    let found = violations(&crate_src("core"), layers);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_host_imports_only_downwards() {
    let layers: &[&[&str]] = &[
        &["error", "policy", "observe"],
        &["meter"],
        &["resources"],
        &["bindings"],
        &["ctx"],
        &["enforce", "imports"],
        &["streams", "keyvalue"],
        &["runner"],
        &["watcher"],
    ];
    let found = violations(&crate_src("host"), layers);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn a_cycle_or_an_upward_import_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("low.rs"), "use crate::high::Thing;\n").unwrap();
    std::fs::write(
        dir.path().join("high.rs"),
        "use crate::{low::Other, high};\n// crate::nowhere\n",
    )
    .unwrap();
    let found = violations(dir.path(), &[&["low"], &["high"]]);
    assert_eq!(found, ["low imports high, which is not below it"]);
}
