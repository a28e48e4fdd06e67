# syntax=docker/dockerfile:1
#
# One image with both resetmail binaries (needs BuildKit, the default builder of current Docker):
#   docker build -t resetmail .
#   docker run ... resetmail                                       # the api (`serve`)
#   docker run ... resetmail user add --email you@example.com      # an api operator command
#   docker run ... --entrypoint resetmail-worker resetmail         # the worker
# docker-compose.yml runs both with PostgreSQL, RabbitMQ and Mailpit.
#
# No HEALTHCHECK here: the same image runs the api and the worker, which serve /readyz on
# different ports (RESETMAIL_HTTP_ADDR, RESETMAIL_WORKER_HTTP_ADDR), so one image-level check
# would mark one of them unhealthy. Each service's check (GET /readyz through bash's /dev/tcp, no
# curl needed) is in docker-compose.yml.

# Builder and runtime must be the same Debian release, so that the binaries find the glibc
# they were linked against.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src

# The whole workspace: its `members` include tests/ and bench/, whose manifests and sources must
# be present even though they are not built; shared embeds migrations/ and the worker embeds worker/templates/
# at compile time.
COPY Cargo.toml Cargo.lock ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY tests ./tests
COPY bench ./bench
COPY migrations ./migrations

# The checked SQL compiles from the query data in shared/.sqlx (copied with shared/), never from a
# database: the build needs none.
ENV SQLX_OFFLINE=true

# The registry and the target dir are cache mounts (kept between builds, never in a layer), so
# the binaries are copied out of target/ in the same RUN. (shared/build.rs makes cargo notice an
# added migration, so the cached target/ never ships an old set.)
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=resetmail-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p resetmail-api -p resetmail-worker \
 && mkdir -p /out \
 && cp target/release/resetmail-api target/release/resetmail-worker /out/


FROM debian:${DEBIAN_RELEASE}-slim AS runtime

LABEL org.opencontainers.image.title="resetmail" \
      org.opencontainers.image.description="Password-reset emails for Cloudreve: HTTP api (default entrypoint) and worker" \
      org.opencontainers.image.licenses="MIT"

# ca-certificates: TLS to SMTP relays, brokers and databases (rustls also ships webpki roots).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 resetmail \
 && useradd --system --uid 10001 --gid resetmail --home-dir /var/lib/resetmail \
        --no-create-home --shell /usr/sbin/nologin resetmail \
 && install -d -o resetmail -g resetmail -m 0750 /var/lib/resetmail /var/lib/resetmail/outbox

COPY --from=builder /out/resetmail-api /out/resetmail-worker /usr/local/bin/

# The api listens on 127.0.0.1:8080 by default, which is unreachable from outside a container.
ENV RESETMAIL_HTTP_ADDR=0.0.0.0:8080

# The worker's default outbox (./outbox, used when RESETMAIL_SMTP_URL is unset) is
# /var/lib/resetmail/outbox.
WORKDIR /var/lib/resetmail
# Numeric, so that runtimes enforcing "run as non-root" (Kubernetes' runAsNonRoot) can check it.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["resetmail-api"]
