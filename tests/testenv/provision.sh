#!/usr/bin/env bash
# Provision the Squall test control plane into a cache outside the work tree:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
#   kube-proxy (k8s.io/kubernetes, built through a wrapper go.mod), etcd
#   (go.etcd.io/etcd/server/v3), CoreDNS and helm (go install), plus the
#   Debian packages of the real node (containerd, runc, CNI plugins, iptables,
#   umoci/skopeo/buildah for images) when running as root; and an Apache Kafka
#   broker (org.apache.kafka:kafka_2.13 and its runtime jars from Maven Central,
#   resolved by mvn) for the Kafka components' tests; and promcheck
#   (tests/testenv/promcheck: Prometheus' text parser and promlint, what
#   `promtool check metrics` does) for the /metrics tests.
#
# Usage:
#   bash tests/testenv/provision.sh              build whatever is missing (idempotent)
#   bash tests/testenv/provision.sh --print-env  print `export` lines; builds nothing
#
# Environment:
#   SQUALL_TESTENV_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/squall-testenv)
#   SQUALL_TESTENV_JOBS    Go build parallelism (default: 2)
#   GO                     go binary (default: go on PATH, else /usr/local/go/bin/go)
# See docs/testenv.md.
set -euo pipefail

K8S_VERSION="v1.33.13"     # k8s.io/kubernetes; staging modules use v0.33.13
ETCD_VERSION="v3.6.16"     # go.etcd.io/etcd/server/v3
HELM_VERSION="v3.22.0"     # helm.sh/helm/v3
COREDNS_VERSION="v1.15.0"  # github.com/coredns/coredns
STORM_VERSION="2.8.3"      # org.apache.storm:multilang-{python,javascript,ruby} (storm.py, storm.js, storm.rb)
PYSTORM_VERSION="3.1.4"    # pystorm on PyPI, with its dependencies
STREAMPARSE_VERSION="5.0.1" # streamparse on PyPI (its Bolt and Spout are pystorm's), for one test
KAFKA_VERSION="4.1.1"      # org.apache.kafka:kafka_2.13 (KRaft, single node, on java 17+)
LOG4J_VERSION="2.24.3"     # log4j-slf4j-impl: the broker's log binding (Kafka's own log4j-core version)
# Debian packages of the real node (see shared notes real-node.md),
# Chromium for the web UI's browser tests, and Ruby for storm.rb's components.
NODE_PACKAGES=(containerd runc iptables conntrack socat busybox-static containernetworking-plugins
               umoci skopeo buildah iproute2 util-linux chromium
               ruby)

CACHE_ROOT="${SQUALL_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/squall-testenv}"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_coredns-${COREDNS_VERSION}"
DIR="${CACHE_ROOT}/${KEY}"
BIN="${DIR}/bin"
# Storm's multilang client libraries, as users have them: storm.py, storm.js and
# storm.rb unpacked from Storm's jars on Maven Central, and pystorm and
# streamparse from PyPI.
MULTILANG="${CACHE_ROOT}/multilang-storm-${STORM_VERSION}_pystorm-${PYSTORM_VERSION}_streamparse-${STREAMPARSE_VERSION}"
# Kafka has a cache entry of its own: bumping it does not rebuild Kubernetes.
KAFKA_DIR="${CACHE_ROOT}/kafka-${KAFKA_VERSION}"
# promcheck is built from the source in this repository (its go.mod pins
# client_golang and common); the entry is keyed by that source's sha256 (kept
# in PROMCHECK_DIR/source.sha256), so it is rebuilt exactly when the source changes.
PROMCHECK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/promcheck"
PROMCHECK_DIR="${CACHE_ROOT}/promcheck"

if [[ "${1:-}" == "--print-env" ]]; then
    printf 'export SQUALL_TESTENV_BIN=%q\n' "$BIN"
    printf 'export SQUALL_MULTILANG=%q\n' "$MULTILANG"
    printf 'export SQUALL_TESTENV_KAFKA=%q\n' "$KAFKA_DIR"
    printf 'export SQUALL_PROMCHECK=%q\n' "$PROMCHECK_DIR/promcheck"
    printf 'export PATH=%q:"$PATH"\n' "$BIN"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--print-env]" >&2
    exit 2
fi

log() { printf 'testenv: %s\n' "$*" >&2; }

K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

have_all() {
    local b
    for b in etcd etcdctl "${K8S_BINS[@]}" helm coredns; do
        [[ -x "$BIN/$b" ]] || return 1
    done
    have_multilang
}

have_multilang() {
    [[ -f "$MULTILANG/storm.py" && -f "$MULTILANG/storm.js" && -f "$MULTILANG/storm.rb" \
        && -d "$MULTILANG/python/pystorm" && -d "$MULTILANG/streamparse/streamparse" ]]
}

# storm.py, storm.js and storm.rb from Storm's own jars (Maven Central, unmodified),
# and pystorm (and streamparse) with their dependencies in folders for PYTHONPATH.
fetch_multilang() {
    local tmp="$MULTILANG.tmp" lang
    rm -rf "$tmp" && mkdir -p "$tmp/jars" "$tmp/python"
    for lang in python javascript ruby; do
        mvn -B -q dependency:copy -Dartifact="org.apache.storm:multilang-${lang}:${STORM_VERSION}" \
            -DoutputDirectory="$tmp/jars"
        (cd "$tmp" && unzip -o -q -j "jars/multilang-${lang}-${STORM_VERSION}.jar" 'resources/storm.*')
    done
    python3 -m pip install -q --disable-pip-version-check --no-input \
        --target "$tmp/python" "pystorm==${PYSTORM_VERSION}"
    # A folder of its own: its 76 MB of tooling (fabric, cryptography, Cython)
    # stay out of the squall image, which copies only python/.
    python3 -m pip install -q --disable-pip-version-check --no-input \
        --target "$tmp/streamparse" "streamparse==${STREAMPARSE_VERSION}"
    ls -l "$tmp"
    rm -rf "$MULTILANG" && mv "$tmp" "$MULTILANG"
}

# The real node's Debian packages. Root only (CI and the dev machine run as root);
# anyone else gets the list to install.
have_packages() {
    local b
    for b in containerd runc ctr iptables conntrack socat umoci skopeo buildah nsenter ip chromium ruby; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/portmap && -x /bin/busybox ]]
}

install_packages() {
    have_packages && return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "the real node needs Debian packages; as root run: apt-get install -y --no-install-recommends ${NODE_PACKAGES[*]}"
        return 0
    fi
    log "installing Debian packages: ${NODE_PACKAGES[*]}"
    local logf="$CACHE_ROOT/apt.log"
    mkdir -p "$CACHE_ROOT"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${NODE_PACKAGES[@]}"; } >"$logf" 2>&1; then
        log "step 'apt-get install' FAILED; last lines of $logf:"
        tail -n 30 "$logf" | sed 's/^/    /' >&2
        exit 1
    fi
}

install_packages

# ---------------------------------------------------------------- kafka
# The broker's jars, resolved by Maven from a generated pom into
# $KAFKA_DIR/libs; .complete is written last, so an interrupted run resolves again.
have_kafka() {
    [[ -f "$KAFKA_DIR/.complete" && -f "$KAFKA_DIR/libs/kafka_2.13-${KAFKA_VERSION}.jar" ]]
}

provision_kafka() {
    have_kafka && return 0
    if ! command -v java >/dev/null 2>&1; then
        log "step 'kafka' failed: no 'java' on PATH; the Kafka broker needs Java 17+ (apt-get install openjdk-17-jre-headless)"
        exit 1
    fi
    if ! command -v mvn >/dev/null 2>&1; then
        if [[ $(id -u) -eq 0 ]]; then
            log "installing Debian package maven (resolves the Kafka broker's jars)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends maven >"$CACHE_ROOT/apt-maven.log" 2>&1 ||
                { log "apt-get install maven FAILED; see $CACHE_ROOT/apt-maven.log"; exit 1; }
        else
            log "step 'kafka' failed: no 'mvn' on PATH; as root run: apt-get install -y maven"
            exit 1
        fi
    fi
    mkdir -p "$KAFKA_DIR"
    local logf="$KAFKA_DIR/resolve.log" t0=$SECONDS
    log "step 'kafka' (org.apache.kafka:kafka_2.13:${KAFKA_VERSION} from Maven Central) ..."
    cat >"$KAFKA_DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>squall.testenv</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>${KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>${KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>${LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
EOF
    rm -rf "${KAFKA_DIR:?}/libs" "${KAFKA_DIR:?}/libs.tmp"
    if ! mvn -B -q -f "$KAFKA_DIR/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$KAFKA_DIR/libs.tmp" >"$logf" 2>&1; then
        log "step 'kafka' FAILED: mvn could not resolve the broker's jars; last lines of $logf:"
        tail -n 30 "$logf" | sed 's/^/    /' >&2
        exit 1
    fi
    mv "$KAFKA_DIR/libs.tmp" "$KAFKA_DIR/libs"
    touch "$KAFKA_DIR/.complete"
    log "step 'kafka' ok ($((SECONDS - t0))s): $KAFKA_DIR/libs"
}

# ---------------------------------------------------------------- go
# Sets GO and GO_VERSION (the Go builds below need it).
find_go() {
    [[ -n "${GO_VERSION:-}" ]] && return 0
    if [[ -z "${GO:-}" ]]; then
        if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
        elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
        else
            log "step 'find go' failed: no 'go' on PATH and no /usr/local/go/bin/go; install Go 1.24+"
            exit 1
        fi
    fi
    if ! GO_VERSION="$("$GO" version 2>&1)"; then
        log "step 'find go' failed: '$GO version' did not run: ${GO_VERSION}"
        exit 1
    fi
}

# ---------------------------------------------------------------- promcheck
promcheck_sum() {
    (cd "$PROMCHECK_SRC" && cat go.mod go.sum main.go) | sha256sum | cut -d' ' -f1
}

have_promcheck() {
    [[ -x "$PROMCHECK_DIR/promcheck" && "$(cat "$PROMCHECK_DIR/source.sha256" 2>/dev/null)" == "$(promcheck_sum)" ]]
}

provision_promcheck() {
    have_promcheck && return 0
    find_go
    mkdir -p "$PROMCHECK_DIR"
    exec 8>"$PROMCHECK_DIR/.lock"
    command -v flock >/dev/null 2>&1 && flock 8
    have_promcheck && return 0
    local logf="$PROMCHECK_DIR/build.log" t0=$SECONDS sum
    sum="$(promcheck_sum)"
    log "step 'promcheck' (${PROMCHECK_SRC}) ..."
    # -mod=readonly: go.mod and go.sum are checked in; the build writes nothing there.
    if ! { (cd "$PROMCHECK_SRC" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" \
                "$GO" build -trimpath -ldflags "-s -w" -o "$PROMCHECK_DIR/promcheck.tmp" .) &&
           printf '# HELP ok_total A counter.\n# TYPE ok_total counter\nok_total 1\n' | "$PROMCHECK_DIR/promcheck.tmp" &&
           ! printf '# TYPE bad counter\nbad 1\n' | "$PROMCHECK_DIR/promcheck.tmp"; } >"$logf" 2>&1; then
        log "step 'promcheck' FAILED; last lines of $logf:"
        tail -n 30 "$logf" | sed 's/^/    /' >&2
        exit 1
    fi
    mv -f "$PROMCHECK_DIR/promcheck.tmp" "$PROMCHECK_DIR/promcheck"
    echo "$sum" >"$PROMCHECK_DIR/source.sha256"
    log "step 'promcheck' ok ($((SECONDS - t0))s): $PROMCHECK_DIR/promcheck"
}

mkdir -p "$CACHE_ROOT"
provision_kafka
provision_promcheck

if have_all; then
    log "cache hit: $BIN"
    exit 0
fi

find_go

mkdir -p "$BIN" "$DIR/logs" "$DIR/src"

# One provisioner at a time per cache entry (several `make test` may start together).
exec 9>"$DIR/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    if have_all; then
        log "cache hit (built by a concurrent run): $BIN"
        exit 0
    fi
fi

JOBS="${SQUALL_TESTENV_JOBS:-2}"
export GOFLAGS="-buildvcs=false -p=${JOBS}"
export GOMAXPROCS="${JOBS}"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
NICE=(nice -n 10)
START_ALL=$SECONDS

# step NAME COMMAND... : run COMMAND with output to logs/NAME.log; on failure say
# which step failed, its exit code, and the tail of its log.
step() {
    local name="$1"; shift
    local logf="$DIR/logs/${name}.log"
    local t0=$SECONDS rc=0
    log "step '${name}' ..."
    # In the background so that `set -e` holds inside the step (it is
    # ignored in anything run on the left of `||`).
    ( set -e; "$@" ) >"$logf" 2>&1 &
    wait $! || rc=$?
    if [[ $rc -ne 0 ]]; then
        log "step '${name}' FAILED (exit ${rc}): command: $*"
        log "last lines of ${logf}:"
        tail -n 40 "$logf" | sed 's/^/    /' >&2
        exit 1
    fi
    log "step '${name}' ok ($((SECONDS - t0))s)"
}

# ---------------------------------------------------------------- etcd
build_etcd() {
    local src="$DIR/src/etcd"
    mkdir -p "$src"
    cat >"$src/go.mod" <<EOF
module squall.local/testenv-etcd

go 1.24

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
EOF
    cat >"$src/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
    (cd "$src" && "$GO" mod tidy)
    (cd "$src" && "${NICE[@]}" "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
    "$BIN/etcd.tmp" --version
    mv -f "$BIN/etcd.tmp" "$BIN/etcd"
}

# etcdctl goes into the etcd image, so that `kubectl exec` can inspect the bundled etcd.
build_etcdctl() {
    # Its go.mod has replace directives, so `go install pkg@version` refuses
    # it: build it through a wrapper module, as etcd itself.
    local src="$DIR/src/etcdctl"
    mkdir -p "$src"
    cat >"$src/go.mod" <<EOF
module squall.local/testenv-etcdctl

go 1.24

require go.etcd.io/etcd/etcdctl/v3 ${ETCD_VERSION}
EOF
    cat >"$src/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/etcdctl/v3"
EOF
    (cd "$src" && "$GO" mod tidy)
    (cd "$src" && "${NICE[@]}" "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/etcdctl.tmp" go.etcd.io/etcd/etcdctl/v3)
    "$BIN/etcdctl.tmp" version
    mv -f "$BIN/etcdctl.tmp" "$BIN/etcdctl"
}

# ---------------------------------------------------------------- helm
build_helm() {
    local gobin="$DIR/src/helm-bin"
    rm -rf "$gobin"; mkdir -p "$gobin"
    GOBIN="$gobin" "${NICE[@]}" "$GO" install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
        "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
    "$gobin/helm" version
    mv -f "$gobin/helm" "$BIN/helm"
}

# ---------------------------------------------------------------- kubernetes
k8s_mod() {
    local src="$DIR/src/kubernetes"
    mkdir -p "$src"
    local staging="v0.${K8S_VERSION#v1.}"
    local kmod
    kmod="$("$GO" mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [[ -f "$kmod" ]] || { echo "could not download k8s.io/kubernetes@${K8S_VERSION}"; return 1; }
    # Every staging module k8s.io/kubernetes replaces with ./staging/... becomes its v0.x.y tag.
    local mods
    mods="$(sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/.*#\1#p' "$kmod")"
    [[ -n "$mods" ]] || { echo "no staging replaces found in $kmod"; return 1; }
    {
        echo "module squall.local/testenv-kubernetes"
        echo
        echo "go 1.24"
        echo
        echo "require k8s.io/kubernetes ${K8S_VERSION}"
        echo
        echo "replace ("
        local m
        for m in $mods; do echo "	$m => $m ${staging}"; done
        echo ")"
    } >"$src/go.mod"
    cat >"$src/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
    cat "$src/go.mod"
    (cd "$src" && "$GO" mod tidy)
}

build_k8s() {
    local src="$DIR/src/kubernetes"
    local ver="${K8S_VERSION}"
    local minor="${ver#v1.}"; minor="${minor%%.*}"
    local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    local ld="-s -w"
    local pkg key val
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        for kv in "gitVersion=${ver}" "gitMajor=1" "gitMinor=${minor}" \
                  "gitCommit=0000000000000000000000000000000000000000" \
                  "gitTreeState=clean" "buildDate=${date}"; do
            key="${kv%%=*}"; val="${kv#*=}"
            ld+=" -X ${pkg}.${key}=${val}"
        done
    done
    mkdir -p "$DIR/src/k8s-out"
    local b pkgs=()
    for b in "${K8S_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
    (cd "$src" && "${NICE[@]}" "$GO" build -trimpath -ldflags "$ld" -o "$DIR/src/k8s-out/" "${pkgs[@]}")
    for b in "${K8S_BINS[@]}"; do
        "$DIR/src/k8s-out/$b" --version
        "$DIR/src/k8s-out/$b" --version | grep -q "${ver}" || { echo "$b --version does not print ${ver}"; return 1; }
    done
    for b in "${K8S_BINS[@]}"; do mv -f "$DIR/src/k8s-out/$b" "$BIN/$b"; done
}

# ---------------------------------------------------------------- coredns
build_coredns() {
    # CoreDNS with just the plugins the test cluster uses (bind, errors,
    # cache, kubernetes): no `forward`, so nothing outside the cluster
    # resolves, and none of the cloud plugins, which take most of the build.
    local src="$DIR/src/coredns"
    mkdir -p "$src"
    cat >"$src/go.mod" <<EOF
module squall.local/testenv-coredns

go 1.24

require github.com/coredns/coredns ${COREDNS_VERSION}
EOF
    cat >"$src/main.go" <<'EOF'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

func init() {
	dnsserver.Directives = []string{"bind", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
EOF
    (cd "$src" && "$GO" mod tidy)
    (cd "$src" && "${NICE[@]}" "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/coredns.tmp" .)
    "$BIN/coredns.tmp" -plugins | grep -qx kubernetes
    "$BIN/coredns.tmp" -version
    mv -f "$BIN/coredns.tmp" "$BIN/coredns"
}


log "provisioning into $DIR (${GO_VERSION#go version }, jobs: ${JOBS})"
[[ -x "$BIN/etcd" ]] || step etcd build_etcd
[[ -x "$BIN/etcdctl" ]] || step etcdctl build_etcdctl
[[ -x "$BIN/helm" ]] || step helm build_helm
[[ -x "$BIN/coredns" ]] || step coredns build_coredns
have_multilang || step multilang fetch_multilang
need_k8s=0
for b in "${K8S_BINS[@]}"; do [[ -x "$BIN/$b" ]] || need_k8s=1; done
if [[ $need_k8s -eq 1 ]]; then
    step kubernetes-module k8s_mod
    step kubernetes-build build_k8s
fi
have_all || { log "step 'verify' FAILED: binaries missing in $BIN after build"; exit 1; }
log "done in $((SECONDS - START_ALL))s: $BIN"
