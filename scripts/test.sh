#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds once, starts one throwaway PostgreSQL
# and one Kafka broker (tansu), runs every test (unit and integration) against them, and stops them again.
#
#   scripts/test.sh            everything
#   scripts/test.sh ARGS...    extra arguments for `cargo test` (e.g. a test name filter)
#
# A quick local path without services: `cargo test --lib`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

export CLICKSTAY_PG_DIR=${CLICKSTAY_PG_DIR:-$(mktemp -d /tmp/clickstay-test-pg.XXXXXX)}
rmdir "$CLICKSTAY_PG_DIR" 2>/dev/null || true
export CLICKSTAY_BROKER_DIR=${CLICKSTAY_BROKER_DIR:-$(mktemp -d /tmp/clickstay-test-broker.XXXXXX)}
rmdir "$CLICKSTAY_BROKER_DIR" 2>/dev/null || true
cleanup() {
    scripts/postgres.sh stop "$CLICKSTAY_PG_DIR" >/dev/null 2>&1 || true
    scripts/broker.sh stop "$CLICKSTAY_BROKER_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
CLICKSTAY_TEST_PG=$(scripts/postgres.sh start "$CLICKSTAY_PG_DIR")
export CLICKSTAY_TEST_PG
echo "test: PostgreSQL at $CLICKSTAY_TEST_PG" >&2
CLICKSTAY_KAFKA_BROKERS=$(scripts/broker.sh start "$CLICKSTAY_BROKER_DIR")
export CLICKSTAY_KAFKA_BROKERS
echo "test: Kafka broker (tansu) at $CLICKSTAY_KAFKA_BROKERS" >&2

cargo test --release "$@"
