#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real server processes on loopback) and
# end-to-end tests with the real Claude Code CLI (installed, pinned, into a cache folder when
# CONCLAVE_CLAUDE_BIN is unset; npm must be on PATH), then the dashboard's browser tests
# (tests/browser/, headless Chromium). Ends with one line adding up every runner's counts:
# `summary: N passed, N failed, N skipped`, a skipped test (no CLI, no Chromium) not counted
# as passed.
# The fault suite (crates/conclave-cli/tests/faults) and the fuzzers (tests/fuzz, proptest in the
# crates) run here with bounded counts; for a long run set CONCLAVE_FAULT_ROUNDS (SIGKILL rounds,
# default 3) and PROPTEST_CASES (cases per property, default 64 for the API fuzzer, 256 elsewhere).
# .ci/run also runs scripts/schemathesis.sh against a live server.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
# A Rust test that skips passes for cargo; it appends one line to this file (claude_or_skip).
export CONCLAVE_SKIP_LOG
CONCLAVE_SKIP_LOG=$(mktemp)
trap 'rm -f "$log" "$CONCLAVE_SKIP_LOG"' EXIT
cargo build --workspace --all-targets
# Two cores: the end-to-end tests serialize themselves; the rest runs in parallel.
# A failing runner does not stop the next one: the summary counts them all, then the exit
# status says whether any failed.
status=0
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee -a "$log" || status=1
# The dashboard in a real headless Chromium (/usr/bin/chromium) against target/debug/conclave;
# skipped without Chromium, except under CI=true. Screenshots land in tests/browser/artifacts/.
(cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } && npm test) 2>&1 | tee -a "$log" || status=1
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
node_passed=$(grep -Eo '^# pass [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
node_failed=$(grep -Eo '^# fail [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
node_skipped=$(grep -Eo '^# skipped [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
skipped=$(wc -l < "$CONCLAVE_SKIP_LOG")
if [ "$skipped" -gt 0 ]; then
  echo "skipped Rust tests:"
  sed 's/^/  /' "$CONCLAVE_SKIP_LOG"
fi
# node's runner counts its skips apart from its passes already; cargo counts ours as passed.
echo "summary: $((passed - skipped + node_passed)) passed, $((failed + node_failed)) failed, $((skipped + node_skipped)) skipped"
exit "$status"
