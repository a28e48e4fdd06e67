#!/usr/bin/env bash
# The test command (the README's): every test of the workspace on the local PostgreSQL and
# RabbitMQ, run by cargo-nextest, which is installed first (pinned by --locked) when missing.
# Arguments are passed to `cargo nextest run`, e.g. `./scripts/test.sh -E 'test(/json/)'`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is missing: installing it (cargo install --locked cargo-nextest)" >&2
  cargo install --locked cargo-nextest
fi
exec cargo nextest run --workspace --no-fail-fast "$@"
