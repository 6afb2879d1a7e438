#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real server processes on loopback) and
# end-to-end tests with the real Claude Code CLI (installed, pinned, into a cache folder when
# CONCLAVE_CLAUDE_BIN is unset; npm must be on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
# Two cores: the end-to-end tests serialize themselves; the rest runs in parallel.
exec cargo test --workspace --all-targets "$@"
