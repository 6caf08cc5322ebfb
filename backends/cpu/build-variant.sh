#!/usr/bin/env bash
# build-variant.sh cpu OUTDIR: builds the pure-Rust cpu plugin in release and installs it
# as OUTDIR/cpu/{manifest.toml, libcorral_backend_cpu.so}.
#
# There is one variant: the library carries AVX-512 VNNI, AVX2 and portable kernels and
# chooses at run time, so no RUSTFLAGS are needed. Target dir: CPU_TARGET_ROOT (default
# target/ under the repository root) + /cpu. Extra cargo arguments: CARGO_ARGS.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    sed -n '2,7p' "$0" >&2
    exit 2
fi
VARIANT=$1
OUTDIR=$2
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [[ "$VARIANT" != cpu ]]; then
    echo "build-variant.sh: unknown variant '$VARIANT' (the cpu plugin has one variant, 'cpu'," >&2
    echo "  which chooses its SIMD kernels at run time)" >&2
    exit 2
fi
TARGET_DIR="${CPU_TARGET_ROOT:-$REPO/target}/cpu"
echo "build-variant.sh: $VARIANT: target=$TARGET_DIR" >&2
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
# The manifest build.rs chose for the target architecture.
install -m 0644 "$TARGET_DIR/release/cpu.corral-plugin.toml" "$DEST/manifest.toml"
echo "build-variant.sh: installed $DEST/manifest.toml and $DEST/$LIB" >&2
echo "$DEST"
