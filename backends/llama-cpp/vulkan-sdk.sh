#!/usr/bin/env bash
# vulkan-sdk.sh DIR: a header-only "Vulkan SDK" for building llama.cpp's Vulkan backend on
# Debian 12, whose Vulkan headers are too old for llama.cpp (no VK_EXT_layer_settings).
#
# It downloads Debian 13's libvulkan-dev and spirv-headers packages with apt-get download,
# through a private apt state in DIR/apt whose sources are the machine's own Debian sources
# with the suite changed from bookworm to trixie (so no mirror is named here), unpacks them
# with dpkg -x into DIR/root, links DIR/root/usr/lib/libvulkan.so to the system's loader
# (libvulkan1), and prints the environment a build needs:
#
#   eval "$(backends/llama-cpp/vulkan-sdk.sh target/vulkan-sdk)"
#
# Needs: apt-get, dpkg, the system packages libvulkan1 and glslc. Idempotent: a second run
# with the headers already unpacked only prints the environment.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR=$(realpath -m "$1")
ROOT="$DIR/root"
SUITE_FROM=${SUITE_FROM:-bookworm}
SUITE_TO=${SUITE_TO:-trixie}

print_env() {
    echo "export VULKAN_SDK='$ROOT/usr'"
    echo "export CMAKE_PREFIX_PATH='$ROOT/usr'${CMAKE_PREFIX_PATH:+:'$CMAKE_PREFIX_PATH'}"
    echo "export CPATH='$ROOT/usr/include'${CPATH:+:'$CPATH'}"
}

if [[ -f "$ROOT/usr/include/vulkan/vulkan.hpp" && -f "$ROOT/.complete" ]]; then
    print_env
    exit 0
fi

APT="$DIR/apt"
mkdir -p "$APT/sources.list.d" "$APT/lists/partial" "$APT/cache/archives/partial" \
    "$DIR/debs" "$ROOT"
rm -f "$APT/sources.list.d/"*

# The machine's own Debian sources, moved to the newer suite.
n=0
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    grep -q "$SUITE_FROM" "$f" || continue
    grep -qi debian "$f" || continue
    sed "s/\b$SUITE_FROM\b/$SUITE_TO/g; s/\b$SUITE_FROM-/$SUITE_TO-/g" "$f" \
        > "$APT/sources.list.d/$(basename "$f")"
    n=$((n + 1))
done
if [[ $n -eq 0 ]]; then
    echo "vulkan-sdk.sh: no Debian apt source naming '$SUITE_FROM' found in /etc/apt" >&2
    exit 1
fi
: > "$APT/sources.list"

APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT/sources.list"
    -o "Dir::Etc::SourceParts=$APT/sources.list.d"
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::Cache=$APT/cache"
    -o "Dir::State::status=/var/lib/dpkg/status"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
)
echo "vulkan-sdk.sh: fetching the $SUITE_TO package lists into $APT" >&2
apt-get "${APT_OPTS[@]}" -qq update >&2
(
    cd "$DIR/debs"
    apt-get "${APT_OPTS[@]}" -qq download libvulkan-dev spirv-headers >&2
)
for deb in "$DIR/debs"/*.deb; do
    dpkg -x "$deb" "$ROOT"
done

# The loader to link against: the system's libvulkan1.
LOADER=$(ls /usr/lib/*-linux-gnu/libvulkan.so.1 /usr/lib/libvulkan.so.1 2>/dev/null | head -n1 || true)
if [[ -z "$LOADER" ]]; then
    echo "vulkan-sdk.sh: libvulkan.so.1 not found; install libvulkan1" >&2
    exit 1
fi
mkdir -p "$ROOT/usr/lib"
ln -sf "$LOADER" "$ROOT/usr/lib/libvulkan.so"
# Remove the package's own relative symlinks that point at a loader not unpacked here.
find "$ROOT/usr/lib" -mindepth 2 -name 'libvulkan.so' -type l -delete 2>/dev/null || true
touch "$ROOT/.complete"
echo "vulkan-sdk.sh: headers in $ROOT/usr/include, loader $LOADER" >&2
print_env
