#!/usr/bin/env bash
# cuda-toolkit.sh DIR: a CUDA 13 toolkit for building the cuda13 variant of the llama.cpp
# plugin on a machine without NVIDIA's installer, assembled from NVIDIA's own PyPI wheels
# (nvcc, cicc, the CRT and CCCL headers, the CUDA runtime and cuBLAS).
#
# It downloads the pinned wheels with `pip download` into DIR/wheels, unpacks their
# nvidia/cu13 trees into DIR/root, gives the tree the layout CMake's FindCUDAToolkit and
# llama-cpp-sys-2 look for (lib64, targets/x86_64-linux, unversioned .so links), and prints
# the environment a build needs:
#
#   eval "$(backends/llama-cpp/cuda-toolkit.sh target/cuda-toolkit)"
#
# PyPI ships cuBLAS as shared libraries only, while llama-cpp-sys-2 links cublas_static,
# cublasLt_static and culibos on Linux. Empty archives of those names stand in, and
# CORRAL_CUDA_SHARED_CUBLAS (printed below) makes the plugin's build.rs link it to
# libcublas.so.13 (which loads libcublasLt.so.13) instead, and to the driver's
# libcuda.so.1 through a link-time stub, since no driver is installed here. The plugin
# then needs cuBLAS 13 at run time: NVIDIA's libcublas-13-0 package (Debian has none),
# the nvidia-cublas wheel's nvidia/cu13/lib on LD_LIBRARY_PATH, or the two libraries
# beside the plugin. The CUDA runtime stays static (libcudart_static.a is in the wheel).
#
# Needs: python3 with pip, unzip, gcc, ar. Idempotent: a second run with the toolkit
# assembled only prints the environment.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR=$(realpath -m "$1")
ROOT="$DIR/root"

print_env() {
    echo "export CUDA_PATH='$ROOT'"
    echo "export CUDAToolkit_ROOT='$ROOT'"
    # Where llama-cpp-sys-2 (find_cuda_helper) looks for lib64/libcudart_static.a.
    echo "export CUDA_LIBRARY_PATH='$ROOT'"
    echo "export CMAKE_CUDA_COMPILER='$ROOT/bin/nvcc'"
    echo "export PATH='$ROOT/bin':\"\$PATH\""
    # build.rs links the plugin to the shared cuBLAS of this directory (see the header).
    echo "export CORRAL_CUDA_SHARED_CUBLAS='$ROOT/lib64'"
}

if [[ -x "$ROOT/bin/nvcc" && -f "$ROOT/.complete" ]]; then
    print_env
    exit 0
fi

WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.1.2.11
)
mkdir -p "$DIR/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    --platform manylinux2010_x86_64 -d "$DIR/wheels" "${WHEELS[@]}" >&2

rm -rf "$ROOT" "$DIR/unpack"
mkdir -p "$DIR/unpack"
for w in "$DIR"/wheels/*.whl; do
    unzip -q -o "$w" 'nvidia/cu13/*' -d "$DIR/unpack"
done
mv "$DIR/unpack/nvidia/cu13" "$ROOT"
rm -rf "$DIR/unpack"

cd "$ROOT"
ln -s lib lib64
mkdir -p targets/x86_64-linux
ln -s ../../include targets/x86_64-linux/include
ln -s ../../lib targets/x86_64-linux/lib
cd lib
for l in cublas cublasLt cudart; do
    ln -sf "lib$l.so.13" "lib$l.so"
done
# Stand-ins for the static archives llama-cpp-sys-2 names (see the header).
for a in cublas_static cublasLt_static culibos; do
    rm -f "lib$a.a"
    ar rc "lib$a.a"
done
mkdir -p stubs
# The link-time stub of the driver's libcuda.so.1 defines every driver function cuda.h
# names (as void functions: only the names matter to the linker; the real driver
# provides them at run time), so executables (llama-raw, tests) link too.
grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$ROOT/include/cuda.h" | sort -u \
    | sed 's/.*/void &(void) {}/' >"$DIR/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so "$DIR/stub.c"
rm -f "$DIR/stub.c"
touch "$ROOT/.complete"
print_env
