# syntax=docker/dockerfile:1.7
# The squall-examples image: the example topologies (word count, exclamation, rolling top words, ...).
#
# Build from the workspace root (the whole workspace is the build context,
# since cargo needs every member's manifest):
#   docker build -f docker/examples.Dockerfile -t ghcr.io/squall-dev/squall-examples:0.1.0 .
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
 && cargo build --release --locked -p squall-examples --bin squall-examples \
 && install -D -m 0755 target/release/squall-examples /out/squall-examples
# The example manifests, for local mode:
#   docker run --rm IMAGE local /usr/share/squall/examples/word-count/topology.yaml
RUN for f in examples/*/topology.yaml; do \
      install -D -m 0644 "$f" "/out/share/$f"; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/squall-dev/squall" \
      org.opencontainers.image.title="squall-examples" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/squall-examples /usr/local/bin/squall-examples
COPY --from=build /out/share/examples/ /usr/share/squall/examples/
USER 65532:65532
# 6700: tuple transport (gRPC), 7071: the supervisor agent, 8080: /metrics /healthz /readyz
EXPOSE 6700 7071 8080
ENTRYPOINT ["/usr/local/bin/squall-examples"]
