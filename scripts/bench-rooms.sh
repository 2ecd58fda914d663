#!/usr/bin/env bash
# Benchmark of the reservation path: a durable throwaway PostgreSQL (fsync on), two shards,
# a seeded inventory, then `cargo bench --bench rooms` (HTTP vs pgbench ceiling, both workloads,
# the concurrency-control comparison and the audit). Stops the server at the end.
#
#   scripts/bench-rooms.sh [--hotels N] [--rooms N] [--days N] [any flag of the bench...]
#
# The bench's flags: `cargo bench --bench rooms -- --help`.
#
# Defaults: the full 5,000-hotel / 1,000,000-room / 365-night inventory. A quick run:
#   scripts/bench-rooms.sh --hotels 500 --rooms 100000 --days 60 --seconds 5
set -euo pipefail
cd "$(dirname "$0")/.."

hotels=5000 rooms=1000000 days=365 bench_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --hotels) hotels=$2; shift 2 ;;
        --rooms) rooms=$2; shift 2 ;;
        --days) days=$2; shift 2 ;;
        *) bench_args+=("$1"); shift ;;
    esac
done

export CLICKSTAY_PG_DIR=${CLICKSTAY_BENCH_PG_DIR:-/tmp/clickstay-pg-bench}
export CLICKSTAY_PG_FSYNC=on CLICKSTAY_PG_SHARED_BUFFERS=${CLICKSTAY_PG_SHARED_BUFFERS:-2GB}
trap 'scripts/postgres.sh stop' EXIT
scripts/postgres.sh start >/dev/null
suffix=$$
shard0=$(scripts/postgres.sh createdb "rooms_bench0_$suffix")
shard1=$(scripts/postgres.sh createdb "rooms_bench1_$suffix")
export CLICKSTAY_HOTEL_SHARDS="$shard0,$shard1"

cargo build --release --quiet
cargo bench --quiet --bench rooms --no-run   # built before the seeding: a build error stops here
bin=target/release/clickstay
$bin rooms migrate
$bin rooms seed --hotels "$hotels" --rooms "$rooms" --days "$days"
cargo bench --quiet --bench rooms -- --strategies "${bench_args[@]}"
