#!/usr/bin/env bash
# Smoke-test the archives docker/build-images.sh wrote, without containerd:
# each is unpacked (skopeo + umoci) into an OCI bundle and run with runc the
# way the chart runs it: as the image's user (65532), read-only root
# filesystem, no capabilities, no new privileges.
#
#   distroless-cc      glibc's loader runs
#   pause              starts, and exits 0 on SIGTERM
#   squall-operator    --help;  squall-supervisor --help
#   squall-examples    --help, and word count in local mode from the manifest it carries
#   squall             --help; python3 imports storm.py and pystorm, node requires storm.js
#   squall-multilang-base  python3 and node run
#   etcd               the chart's flags (ports moved to free loopback ports), /readyz,
#                      etcdctl put/get inside the container, exit on SIGTERM
#
# Usage: docker/verify-images.sh [IMAGE...]  (default: every archive found)
# Environment: SQUALL_IMAGE_OUT, SQUALL_IMAGE_CACHE as for build-images.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-target}"
[[ $TARGET == /* ]] || TARGET="$ROOT/$TARGET"
OUT="${SQUALL_IMAGE_OUT:-$TARGET/images}"
CACHE="${SQUALL_IMAGE_CACHE:-$OUT/.cache}"
W="$CACHE/verify"
RUNC=(runc --root "$W/runc")
FAILED=0

log() { printf 'verify: %s\n' "$*" >&2; }
ok() { printf '%-18s ok    %s\n' "$1" "$2"; }
fail() {
    printf '%-18s FAIL  %s\n' "$1" "$2"
    FAILED=1
}

[[ $EUID -eq 0 ]] || {
    log "needs root (runc)"
    exit 1
}
for tool in runc umoci skopeo jq curl; do
    command -v "$tool" >/dev/null || {
        log "$tool not found"
        exit 1
    }
done

# skopeo's blob-info cache (/var/lib/containers/cache for root) goes if this run made it.
HAD_VARLIB_CONTAINERS=0 HAD_BLOB_INFO_CACHE=0
[[ -e /var/lib/containers ]] && HAD_VARLIB_CONTAINERS=1
[[ -e /var/lib/containers/cache ]] && HAD_BLOB_INFO_CACHE=1

# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local id
    for id in $("${RUNC[@]}" list -q 2>/dev/null); do "${RUNC[@]}" delete -f "$id" >/dev/null 2>&1 || true; done
    if [[ $HAD_BLOB_INFO_CACHE == 0 ]]; then
        rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb
        rmdir /var/lib/containers/cache 2>/dev/null || true
    fi
    if [[ $HAD_VARLIB_CONTAINERS == 0 ]]; then rmdir /var/lib/containers 2>/dev/null || true; fi
    [[ -z ${KEEP:-} ]] || return 0 # KEEP=1: leave the bundles for a look
    rm -rf "$W"
}
trap cleanup EXIT
rm -rf "$W"
mkdir -p "$W"
export TMPDIR="$W"

# bundle NAME: unpack NAME.tar into $W/NAME/bundle, configured as the chart runs
# containers. Extra jq filters on the runtime config may follow.
bundle() {
    local name=$1 filter=${2:-.}
    rm -rf "${W:?}/$name"
    mkdir -p "$W/$name"
    skopeo --tmpdir "$W" copy --quiet "docker-archive:$OUT/$name.tar" "oci:$W/$name/oci:img" >/dev/null
    umoci unpack --image "$W/$name/oci:img" "$W/$name/bundle" >/dev/null
    local c="$W/$name/bundle/config.json"
    jq '.process.terminal = false
        | .root.readonly = true
        | .process.noNewPrivileges = true
        | .process.capabilities = {bounding: [], effective: [], inheritable: [], permitted: [], ambient: []}
        | '"$filter" "$c" >"$c.new"
    mv "$c.new" "$c"
}

# set_args CONFIG ARGS...: the container's command line (jq 1.6 would take
# "--help" after --args for its own option, hence the detour).
set_args() {
    local c=$1
    shift
    jq --argjson a "$(printf '%s\n' "$@" | jq -R . | jq -s .)" '.process.args = $a' "$c" >"$c.new"
    mv "$c.new" "$c"
}

# run NAME ARGS...: run the bundle to completion with ARGS as its command line.
run() {
    local name=$1
    shift
    local c="$W/$name/bundle/config.json"
    set_args "$c" "$@"
    timeout 120 "${RUNC[@]}" run --bundle "$W/$name/bundle" "verify-$name-$$" </dev/null
}

image_user() { skopeo --tmpdir "$W" inspect --config "docker-archive:$OUT/$1.tar" | jq -r '.config.User // ""'; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

check_distroless_cc() {
    bundle distroless-cc
    local out
    if out="$(run distroless-cc /lib64/ld-linux-x86-64.so.2 --version 2>&1)" && [[ $out == *"GLIBC 2.36"* ]]; then
        ok distroless-cc "$(head -n1 <<<"$out"), user $(image_user distroless-cc)"
    else
        fail distroless-cc "ld.so --version: $out"
    fi
}

check_pause() {
    bundle pause
    local id="verify-pause-$$" pid rc=0 state
    "${RUNC[@]}" run --bundle "$W/pause/bundle" "$id" </dev/null &
    pid=$!
    for _ in $(seq 50); do
        state="$("${RUNC[@]}" state "$id" 2>/dev/null | jq -r .status || true)"
        [[ $state == running ]] && break
        sleep 0.1
    done
    sleep 0.3
    "${RUNC[@]}" kill "$id" TERM || true
    wait "$pid" || rc=$?
    if [[ $state == running && $rc == 0 ]]; then
        ok pause "ran as $(image_user pause), exited 0 on SIGTERM"
    else
        fail pause "state '$state', exit $rc"
    fi
}

check_help() { # NAME BINARY
    local name=$1 bin=$2 user out
    user="$(image_user "$name")"
    [[ $user == 65532:65532 ]] || fail "$name" "user is '$user', not 65532:65532"
    bundle "$name"
    if out="$(run "$name" "/usr/local/bin/$bin" --help 2>&1)" && grep -qi usage <<<"$out"; then
        ok "$name" "$bin --help as $user, read-only root"
    else
        fail "$name" "$bin --help: $out"
    fi
}

check_examples() {
    check_help squall-examples squall-examples
    local out acked
    if out="$(run squall-examples /usr/local/bin/squall-examples local \
        /usr/share/squall/examples/word-count/topology.yaml --duration 3s 2>&1)" &&
        acked="$(sed -n 's/^=== word-count finished.* acked=\([0-9]*\) .*/\1/p' <<<"$out")" &&
        [[ ${acked:-0} -gt 0 ]]; then
        ok squall-examples "word count from the image's manifest in local mode, 3 s: acked=$acked"
    else
        fail squall-examples "local word count: $(tail -n 20 <<<"$out")"
    fi
}

check_etcd() {
    local user name=etcd-0 pc pp pm data id="verify-etcd-$$" pid rc=0 ready="" out
    user="$(image_user etcd)"
    [[ $user == 65532:65532 ]] || fail etcd "user is '$user', not 65532:65532"
    pc="$(free_port)" pp="$(free_port)" pm="$(free_port)"
    # The volume, as kubelet gives it with fsGroup 65532.
    data="$W/etcd-data"
    install -d -m 2770 -g 65532 "$data"
    bundle etcd '.linux.namespaces |= map(select(.type != "network"))
        | .mounts += [{destination: "/var/lib/etcd", type: "bind", source: "'"$data"'", options: ["rbind", "rw"]}]
        | .process.user.additionalGids = [65532]'
    # The chart's flags (charts/squall/templates/etcd-statefulset.yaml), on free loopback ports.
    local c="$W/etcd/bundle/config.json"
    set_args "$c" /usr/local/bin/etcd \
        "--name=$name" --data-dir=/var/lib/etcd/data \
        "--listen-client-urls=http://127.0.0.1:$pc" "--advertise-client-urls=http://127.0.0.1:$pc" \
        "--listen-peer-urls=http://127.0.0.1:$pp" "--initial-advertise-peer-urls=http://127.0.0.1:$pp" \
        "--initial-cluster=$name=http://127.0.0.1:$pp" --initial-cluster-state=new \
        --initial-cluster-token=verify "--listen-metrics-urls=http://127.0.0.1:$pm" \
        --quota-backend-bytes=2147483648 --auto-compaction-mode=periodic --auto-compaction-retention=1
    "${RUNC[@]}" run --bundle "$W/etcd/bundle" "$id" </dev/null >"$W/etcd.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        if curl -fsS "http://127.0.0.1:$pm/readyz" >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [[ -n $ready ]]; then
        out="$("${RUNC[@]}" exec "$id" /usr/local/bin/etcdctl --endpoints="http://127.0.0.1:$pc" put /squall/verify ok 2>&1 &&
            "${RUNC[@]}" exec "$id" /usr/local/bin/etcdctl --endpoints="http://127.0.0.1:$pc" get --print-value-only /squall/verify 2>&1)" || true
    fi
    "${RUNC[@]}" kill "$id" TERM 2>/dev/null || true
    wait "$pid" || rc=$?
    if [[ -n $ready && $out == *$'OK\nok'* && $rc == 0 && -d $data/data/member ]]; then
        ok etcd "etcd with the chart's flags as $user: /readyz, etcdctl put/get, data in the volume, exit 0 on SIGTERM"
    else
        fail etcd "ready='$ready' etcdctl='$out' exit=$rc; log: $(tail -n 15 "$W/etcd.log")"
    fi
}

check_squall() {
    check_help squall squall
    local out
    if out="$(run squall /usr/bin/python3 -c 'import storm, pystorm, sys; print(sys.version.split()[0])' 2>&1)" &&
        out="$out node $(run squall /usr/bin/node -e 'require("storm"); console.log(process.version)' 2>&1)" &&
        [[ $out == 3.11.* ]]; then
        ok squall "Storm's storm.py and pystorm import in python $out requires storm.js"
    else
        fail squall "multilang runtime: $out"
    fi
}

ALL=(distroless-cc pause squall-operator squall-supervisor squall-examples squall etcd)
WANT=("$@")
if [[ ${#WANT[@]} -eq 0 ]]; then
    for n in "${ALL[@]}"; do [[ -f $OUT/$n.tar ]] && WANT+=("$n"); done
fi
for n in "${WANT[@]}"; do
    [[ -f $OUT/$n.tar ]] || {
        fail "$n" "no $OUT/$n.tar"
        continue
    }
    case "$n" in
        distroless-cc) check_distroless_cc ;;
        pause) check_pause ;;
        squall-operator) check_help squall-operator squall-operator ;;
        squall-supervisor) check_help squall-supervisor squall-supervisor ;;
        squall-examples) check_examples ;;
        squall) check_squall ;;
        etcd) check_etcd ;;
        *) fail "$n" "unknown image" ;;
    esac
done
exit "$FAILED"
