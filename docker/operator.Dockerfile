# syntax=docker/dockerfile:1.7
# The squall-operator image: the operator (Storm's Nimbus on Kubernetes).
#
# Build from the workspace root (the whole workspace is the build context,
# since cargo needs every member's manifest):
#   docker build -f docker/operator.Dockerfile -t ghcr.io/squall-dev/squall-operator:0.1.0 .
#
# Runs as uid/gid 65532 (distroless "nonroot") and writes nothing to its root
# filesystem, so it runs with readOnlyRootFilesystem: true.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# protoc comes from the protoc-bin-vendored crate through .cargo/config.toml;
# cargo fetch brings every locked package, that one included, before any
# build script runs. The cache mounts keep the registry and target/ between
# builds (and between the three images).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo fetch --locked \
 && cargo build --release --locked -p squall-operator --bin squall-operator \
 && install -D -m 0755 target/release/squall-operator /out/squall-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/squall-dev/squall" \
      org.opencontainers.image.title="squall-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/squall-operator /usr/local/bin/squall-operator
USER 65532:65532
# 8080: /metrics /healthz /readyz (--http-addr)
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/squall-operator"]
