# Recipes for day-to-day work. CI runs .ci/run, which needs no `just`.

# Build everything (the guest examples are built by crates/examples' build script).
build:
    cargo build --workspace

# The whole test suite, as the README and CI run it (both engines).
test:
    scripts/test

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all --check
    cargo fmt --all --check --manifest-path guest-examples/Cargo.toml
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy -p theater-store --all-targets -- -D warnings

# Criterion benchmarks.
bench:
    cargo bench --workspace

# The crash-consistency suite with many more SIGKILL cycles than CI runs.
crash cycles="1000":
    CRASH_CYCLES={{cycles}} cargo test --release -p theater-store --test crash -- --nocapture

# Each fuzz target for a bounded time (seconds each). Uses the pinned
# toolchain with RUSTC_BOOTSTRAP for cargo-fuzz's flags, and no sanitizer
# (its runtime ships only with nightly); the targets assert their own rules.
fuzz seconds="300":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    mkdir -p fuzz/corpus/package
    root=$(mktemp -d) && echo seed | cargo run -q -p theater-store-cli -- --root "$root" put seed --label seed:a >/dev/null \
        && cargo run -q -p theater-store-cli -- --root "$root" export seed -o fuzz/corpus/package/seed.pkg >/dev/null
    for target in refs labels package; do \
        RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --sanitizer none "$target" -- -max_total_time={{seconds}} || exit 1; \
    done

# Theater's own store against ours (a separate workspace: it builds wasmtime 31).
bench-theater:
    cargo bench --manifest-path crates/bench/theater-peer/Cargo.toml
