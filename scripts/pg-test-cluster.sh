#!/usr/bin/env bash
# Starts (or reuses) a throwaway PostgreSQL cluster for the store's tests and prints its URL.
#
# The cluster listens on a unix socket in its own directory only (no TCP port, so nothing
# outside this machine can reach it and no port can clash), runs without fsync (test data), and
# survives between runs so that a second `cargo test` does not pay for `initdb` again. Root runs
# the server as the `postgres` user, since PostgreSQL refuses to run as root.
#
#   scripts/pg-test-cluster.sh          start if needed, print the URL
#   scripts/pg-test-cluster.sh stop     stop it
set -euo pipefail

dir=${CONCLAVE_PG_DIR:-/tmp/conclave-test-pg-$(id -u)}
bin=""
for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    bin=$candidate
    break
done
if [ -z "$bin" ]; then
    if command -v pg_ctl >/dev/null 2>&1; then
        bin=$(dirname "$(command -v pg_ctl)")
    else
        echo "no PostgreSQL server binaries found (install Debian's postgresql package)" >&2
        exit 2
    fi
fi

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [ "${1:-start}" = stop ]; then
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    exit 0
fi

mkdir -p "$dir/sock"
if [ "$(id -u)" = 0 ]; then
    chown -R postgres: "$dir"
fi
if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
fi
if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses='' -k $dir/sock -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >/dev/null || { tail -20 "$dir/server.log" >&2; exit 1; }
fi
encoded=$(printf '%s' "$dir/sock" | sed 's|/|%2F|g')
echo "postgres://postgres@$encoded/postgres"
