#!/usr/bin/env bash
# `make test` while another process keeps one core busy: the suite must pass on a loaded
# machine too (a loaded host makes things slower, never wrong). The hog is bounded: it
# ends by itself after STRESS_SECONDS (default 1800) even if this script is killed, and
# is ended by its pid as soon as the tests are done.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${STRESS_SECONDS:-1800}
timeout --signal=KILL "$seconds" bash -c 'while :; do :; done' &
hog=$!
trap 'kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null' EXIT
echo "test-stress: a CPU hog (pid $hog, at most $seconds s) keeps one core busy"

bash scripts/test.sh "$@"
