#!/usr/bin/env bash
# Build Squall's container images with no registry and no Docker engine, each
# saved as a docker-archive tar that carries its image names, so that
#   ctr -n k8s.io images import target/images/squall-operator.tar
# gives the name the chart and the example manifests use:
#
#   squall-operator.tar    ghcr.io/squall-dev/squall-operator:$TAG
#   squall-supervisor.tar  ghcr.io/squall-dev/squall-supervisor:$TAG
#   squall-examples.tar    squall-examples:$TAG (containerd: docker.io/library/squall-examples:$TAG)
#                          and ghcr.io/squall-dev/squall-examples:$TAG
#   squall.tar             ghcr.io/squall-dev/squall:$TAG (the generic binary, Python 3, Node.js
#                          and Storm's multilang libraries from the test environment's cache)
#   squall-multilang-base.tar  localhost/squall-multilang-base:bookworm, its base, from Debian packages
#   etcd.tar               quay.io/coreos/etcd:<tag>  (charts/squall/values.yaml etcd.image)
#   pause.tar              localhost/pause:testenv    (a static pause, docker/pause.c)
#   distroless-cc.tar      gcr.io/distroless/cc-debian12:nonroot, assembled from Debian packages
#
# The first four are built by buildah from docker/*.Dockerfile, the same files
# users build with `docker build`, with --build-arg BINARIES=prebuilt: the
# binaries come from the host (cargo on Debian 12, the runtime image's glibc;
# etcd and etcdctl from the test environment's cache), not from a Rust or Go
# stage. The base image stands in for distroless, which cannot be pulled here.
#
# An image is rebuilt only when its inputs (binaries, Dockerfile, base image,
# names, this script's recipe) changed; otherwise it is reported unchanged.
#
# Usage: docker/build-images.sh [IMAGE...]   IMAGE: squall-operator squall-supervisor
#                                              squall-examples squall etcd pause distroless-cc
#                                              (default: all)
# Environment:
#   SQUALL_IMAGE_PROFILE       cargo profile of the Squall binaries (default: release;
#                              debug or dev: target/debug)
#   SQUALL_IMAGE_BIN_DIR       where squall-operator, squall-supervisor and squall-examples
#                              are (default: target/<profile>; target is $CARGO_TARGET_DIR if set)
#   SQUALL_IMAGE_ETCD_BIN_DIR  where etcd and etcdctl are (default: the test environment's
#                              bin, see tests/testenv/provision.sh --print-env)
#   SQUALL_IMAGE_OUT           output directory (default: target/images)
#   SQUALL_IMAGE_CACHE         apt downloads, buildah storage, stamps (default: $OUT/.cache)
#   SQUALL_IMAGE_TAG           tag of the Squall images (default: the chart's appVersion)
#
# Needs root, buildah, umoci, skopeo, runc, gcc, apt-get (Debian 12). Nothing is
# left outside the output and cache directories: buildah's storage, its
# temporary files and its CNI lock live in the cache, and the blob-info cache
# that buildah and skopeo put in /var/lib/containers is removed if this run
# created it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${SQUALL_IMAGE_PROFILE:-release}"
case "$PROFILE" in
    debug | dev) PROFILE_DIR=debug ;;
    *) PROFILE_DIR="$PROFILE" ;;
esac
TARGET="${CARGO_TARGET_DIR:-target}"
[[ $TARGET == /* ]] || TARGET="$ROOT/$TARGET"
BIN_DIR="${SQUALL_IMAGE_BIN_DIR:-$TARGET/$PROFILE_DIR}"
OUT="${SQUALL_IMAGE_OUT:-$TARGET/images}"
CACHE="${SQUALL_IMAGE_CACHE:-$OUT/.cache}"

log() { printf 'images: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

[[ $EUID -eq 0 ]] || die "needs root (buildah's overlay storage and file ownership in layers)"
for tool in buildah umoci skopeo gcc apt-get dpkg-deb sha256sum flock numfmt; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install buildah umoci skopeo gcc)"
done

# ------------------------------------------------------------------ names
TAG="${SQUALL_IMAGE_TAG:-$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$ROOT/charts/squall/Chart.yaml")}"
[[ -n "$TAG" ]] || die "no appVersion in charts/squall/Chart.yaml"
# etcd.image.repository and .tag from the chart's values.
ETCD_IMAGE="$(awk '
    /^etcd:/ { inetcd = 1; next }
    /^[^ #]/ { inetcd = 0 }
    inetcd && /^  image:/ { inimage = 1; next }
    inetcd && /^  [^ ]/ { inimage = 0 }
    inetcd && inimage && $1 == "repository:" { gsub(/"/, "", $2); repo = $2 }
    inetcd && inimage && $1 == "tag:" { gsub(/"/, "", $2); tag = $2 }
    END { if (repo != "" && tag != "") print repo ":" tag }' "$ROOT/charts/squall/values.yaml")"
[[ -n "$ETCD_IMAGE" ]] || die "no etcd.image in charts/squall/values.yaml"
BASE_IMAGE="gcr.io/distroless/cc-debian12:nonroot"
MULTILANG_BASE_IMAGE="localhost/squall-multilang-base:bookworm"
PAUSE_IMAGE="localhost/pause:testenv"

ALL=(squall-operator squall-supervisor squall-examples squall etcd pause distroless-cc)
if [[ $# -gt 0 ]]; then
    for want in "$@"; do
        [[ " ${ALL[*]} " == *" $want "* ]] || die "unknown image '$want' (one of: ${ALL[*]})"
    done
    WANT=("$@")
else
    WANT=("${ALL[@]}")
fi
wanted() { [[ " ${WANT[*]} " == *" $1 "* ]]; }

mkdir -p "$OUT" "$CACHE/stamps" "$CACHE/tmp"
OUT="$(cd "$OUT" && pwd)"
CACHE="$(cd "$CACHE" && pwd)"
exec 9>"$CACHE/lock"
flock -n 9 || {
    log "waiting for another build-images.sh on $CACHE"
    flock 9
}

# ------------------------------------------------------------------ buildah, kept in the cache
STORE="$CACHE/buildah/storage"
RUNROOT="$CACHE/buildah/run"
# A containers.conf of our own: buildah's CNI lock and its temporary copies
# go to the cache instead of /etc/cni/net.d and /var/tmp.
cat >"$CACHE/containers.conf" <<EOF
[network]
network_backend = "cni"
network_config_dir = "$CACHE/cni"

[engine]
image_copy_tmp_dir = "$CACHE/tmp"
EOF
export CONTAINERS_CONF="$CACHE/containers.conf" TMPDIR="$CACHE/tmp"
BUILDAH=(buildah --root "$STORE" --runroot "$RUNROOT" --storage-driver overlay)
STORAGE_REF="containers-storage:[overlay@$STORE+$RUNROOT]"
USED_BUILDAH=0
# containers/image keeps a blob-info cache in /var/lib/containers/cache for
# root, with no option to move it: remove it at the end if this run made it.
HAD_VARLIB_CONTAINERS=0 HAD_BLOB_INFO_CACHE=0
[[ -e /var/lib/containers ]] && HAD_VARLIB_CONTAINERS=1
[[ -e /var/lib/containers/cache ]] && HAD_BLOB_INFO_CACHE=1

cleanup() {
    if [[ $USED_BUILDAH == 1 ]]; then
        # Working containers left by a build (buildah 1.28 keeps the one of a
        # `FROM <stage>` with no instructions) and, with them, their mounts.
        "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
    fi
    # Anything still mounted under the storage (an interrupted build), deepest first.
    awk -v p="$STORE/" 'index($5, p) == 1 || $5 == substr(p, 1, length(p) - 1) { print $5 }' /proc/self/mountinfo |
        sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
    rm -rf "$CACHE/ctx" "${CACHE:?}/tmp/"*
    if [[ $HAD_BLOB_INFO_CACHE == 0 ]]; then
        rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb
        rmdir /var/lib/containers/cache 2>/dev/null || true
    fi
    if [[ $HAD_VARLIB_CONTAINERS == 0 ]]; then rmdir /var/lib/containers 2>/dev/null || true; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ helpers
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }

# report NAME T0 STATUS NAMES...: one line per image: size, time, names.
report() {
    local name=$1 t0=$2 status=$3
    shift 3
    local size secs
    size="$(numfmt --to=iec --suffix=B --format='%.1f' "$(stat -c %s "$OUT/$name.tar")")"
    secs="$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
    printf '%-22s %8s %6ss  %-9s %s\n' "$name.tar" "$size" "$secs" "$status" "$*"
}

# file_hash FILE: its sha256, remembered per (device, inode, size, mtime), so
# that a run with nothing changed does not read the binaries again. (Not ctime:
# the hard link into the build context changes it.)
file_hash() {
    local f=$1 sig memo hash
    sig="$(stat -L -c '%d %i %s %y' "$f")"
    memo="$CACHE/hashes/$(printf '%s' "$f" | sha256sum | cut -c1-32)"
    if [[ -f $memo && "$(head -n1 "$memo")" == "$sig" ]]; then
        sed -n 2p "$memo"
        return 0
    fi
    hash="$(sha256sum <"$f" | cut -c1-64)"
    mkdir -p "$CACHE/hashes"
    printf '%s\n%s\n' "$sig" "$hash" >"$memo"
    printf '%s\n' "$hash"
}

# key_of STRING... : a hash of the strings; "@FILE" stands for the file's content.
key_of() {
    local a
    for a in "$@"; do
        if [[ $a == @* ]]; then
            [[ -f ${a#@} ]] || die "missing input ${a#@}"
            printf 'file %s\n' "$(file_hash "${a#@}")"
        else
            printf 'str %s\n' "$a"
        fi
    done | sha256sum | cut -c1-64
}

up_to_date() { # NAME KEY
    [[ -f "$OUT/$1.tar" && -f "$CACHE/stamps/$1" && "$(cat "$CACHE/stamps/$1")" == "$2" ]]
}

# save_archive SOURCE-REF NAME FIRST-NAME [MORE-NAMES...]: a docker-archive whose
# manifest.json RepoTags carry every name. `ctr images import` names the images
# after them, normalised as docker does (squall-examples:0.1.0 becomes
# docker.io/library/squall-examples:0.1.0, which is also what the CRI looks up
# for a pod's `image: squall-examples:0.1.0`).
save_archive() {
    local src=$1 name=$2 first=$3
    shift 3
    local extra=() n
    for n in "$@"; do extra+=(--additional-tag "$n"); done
    rm -f "$OUT/$name.tar.tmp"
    skopeo --tmpdir "$CACHE/tmp" copy --quiet "${extra[@]}" "$src" "docker-archive:$OUT/$name.tar.tmp:$first" >/dev/null
    mv -f "$OUT/$name.tar.tmp" "$OUT/$name.tar"
}

# ------------------------------------------------------------------ base: distroless cc, from Debian packages
# What gcr.io/distroless/cc-debian12 holds: glibc, libgcc, libstdc++, libgomp,
# OpenSSL, CA certificates, time zones, /etc/services and friends, os-release.
BASE_PACKAGES=(base-files ca-certificates libc6 libgcc-s1 libgomp1 libssl3 libstdc++6 netbase tzdata)

# The multilang base adds Python 3.11 and Node.js (Debian's 18, from
# bookworm-security: the host's own nodejs may come from another repository).
MULTILANG_PACKAGES=(python3-minimal python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    libexpat1 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6 libreadline8
    libuuid1 libcrypt1 zlib1g media-types
    nodejs/bookworm-security libnode108/bookworm-security libuv1 libc-ares2 libbrotli1 libicu72
    libnghttp2-14 node-acorn node-cjs-module-lexer node-undici)

# fetch_debs PACKAGE...: the .deb files in $DEBS, downloaded once per package list
# (versions as the host's apt lists had them then; delete $CACHE/debs to take newer ones).
fetch_debs() {
    DEBS="$CACHE/debs/$(printf '%s\n' "$@" | sha256sum | cut -c1-16)"
    if [[ ! -f "$DEBS/.complete" ]]; then
        rm -rf "$DEBS"
        mkdir -p "$DEBS"
        log "apt-get download $*"
        (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "$@" >&2) ||
            die "apt-get download failed (apt-get update?)"
        touch "$DEBS/.complete"
    fi
}

# build_base NAME IMAGE: a distroless-style image of the packages in $DEBS.
build_base() {
    local name=$1 image=$2 work="$CACHE/base-$1" r
    rm -rf "$work"
    umoci init --layout "$work/oci"
    umoci new --image "$work/oci:base"
    umoci unpack --image "$work/oci:base" "$work/bundle" >/dev/null
    r="$work/bundle/rootfs"
    for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$r"; done
    rm -rf "$r"/usr/share/{doc,man,info,lintian,bug,common-licenses}
    # The CA bundle as update-ca-certificates writes it from the package (not
    # the host's, which may carry local CAs).
    mkdir -p "$r/etc/ssl/certs"
    find "$r/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat >"$r/etc/ssl/certs/ca-certificates.crt"
    cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
    cat >"$r/etc/group" <<'EOF'
root:x:0:
tty:x:5:
staff:x:50:
nonroot:x:65532:
nogroup:x:65534:
EOF
    cat >"$r/etc/nsswitch.conf" <<'EOF'
passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
ethers:         files
rpc:            files
EOF
    chmod 0644 "$r"/etc/{passwd,group,nsswitch.conf,ssl/certs/ca-certificates.crt}
    install -d -m 0700 "$r/root"
    install -d -m 0700 -o 65532 -g 65532 "$r/home/nonroot"
    install -d -m 1777 "$r/tmp"
    install -d -m 0755 "$r/var/lib" "$r/usr/local/bin"
    umoci repack --image "$work/oci:base" "$work/bundle"
    umoci config --image "$work/oci:base" \
        --config.user 65532:65532 --config.workingdir /home/nonroot \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
    umoci gc --layout "$work/oci"
    save_archive "oci:$work/oci:base" "$name" "$image"
    rm -rf "$work"
}

# base_image NAME IMAGE PACKAGE...: build it unless its packages are unchanged;
# sets BASE_KEYS[NAME].
declare -A BASE_KEYS=()
base_image() {
    local name=$1 image=$2 t0 key deb inputs
    shift 2
    t0="$(now)"
    fetch_debs "$@"
    inputs=("$(declare -f build_base)" "$image")
    for deb in "$DEBS"/*.deb; do inputs+=("${deb##*/}" "@$deb"); done
    key="$(key_of "${inputs[@]}")"
    BASE_KEYS[$name]="$key"
    if up_to_date "$name" "$key"; then
        wanted "$name" && report "$name" "$t0" unchanged "$image"
        return 0
    fi
    build_base "$name" "$image"
    echo "$key" >"$CACHE/stamps/$name"
    report "$name" "$t0" built "$image"
}

# Load the bases into buildah's storage, so that `FROM gcr.io/distroless/...`
# resolves with --pull=never.
ensure_base_loaded() {
    USED_BUILDAH=1
    local name image
    for name in "${!BASE_KEYS[@]}"; do
        case $name in
            distroless-cc) image=$BASE_IMAGE ;;
            *) image=$MULTILANG_BASE_IMAGE ;;
        esac
        if [[ -f "$CACHE/stamps/loaded-$name" && "$(cat "$CACHE/stamps/loaded-$name")" == "${BASE_KEYS[$name]}" ]] &&
            "${BUILDAH[@]}" inspect --type image "$image" >/dev/null 2>&1; then
            continue
        fi
        "${BUILDAH[@]}" pull --quiet "docker-archive:$OUT/$name.tar" >/dev/null
        "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
        echo "${BASE_KEYS[$name]}" >"$CACHE/stamps/loaded-$name"
    done
}

# ------------------------------------------------------------------ images from docker/*.Dockerfile
# dockerfile_image NAME DOCKERFILE "NAME[ NAME...]" SRC=DEST...
#   Builds DOCKERFILE with BINARIES=prebuilt from a context holding each SRC at DEST.
dockerfile_image() {
    local name=$1 dockerfile="$ROOT/$2" names t0 key pair src ctx
    read -r -a names <<<"$3"
    shift 3
    t0="$(now)"
    local inputs=("$(declare -f dockerfile_image)" "${BASE_KEYS[${IMAGE_BASE:-distroless-cc}]}" "${names[@]}" "${BUILD_ARGS[@]}" "@$dockerfile")
    for pair in "$@"; do
        src="${pair%%=*}"
        [[ -f $src ]] || die "$name: missing $src (make images builds it; see docs/helm.md)"
        inputs+=("${pair#*=}" "@$src")
    done
    key="$(key_of "${inputs[@]}")"
    if up_to_date "$name" "$key"; then
        report "$name" "$t0" unchanged "${names[@]}"
        return 0
    fi
    ensure_base_loaded
    ctx="$CACHE/ctx/$name"
    rm -rf "$ctx"
    for pair in "$@"; do
        src="${pair%%=*}"
        mkdir -p "$(dirname "$ctx/${pair#*=}")"
        ln -f "$src" "$ctx/${pair#*=}" 2>/dev/null || cp -p "$src" "$ctx/${pair#*=}"
    done
    "${BUILDAH[@]}" bud --quiet --runtime /usr/bin/runc --pull=never --isolation=oci --network=none \
        --runtime-flag "root=$CACHE/runc" --format docker --build-arg BINARIES=prebuilt "${BUILD_ARGS[@]}" \
        -f "$dockerfile" -t "${names[0]}" "$ctx" >/dev/null
    rm -rf "$ctx"
    save_archive "$STORAGE_REF${names[0]}" "$name" "${names[@]}"
    "${BUILDAH[@]}" rm --all >/dev/null
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
    echo "$key" >"$CACHE/stamps/$name"
    report "$name" "$t0" built "${names[@]}"
}

squall_image() { # NAME PACKAGE-BINARY [EXTRA-NAMES...]
    local name=$1 bin=$2
    shift 2
    local file=${name#squall-}
    [[ $name == squall ]] && file=squall
    dockerfile_image "$name" "docker/$file.Dockerfile" "ghcr.io/squall-dev/$name:$TAG $*" \
        "$BIN_DIR/$bin=$bin" "${EXTRA_FILES[@]}"
}

etcd_image() {
    local bin="${SQUALL_IMAGE_ETCD_BIN_DIR:-}" want have
    if [[ -z $bin ]]; then
        bin="$(bash "$ROOT/tests/testenv/provision.sh" --print-env | sed -n 's/^export SQUALL_TESTENV_BIN=//p')"
        bin="$(eval "printf '%s' $bin")"
    fi
    [[ -x $bin/etcd && -x $bin/etcdctl ]] ||
        die "etcd: no etcd and etcdctl in $bin (make testenv builds them; or set SQUALL_IMAGE_ETCD_BIN_DIR)"
    # The image is named after the chart's tag: the binaries must be that release.
    want="${ETCD_IMAGE##*:}"
    have="$("$bin/etcd" --version | sed -n 's/^etcd Version: */v/p')"
    [[ $have == "$want" ]] || die "etcd: $bin/etcd is $have, the chart wants $want ($ETCD_IMAGE)"
    dockerfile_image etcd docker/etcd.Dockerfile "$ETCD_IMAGE" "$bin/etcd=etcd" "$bin/etcdctl=etcdctl"
}

# ------------------------------------------------------------------ pause
build_pause() {
    local work="$CACHE/pause"
    rm -rf "$work"
    umoci init --layout "$work/oci"
    umoci new --image "$work/oci:pause"
    umoci unpack --image "$work/oci:pause" "$work/bundle" >/dev/null
    gcc -static -O2 -s -Wall -Wextra -Werror -o "$work/bundle/rootfs/pause" "$ROOT/docker/pause.c"
    umoci repack --image "$work/oci:pause" "$work/bundle"
    umoci config --image "$work/oci:pause" --config.entrypoint /pause --config.user 65535:65535
    umoci gc --layout "$work/oci"
    save_archive "oci:$work/oci:pause" pause "$PAUSE_IMAGE"
    rm -rf "$work"
}

pause_image() {
    local t0 key
    t0="$(now)"
    key="$(key_of "$(declare -f build_pause)" "$PAUSE_IMAGE" "$(gcc --version | head -n1)" "@$ROOT/docker/pause.c")"
    if up_to_date pause "$key"; then
        report pause "$t0" unchanged "$PAUSE_IMAGE"
        return 0
    fi
    build_pause
    echo "$key" >"$CACHE/stamps/pause"
    report pause "$t0" built "$PAUSE_IMAGE"
}

# ------------------------------------------------------------------ main
T_START="$(now)"
EXTRA_FILES=()
BUILD_ARGS=()
base_image distroless-cc "$BASE_IMAGE" "${BASE_PACKAGES[@]}"
if wanted squall || wanted squall-multilang-base; then
    base_image squall-multilang-base "$MULTILANG_BASE_IMAGE" "${BASE_PACKAGES[@]}" "${MULTILANG_PACKAGES[@]}"
fi
if wanted squall-operator; then squall_image squall-operator squall-operator; fi
if wanted squall-supervisor; then squall_image squall-supervisor squall-supervisor; fi
if wanted squall-examples; then
    for f in "$ROOT"/examples/*/topology.yaml; do
        EXTRA_FILES+=("$f=examples/$(basename "$(dirname "$f")")/topology.yaml")
    done
    # The example manifests say `image: squall-examples:$TAG`.
    squall_image squall-examples squall-examples "docker.io/library/squall-examples:$TAG"
    EXTRA_FILES=()
fi
if wanted squall; then
    # Storm's multilang libraries as the test environment fetched them (Maven
    # Central and PyPI), the same files the tests run.
    ml="$(bash "$ROOT/tests/testenv/provision.sh" --print-env | sed -n 's/^export SQUALL_MULTILANG=//p')"
    ml="$(eval "printf '%s' $ml")"
    [[ -f $ml/storm.py && -d $ml/python ]] || die "squall: no multilang libraries in $ml (make testenv fetches them)"
    while IFS= read -r f; do
        EXTRA_FILES+=("$ml/$f=multilang/$f")
    done < <(cd "$ml" && find storm.py storm.js storm.rb python -type f ! -path '*/__pycache__/*' ! -path 'python/bin/*' | LC_ALL=C sort)
    BUILD_ARGS=(--build-arg "RUNTIME_BASE=$MULTILANG_BASE_IMAGE")
    IMAGE_BASE=squall-multilang-base squall_image squall squall
    EXTRA_FILES=()
    BUILD_ARGS=()
fi
if wanted etcd; then etcd_image; fi
if wanted pause; then pause_image; fi
log "done in $(awk -v a="$T_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s: $OUT"
