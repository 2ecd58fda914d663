#!/usr/bin/env bash
# Runs the main job: the streaming ad-click aggregation, Kafka in, PostgreSQL out.
#
#   scripts/run.sh                   demo: when no broker / database is configured, starts a
#                                    throwaway PostgreSQL and Kafka-protocol broker (tansu),
#                                    produces 1,000,000 sample events, runs the job until the
#                                    topic is quiet, prints the top ads, stops what it started
#   scripts/run.sh replay FILE       the batch path: replay a file of events into out/results/
#
# Point it at your own services with CLICKSTAY_KAFKA_BROKERS and CLICKSTAY_CLICKS_DB (or the
# [kafka] and [postgres] sections of workers.toml); then it runs the job until interrupted.
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

started=()
cleanup() {
    for service in "${started[@]}"; do scripts/$service stop "out/$service.d" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

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

if $demo; then
    "$bin" produce --config workers.toml --events 1000000 --rate 0 --seed 42
    "$bin" run --dataflow dataflows/ad_clicks.toml --config workers.toml -w 2 --archive out/archive --exit-when-idle 5
    psql "$CLICKSTAY_CLICKS_DB" -c "SELECT window_start, rank, ad_id, clicks FROM ad_clicks.top_ads ORDER BY window_start DESC, rank LIMIT 10"
else
    exec "$bin" run --dataflow dataflows/ad_clicks.toml --config workers.toml -w 2 --archive out/archive "$@"
fi
