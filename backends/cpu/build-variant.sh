#!/usr/bin/env bash
# build-variant.sh VARIANT OUTDIR: builds one variant of the pure-Rust cpu plugin and
# installs it as OUTDIR/cpu-VARIANT/{manifest.toml, libcorral_backend_cpu.so}.
#
# VARIANT: cpu | cpu-x86-64-v2 | cpu-x86-64-v3 | cpu-x86-64-v4
#
# Each variant builds in its own target dir (CPU_TARGET_ROOT, default target/ under the
# repository root, + cpu-VARIANT) because variants differ in RUSTFLAGS. The SIMD kernels
# are chosen at compile time from the target features. Extra cargo arguments: CARGO_ARGS.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    sed -n '2,9p' "$0" >&2
    exit 2
fi
VARIANT=$1
OUTDIR=$2
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TARGET_ROOT=${CPU_TARGET_ROOT:-$REPO/target}
TARGET_DIR="$TARGET_ROOT/cpu-$VARIANT"
MANIFEST="$HERE/manifests/$VARIANT.toml"

if [[ ! -f "$MANIFEST" ]]; then
    echo "build-variant.sh: unknown variant '$VARIANT' (no $MANIFEST)" >&2
    exit 2
fi
case "$VARIANT" in
    cpu) FLAGS="" ;;
    cpu-x86-64-v2) FLAGS="-C target-cpu=x86-64-v2" ;;
    cpu-x86-64-v3) FLAGS="-C target-cpu=x86-64-v3" ;;
    # x86-64-v4 does not include VNNI; the kernels use vpdpbusd, so the manifest requires it.
    cpu-x86-64-v4) FLAGS="-C target-cpu=x86-64-v4 -C target-feature=+avx512vnni" ;;
    *) echo "build-variant.sh: no build recipe for '$VARIANT'" >&2; exit 2 ;;
esac

export CORRAL_CPU_VARIANT="$VARIANT"
export RUSTFLAGS="${RUSTFLAGS:-} $FLAGS"
echo "build-variant.sh: $VARIANT: RUSTFLAGS='$RUSTFLAGS' target=$TARGET_DIR" >&2
(
    cd "$REPO"
    # shellcheck disable=SC2086
    cargo build --release -p corral-backend-cpu --target-dir "$TARGET_DIR" ${CARGO_ARGS:-}
)
case "$(uname -s)" in
    Darwin) LIB=libcorral_backend_cpu.dylib ;;
    *) LIB=libcorral_backend_cpu.so ;;
esac
DEST="$OUTDIR/$VARIANT"
mkdir -p "$DEST"
install -m 0755 "$TARGET_DIR/release/$LIB" "$DEST/$LIB"
install -m 0644 "$MANIFEST" "$DEST/manifest.toml"
echo "build-variant.sh: installed $DEST/manifest.toml and $DEST/$LIB" >&2
echo "$DEST"
