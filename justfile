# Spate's common recipes. `just --list` shows them.

# Run every test (the README's test command).
test:
    ./test

# Lints as CI runs them: formatting, then clippy with warnings denied.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Everything CI does.
ci:
    bash .ci/run

# The standard benchmark suite (bench/suites/standard.toml) against a broker
# it starts itself; JSON, Markdown and SVG plots land in perf-reports/.
bench *ARGS:
    cargo build --release --bin spate
    ./target/release/spate bench suite bench/suites/standard.toml {{ARGS}}

# Replication (issue 6): RF=1 and RF=3 acks=all produce (and RF=3 end to end)
# against one three-broker cluster in the same run (bench/suites/replication.toml).
bench-replication *ARGS:
    cargo build --release --bin spate
    ./target/release/spate bench suite bench/suites/replication.toml {{ARGS}}

# Kafka's protocol (issue 15): produce, consume and end to end as Spate
# native, Spate over its Kafka listener and Apache Kafka 4.4 in one run
# (bench/suites/kafka.toml; Apache Kafka's jars from compat/install.sh).
bench-kafka *ARGS:
    cargo build --release --bin spate
    ./target/release/spate bench suite bench/suites/kafka.toml {{ARGS}}

# TLS against plaintext on the Kafka listener (issue 16): produce and consume
# over the PLAINTEXT and the SSL listener of the same brokers in one run, the
# report giving TLS/plaintext per workload (bench/suites/tls.toml).
bench-tls *ARGS:
    cargo build --release --bin spate
    ./target/release/spate bench suite bench/suites/tls.toml {{ARGS}}

# Transactions (issue 17): transactional against idempotent produce (a
# commit every 100 ms) and read_committed against read_uncommitted
# consumers over Kafka's protocol, one broker, one run
# (bench/suites/transactions.toml).
bench-txn *ARGS:
    cargo build --release --bin spate
    ./target/release/spate bench suite bench/suites/transactions.toml {{ARGS}}

# The storage engine alone, against raw O_DIRECT writes.
bench-engine *ARGS:
    cargo run --release -p spate-bench -- engine {{ARGS}}

# Fuzz one decoder (batch, index_files, frame, compressed_batch,
# producer_snapshot, raft_messages, group_records, requests) for SECONDS.
# requests runs handlers against an in-process broker: give it
# -rss_limit_mb=2048 -detect_leaks=0 (see fuzz/fuzz_targets/requests.rs).
fuzz TARGET="batch" SECONDS="300":
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O {{TARGET}} -- -max_total_time={{SECONDS}}

# The machine's limits (fio, iperf3) for the reports' ratios.
limits DIR="target":
    bash ../shared/perf/measure-limits.sh {{DIR}}

# Regenerate flatbuf/src/generated.rs from flatbuf/schema/spate.fbs with a flatc
# built from source to match the flatbuffers crate (first run: cmake, ~3-7 min).
flatc:
    cd tools/flatc && cargo build --release
    "$(tools/flatc/target/release/spate-flatc)" --rust -o target/flatc-out flatbuf/schema/spate.fbs
    cp target/flatc-out/spate_generated.rs flatbuf/src/generated.rs
