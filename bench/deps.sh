#!/usr/bin/env bash
# `make bench-deps`: the benchmark's peers, from Debian, idempotently: podman 4.3 and
# runc. (`make deps` has already installed CRIU 4.1.1 in /usr/local/sbin, gcc, zstd and
# busybox-static.)
#
# Why --no-install-recommends: runc recommends Debian's criu 3.17, which fails on this
# kernel; podman and runc must find CRIU 4.1.1 first on PATH (bench/run.py sets PATH so
# /usr/local/sbin comes first, but not installing 3.17 at all removes any doubt).
set -euo pipefail
log() { printf 'bench-deps: %s\n' "$*" >&2; }
if [ "$(id -u)" -ne 0 ]; then
    log "must run as root"
    exit 1
fi
PACKAGES=(podman runc conmon golang-github-containers-common containernetworking-plugins)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "podman and runc: present"
fi
if [ -x /usr/sbin/criu ] || [ -x /usr/bin/criu ]; then
    log "note: a Debian criu is installed too; the bench puts /usr/local/sbin (CRIU 4.1.1) first on PATH"
fi
log "$(podman --version), $(runc --version | head -n1), criu $(/usr/local/sbin/criu --version | awk '/^Version:/ {print $2}')"
