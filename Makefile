# Squall developer entry points. `make test` is the one CI runs.
SHELL := /usr/bin/env bash
CARGO ?= cargo

.PHONY: all build run test lint fmt testenv dev-cluster bench bench-kafka crds helm-lint images

all: build

build:
	$(CARGO) build --workspace

## Run word count in one process (Storm's LocalCluster).
run:
	$(CARGO) run --release -p squall-examples --bin squall-examples -- local examples/word-count/topology.yaml --duration 10s

## Provision the test control plane (etcd, kube-apiserver, kube-controller-manager, helm) into a cache.
testenv:
	@bash tests/testenv/provision.sh

## The whole test suite, on one real single-node cluster that every test
## shares (a namespace each). Provisions what it needs first (as root: the
## node's Debian packages too), builds the images, runs the dev-cluster test
## on its own (it starts and removes a cluster of its own), then everything.
## The test node runs debug builds: the suite builds them anyway, and a
## release build of the operator's dependencies would add minutes.
test: SQUALL_IMAGE_PROFILE = debug
test: testenv images
	source <(bash tests/testenv/provision.sh --print-env) && \
	  $(CARGO) build --workspace --all-targets && \
	  $(CARGO) test -p squall-testenv --test dev_cluster && \
	  $(CARGO) run -q -p squall-testenv --bin with-cluster -- $(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## A real single-node cluster in the foreground, for trying things by hand
## (as root; `make images` first). Ctrl-C tears it down.
dev-cluster: testenv
	@source <(bash tests/testenv/provision.sh --print-env) && $(CARGO) run -q -p squall-testenv --bin dev-cluster

## Regenerate crds/topology.yaml from the Rust types, and the chart's copy of it
## (charts/squall/crds/topology.yaml must stay byte-identical: squall-chart-tests checks).
crds:
	$(CARGO) run -q -p squall-api --bin crdgen > crds/topology.yaml
	cp crds/topology.yaml charts/squall/crds/topology.yaml

## helm lint the chart (strict: warnings fail).
helm-lint: testenv
	@source <(bash tests/testenv/provision.sh --print-env) && helm lint --strict charts/squall

## The container images, without a registry or a Docker engine (buildah), as
## docker-archive tars in target/images/ for `ctr -n k8s.io images import`:
## the operator, supervisor and examples images from docker/*.Dockerfile with
## binaries cargo builds here, etcd from the test environment's binaries, the
## node's pause image and the distroless base. Only what changed is rebuilt.
## SQUALL_IMAGE_PROFILE=debug takes target/debug instead of target/release.
SQUALL_IMAGE_PROFILE ?= release
images: testenv
	$(CARGO) build --profile $(if $(filter debug dev,$(SQUALL_IMAGE_PROFILE)),dev,$(SQUALL_IMAGE_PROFILE)) \
		-p squall-operator -p squall-runtime -p squall-examples \
		--bin squall-operator --bin squall-supervisor --bin squall-examples --bin squall
	SQUALL_IMAGE_PROFILE=$(SQUALL_IMAGE_PROFILE) bash docker/build-images.sh

## Throughput vs latency in one process, then over two worker processes with
## a kill -9 (a real etcd from the test environment). Each figure is also
## printed as one JSON line {"figure", "value", "unit"}: see docs/benchmarks.md.
bench: testenv
	$(CARGO) run --release -p squall-examples --bin squall-bench -- --duration 10s
	source <(bash tests/testenv/provision.sh --print-env) && $(CARGO) bench -p squall-examples --bench cluster
	$(CARGO) bench -p squall-examples --bench open_trees

## KafkaSpout → KafkaBolt records/s against a real local broker (docs/benchmarks.md).
bench-kafka: testenv
	source <(bash tests/testenv/provision.sh --print-env) && $(CARGO) bench -p squall-examples --bench kafka
