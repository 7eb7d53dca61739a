#!/usr/bin/env bash
# Runs Ferry's tests as two `swift test` processes, one after the other:
#   unit:        every target but FerryIntegrationTests (no root needed; the few
#                real-kernel tests that need root enable themselves when run as root)
#   integration: FerryIntegrationTests, which drive the built `ferry` as root with real
#                CRIU on the real kernel
# Two processes so that neither kind can hold the other's threads. Each prints a one-line
# summary; the last line adds both up. Exits non-zero if either fails.
#
# Usage: scripts/test.sh [unit|integration]... (default: both). Expects a finished
# `swift build --build-tests`. SWIFT and BUILD_FLAGS as in the Makefile.
set -uo pipefail
cd "$(dirname "$0")/.."

SWIFT=${SWIFT:-swift}
read -r -a FLAGS <<<"${BUILD_FLAGS:-}"
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(unit integration)

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

total_passed=0
total_failed=0
total_skipped=0
status=0
summaries=()

for kind in "${kinds[@]}"; do
    case "$kind" in
        unit) selection=(--skip FerryIntegrationTests) ;;
        integration) selection=(--filter FerryIntegrationTests) ;;
        *) echo "test.sh: unknown kind '$kind' (unit or integration)" >&2; exit 2 ;;
    esac
    log="$logs/$kind.log"
    started=$(date +%s)
    echo "== $kind tests"
    "$SWIFT" test --skip-build "${FLAGS[@]}" "${selection[@]}" 2>&1 | tee "$log"
    code=${PIPESTATUS[0]}
    seconds=$(( $(date +%s) - started ))
    # Swift Testing prints one line per test function: passed, failed or skipped.
    passed=$(grep -cE '^. Test .* passed after ' "$log" | head -n1)
    failed=$(grep -E '^. Test .* failed after ' "$log" | grep -vc '^. Test run with ')
    skipped=$(grep -cE '^. Test .* skipped(\.$|: )' "$log")
    passed=$(( passed - $(grep -cE '^. Test run with .* passed after ' "$log") ))
    if [ "$code" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
    total_passed=$(( total_passed + passed ))
    total_failed=$(( total_failed + failed ))
    total_skipped=$(( total_skipped + skipped ))
    verdict=passed
    if [ "$code" -ne 0 ]; then verdict="FAILED (exit $code)"; status=1; fi
    summaries+=("$kind tests $verdict in ${seconds} s: $passed passed, $failed failed, $skipped skipped")
done

echo
for line in "${summaries[@]}"; do echo "$line"; done
echo "total: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit $status
