#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real server processes on loopback) and
# end-to-end tests with the real Claude Code CLI (installed, pinned, into a cache folder when
# CONCLAVE_CLAUDE_BIN is unset; npm must be on PATH), then the dashboard's browser tests
# (tests/browser/, headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
# Two cores: the end-to-end tests serialize themselves; the rest runs in parallel.
cargo test --workspace --all-targets "$@"
# The dashboard in a real headless Chromium (/usr/bin/chromium) against target/debug/conclave;
# skipped without Chromium, except under CI=true. Screenshots land in tests/browser/artifacts/.
(cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } && npm test)
