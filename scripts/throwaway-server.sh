# Sourced by the scripts that judge a live server (schemathesis.sh, mcp-conformance.sh): starts
# `conclave serve` on a free loopback port in a new project under a folder, and waits for it.
#
# start_throwaway_server BIN WORK: `BIN init` in WORK/project, then `BIN serve` there (its output
# in WORK/server.log). Sets server_pid (the caller's cleanup stops it), url and admin (the admin
# token). Exits 1, with the server's log, when it dies or does not start within 30 s.
start_throwaway_server() {
  local bin=$1 work=$2
  mkdir "$work/project"
  (cd "$work/project" && "$bin" init >/dev/null)
  (cd "$work/project" && exec "$bin" serve --listen 127.0.0.1:0) >"$work/server.log" 2>&1 &
  server_pid=$!
  url=""
  for _ in $(seq 1 300); do
    if [ -f "$work/project/.conclave/server.json" ]; then
      url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' \
        "$work/project/.conclave/server.json" 2>/dev/null || true)
      [ -n "$url" ] && break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "conclave serve died" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$url" ] || { cat "$work/server.log" >&2; echo "conclave serve did not start" >&2; exit 1; }
  admin=$(cat "$work/project/.conclave/admin.token")
}
