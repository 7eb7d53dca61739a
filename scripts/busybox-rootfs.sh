#!/usr/bin/env bash
# Makes a minimal root filesystem from Debian's busybox-static: /bin/busybox plus one
# symlink per applet, and the usual empty directories. Used by the demo, the tests and
# the benchmark. Usage: busybox-rootfs.sh DIR
set -euo pipefail
dir=${1:?usage: busybox-rootfs.sh DIR}
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "busybox-rootfs: busybox not found (make deps installs busybox-static)" >&2; exit 1; }
mkdir -p "$dir"/{bin,dev,etc,proc,sys,tmp,root,var,run,usr/bin,usr/sbin}
chmod 1777 "$dir/tmp"
install -m 0755 "$busybox" "$dir/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$dir/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$dir/etc/passwd"
echo "root:x:0:" >"$dir/etc/group"
