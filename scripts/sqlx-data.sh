#!/usr/bin/env bash
# The query data sqlx's checked queries compile from (shared/.sqlx, committed):
#   ./scripts/sqlx-data.sh prepare   writes it again, after a query or a migration changed
#   ./scripts/sqlx-data.sh check     fails when it is stale (the test command runs this first)
# Both describe every query of shared/src/db/ to a fresh PostgreSQL database with every migration
# of migrations/ applied (RESETMAIL_SQLX_PG, default postgres://postgres@127.0.0.1:5432, must be
# allowed to create databases), by compiling the crate with the macros online: they write one file
# per query. The queries on a Cloudreve site's own tables are not among them (a database cannot hold
# both account tables): docs/ARCHITECTURE.md says how those are checked. Needs psql.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
  prepare | check) ;;
  *) echo "usage: $0 prepare|check" >&2; exit 2 ;;
esac

server=${RESETMAIL_SQLX_PG:-postgres://postgres@127.0.0.1:5432}
database="resetmail_sqlx_$$"
written=$(mktemp -d)
cleanup() {
  psql -q -d "$server/postgres" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$written"
}
trap cleanup EXIT

psql -q -v ON_ERROR_STOP=1 -d "$server/postgres" -c "CREATE DATABASE $database"
for migration in migrations/*.sql; do
  psql -q -v ON_ERROR_STOP=1 --single-transaction -d "$server/$database" -f "$migration" >/dev/null
done

# A target directory of its own, so that the usual build keeps its offline artifacts; the crate is
# cleaned there so that its macros run again (cargo cannot see that the database changed).
export CARGO_TARGET_DIR=target/sqlx-data
cargo clean --quiet --package resetmail-shared
SQLX_OFFLINE=false DATABASE_URL="$server/$database" SQLX_OFFLINE_DIR="$written" \
  cargo check --quiet --package resetmail-shared --lib

if [ "$mode" = prepare ]; then
  rm -rf shared/.sqlx
  cp -r "$written" shared/.sqlx
  echo "wrote shared/.sqlx: $(ls shared/.sqlx | wc -l) queries"
elif ! diff -r shared/.sqlx "$written" >/dev/null 2>&1; then
  echo "shared/.sqlx is stale: the queries or the migrations changed since it was written." >&2
  diff -r shared/.sqlx "$written" | head -20 >&2 || true
  echo "Run ./scripts/sqlx-data.sh prepare and commit shared/.sqlx." >&2
  exit 1
else
  echo "shared/.sqlx matches the queries and the migrations ($(ls "$written" | wc -l) queries)"
fi
