#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real server processes on loopback) and
# end-to-end tests with the real Claude Code CLI (installed, pinned, into a cache folder when
# CONCLAVE_CLAUDE_BIN is unset; npm must be on PATH), then the dashboard's browser tests
# (tests/browser/, headless Chromium). Ends with one line adding up every runner's counts.
# The fault suite (crates/conclave-cli/tests/faults) and the fuzzers (tests/fuzz, proptest in the
# crates) run here with bounded counts; for a long run set CONCLAVE_FAULT_ROUNDS (SIGKILL rounds,
# default 3) and PROPTEST_CASES (cases per property, default 64 for the API fuzzer, 256 elsewhere).
# .ci/run also runs scripts/schemathesis.sh against a live server.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo build --workspace --all-targets
# Two cores: the end-to-end tests serialize themselves; the rest runs in parallel.
cargo test --workspace --all-targets "$@" 2>&1 | tee -a "$log"
# The dashboard in a real headless Chromium (/usr/bin/chromium) against target/debug/conclave;
# skipped without Chromium, except under CI=true. Screenshots land in tests/browser/artifacts/.
(cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } && npm test) 2>&1 | tee -a "$log"
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
node_passed=$(grep -Eo '^# pass [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
node_failed=$(grep -Eo '^# fail [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
echo "summary: $((passed + node_passed)) passed, $((failed + node_failed)) failed"
