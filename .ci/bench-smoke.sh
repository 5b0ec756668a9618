#!/usr/bin/env bash
# CI smoke test of the benchmark harness: checks that bench/run.sh still
# works (every contestant starts and every figure is non-zero), not that vipd
# is fast. Runs as root on a fresh Debian machine; installs haproxy, nginx,
# wrk and nghttp2-client if missing; builds vipd with the dev profile (already
# built by `cargo test`). About 2-3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash bench/run.sh --smoke "$@"
