#!/usr/bin/env bash
# Pull a 600 MB blob from a local docker-registry with corral and with curl | sha256sum,
# and print both rates. Not run by the tests.
#
#   registry/bench/pull_vs_curl.sh [SIZE_MB] [RUNS]
#
# Needs /usr/bin/docker-registry (Debian package docker-registry) and curl.
set -euo pipefail
SIZE_MB=${1:-600}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/targets/registry}
cargo build -q --release -p corral-registry --example bench_pull --manifest-path "$ROOT/Cargo.toml"
BIN=$CARGO_TARGET_DIR/release/examples/bench_pull

WORK=$(mktemp -d)
REG_PID=
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/config.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/data
http:
  addr: 127.0.0.1:$PORT
YAML
docker-registry serve "$WORK/config.yml" >/dev/null 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done

{ printf 'GGUF\3\0\0\0'; head -c $((SIZE_MB * 1000000 - 8)) /dev/urandom; } > "$WORK/model.gguf"
DIGEST=$("$BIN" push "127.0.0.1:$PORT" "$WORK/model.gguf")
URL="http://127.0.0.1:$PORT/v2/bench/model/blobs/$DIGEST"
echo "blob $DIGEST, $SIZE_MB MB, $(nproc) cores"
rm -f "$WORK/model.gguf"

for i in $(seq "$RUNS"); do
  start=$(date +%s.%N)
  sum=$(curl -fsS "$URL" | sha256sum | cut -d' ' -f1)
  end=$(date +%s.%N)
  [ "sha256:$sum" = "$DIGEST" ] || { echo "curl: checksum mismatch"; exit 1; }
  python3 -c "s=$end-$start; print(f'curl | sha256sum: {$SIZE_MB} MB in {s:.3f} s = {$SIZE_MB/s:.0f} MB/s')"
  rm -rf "$WORK/store"
  "$BIN" pull "127.0.0.1:$PORT" "$WORK/store" "${PARALLEL:-4}"
done
