#!/usr/bin/env bash
# Starts the whole system on this machine: builds both binaries, creates and migrates the database,
# adds a demo account, then runs the worker (mail to ./outbox) and the api (http://127.0.0.1:8080).
# Needs PostgreSQL and RabbitMQ on localhost, as the defaults expect. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p resetmail-api -p resetmail-worker
bin=target/release

# The graphic captcha (RESETMAIL_CAPTCHA=normal) keys its stored answers with a secret that every api
# replica shares. One api here: a new one each run will do (captchas open at a restart then fail).
export RESETMAIL_CAPTCHA_SECRET="${RESETMAIL_CAPTCHA_SECRET:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}"

"$bin/resetmail-api" migrate
"$bin/resetmail-api" user add --email "${DEMO_EMAIL:-demo@example.com}" --nick Demo --exists-ok

"$bin/resetmail-worker" &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null; wait "$worker" 2>/dev/null' EXIT

cat <<TXT

resetmail is starting. Ask for a reset link with:
  curl -s -H 'content-type: application/json' -d '{"email":"${DEMO_EMAIL:-demo@example.com}"}' http://127.0.0.1:8080/api/v4/user/reset
and find the email in ${RESETMAIL_OUTBOX_DIR:-./outbox}/ (no SMTP server is configured).

TXT
"$bin/resetmail-api"
