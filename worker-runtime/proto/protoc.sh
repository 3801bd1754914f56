#!/bin/sh
# Runs the protoc binary vendored by the `protoc-bin-vendored-*` crates in
# cargo's registry (see .cargo/config.toml), falling back to one on PATH.
set -e
home="${CARGO_HOME:-$HOME/.cargo}"
case "$(uname -m)" in
  x86_64) arch=linux-x86_64 ;;
  aarch64) arch=linux-aarch_64 ;;
  *) arch=unknown ;;
esac
found=""
for p in "$home"/registry/src/*/protoc-bin-vendored-"$arch"-*/bin/protoc; do
  [ -x "$p" ] || chmod +x "$p" 2>/dev/null || true
  [ -x "$p" ] && found="$p"
done
inc=""
for d in "$home"/registry/src/*/protoc-bin-vendored-[0-9]*/include; do
  [ -d "$d" ] && inc="$d"
done
if [ -n "$found" ]; then
  if [ -n "$inc" ]; then exec "$found" "$@" "--proto_path=$inc"; fi
  exec "$found" "$@"
fi
exec protoc "$@"
