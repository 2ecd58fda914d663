#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds once, starts one throwaway PostgreSQL,
# runs every test (unit and integration) against it, and stops it again.
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
cleanup() { scripts/postgres.sh stop "$CLICKSTAY_PG_DIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
CLICKSTAY_TEST_PG=$(scripts/postgres.sh start "$CLICKSTAY_PG_DIR")
export CLICKSTAY_TEST_PG
echo "test: PostgreSQL at $CLICKSTAY_TEST_PG" >&2

cargo test --release "$@"
