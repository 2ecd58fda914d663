#!/usr/bin/env bash
# Installs what clickstay needs on a fresh Debian machine (and its tests: PostgreSQL, Chromium) and builds it once (release).
# Idempotent: installs only what is missing. Run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql)
# cc and make: rdkafka builds its bundled librdkafka from source (configure + make, ~3 minutes).
{ command -v cc && command -v make; } >/dev/null || need_apt+=(build-essential)
# The Kafka broker of tests and benchmarks (scripts/broker.sh) runs from a Python virtualenv.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v runuser >/dev/null || need_apt+=(util-linux)
# Headless Chromium loads the dashboards in tests/dashboard.rs (Debian's package, no download).
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >&2
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust >= 1.88) is required" >&2; exit 1; }

cargo build --release --all-targets >&2
