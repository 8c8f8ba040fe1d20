# syntax=docker/dockerfile:1
# The task factory's binaries (tf, tf-worker, tf-router, tf-api) for docker-compose.yml.
# Not built on the project's own machines (no Docker engine there); CI validates the compose
# file that uses it.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io downloads and compiled dependencies between builds: a source
# change recompiles the workspace only.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tf-cli -p tf-worker -p tf-router -p tf-api \
    && mkdir -p /out && cp target/release/tf target/release/tf-worker target/release/tf-router target/release/tf-api /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /app taskfactory
COPY --from=build /out/ /usr/local/bin/
COPY topics /app/topics
COPY schemas /app/schemas
COPY examples /app/examples
WORKDIR /app
USER taskfactory
