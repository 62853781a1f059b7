# One image with lula-auth, lula-hub and lula-client; deploy/k8s runs it as `lula`.
#   docker build -t ghcr.io/lula-sync/lula:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lula-auth --bin lula-hub --bin lula-client

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lula-auth /src/target/release/lula-hub /src/target/release/lula-client /usr/local/bin/
USER 10001
