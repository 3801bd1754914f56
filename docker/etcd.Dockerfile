# syntax=docker/dockerfile:1.7
# An etcd image for the chart's bundled etcd (charts/squall/values.yaml:
# etcd.image, quay.io/coreos/etcd:v3.6.16 by default), for clusters that cannot
# pull quay.io. Same layout as the upstream image: /usr/local/bin/etcd (the
# chart's `command`) and /usr/local/bin/etcdctl, for `kubectl exec`.
#
# One file, two sources for the binaries; the BINARIES build argument names the
# stage they come from:
#
#   BINARIES=build (the default) compiles etcd and etcdctl from the Go module
#   proxy. The build context is unused, so any directory will do:
#     docker build -f docker/etcd.Dockerfile -t registry.example.com/etcd:v3.6.16 docker
#
#   BINARIES=prebuilt takes `etcd` and `etcdctl` built on the host from the
#   build context. This is what `make images` does, with the binaries the test
#   environment builds (tests/testenv/provision.sh):
#     docker build -f docker/etcd.Dockerfile --build-arg BINARIES=prebuilt -t … DIR
#
# Only the stages the last one needs are built: BuildKit and buildah both skip
# the other source. buildah 1.28 only resolves `FROM ${BINARIES}` to a stage
# when the argument is given on its command line, so with buildah pass
# --build-arg BINARIES=… always.
#
# Runs as uid/gid 65532 with a read-only root filesystem: etcd writes only to
# its --data-dir, which the chart puts on the volume mounted at /var/lib/etcd.

ARG GO_VERSION=1.26
ARG ETCD_VERSION=v3.6.16
ARG BINARIES=build

FROM golang:${GO_VERSION}-bookworm AS build
ARG ETCD_VERSION
WORKDIR /src
# etcd's and etcdctl's modules carry replace directives, which
# `go install pkg@version` refuses, so both are built through a wrapper module
# that requires them. Static binaries (CGO_ENABLED=0), as upstream ships them.
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    printf 'module squall.local/etcd-image\n\ngo 1.26\n\nrequire (\n\tgo.etcd.io/etcd/etcdctl/v3 %s\n\tgo.etcd.io/etcd/server/v3 %s\n)\n' \
      "$ETCD_VERSION" "$ETCD_VERSION" > go.mod \
 && printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "go.etcd.io/etcd/etcdctl/v3"\n\t_ "go.etcd.io/etcd/server/v3"\n)\n' > tools.go \
 && go mod tidy \
 && go build -trimpath -ldflags "-s -w" -o /out/etcd go.etcd.io/etcd/server/v3 \
 && go build -trimpath -ldflags "-s -w" -o /out/etcdctl go.etcd.io/etcd/etcdctl/v3 \
 && mkdir -p /out/data

FROM scratch AS prebuilt
COPY etcd etcdctl /out/
# An empty directory, to become /var/lib/etcd below.
WORKDIR /out/data

FROM ${BINARIES} AS binaries

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/squall-dev/squall" \
      org.opencontainers.image.title="etcd" \
      org.opencontainers.image.description="etcd and etcdctl for Squall's bundled etcd" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binaries /out/etcd /out/etcdctl /usr/local/bin/
# The data volume's mount point; owned by 65532 so that a fresh volume (docker
# run -v) is writable too.
COPY --from=binaries --chown=65532:65532 /out/data /var/lib/etcd
WORKDIR /var/lib/etcd
USER 65532:65532
# 2379: clients, 2380: peers, 2381: /metrics /readyz /livez (--listen-metrics-urls)
EXPOSE 2379 2380 2381
CMD ["/usr/local/bin/etcd"]
