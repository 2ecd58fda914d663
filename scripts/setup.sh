#!/usr/bin/env bash
# Installs what clickstay needs on a fresh Debian machine and builds it once (release).
# Idempotent: installs only what is missing. Run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v runuser >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >&2
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust >= 1.88) is required" >&2; exit 1; }

cargo build --release --all-targets >&2
