#!/usr/bin/env bash
# `make demo`: a counter container run by Ferry, shown working. Everything lives in a
# temporary state root that is removed at the end.
set -euo pipefail
ferry=$(realpath "${1:-.build/debug/ferry}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /var/tmp/ferry-demo.XXXXXX)
export FERRY_ROOT=$work/root
cleanup() {
    "$ferry" rm -f counter >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "$*"; "$@"; }

bash "$here/busybox-rootfs.sh" "$work/busybox" >/dev/null
run "$ferry" check || true
run "$ferry" image import "$work/busybox" busybox:latest
run "$ferry" image ls
run "$ferry" volume create counter-data
run "$ferry" run -d --name counter -v counter-data:/data --memory 64m busybox:latest \
    sh -c 'i=0; while true; do i=$((i+1)); echo "count $i"; echo $i > /data/count; sleep 0.2; done'
sleep 1.5
run "$ferry" ps
run "$ferry" logs counter
run "$ferry" exec counter cat /data/count
run "$ferry" exec counter ps
run "$ferry" stop -t 1 counter
run "$ferry" ps -a --format json
run "$ferry" rm counter
run "$ferry" volume rm counter-data
printf '\nDemo finished: the state root %s is removed.\n' "$FERRY_ROOT"
