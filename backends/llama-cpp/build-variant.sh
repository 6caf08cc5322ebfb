#!/usr/bin/env bash
# build-variant.sh VARIANT OUTDIR: builds one variant of the llama.cpp plugin and installs
# it as OUTDIR/llama-cpp-VARIANT/{manifest.toml, libcorral_backend_llama_cpp.so}.
#
# VARIANT: cpu | cpu-x86-64-v3 | cpu-x86-64-v4 | cpu-x86-64-v4-vnni | vulkan | cuda12 | cuda13 | rocm6 | metal
#
# Each variant builds in its own target dir, target/llama-VARIANT under the repository
# root (LLAMA_TARGET_ROOT overrides the parent), because variants differ in RUSTFLAGS and
# features. The cuda13 variant assembles a CUDA 13 toolkit from PyPI with cuda-toolkit.sh
# into target/cuda-toolkit when no toolkit is installed. The vulkan variant fetches Vulkan
# headers with vulkan-sdk.sh into target/vulkan-sdk when VULKAN_SDK is not set. Extra
# cargo arguments: CARGO_ARGS.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
VARIANT=$1
OUTDIR=$2
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TARGET_ROOT=${LLAMA_TARGET_ROOT:-$REPO/target}
TARGET_DIR="$TARGET_ROOT/llama-$VARIANT"
MANIFEST="$HERE/manifests/llama-cpp-$VARIANT.toml"

if [[ ! -f "$MANIFEST" ]]; then
    echo "build-variant.sh: unknown variant '$VARIANT' (no $MANIFEST)" >&2
    exit 2
fi

RUSTFLAGS_EXTRA=""
case "$VARIANT" in
    cpu)
        # ggml turns AVX/AVX2/FMA/F16C/BMI2/SSE4.2 ON by default in any non-native x86
        # build; the portable variant must run on every x86-64 CPU, so switch them off.
        FEATURES=cpu
        if [[ "$(uname -m)" == x86_64 ]]; then
            export GGML_SSE42=OFF GGML_AVX=OFF GGML_AVX2=OFF GGML_FMA=OFF GGML_F16C=OFF \
                GGML_BMI2=OFF GGML_AVX_VNNI=OFF GGML_AVX512=OFF
        fi
        ;;
    cpu-x86-64-v3) FEATURES=cpu; RUSTFLAGS_EXTRA="-C target-cpu=x86-64-v3" ;;
    cpu-x86-64-v4) FEATURES=cpu; RUSTFLAGS_EXTRA="-C target-cpu=x86-64-v4" ;;
    cpu-x86-64-v4-vnni)
        # llama-cpp-sys-2 maps these target features to GGML_AVX512_VNNI / _VBMI.
        FEATURES=cpu
        RUSTFLAGS_EXTRA="-C target-cpu=x86-64-v4 -C target-feature=+avx512vnni,+avx512vbmi" ;;
    vulkan)
        FEATURES=vulkan
        if [[ -z "${VULKAN_SDK:-}" && ! -f /usr/include/vulkan/vulkan_core.h ]] \
            || ! grep -qs VK_EXT_layer_settings "${VULKAN_SDK:-/usr}/include/vulkan/vulkan_core.h"; then
            eval "$("$HERE/vulkan-sdk.sh" "$TARGET_ROOT/vulkan-sdk")"
        fi
        ;;
    cuda12|cuda13)
        # The plugin is a shared library: CMake must compile the .cu files with -fPIC as
        # well (llama-cpp-sys-2 passes it to the C and C++ compilers only).
        export CMAKE_POSITION_INDEPENDENT_CODE=ON
        FEATURES=cuda
        # cuda13 without a CUDA toolkit (nvcc on PATH or CUDA_PATH): assemble CUDA 13
        # from NVIDIA's PyPI wheels (cuda-toolkit.sh says how cuBLAS is then linked).
        if [[ $VARIANT == cuda13 && -z "${CUDA_PATH:-}" ]] && ! command -v nvcc >/dev/null; then
            eval "$("$HERE/cuda-toolkit.sh" "$TARGET_ROOT/cuda-toolkit")"
        fi
        ;;
    rocm6)
        # As for CUDA: the HIP objects go into a shared library (untested here: no ROCm).
        export CMAKE_POSITION_INDEPENDENT_CODE=ON
        FEATURES=rocm ;;
    metal) FEATURES=metal ;;
    *) echo "build-variant.sh: no build recipe for '$VARIANT'" >&2; exit 2 ;;
esac

export CORRAL_LLAMA_VARIANT="$VARIANT"
export RUSTFLAGS="${RUSTFLAGS:-} $RUSTFLAGS_EXTRA"
echo "build-variant.sh: $VARIANT: features=$FEATURES RUSTFLAGS='$RUSTFLAGS' target=$TARGET_DIR" >&2
(
    cd "$REPO"
    # shellcheck disable=SC2086
    cargo build --release -p corral-backend-llama-cpp --no-default-features \
        --features "$FEATURES" --target-dir "$TARGET_DIR" ${CARGO_ARGS:-}
)

case "$(uname -s)" in
    Darwin) LIB=libcorral_backend_llama_cpp.dylib ;;
    *) LIB=libcorral_backend_llama_cpp.so ;;
esac
DEST="$OUTDIR/llama-cpp-$VARIANT"
mkdir -p "$DEST"
install -m 0755 "$TARGET_DIR/release/$LIB" "$DEST/$LIB"
install -m 0644 "$MANIFEST" "$DEST/manifest.toml"
echo "build-variant.sh: installed $DEST/manifest.toml and $DEST/$LIB" >&2
echo "$DEST"
