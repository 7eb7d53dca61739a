#!/usr/bin/env bash
# Installs everything Ferry needs on a fresh Debian 12 machine, idempotently:
# Debian packages, CRIU 4.1.1 built from Debian 13's source, and a static
# library of CRIU's image descriptors (protobuf-c) so Ferry can read images.
#
# Why CRIU from source: Debian 12's criu 3.17 fails on kernels >= 6.x here
# ("vdso: Unexpected rt vDSO area bounds"); 4.1.1 works.
set -euo pipefail

CRIU_VERSION=4.1.1
CRIU_ORIG_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
PREFIX=/usr/local
CACHE=${FERRY_DEPS_CACHE:-/var/cache/ferry-deps}
STAMP_DIR=$CACHE/stamps
PATCHES=$(cd "$(dirname "$0")" && pwd)/patches
# Which patches the installed criu was built with: a new patch means a rebuild.
PATCH_STAMP=$PREFIX/share/ferry/criu-patches.sha256
PATCH_SUM=$(cat "$PATCHES"/criu-"$CRIU_VERSION"-*.patch 2>/dev/null | sha256sum | cut -d' ' -f1)

log() { printf 'deps: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (installs Debian packages and CRIU under $PREFIX)"
    exit 1
fi
mkdir -p "$CACHE" "$STAMP_DIR"

PACKAGES=(
    build-essential pkg-config git patch
    libarchive-dev libzstd-dev libprotobuf-c-dev protobuf-c-compiler
    libprotobuf-dev protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev
    libcap-dev libbsd-dev libgnutls28-dev libnftables-dev libaio-dev uuid-dev
    libdrm-dev libseccomp-dev asciidoctor- xmlto-
    iproute2 busybox-static iptables nftables kmod zstd xz-utils
)

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        case "$p" in *-) continue ;; esac
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    if [ -z "$missing" ]; then
        log "Debian packages: all present"
        return
    fi
    log "Debian packages: installing $(echo $missing | tr '\n' ' ')"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# The mirror URI configured for this machine, read from its deb822 sources, so
# that no registry host is written in this repository.
mirror_uri() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            /^URIs:/ { uri=$2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) ok=1 }
            /^$/ { if (ok && uri != "") { print uri; exit } ok=0; uri="" }
            END { if (ok && uri != "") print uri }
        ' "$f" | head -n1
    done | grep -v security | head -n1
    if [ -f /etc/apt/sources.list ]; then
        awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' /etc/apt/sources.list
    fi
}

criu_ok() {
    command -v criu >/dev/null 2>&1 || return 1
    local v
    v=$(criu --version 2>/dev/null | awk '/^Version:/ { print $2 }')
    [ -n "$v" ] || return 1
    # 4.1 or later
    awk -v v="$v" 'BEGIN { split(v, a, "."); exit !((a[1] > 4) || (a[1] == 4 && a[2] >= 1)) }'
}

fetch_criu_source() {
    local src=$CACHE/criu-src tarball=criu_${CRIU_VERSION}.orig.tar.xz
    if [ -f "$CACHE/$tarball" ] && echo "$CRIU_ORIG_SHA256  $CACHE/$tarball" | sha256sum -c --status; then
        :
    else
        local uri aptdir
        uri=$(mirror_uri | head -n1)
        if [ -z "$uri" ]; then
            log "cannot find a Debian mirror in /etc/apt/sources.list.d or /etc/apt/sources.list"
            exit 1
        fi
        aptdir=$(mktemp -d)
        mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$aptdir/sources.list.d"
        printf 'deb-src [trusted=yes] %s trixie main\n' "$uri" >"$aptdir/sources.list"
        local opts=(
            -o "Dir::Etc::SourceList=$aptdir/sources.list"
            -o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
            -o "Dir::State::Lists=$aptdir/lists"
            -o "Dir::Cache::Archives=$aptdir/archives"
            -o "APT::Sandbox::User=root"
            -o "Acquire::Check-Valid-Until=false"
        )
        log "fetching criu $CRIU_VERSION source (Debian trixie) with apt-get source"
        apt-get "${opts[@]}" update -qq
        # Only the upstream tarball matters (the .dsc may answer 404), so
        # apt's complaints about the other files are expected and ignored.
        (cd "$aptdir" && apt-get "${opts[@]}" source --download-only -qq criu >/dev/null 2>&1) || true
        if [ ! -f "$aptdir/$tarball" ]; then
            log "apt-get source did not deliver $tarball"
            rm -rf "$aptdir"
            exit 1
        fi
        if ! echo "$CRIU_ORIG_SHA256  $aptdir/$tarball" | sha256sum -c --status; then
            log "sha256 mismatch for $tarball: refusing to build it"
            rm -rf "$aptdir"
            exit 1
        fi
        mv "$aptdir/$tarball" "$CACHE/$tarball"
        rm -rf "$aptdir"
    fi
    # Always from a fresh tree, so that exactly the current patches are in it.
    rm -rf "$src"
    mkdir -p "$src"
    tar -xJf "$CACHE/$tarball" -C "$src" --strip-components=1
    local patch
    for patch in "$PATCHES"/criu-"$CRIU_VERSION"-*.patch; do
        [ -f "$patch" ] || continue
        log "applying $(basename "$patch")"
        patch -d "$src" -p1 --quiet <"$patch" >&2
    done
    echo "$src"
}

build_criu() {
    local src=$1
    log "building criu $CRIU_VERSION"
    make -C "$src" -j"$(nproc)" criu lib >"$CACHE/criu-build.log" 2>&1 || {
        tail -n 30 "$CACHE/criu-build.log" >&2
        exit 1
    }
    install -D -m 0755 "$src/criu/criu" "$PREFIX/sbin/criu"
    install -d "$PREFIX/lib" "$PREFIX/include/criu" "$PREFIX/lib/pkgconfig"
    # The build names it libcriu.so with soname libcriu.so.2.
    install -m 0755 "$src/lib/c/libcriu.so" "$PREFIX/lib/libcriu.so.$CRIU_VERSION"
    ln -sf "libcriu.so.$CRIU_VERSION" "$PREFIX/lib/libcriu.so.2"
    ln -sf "libcriu.so.$CRIU_VERSION" "$PREFIX/lib/libcriu.so"
    install -m 0644 "$src/lib/c/criu.h" "$src/criu/include/version.h" "$PREFIX/include/criu/"
    install -m 0644 "$src/images/rpc.pb-c.h" "$PREFIX/include/criu/"
    install -d "$(dirname "$PATCH_STAMP")"
    echo "$PATCH_SUM" >"$PATCH_STAMP"
    write_pc criu "libcriu: RPC library for CRIU" "-lcriu" "-lprotobuf-c"
    ldconfig
}

write_pc() { # name description libs requires-libs
    cat >"$PREFIX/lib/pkgconfig/$1.pc" <<PC
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include/criu

Name: $1
Description: $2
Version: $CRIU_VERSION
Libs: -L\${libdir} $3 $4
Cflags: -I\${includedir}
PC
}

# CRIU's image descriptors (images/*.proto) compiled with protobuf-c into
# libcriu-images.a, so Ferry can parse pstree, core, mm and stats images.
build_images_lib() {
    local src=$1 work=$CACHE/criu-images
    log "building CRIU image descriptors (protobuf-c)"
    rm -rf "$work"
    mkdir -p "$work/gen"
    # opts.proto imports descriptor.proto, which CRIU ships in images/google.
    (cd "$src/images" && protoc-c --proto_path=. --c_out="$work/gen" ./*.proto \
        google/protobuf/descriptor.proto) 2>"$work/protoc.log" || {
        cat "$work/protoc.log" >&2
        exit 1
    }
    local objs=() c
    for c in "$work"/gen/*.pb-c.c "$work"/gen/google/protobuf/*.pb-c.c; do
        gcc -O2 -fPIC -c -I"$work/gen" "$c" -o "${c%.c}.o"
        objs+=("${c%.c}.o")
    done
    ar rcs "$work/libcriu-images.a" "${objs[@]}"
    install -d "$PREFIX/include/criu/images"
    install -d "$PREFIX/include/criu/images/google/protobuf"
    install -m 0644 "$work"/gen/*.pb-c.h "$PREFIX/include/criu/images/"
    install -m 0644 "$work"/gen/google/protobuf/*.pb-c.h "$PREFIX/include/criu/images/google/protobuf/"
    install -m 0644 "$work/libcriu-images.a" "$PREFIX/lib/"
    write_pc criu-images "CRIU image descriptors (protobuf-c)" "-lcriu-images" "-lprotobuf-c"
    sed -i "s|^Cflags:.*|Cflags: -I\${includedir}/images|" "$PREFIX/lib/pkgconfig/criu-images.pc"
    echo "$CRIU_VERSION" >"$STAMP_DIR/criu-images"
}

install_packages

need_criu=1
criu_ok && [ -f "$PREFIX/include/criu/criu.h" ] && [ -f "$PREFIX/lib/pkgconfig/criu.pc" ] &&
    [ "$(cat "$PATCH_STAMP" 2>/dev/null)" = "$PATCH_SUM" ] && need_criu=0
need_images=1
[ -f "$STAMP_DIR/criu-images" ] && [ -f "$PREFIX/lib/libcriu-images.a" ] && need_images=0

if [ $need_criu = 1 ] || [ $need_images = 1 ]; then
    src=$(fetch_criu_source)
    [ $need_criu = 1 ] && build_criu "$src"
    [ $need_images = 1 ] && build_images_lib "$src"
fi
log "criu: $(criu --version | head -n1)"
log "done"
