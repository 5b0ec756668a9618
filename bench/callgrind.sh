#!/usr/bin/env bash
# =============================================================================
# bench/callgrind.sh - user-space instructions per proxied HTTP request.
#
#   bash bench/callgrind.sh                  # vipd and haproxy, plain HTTP
#   bash bench/callgrind.sh --test https     # HTTPS/1.1 keep-alive instead
#   bash bench/callgrind.sh --test h2        # HTTP/2 over TLS (h2load, 4x16 streams)
#   bash bench/callgrind.sh --test tcp_cps   # L4 tcp listener, a new connection per request
#   bash bench/callgrind.sh --proxies vipd   # one contestant
#
# Wall-clock rates on a shared 2-core VM move by +-30 % from run to run;
# valgrind's instruction counts do not depend on what else the machine does,
# so this is how the per-request cost of the HTTP path is compared and
# tracked. Each proxy runs under `valgrind --tool=callgrind` with
# instrumentation off; after a warm-up (backend connections open), counting
# is switched on for DURATION seconds of wrk load (8 keep-alive connections,
# 1 KiB body) and the total is divided by the requests wrk completed. The
# kernel's share (syscalls, loopback TCP) is not counted: both proxies make
# the same syscalls per request (see bench/ANALYSIS.md).
#
# Uses the instance configs that bench/run.sh renders into $WORK (run it
# once first, e.g. `bash bench/run.sh --quick --tests http_ka`), the backend
# nginx of the same run, and target/release/vipd (or VIPD_BIN).
# Output: one line per proxy, and callgrind.out.<proxy> in $WORK/callgrind
# for callgrind_annotate.
# =============================================================================
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/vipd-bench}
VIPD_BIN=${VIPD_BIN:-$REPO/target/release/vipd}
TEST=http
DURATION=10
PROXIES="vipd haproxy"
while [[ $# -gt 0 ]]; do
  case $1 in
    --test) TEST=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --proxies) PROXIES=$2; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 64 ;;
  esac
done
for tool in valgrind callgrind_control wrk h2load nginx; do
  command -v $tool >/dev/null || { echo "callgrind.sh: $tool is not installed (apt-get install valgrind wrk nginx haproxy)" >&2; exit 69; }
done
[[ -f $WORK/backend/nginx.conf ]] || { echo "callgrind.sh: no $WORK/backend/nginx.conf; run bash bench/run.sh --quick --tests http_ka first" >&2; exit 66; }
out=$WORK/callgrind; mkdir -p "$out"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

nginx -c "$WORK/backend/nginx.conf" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

# The HTTP (or HTTPS) port of a proxy's rendered config.
port_of() {
  local proxy=$1 conf test=$TEST
  [[ $test == h2 ]] && test=https
  [[ $test == tcp_cps ]] && test=tcp
  case $proxy in
    vipd) conf=$WORK/vipd-w1/vipd.toml
          awk -v want="$test" '/^name = /{gsub(/"/,"",$3); name=$3} /^bind = /{if (name==want) {gsub(/"/,"",$3); n=split($3,a,":"); print a[n]; exit}}' "$conf" ;;
    haproxy) conf=$WORK/haproxy-w1/haproxy.cfg
          awk -v fe="fe_$test" -v l4="l4_$test" '$1=="frontend"||$1=="listen"{cur=$2} $1=="bind" && (cur==fe||cur==l4) {n=split($2,a,":"); print a[n]; exit}' "$conf" ;;
    nginx) conf=$WORK/nginx-w1/nginx.conf
          grep -oE 'listen 127\.0\.0\.1:[0-9]+' "$conf" | head -$([[ $test == http ]] && echo 1 || echo 2) | tail -1 | cut -d: -f2 ;;
  esac
}

for proxy in $PROXIES; do
  port=$(port_of "$proxy")
  [[ -n $port ]] || { echo "callgrind.sh: no $TEST port in $proxy's config" >&2; exit 66; }
  file=$out/callgrind.out.$proxy
  rm -f "$file"*
  case $proxy in
    vipd) cmd=("$VIPD_BIN" run -c "$WORK/vipd-w1/vipd.toml") ;;
    haproxy) cmd=(haproxy -f "$WORK/haproxy-w1/haproxy.cfg") ;;
    nginx) cmd=(nginx -c "$WORK/nginx-w1/nginx.conf") ;;
  esac
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file" \
    "${cmd[@]}" >"$out/$proxy.log" 2>&1 &
  vg=$!
  url=$TEST://localhost:$port/1k
  close=()
  [[ $TEST == h2 ]] && url=https://localhost:$port/1k
  # one request per connection: the per-connection cost of the L4 path
  [[ $TEST == tcp_cps ]] && { url=http://localhost:$port/1k; close=(-H 'Connection: close'); }
  for _ in $(seq 60); do curl -sk -o /dev/null "$url" && break; sleep 0.5; done
  if [[ $TEST == h2 ]]; then
    # A fixed request count: h2load has no duration mode that ends cleanly.
    h2load -c4 -m16 -n4000 "$url" >/dev/null
    callgrind_control -i on "$vg" >/dev/null
    reqs=$(h2load -c4 -m16 -n$((DURATION * 2000)) "$url" | awk '/^requests:/{print $8}')
  else
    wrk -t1 -c8 -d2s "${close[@]}" "$url" >/dev/null
    callgrind_control -i on "$vg" >/dev/null
    reqs=$(wrk -t1 -c8 -d"${DURATION}s" "${close[@]}" "$url" | awk '/requests in/{print $1}')
  fi
  callgrind_control -i off "$vg" >/dev/null
  callgrind_control -d "$vg" >/dev/null
  kill "$vg"; wait "$vg" 2>/dev/null || true
  total=$(cat "$file".* 2>/dev/null | awk '/^totals:/{s+=$2} END{print s+0}')
  printf '%-8s %-5s requests=%-7s instructions=%-12s per request=%s\n' \
    "$proxy" "$TEST" "$reqs" "$total" "$(( total / (reqs > 0 ? reqs : 1) ))"
done
