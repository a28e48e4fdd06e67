#!/usr/bin/env bash
# The test command (the README's): every test of the workspace on the local PostgreSQL and
# RabbitMQ, run by cargo-nextest, which is installed first (pinned by --locked) when missing. Also
# needs `openssl` and `python3` (the DKIM tests make keys and verify signatures with them), and
# `psql` (scripts/sqlx-data.sh, run first, checks the committed query data against the migrations).
# Arguments are passed to `cargo nextest run`, e.g. `./scripts/test.sh -E 'test(/json/)'`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is missing: installing it (cargo install --locked cargo-nextest)" >&2
  cargo install --locked cargo-nextest
fi
# The DKIM tests check signatures with an independent verifier: Python's dkimpy (PyNaCl for Ed25519).
if ! python3 -c 'import dkim, nacl' >/dev/null 2>&1; then
  echo "dkimpy is missing: installing it (python3 -m pip install dkimpy pynacl)" >&2
  python3 -m pip install --quiet dkimpy pynacl
fi
# The checked queries' data (shared/.sqlx) must describe the queries and migrations as they are now.
./scripts/sqlx-data.sh check
exec cargo nextest run --workspace --no-fail-fast "$@"
