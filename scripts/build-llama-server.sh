#!/usr/bin/env bash
# Builds llama-server, the peer of the serving benchmarks (tests/bench/vs_llama_server.py),
# from the llama.cpp that llama-cpp-python's source package on PyPI vendors whole:
#   scripts/build-llama-server.sh [OUT_DIR]     (default /var/tmp/llama-server)
# prints the path of the binary. Native CPU flags (a plain Release build), as the issue's
# figures were taken. Needs cmake, a C++ compiler and pip; downloads only from PyPI.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
out="${1:-/var/tmp/llama-server}"
bin="$out/build/bin/llama-server"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$out"
python="${PYTHON:-python3}"
sdist="$out/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  "$python" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$version" -d "$out" >&2
fi
src="$out/llama_cpp_python-$version/vendor/llama.cpp"
[ -d "$src" ] || tar -xzf "$sdist" -C "$out"
cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$out/build" --target llama-server -j "$(nproc)" >&2
echo "$bin"
