# Recipes for day-to-day work. CI runs .ci/run, which needs no `just`.

# Build everything (the guest examples are built by the host tests' build step).
build:
    cargo build --workspace

# The whole test suite, as the README and CI run it.
test:
    cargo test --workspace

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Criterion benchmarks.
bench:
    cargo bench --workspace
