#!/usr/bin/env bash
# Installs what building and testing corral needs on a fresh Debian machine:
# the C/C++ toolchain for llama.cpp, Vulkan (Mesa's software driver), the reference
# OCI registry for the registry tests, dpkg-dev (dpkg-deb and dpkg-shlibdeps, for
# scripts/dist.sh and its test), a Python venv with the official clients, and the
# official npm clients (tests/js).
# Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

need_apt=()
for pkg in cmake libclang-dev clang build-essential pkg-config git curl \
           docker-registry mesa-vulkan-drivers libvulkan1 vulkan-tools glslc glslang-tools \
           python3-venv dpkg-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# Python clients for the end-to-end API tests, and onnxruntime for the ONNX backend.
venv="${CORRAL_VENV:-$here/target/pyenv}"
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c "import ollama, openai, jsonschema, onnx, onnxruntime, numpy, tokenizers, gguf, jinja2" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$here/tests/python/requirements.txt"
fi
# Node and the official npm clients for tests/js (Node 18 or later; Debian's nodejs when
# none is installed). Installed into tests/js/node_modules from its lock file.
if ! command -v npm >/dev/null 2>&1; then
  echo "installing: nodejs npm"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d "$here/tests/js/node_modules/ollama" ] || [ ! -d "$here/tests/js/node_modules/openai" ]; then
  (cd "$here/tests/js" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "dependencies ready (python venv: $venv; npm clients: tests/js/node_modules)"
