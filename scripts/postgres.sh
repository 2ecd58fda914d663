#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests, CI, benchmarks and the streaming job.
#
#   scripts/postgres.sh start [DIR]        install if missing, initdb if needed, start; prints the base URL
#   scripts/postgres.sh url [DIR]          prints the base URL of the running server
#   scripts/postgres.sh createdb NAME [DIR] creates database NAME (idempotent); prints its URL
#   scripts/postgres.sh stop [DIR]         stops the server and removes DIR
#
# DIR defaults to ${CLICKSTAY_PG_DIR:-/tmp/clickstay-pg}. The only thing written to stdout is the
# URL (postgres://postgres@127.0.0.1:PORT/DB); everything else goes to stderr.
#
# Settings (read at every start, so a restart picks them up):
#   CLICKSTAY_PG_FSYNC=off|on            fsync and synchronous_commit (default off: fast, not durable)
#   CLICKSTAY_PG_SHARED_BUFFERS=256MB    shared_buffers
#   CLICKSTAY_PG_MAX_CONNECTIONS=600     max_connections
# The server listens on 127.0.0.1 only, trusts local TCP connections, and is ready for logical
# decoding (wal_level=logical, replication slots and WAL senders) and two-phase commit.
set -euo pipefail

PG_BIN=${CLICKSTAY_PG_BIN:-/usr/lib/postgresql/15/bin}

die() { echo "postgres.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Runs a server binary as the `postgres` user when we are root (the server refuses root).
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install_if_missing() {
    if [ ! -x "$PG_BIN/initdb" ]; then
        [ "$(id -u)" = 0 ] || die "$PG_BIN/initdb is missing and only root can apt-get install postgresql"
        echo "postgres.sh: installing postgresql with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update >&2
        apt-get install -y postgresql >&2
        [ -x "$PG_BIN/initdb" ] || die "apt-get installed postgresql but $PG_BIN/initdb is still missing (set CLICKSTAY_PG_BIN)"
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$(( 20000 + RANDOM % 40000 ))
        if port_is_free "$port"; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found on 127.0.0.1"
}

is_running() {
    [ -f "$DIR/data/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" status -D "$DIR/data" >/dev/null 2>&1
}

url_for() {
    echo "postgres://postgres@127.0.0.1:$(cat "$DIR/port")/$1"
}

write_settings() {
    local fsync=${CLICKSTAY_PG_FSYNC:-off}
    case "$fsync" in on|off) ;; *) die "CLICKSTAY_PG_FSYNC must be on or off, got '$fsync'" ;; esac
    cat > "$DIR/data/clickstay.conf" <<EOF
# Written by scripts/postgres.sh at every start.
listen_addresses = '127.0.0.1'
port = $(cat "$DIR/port")
unix_socket_directories = '$DIR'
max_connections = ${CLICKSTAY_PG_MAX_CONNECTIONS:-600}
shared_buffers = '${CLICKSTAY_PG_SHARED_BUFFERS:-256MB}'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_prepared_transactions = 256
fsync = $fsync
synchronous_commit = $fsync
full_page_writes = $fsync
max_wal_size = '4GB'
checkpoint_timeout = '15min'
log_min_messages = warning
EOF
    [ "$(id -u)" = 0 ] && chown postgres "$DIR/data/clickstay.conf"
    return 0
}

start() {
    install_if_missing
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR"
    # Serialise concurrent starts for the same DIR (parallel tests may all call `start`).
    exec 9>"$DIR.lock"
    flock 9
    if is_running; then
        url_for postgres
        return
    fi
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
        as_owner "$PG_BIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >&2 \
            || as_owner "$PG_BIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C >&2
        echo "include_if_exists = 'clickstay.conf'" | as_owner tee -a "$DIR/data/postgresql.conf" >/dev/null
    fi
    pick_free_port > "$DIR/port"
    write_settings
    as_owner "$PG_BIN/pg_ctl" start -w -t 60 -D "$DIR/data" -l "$DIR/server.log" >&2 9>&- \
        || { tail -n 30 "$DIR/server.log" >&2 || true; die "the server in $DIR did not start (log: $DIR/server.log)"; }
    for _ in $(seq 1 60); do
        if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$(cat "$DIR/port")"; then
            url_for postgres
            return
        fi
        sleep 0.5
    done
    die "the server in $DIR is not accepting connections (log: $DIR/server.log)"
}

url() {
    is_running || die "no server running in $DIR (run: $0 start $DIR)"
    url_for postgres
}

database_exists() {
    [ "$(echo "SELECT 1 FROM pg_database WHERE datname = :'name'" \
        | "$PG_BIN/psql" -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atq -v name="$2")" = 1 ]
}

createdb() {
    local name=$1
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "database name '$name' must be letters, digits and _"
    is_running || die "no server running in $DIR (run: $0 start $DIR)"
    local port
    port=$(cat "$DIR/port")
    database_exists "$port" "$name" \
        || "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$name" 2>/dev/null \
        || database_exists "$port" "$name" \
        || die "cannot create database $name"
    url_for "$name"
}

stop() {
    if is_running; then
        as_owner "$PG_BIN/pg_ctl" stop -m fast -w -D "$DIR/data" >&2
    fi
    rm -rf "$DIR" "$DIR.lock"
}

command=${1:-}
case "$command" in
    start|url|stop)
        DIR=${2:-${CLICKSTAY_PG_DIR:-/tmp/clickstay-pg}}
        "$command"
        ;;
    createdb)
        [ -n "${2:-}" ] || usage
        DIR=${3:-${CLICKSTAY_PG_DIR:-/tmp/clickstay-pg}}
        createdb "$2"
        ;;
    *) usage ;;
esac
