#!/usr/bin/env bash
# A throwaway PostgreSQL server for campaign tests and CI, on 127.0.0.1 only; prints its URL.
#   bash scripts/postgres.sh          start (or find already running) the server; print postgresql://... on stdout
#   bash scripts/postgres.sh url      print the URL of the running server (exit 1 if none)
#   bash scripts/postgres.sh stop     stop it and delete its data folder
# The data folder is $PARATUNE_PG_DIR (default /tmp/paratune-pg-$UID); the server listens on a free port
# (or $PARATUNE_PG_PORT) with trust authentication on loopback, so it must stay a test server.
# Installs Debian's postgresql package when initdb/pg_ctl are missing (as root: apt-get). Idempotent: a second
# start prints the same URL. Runs the server as a non-root user (postgres, or nobody) when called as root.
set -euo pipefail
DIR=${PARATUNE_PG_DIR:-/tmp/paratune-pg-$(id -u)}
cmd=${1:-start}

find_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    return 1
}

as_owner() {  # run a command as the user owning the data folder (root may not run the server)
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$PGUSER_OS" -- "$@"
    else
        "$@"
    fi
}

running_url() {
    [ -f "$DIR/url" ] && [ -f "$DIR/data/postmaster.pid" ] || return 1
    as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1 || return 1
    cat "$DIR/url"
}

BIN=$(find_bin || true)
if [ -z "$BIN" ] && [ "$cmd" = start ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "postgres.sh: PostgreSQL is not installed and installing it needs root (apt-get install postgresql)" >&2
        exit 3
    fi
    echo "postgres.sh: installing Debian's postgresql..." >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q postgresql; } >&2 || {
        echo "postgres.sh: could not install postgresql with apt-get" >&2; exit 3; }
    BIN=$(find_bin) || { echo "postgres.sh: postgresql installed but no initdb/pg_ctl found" >&2; exit 3; }
fi
if [ "$(id -u)" = 0 ]; then
    if id postgres >/dev/null 2>&1; then PGUSER_OS=postgres; else PGUSER_OS=nobody; fi
fi

case "$cmd" in
    url)
        [ -n "$BIN" ] && running_url || { echo "postgres.sh: no server running in $DIR" >&2; exit 1; }
        ;;
    stop)
        if [ -n "$BIN" ] && [ -f "$DIR/data/postmaster.pid" ]; then
            as_owner "$BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        rm -rf "$DIR"
        ;;
    start)
        if running_url; then exit 0; fi
        rm -rf "$DIR"
        mkdir -p "$DIR"
        chmod 700 "$DIR"
        [ "$(id -u)" = 0 ] && chown "$PGUSER_OS" "$DIR"
        port=${PARATUNE_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
        as_owner "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1 || {
            cat "$DIR/initdb.log" >&2; exit 4; }
        # fsync off: a test server trades durability for speed; it never holds data worth keeping.
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 30 start \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $DIR -c fsync=off -c max_connections=200" >/dev/null || {
            cat "$DIR/server.log" >&2; exit 4; }
        echo "postgresql://postgres@127.0.0.1:$port/postgres" | as_owner tee "$DIR/url"
        ;;
    *)
        echo "usage: bash scripts/postgres.sh [start|url|stop]" >&2
        exit 2
        ;;
esac
