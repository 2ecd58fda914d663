#!/usr/bin/env bash
# Runs the main job: the ad-click aggregation over a file of raw click events.
#
#   scripts/run.sh                     generate 1,000,000 sample events, replay them on 2 workers
#   scripts/run.sh FILE [REPLAY ARGS]  replay your own file (CSV or JSON Lines)
#
# Results land in out/results/ (ad_click_counts.csv, top_ads.csv, ...). Installs what is
# missing and builds first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
bin=target/release/clickstay
mkdir -p out
if [ $# -gt 0 ]; then
    input=$1; shift
else
    input=out/sample-events.csv
    [ -f "$input" ] || "$bin" gen --events 1000000 --seed 42 --out "$input"
fi
exec "$bin" replay --dataflow dataflows/ad_clicks.toml --input "$input" --out out/results -w 2 "$@"
