# syntax=docker/dockerfile:1.7
# The squall-examples image: the example topologies (word count, exclamation, rolling top words, ...).
#
# One file, two sources for the binary; the BINARIES build argument names the
# stage it comes from:
#
#   BINARIES=build (the default) compiles it from source in a Rust stage. The
#   build context is the workspace root (cargo needs every member's manifest):
#     docker build -f docker/examples.Dockerfile -t ghcr.io/squall-dev/squall-examples:0.1.0 .
#
#   BINARIES=prebuilt takes a binary built on a Debian 12 host (the runtime
#   image's glibc) from a build context holding `squall-examples` and
#   `examples/*/topology.yaml`. This is what `make images` does
#   (docker/build-images.sh, with buildah, no registry):
#     docker build -f docker/examples.Dockerfile --build-arg BINARIES=prebuilt -t … DIR
#
# Only the stages the last one needs are built: BuildKit and buildah both skip
# the other source, so a prebuilt build pulls no Rust image and runs no cargo.
# buildah 1.28 only resolves `FROM ${BINARIES}` to a stage when the argument is
# given on its command line, so with buildah pass --build-arg BINARIES=… always.
#
# Runs as uid/gid 65532 (distroless "nonroot") and writes nothing to its root
# filesystem, so it runs with readOnlyRootFilesystem: true.

ARG RUST_VERSION=1.95
ARG BINARIES=build

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

FROM scratch AS prebuilt
COPY squall-examples /out/squall-examples
COPY examples/ /out/share/examples/

FROM ${BINARIES} AS binaries

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/squall-dev/squall" \
      org.opencontainers.image.title="squall-examples" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binaries /out/squall-examples /usr/local/bin/squall-examples
COPY --from=binaries /out/share/examples/ /usr/share/squall/examples/
USER 65532:65532
# 6700: tuple transport (gRPC), 7071: the supervisor agent, 8080: /metrics /healthz /readyz
EXPOSE 6700 7071 8080
ENTRYPOINT ["/usr/local/bin/squall-examples"]
