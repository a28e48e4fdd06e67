#!/usr/bin/env bash
# Benchmarks resetmail against the raw limits of this machine, measured in the same run: builds the
# release binaries and runs the bench (see bench/src/main.rs for what it measures and its knobs).
# Needs PostgreSQL and RabbitMQ on localhost, as the defaults expect; everything else it starts,
# and it removes its database and queues when done. Prints a table, then one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p resetmail-api -p resetmail-worker -p resetmail-bench
exec target/release/resetmail-bench "$@"
