#!/usr/bin/env bash
# Runs the main job: the streaming ad-click aggregation, Kafka in, PostgreSQL out; and the demos.
#
#   scripts/run.sh                   demo: when no broker / database is configured, starts a
#                                    throwaway PostgreSQL and Kafka-protocol broker (tansu),
#                                    produces 1,000,000 sample events, runs the job until the
#                                    topic is quiet (its dashboard's URL printed), prints the top
#                                    ads, stops what it started
#   scripts/run.sh --serve           the same, but the job keeps serving its dashboard and query
#                                    API until Ctrl-C
#   scripts/run.sh rooms             the hotel side's demo: a throwaway PostgreSQL with 2 shards,
#                                    a small seeded inventory, `rooms serve` with the view and the
#                                    dashboard (URL printed), a short booking load; Ctrl-C stops all
#   scripts/run.sh replay FILE       the batch path: replay a file of events into out/results/
#
# Point it at your own services with CLICKSTAY_KAFKA_BROKERS and CLICKSTAY_CLICKS_DB (or the
# [kafka] and [postgres] sections of workers.toml); then it runs the job until interrupted.
# CLICKSTAY_DEMO_LISTEN (default 127.0.0.1:8080) is where the dashboards and APIs listen.
# Installs what is missing and builds first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
bin=$PWD/target/release/clickstay
mkdir -p out

if [ "${1:-}" = replay ]; then
    shift
    input=${1:-out/sample-events.csv}; shift || true
    [ -f "$input" ] || "$bin" gen --events 1000000 --seed 42 --out "$input"
    exec "$bin" replay --dataflow dataflows/ad_clicks.toml --input "$input" --out out/results -w 2 "$@"
fi

listen=${CLICKSTAY_DEMO_LISTEN:-127.0.0.1:8080}
started=()
children=()
cleanup() {
    for child in "${children[@]}"; do kill -TERM "$child" 2>/dev/null || true; done
    for child in "${children[@]}"; do wait "$child" 2>/dev/null || true; done
    for service in "${started[@]}"; do scripts/$service stop "out/$service.d" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
# Ctrl-C or SIGTERM: the EXIT trap stops the children and the throwaway services.
trap 'exit 130' INT TERM

# Runs a command in the background (so that a signal reaches this script at once) and waits.
run_child() {
    "$@" &
    children+=($!)
    wait $!
}

# Waits until URL answers (at most a minute).
wait_for() {
    for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "run: $1 did not answer within a minute" >&2
    return 1
}

if [ "${1:-}" = rooms ]; then
    scripts/postgres.sh start "$PWD/out/postgres.sh.d" >/dev/null; started+=(postgres.sh)
    CLICKSTAY_HOTEL_SHARDS="$(scripts/postgres.sh createdb hotels0 "$PWD/out/postgres.sh.d"),$(scripts/postgres.sh createdb hotels1 "$PWD/out/postgres.sh.d")"
    export CLICKSTAY_HOTEL_SHARDS
    "$bin" rooms migrate >/dev/null
    # 10 hotels of about 30 rooms: the booking load fills hotel 1's first nights.
    "$bin" rooms seed --hotels 10 --rooms 300 --days 30 --occupancy 0.1 --seed 1 --replace
    "$bin" rooms serve --dataflow dataflows/rooms.toml -w 2 --listen "$listen" &
    children+=($!); serve=$!
    wait_for "http://$listen/healthz"
    echo "rooms: dashboard at http://$listen/?hotel=1 (Ctrl-C stops everything)" >&2
    scripts/rooms-load.sh "http://$listen" 300 10 &
    children+=($!)
    wait $serve
    exit
fi

serve=false
if [ "${1:-}" = --serve ]; then
    serve=true
    shift
fi

demo=false
if [ -z "${CLICKSTAY_KAFKA_BROKERS:-}" ] && ! grep -q '^\[kafka\]' workers.toml; then
    CLICKSTAY_KAFKA_BROKERS=$(scripts/broker.sh start "$PWD/out/broker.sh.d"); started+=(broker.sh); demo=true
    export CLICKSTAY_KAFKA_BROKERS
fi
if [ -z "${CLICKSTAY_CLICKS_DB:-}" ] && ! grep -q '^clicks *=' workers.toml; then
    scripts/postgres.sh start "$PWD/out/postgres.sh.d" >/dev/null; started+=(postgres.sh); demo=true
    CLICKSTAY_CLICKS_DB=$(scripts/postgres.sh createdb clicks "$PWD/out/postgres.sh.d")
    export CLICKSTAY_CLICKS_DB
fi
echo "run: broker $CLICKSTAY_KAFKA_BROKERS, results in $CLICKSTAY_CLICKS_DB" >&2

job=("$bin" run --dataflow dataflows/ad_clicks.toml --config workers.toml -w 2 --archive out/archive --listen "$listen")
echo "run: dashboard at http://$listen/ (query API and /metrics there too)" >&2
if $demo; then
    "$bin" produce --config workers.toml --events 1000000 --rate 0 --seed 42
    if $serve; then
        echo "run: serving until Ctrl-C" >&2
        run_child "${job[@]}" "$@"
    else
        run_child "${job[@]}" --exit-when-idle 5 "$@"
        psql "$CLICKSTAY_CLICKS_DB" -c "SELECT window_start, rank, ad_id, clicks FROM ad_clicks.top_ads ORDER BY window_start DESC, rank LIMIT 10"
    fi
else
    run_child "${job[@]}" "$@"
fi
