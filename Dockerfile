# The task factory's binaries (tf, tf-worker, tf-router, tf-api) for docker-compose.yml.
# Not built on the project's own machines (no Docker engine there); CI validates the compose
# file that uses it.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tf-cli -p tf-worker -p tf-router -p tf-api

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tf /src/target/release/tf-worker /src/target/release/tf-router /src/target/release/tf-api /usr/local/bin/
COPY topics /app/topics
COPY schemas /app/schemas
COPY examples /app/examples
WORKDIR /app
