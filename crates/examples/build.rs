//! Builds the guest-examples workspace for wasm32-wasip2, so that nobody has
//! to build actors by hand before `cargo test` or `theater-store demo`.
//! Installs the wasm32-wasip2 target through rustup when it is missing.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const ACTORS: [&str; 9] = [
    "seed_patterns",
    "hostile",
    "theater_compat",
    "bench_actor",
    "large_files",
    "kv_counter",
    "kv_bench",
    "kv_bench_draft",
    "kv_watcher",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest_dir.join("../..");
    let guests = repo.join("guest-examples");
    for watched in ["guest-examples", "wit", "crates/guest"] {
        watch(&repo.join(watched));
    }

    ensure_target_installed();

    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("guest-examples"),
        None => repo.join("target/guest-examples"),
    };
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&guests)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the outer build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        build.env_remove(var);
    }
    run(&mut build, "building the guest-examples actors");

    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    for actor in ACTORS {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{actor}.wasm"));
        std::fs::copy(&built, out_dir.join(format!("{actor}.wasm")))
            .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    }
}

/// Asks rustup for the wasm target when the toolchain in use lacks it.
fn ensure_target_installed() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("running rustc");
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout).unwrap().trim());
    if sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        return;
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", TARGET]);
    if let Some(toolchain) = sysroot.file_name().and_then(|name| name.to_str()) {
        // rustup names a toolchain's sysroot after the toolchain.
        add.args(["--toolchain", toolchain]);
    }
    run(
        &mut add,
        "installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)",
    );
}

fn run(command: &mut Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    assert!(status.success(), "{what} failed ({status})");
}

/// Re-runs this script when anything under `path` changes (cargo scans
/// directories recursively), leaving out build output.
fn watch(path: &Path) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return println!("cargo:rerun-if-changed={}", path.display());
    };
    for entry in entries.flatten() {
        if entry.file_name() != "target" {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
}
