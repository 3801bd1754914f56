# syntax=docker/dockerfile:1.7
# The squall image: the generic `squall` topology binary with Python 3, Node.js and
# Storm's own multilang libraries (storm.py, storm.js, storm.rb, from Storm's jars on
# Maven Central, and pystorm from PyPI) on PYTHONPATH and NODE_PATH. A topology whose
# spouts and bolts are Python or JavaScript (`shell:` components) runs on it with no
# image of its own: mount the scripts from a ConfigMap (examples/python-word-count/).
#
# As the other Squall images, one file with two sources for what it carries
# (BINARIES, see docker/examples.Dockerfile), and two for the runtime base:
#
#   RUNTIME_BASE=multilang-runtime (the default) installs python3 and nodejs from
#   Debian into debian:bookworm-slim:
#     docker build -f docker/squall.Dockerfile -t ghcr.io/squall-dev/squall:0.1.0 .
#
#   `make images` (docker/build-images.sh, buildah, no registry) passes
#   BINARIES=prebuilt and RUNTIME_BASE=localhost/squall-multilang-base:bookworm, a
#   base it assembles from the same Debian packages (glibc, python3.11, nodejs 18).
#
# Runs as uid/gid 65532 and writes nothing to its root file system but /tmp (the
# operator mounts an emptyDir there for the subprocesses' pidDir).

ARG RUST_VERSION=1.95
ARG BINARIES=build
ARG RUNTIME_BASE=multilang-runtime
ARG STORM_VERSION=2.8.3
ARG PYSTORM_VERSION=3.1.4

FROM rust:${RUST_VERSION}-bookworm AS build
ARG STORM_VERSION
ARG PYSTORM_VERSION
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo fetch --locked \
 && cargo build --release --locked -p squall-runtime --bin squall \
 && install -D -m 0755 target/release/squall /out/squall
RUN apt-get update && apt-get install -y --no-install-recommends unzip python3-pip \
 && mkdir -p /out/multilang/python \
 && for lang in python javascript ruby; do \
      curl -fsSL -o /tmp/$lang.jar \
        "https://repo1.maven.org/maven2/org/apache/storm/multilang-$lang/$STORM_VERSION/multilang-$lang-$STORM_VERSION.jar" \
      && unzip -o -j /tmp/$lang.jar 'resources/storm.*' -d /out/multilang; \
    done \
 && pip3 install --break-system-packages --no-compile --target /out/multilang/python "pystorm==$PYSTORM_VERSION"

FROM scratch AS prebuilt
COPY squall /out/squall
COPY multilang/ /out/multilang/

FROM ${BINARIES} AS binaries

FROM debian:bookworm-slim AS multilang-runtime
RUN apt-get update && apt-get install -y --no-install-recommends python3 nodejs ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM ${RUNTIME_BASE}
LABEL org.opencontainers.image.source="https://github.com/squall-dev/squall" \
      org.opencontainers.image.title="squall" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binaries /out/squall /usr/local/bin/squall
COPY --from=binaries /out/multilang/ /usr/lib/squall/multilang/
ENV PYTHONPATH=/usr/lib/squall/multilang:/usr/lib/squall/multilang/python \
    NODE_PATH=/usr/lib/squall/multilang \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
# 6700: tuple transport (gRPC), 7071: the supervisor agent, 8080: /metrics /healthz /readyz
EXPOSE 6700 7071 8080
ENTRYPOINT ["/usr/local/bin/squall"]
