# Recipes for the common commands. The README's two commands do not need `just`.

# Run the EMQX-mode gateway (UDP 5683, embedded broker).
run *ARGS:
    cargo run --release -p coap-emqx-gateway -- {{ARGS}}

# Run the Hono-mode adapter with the sample registry.
run-hono *ARGS:
    cargo run --release -p coap-hono-adapter -- --registry examples/hono-registry.json {{ARGS}}

# The one test command (what CI runs).
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# fmt check + clippy with -D warnings.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Fuzz one target (needs nightly and `cargo install cargo-fuzz`).
fuzz TARGET="parse_message" SECS="600":
    cd fuzz && cargo +nightly fuzz run {{TARGET}} -- -max_total_time={{SECS}}

# Criterion benchmarks.
bench *ARGS:
    cargo bench -p coap-benches {{ARGS}}
