#!/usr/bin/env bash
# Runs schemathesis (PyPI, pinned; installed into a venv under the cache folder when missing)
# against /api/openapi.json of a real `conclave serve` on loopback, in a throwaway project, with
# the admin token, for a bounded number of cases per operation. The live event stream is left out
# (it never ends).
#
# Usage: scripts/schemathesis.sh [--strict]
#   --strict (or SCHEMATHESIS_STRICT=1): exit non-zero when schemathesis finds failures. Without
#   it, failures are printed and counted but the script exits 0, so that CI stays green while the
#   server's known schema bugs are being fixed (issue 13); an error of the harness itself (no
#   server, no schemathesis) always fails.
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 10 per operation), SCHEMATHESIS_SEED (default
#   1, for runs that repeat), CONCLAVE_BIN (default target/debug/conclave, built if missing),
#   CONCLAVE_CACHE_DIR (default ~/.cache/conclave).
set -euo pipefail
cd "$(dirname "$0")/.."

strict="${SCHEMATHESIS_STRICT:-0}"
for arg in "$@"; do
  case "$arg" in
    --strict) strict=1 ;;
    *) echo "usage: $0 [--strict]" >&2; exit 2 ;;
  esac
done

SCHEMATHESIS_VERSION=4.32.5
cache="${CONCLAVE_CACHE_DIR:-$HOME/.cache/conclave}"
venv="$cache/schemathesis-$SCHEMATHESIS_VERSION"
if [ ! -x "$venv/bin/schemathesis" ]; then
  mkdir -p "$cache"
  # A bare Debian may lack python3, or its venv module's pip: install them as .ci/run does git.
  command -v python3 >/dev/null || { apt-get update && apt-get install -y python3; }
  if ! python3 -m venv "$venv"; then
    rm -rf "$venv"
    apt-get update && apt-get install -y python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

bin="${CONCLAVE_BIN:-target/debug/conclave}"
[ -x "$bin" ] || cargo build -p conclave-cli --bin conclave
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=scripts/throwaway-server.sh
. scripts/throwaway-server.sh
start_throwaway_server "$bin" "$work"

started=$(date +%s)
set +e
# From the throwaway folder: schemathesis keeps a cache of failures in `.schemathesis/` of its
# working directory, which must not land in the repository.
(cd "$work" && exec "$venv/bin/schemathesis" --no-color run "$url/api/openapi.json" \
  --header "Authorization: Bearer $admin" \
  --exclude-path /api/events/stream \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-10}" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --workers 1 \
  --request-timeout 10) \
  2>&1 | tee "$work/schemathesis.log"
status=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - started))
kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "conclave serve died under schemathesis" >&2; exit 1; }

cases=$(grep -E '^ *[0-9]+ generated' "$work/schemathesis.log" | tail -1 | sed 's/^ *//' || true)
echo "schemathesis: exit $status after ${elapsed}s; test cases: ${cases:-unknown}; strict: $strict"
# One line per failing operation and check, for the CI log's reader.
awk '/^___+ [A-Z]+ \// { op = $2 " " $3 } /^- ST[0-9]+ / && op { sub(/^- /, ""); print "schemathesis: failure: " op ": " $0 }' \
  "$work/schemathesis.log" || true
if [ "$status" -ne 0 ] && [ "$strict" != 1 ]; then
  echo "schemathesis: FAILURES above are known server bugs (issue 13); not failing CI without --strict"
  exit 0
fi
exit "$status"
