#!/usr/bin/env bash
# Run vipd in the foreground for ../shared/bench/peers.sh (its PROXY_CMD):
#   run-vipd.sh VIPD_BINARY CONF
# CONF is bench/peers/vipd.toml as peers.sh rendered it. The part under
# '#== resume' and the part under '#== noresume' each go with the common
# part into a config of their own, served by two vipd processes (ticket and
# session-cache settings are global in vipd). peers.sh kills the process
# group at exit, which ends both.
set -euo pipefail
bin=$1 conf=$2
dir=$(dirname "$conf")
section() { awk -v want="$1" '/^#== /{cur=$2; next} cur=="common" || cur==want' "$conf"; }
section resume >"$dir/vipd-resume.toml"
section noresume >"$dir/vipd-noresume.toml"
export RUST_LOG=${VIPD_LOG:-warn}
"$bin" run -c "$dir/vipd-resume.toml" &
"$bin" run -c "$dir/vipd-noresume.toml" &
trap 'kill $(jobs -p) 2>/dev/null' TERM INT EXIT
wait -n
