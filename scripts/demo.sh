#!/usr/bin/env bash
# `make demo`: Ferry's main job on one machine. A counter container runs on "host A"
# (one state root), is checkpointed into an export archive, removed, imported on "host B"
# (a second state root) under a new name, and goes on counting from where it stopped.
# Everything lives in a temporary directory that is removed at the end.
set -euo pipefail
ferry=$(realpath "${1:-.build/debug/ferry}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /var/tmp/ferry-demo.XXXXXX)
A=(--root "$work/host-a")
B=(--root "$work/host-b")
C=(--root "$work/host-c")
agent=
cleanup() {
    if [ -n "$agent" ]; then kill "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; fi
    "$ferry" "${A[@]}" rm -f counter >/dev/null 2>&1 || true
    "$ferry" "${B[@]}" rm -f counter2 >/dev/null 2>&1 || true
    "$ferry" "${C[@]}" rm -f counter2 >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() {
    step "ferry $*"
    "$ferry" "$@"
}

bash "$here/busybox-rootfs.sh" "$work/busybox" >/dev/null
run check || true
run "${A[@]}" image import "$work/busybox" busybox:latest
run "${A[@]}" run -d --name counter -v counter-data:/data --memory 64m busybox:latest \
    sh -c 'i=0; while true; do i=$((i+1)); echo "count $i"; echo $i > /data/count; sleep 0.2; done'
sleep 2
run "${A[@]}" ps
run "${A[@]}" logs counter
run "${A[@]}" exec counter cat /data/count

run "${A[@]}" checkpoint --export "$work/counter.tar.zst" --print-stats counter
run "${A[@]}" archive inspect "$work/counter.tar.zst"
run "${A[@]}" rm counter

printf '\n# Host B has the same base image (same content, same digest) but nothing else.\n'
run "${B[@]}" image import "$work/busybox" busybox:latest
run "${B[@]}" restore --import "$work/counter.tar.zst" --name counter2 --print-stats
sleep 1
run "${B[@]}" logs counter2
run "${B[@]}" ps
before=$("$ferry" "${B[@]}" exec counter2 cat /data/count)
sleep 1
after=$("$ferry" "${B[@]}" exec counter2 cat /data/count)
printf '\nThe counter went on from where it stopped on host A: %s, one second later %s.\n' "$before" "$after"

printf '\n# Live migration: host C runs the receiving agent; the container moves B -> C while running.\n'
head -c 32 /dev/urandom | base64 >"$work/token"
step "ferry --root $work/host-c serve --listen 127.0.0.1:17070 --token-file $work/token &"
"$ferry" "${C[@]}" serve --listen 127.0.0.1:17070 --token-file "$work/token" &
agent=$!
sleep 1
run "${B[@]}" migrate counter2 --to 127.0.0.1:17070 --token-file "$work/token"
run "${B[@]}" ps -a
run "${C[@]}" ps
sleep 1
run "${C[@]}" logs counter2
run "${C[@]}" stop -t 1 counter2
run "${C[@]}" rm counter2
printf '\nDemo finished; %s is removed.\n' "$work"
