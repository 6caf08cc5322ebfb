#!/usr/bin/env bash
# dist.sh: a corral distribution. Builds the host and the chosen plugin variants into a
# relocatable prefix and packages each piece as its own tarball and .deb.
#
#   scripts/dist.sh --out DIR --variants cpu-rust,llama-cpp:cpu,llama-cpp:vulkan,onnx,example
#   scripts/dist.sh --out DIR --prebuilt target/debug --variants cpu-rust,example,llama-cpp
#
# Variants (comma-separated):
#   llama-cpp:VARIANT  the llama.cpp plugin, built by backends/llama-cpp/build-variant.sh
#                      (cpu, cpu-x86-64-v3, cpu-x86-64-v4, cpu-x86-64-v4-vnni, vulkan,
#                      cuda12, cuda13, rocm6, metal); a bare `llama-cpp` takes cpu
#   cpu-rust           the pure-Rust CPU engine (one variant: kernels chosen at run time)
#   onnx               the ONNX Runtime engine (CPU execution provider)
#   example            the toy engine of the third-party walk-through
#
# Options:
#   --out DIR          where everything goes (required)
#   --prebuilt DIR     build nothing: take `corral` and the plugins from DIR, a cargo
#                      profile directory (libraries with their NAME.corral-plugin.toml
#                      beside them, as `cargo build` leaves them) or a directory of plugin
#                      directories (build-variant.sh's output); a variant without a
#                      `:VARIANT` takes whichever variant of that plugin DIR holds
#   --onnxruntime FILE ship this libonnxruntime.so beside the ONNX plugin (the plugin
#                      finds a library there; without it the package documents how to
#                      point at one)
#   --no-host          plugins only: no host binary or package (a variant built on
#                      another machine, with its toolkit)
#   --no-deb           tarballs only (no dpkg-deb needed)
#   --no-strip         keep debug symbols
#   --fast             gzip -1 for tarballs and .debs (tests), not xz/gzip -9
#
# Output:
#   DIR/prefix/bin/corral
#   DIR/prefix/lib/corral/backends/<plugin>-<variant>/{manifest.toml, lib*.so}
#   DIR/packages/corral-<version>-linux-<arch>.tar.gz, corral_<version>_<debarch>.deb
#   DIR/packages/corral-backend-<plugin>-<variant>-<version>-linux-<arch>.tar.gz and
#     corral-backend-<plugin>-<variant>_<version>_<debarch>.deb, one pair per plugin
#   DIR/packages/SHA256SUMS
# Tarballs hold paths relative to a prefix (`tar -xzf F -C PREFIX` installs one); .debs
# install to /usr (/usr/bin/corral, /usr/lib/corral/backends/...). The host finds plugins
# in ../lib/corral/backends beside its own executable, so either way works with no config.
#
# Builds run with explicit, portable RUSTFLAGS (CORRAL_DIST_RUSTFLAGS, default none: the
# target's baseline), never the repository's development default (target-cpu=native).
# Target directories: CORRAL_DIST_TARGET (default $CARGO_TARGET_DIR or target/) + /dist
# for the host and the Rust plugins, + /llama-VARIANT for each llama.cpp variant.
# Package metadata: CORRAL_DEB_MAINTAINER (default "corral developers <corral@localhost>").
set -euo pipefail

usage() {
    sed -n '2,46p' "$0" >&2
    exit 2
}

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=""
VARIANTS=""
PREBUILT=""
ORT_LIB=""
HOST=1
DEB=1
STRIP=1
FAST=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --variants) VARIANTS=${2:?--variants needs a list}; shift 2 ;;
        --prebuilt) PREBUILT=${2:?--prebuilt needs a directory}; shift 2 ;;
        --onnxruntime) ORT_LIB=${2:?--onnxruntime needs a file}; shift 2 ;;
        --no-host) HOST=0; shift ;;
        --no-deb) DEB=0; shift ;;
        --no-strip) STRIP=0; shift ;;
        --fast) FAST=1; shift ;;
        -h|--help) usage ;;
        *) echo "dist.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
[[ -n "$OUT" && -n "$VARIANTS" ]] || usage

die() { echo "dist.sh: $*" >&2; exit 1; }
say() { echo "dist.sh: $*" >&2; }

if [[ $DEB == 1 ]] && ! command -v dpkg-deb >/dev/null 2>&1; then
    die "dpkg-deb is missing (apt-get install dpkg), or pass --no-deb for tarballs only"
fi
if [[ -n "$PREBUILT" ]]; then
    [[ -d "$PREBUILT" ]] || die "--prebuilt $PREBUILT is not a directory"
    PREBUILT=$(cd "$PREBUILT" && pwd)
fi
if [[ -n "$ORT_LIB" ]]; then
    [[ -f "$ORT_LIB" ]] || die "--onnxruntime $ORT_LIB is not a file"
    ORT_LIB=$(realpath "$ORT_LIB")
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PREFIX="$OUT/prefix"
PKGS="$OUT/packages"
STAGE="$OUT/stage"
rm -rf "$PREFIX" "$PKGS" "$STAGE"
mkdir -p "$PREFIX/bin" "$PREFIX/lib/corral/backends" "$PKGS" "$STAGE"
BACKENDS="$PREFIX/lib/corral/backends"

case "$(uname -m)" in
    x86_64) ARCH=x86_64 ;;
    aarch64|arm64) ARCH=aarch64 ;;
    *) ARCH=$(uname -m) ;;
esac
if command -v dpkg >/dev/null 2>&1; then DEBARCH=$(dpkg --print-architecture); else
    case "$ARCH" in x86_64) DEBARCH=amd64 ;; aarch64) DEBARCH=arm64 ;; *) DEBARCH=$ARCH ;; esac
fi
MAINTAINER=${CORRAL_DEB_MAINTAINER:-corral developers <corral@localhost>}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}

# A top-level key of a plugin manifest (the manifests are flat `key = "value"` TOML above
# their first table).
manifest_key() {
    sed -n '/^\[/q; s/^'"$2"' *= *"\([^"]*\)".*/\1/p' "$1" | head -n1
}

# --- 1. Build (or find prebuilt) -------------------------------------------------------

# The requested plugins as "spec plugin-name variant" lines.
declare -a SPECS=()
IFS=',' read -r -a REQUESTED <<< "$VARIANTS"
for v in "${REQUESTED[@]}"; do
    v=${v// /}
    [[ -n "$v" ]] || continue
    case "$v" in
        llama-cpp) if [[ -n "$PREBUILT" ]]; then SPECS+=("llama-cpp *"); else SPECS+=("llama-cpp cpu"); fi ;;
        llama-cpp:*) SPECS+=("llama-cpp ${v#llama-cpp:}") ;;
        cpu-rust|cpu-rust:cpu) SPECS+=("cpu cpu") ;;
        onnx|onnx:cpu) SPECS+=("onnx cpu") ;;
        example|example:cpu) SPECS+=("example cpu") ;;
        *) die "unknown variant '$v' (llama-cpp:VARIANT, cpu-rust, onnx, example)" ;;
    esac
done
[[ ${#SPECS[@]} -gt 0 ]] || die "no variants given"

TARGET_ROOT=${CORRAL_DIST_TARGET:-${CARGO_TARGET_DIR:-$REPO/target}}
# Portable builds: RUSTFLAGS set (even empty) replaces the repository's target-cpu=native.
export RUSTFLAGS="${CORRAL_DIST_RUSTFLAGS:-}"
unset CARGO_ENCODED_RUSTFLAGS

# Copies the plugin whose manifest is $1 (a NAME.corral-plugin.toml beside its library or
# a DIR/manifest.toml) into $BACKENDS/<name>-<variant>/.
install_plugin() {
    local manifest=$1 name variant lib dest
    name=$(manifest_key "$manifest" name)
    variant=$(manifest_key "$manifest" variant)
    lib=$(manifest_key "$manifest" library)
    [[ -n "$name" && -n "$variant" && -n "$lib" ]] || die "$manifest: no name, variant or library"
    [[ -f "$(dirname "$manifest")/$lib" ]] || die "$manifest: its library $lib is missing"
    dest="$BACKENDS/$name-$variant"
    mkdir -p "$dest"
    install -m 0644 "$manifest" "$dest/manifest.toml"
    install -m 0755 "$(dirname "$manifest")/$lib" "$dest/$lib"
    say "plugin $name:$variant <- $(dirname "$manifest")"
}

# The manifest in $1 of plugin $2, variant $3 ('*': any); empty when there is none.
find_manifest() {
    local dir=$1 name=$2 variant=$3 m
    for m in "$dir"/*.corral-plugin.toml "$dir"/*/manifest.toml; do
        [[ -f "$m" ]] || continue
        [[ "$(manifest_key "$m" name)" == "$name" ]] || continue
        if [[ "$variant" == '*' || "$(manifest_key "$m" variant)" == "$variant" ]]; then
            echo "$m"
            return
        fi
    done
}

if [[ -n "$PREBUILT" ]]; then
    if [[ $HOST == 1 ]]; then
        [[ -x "$PREBUILT/corral" ]] || die "$PREBUILT/corral is missing (build it first)"
        install -m 0755 "$PREBUILT/corral" "$PREFIX/bin/corral"
    fi
    for s in "${SPECS[@]}"; do
        read -r name variant <<< "$s"
        m=$(find_manifest "$PREBUILT" "$name" "$variant")
        [[ -n "$m" ]] || die "no $name:$variant plugin in $PREBUILT (--prebuilt builds nothing)"
        install_plugin "$m"
    done
else
    # The host and the Rust plugins: one cargo invocation, one target directory.
    packages=()
    if [[ $HOST == 1 ]]; then packages+=(-p corral); fi
    for s in "${SPECS[@]}"; do
        read -r name _ <<< "$s"
        case "$name" in
            cpu) packages+=(-p corral-backend-cpu) ;;
            onnx) packages+=(-p corral-backend-onnx) ;;
            example) packages+=(-p corral-plugin-example) ;;
        esac
    done
    rust_target="$TARGET_ROOT/dist"
    if [[ ${#packages[@]} -gt 0 ]]; then
        say "building ${packages[*]} (release, RUSTFLAGS='$RUSTFLAGS', target $rust_target)"
        start=$SECONDS
        (cd "$REPO" && cargo build --release "${packages[@]}" --target-dir "$rust_target")
        say "built ${packages[*]} in $((SECONDS - start)) s"
    fi
    if [[ $HOST == 1 ]]; then
        install -m 0755 "$rust_target/release/corral" "$PREFIX/bin/corral"
    fi
    for s in "${SPECS[@]}"; do
        read -r name variant <<< "$s"
        case "$name" in
            llama-cpp)
                start=$SECONDS
                LLAMA_TARGET_ROOT="$TARGET_ROOT" "$REPO/backends/llama-cpp/build-variant.sh" \
                    "$variant" "$STAGE/built" >/dev/null
                install_plugin "$STAGE/built/llama-cpp-$variant/manifest.toml"
                say "built llama-cpp:$variant in $((SECONDS - start)) s"
                ;;
            *)
                m=$(find_manifest "$rust_target/release" "$name" "$variant")
                [[ -n "$m" ]] || die "the $name build left no $name:$variant manifest in $rust_target/release"
                install_plugin "$m"
                ;;
        esac
    done
fi
if [[ -n "$ORT_LIB" ]]; then
    [[ -d "$BACKENDS/onnx-cpu" ]] || die "--onnxruntime without the onnx variant"
    install -m 0644 "$ORT_LIB" "$BACKENDS/onnx-cpu/"
fi
if [[ $STRIP == 1 ]] && command -v strip >/dev/null 2>&1; then
    find "$PREFIX" -type f \( -name '*.so' -o -name '*.so.*' -o -path '*/bin/*' \) \
        -exec strip --strip-unneeded {} +
fi

# --- 2. Package -------------------------------------------------------------------------

if [[ $FAST == 1 ]]; then GZIP_LEVEL=1; DEB_Z=(-Zgzip -z1); else GZIP_LEVEL=9; DEB_Z=(-Zxz); fi

# tarball NAME VERSION PATH...: NAME-VERSION-linux-ARCH.tar.gz of PATHs under the prefix.
tarball() {
    local name=$1 version=$2 file
    shift 2
    file="$PKGS/$name-$version-linux-$ARCH.tar.gz"
    tar -C "$PREFIX" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" -cf - "$@" | gzip -n "-$GZIP_LEVEL" > "$file"
}

# The Debian packages a file's shared libraries come from (dpkg-shlibdeps), or nothing
# when it cannot tell (a library that no package owns, such as a CUDA toolkit's).
shlib_depends() {
    local file=$1 tmp deps
    command -v dpkg-shlibdeps >/dev/null 2>&1 || return 0
    tmp=$(mktemp -d)
    mkdir -p "$tmp/debian"
    printf 'Source: corral\n\nPackage: corral\nArchitecture: any\n' > "$tmp/debian/control"
    if deps=$(cd "$tmp" && dpkg-shlibdeps -O --warnings=0 -e"$file" 2>/dev/null); then
        sed -n 's/^shlibs:Depends=//p' <<< "$deps"
    else
        say "warning: dpkg-shlibdeps could not name the packages $(basename "$file") needs"
    fi
    rm -rf "$tmp"
}

# Joins dependency lists, dropping empty entries and repeats of a package name.
join_depends() {
    local IFS=',' item seen="" out=""
    for item in $*; do
        item=$(sed 's/^ *//; s/ *$//' <<< "$item")
        [[ -n "$item" ]] || continue
        local pkg=${item%% *}
        [[ ",$seen," == *",$pkg,"* ]] && continue
        seen="$seen,$pkg"
        out="${out:+$out, }$item"
    done
    echo "$out"
}

# deb PACKAGE VERSION DEPENDS SHORT LONG DOC PATH...: PATHs (under the prefix) under /usr.
deb() {
    local pkg=$1 version=$2 depends=$3 short=$4 long=$5 doc=$6 root size
    shift 6
    [[ $DEB == 1 ]] || return 0
    root="$STAGE/$pkg"
    rm -rf "$root"
    mkdir -p "$root/DEBIAN" "$root/usr/share/doc/$pkg"
    (cd "$PREFIX" && cp -a --parents "$@" "$root/usr/")
    printf '%s\n' "$doc" > "$root/usr/share/doc/$pkg/README"
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    {
        echo "Package: $pkg"
        echo "Version: $version"
        echo "Architecture: $DEBARCH"
        echo "Maintainer: $MAINTAINER"
        echo "Installed-Size: $size"
        [[ -n "$depends" ]] && echo "Depends: $depends"
        echo "Section: utils"
        echo "Priority: optional"
        echo "Description: $short"
        fold -s -w 72 <<< "$long" | sed 's/ *$//; s/^/ /'
    } > "$root/DEBIAN/control"
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    dpkg-deb --root-owner-group "${DEB_Z[@]}" --build "$root" \
        "$PKGS/${pkg}_${version}_${DEBARCH}.deb" >/dev/null
}

# The host.
if [[ $HOST == 1 ]]; then
    VERSION=$("$PREFIX/bin/corral" --version 2>/dev/null | awk '{print $2}')
    [[ -n "$VERSION" ]] || die "$PREFIX/bin/corral --version printed no version"
    tarball corral "$VERSION" bin/corral
    deb corral "$VERSION" "$(join_depends "$(shlib_depends "$PREFIX/bin/corral")")" \
        "run language models on any hardware, engines as plugins" \
        "corral runs language models the way Ollama does (Ollama's, OpenAI's and Anthropic's HTTP APIs, an Ollama-compatible model store) with its inference engines as plugins, which it finds in /usr/lib/corral/backends and chooses at start from the machine's hardware. Install at least one engine package (corral-backend-*)." \
        "corral $VERSION. Engines: the corral-backend-* packages, installed in /usr/lib/corral/backends; \`corral backends\` lists them and says which it chooses and why." \
        bin/corral
fi

# Each plugin.
for dir in "$BACKENDS"/*/; do
    dir=${dir%/}
    id=$(basename "$dir")
    m="$dir/manifest.toml"
    name=$(manifest_key "$m" name)
    variant=$(manifest_key "$m" variant)
    version=$(manifest_key "$m" version)
    desc=$(manifest_key "$m" description)
    lib="$dir/$(manifest_key "$m" library)"
    pkg="corral-backend-$id"
    extra=""
    doc="corral plugin $name:$variant ($desc): /usr/lib/corral/backends/$id. \`corral backends\` shows whether it can run on this machine and whether the host chooses it."
    case "$name:$variant" in
        llama-cpp:vulkan) extra="libvulkan1" ;;
        # llama-cpp-sys-2 links the CUDA runtime and cuBLAS statically (cudart_static,
        # cublas_static, cublasLt_static); what the library loads is the driver's
        # libcuda.so.1, from a driver of CUDA 12 (>= 525.60, the manifest's min_driver):
        # Debian's libcuda1 (non-free), whose virtual libcuda-12.0-1 other builds of the
        # driver provide too.
        llama-cpp:cuda12) extra="libcuda1 (>= 525.60) | libcuda-12.0-1" ;;
        # Built against CUDA 13 from NVIDIA's PyPI wheels (cuda-toolkit.sh): the runtime is
        # static, cuBLAS shared (the wheels carry no static cuBLAS), and no Debian package
        # provides libcublas.so.13.
        llama-cpp:cuda13)
            extra="libcuda1 (>= 580.65) | libcuda-13.0-1"
            doc="$doc It needs the driver of CUDA 13 (>= 580.65) and cuBLAS 13 (libcublas.so.13 and libcublasLt.so.13): NVIDIA's libcublas-13-0 package, the nvidia-cublas wheel's nvidia/cu13/lib on LD_LIBRARY_PATH, or the two libraries copied beside the plugin in /usr/lib/corral/backends/$id/ (its run path includes its own directory)." ;;
        llama-cpp:cpu-native)
            doc="$doc Built for the CPU of the machine that built it (GGML_NATIVE): its manifest requires that CPU's features, so the host will not choose it on another CPU." ;;
        onnx:*)
            if [[ -f "$dir/$(basename "${ORT_LIB:-/nonexistent}")" ]]; then
                doc="$doc It ships ONNX Runtime ($(basename "$ORT_LIB")) beside the plugin."
            else
                doc="$doc It needs ONNX Runtime 1.20 or newer (libonnxruntime.so), which Debian does not package: the plugin looks at the plugin option library_path ([backends.onnx] library_path = \"/opt/onnxruntime/lib\" in /etc/corral/config.toml), then ORT_DYLIB_PATH, then a libonnxruntime.so beside the plugin in /usr/lib/corral/backends/$id/, then the onnxruntime Python package (pip install onnxruntime) in \$CORRAL_VENV or \$VIRTUAL_ENV. Without one, \`corral backends --check\` says the plugin fails to start and why."
            fi ;;
    esac
    depends=$(join_depends "corral, $extra, $(shlib_depends "$lib")")
    tarball "$pkg" "$version" "lib/corral/backends/$id"
    deb "$pkg" "$version" "$depends" "corral engine plugin: $desc" \
        "The $name plugin of corral, variant $variant: $desc. corral finds it in /usr/lib/corral/backends/$id and chooses among the installed engines at start." \
        "$doc" "lib/corral/backends/$id"
done

rm -rf "$STAGE"
(cd "$PKGS" && sha256sum -- * > SHA256SUMS)
say "prefix: $PREFIX"
(cd "$PKGS" && for f in *.tar.gz *.deb; do [[ -f "$f" ]] && printf '%s\t%s\n' "$(du -h "$f" | cut -f1)" "$f"; done) >&2
echo "$OUT"
