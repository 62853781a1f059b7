# syntax=docker/dockerfile:1
# lula's cloud services and device daemon, one image with three entrypoints:
#   docker build -t ghcr.io/lula-sync/lula:0.1.0 --build-arg LULA_COMMIT=$(git rev-parse --short=12 HEAD) .
#   docker run ghcr.io/lula-sync/lula:0.1.0                      # lula-hub serve (the default)
#   docker run --entrypoint lula-auth ghcr.io/lula-sync/lula:0.1.0 serve
#   docker run --entrypoint lula-client ghcr.io/lula-sync/lula:0.1.0 run ...
# deploy/k8s names it `lula` and sets `command:` per Deployment; each overlay's
# kustomize `images:` says which registry and tag (docs/DEPLOY.md).
#
# Build stage: dependencies first, in a layer of their own (keyed on the
# manifests and Cargo.lock only), so a source change rebuilds lula's crates,
# not the ~400 dependencies. The dist profile is stripped, with LTO.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The workspace's manifests, each crate with an empty lib and main, so cargo
# can resolve and build every dependency without lula's sources.
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY runtime/Cargo.toml runtime/
COPY auth/Cargo.toml auth/
COPY hub/Cargo.toml hub/
COPY client/Cargo.toml client/
COPY testkit/Cargo.toml testkit/
COPY e2e/Cargo.toml e2e/
COPY bench/Cargo.toml bench/
COPY chaos/Cargo.toml chaos/
RUN for c in shared runtime auth hub client testkit e2e bench chaos; do \
      mkdir -p "$c/src" && echo 'fn main() {}' > "$c/src/main.rs" && touch "$c/src/lib.rs"; \
    done \
 && cargo fetch --locked \
 && cargo build --profile dist --locked -p lula-auth -p lula-hub -p lula-client
# Then lula itself. `touch` makes cargo rebuild the crates whose stubs the
# layer above compiled.
COPY . .
ARG LULA_COMMIT=unknown
ENV LULA_COMMIT=${LULA_COMMIT}
RUN find shared runtime auth hub client -name '*.rs' -exec touch {} + \
 && cargo build --profile dist --locked --bin lula-auth --bin lula-hub --bin lula-client \
 && mkdir -p /out \
 && cp target/dist/lula-auth target/dist/lula-hub target/dist/lula-client /out/

# Runtime: distroless/cc (glibc, libgcc, CA certificates, no shell, no package
# manager), as its non-root user 65532.
FROM ${RUNTIME_IMAGE}
ARG LULA_COMMIT=unknown
LABEL org.opencontainers.image.title="lula" \
      org.opencontainers.image.description="Exactly-once sync of Redis streams between devices and the cloud: lula-hub, lula-auth, lula-client" \
      org.opencontainers.image.source="https://github.com/lula-sync/lula" \
      org.opencontainers.image.url="https://github.com/lula-sync/lula" \
      org.opencontainers.image.documentation="https://github.com/lula-sync/lula/blob/main/docs/DEPLOY.md" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="lula contributors" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${LULA_COMMIT}"
COPY --from=build /out/ /usr/local/bin/
# Logs as JSON for the container runtime's log pipeline; override with
# LULA_LOG_FORMAT=text.
ENV LULA_LOG_FORMAT=json
USER 65532:65532
# 3001 lula-auth, 3002 lula-hub (device ports); 9090 the admin listener of
# either (`--admin-listen`): probes, /metrics, /fleet.
EXPOSE 3001 3002 9090
ENTRYPOINT ["lula-hub"]
CMD ["serve", "--admin-listen", "0.0.0.0:9090"]
