#!/usr/bin/env bash
# =============================================================================
# bench/syscalls.sh - system calls and context switches per proxied request.
#
#   bash bench/syscalls.sh                    # vipd and haproxy, plain HTTP/1.1
#   bash bench/syscalls.sh --test https       # HTTPS/1.1 keep-alive
#   bash bench/syscalls.sh --conns 8          # fewer connections (default 64)
#   bash bench/syscalls.sh --proxies vipd
#
# Counts with perf's syscall tracepoints, which cost little, instead of
# `strace -c`, which slows the proxy so much that requests pile up and
# every read finds data (it hides the EAGAIN reads a fast proxy makes).
# Each proxy runs pinned to CPU 0, h2load (--h1, keep-alive) on CPU 1;
# after a warm-up, N requests are counted and every count is divided by
# N. The counts (unlike wall-clock rates) hold on a busy machine, except
# context switches, which include preemption by whatever else runs there.
#
# Uses the instance configs and the backend nginx config that bench/run.sh
# renders into $WORK (run `bash bench/run.sh --quick --tests http_ka` once
# first) and target/release/vipd (or VIPD_BIN).
# =============================================================================
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/vipd-bench}
VIPD_BIN=${VIPD_BIN:-$REPO/target/release/vipd}
TEST=http
CONNS=64
N=50000
PROXIES="vipd haproxy"
while [[ $# -gt 0 ]]; do
  case $1 in
    --test) TEST=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --requests) N=$2; shift 2 ;;
    --proxies) PROXIES=$2; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 64 ;;
  esac
done
for tool in perf h2load nginx curl; do
  command -v $tool >/dev/null || { echo "syscalls.sh: $tool is not installed" >&2; exit 69; }
done
[[ -f $WORK/backend/nginx.conf ]] || { echo "syscalls.sh: no $WORK/backend/nginx.conf; run bash bench/run.sh --quick --tests http_ka first" >&2; exit 66; }
out=$WORK/syscalls; mkdir -p "$out"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
nginx -c "$WORK/backend/nginx.conf" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

port_of() {
  case $1 in
    vipd) awk -v want="$TEST" '/^name = /{gsub(/"/,"",$3); name=$3} /^bind = /{if (name==want) {gsub(/"/,"",$3); n=split($3,a,":"); print a[n]; exit}}' "$WORK/vipd-w1/vipd.toml" ;;
    haproxy) awk -v fe="fe_$TEST" '$1=="frontend"||$1=="listen"{cur=$2} $1=="bind" && cur==fe {n=split($2,a,":"); print a[n]; exit}' "$WORK/haproxy-w1/haproxy.cfg" ;;
  esac
}

events=raw_syscalls:sys_enter,context-switches
for s in recvfrom sendto read write readv writev epoll_wait epoll_ctl clock_gettime \
  setsockopt getsockopt futex accept4 close; do
  events=$events,syscalls:sys_enter_$s
done

for proxy in $PROXIES; do
  port=$(port_of "$proxy")
  [[ -n $port ]] || { echo "syscalls.sh: no $TEST port in $proxy's config" >&2; exit 66; }
  case $proxy in
    vipd) cmd=("$VIPD_BIN" run -c "$WORK/vipd-w1/vipd.toml") ;;
    haproxy) cmd=(haproxy -f "$WORK/haproxy-w1/haproxy.cfg") ;;
  esac
  RUST_LOG=warn taskset -c 0 "${cmd[@]}" >"$out/$proxy.log" 2>&1 &
  pid=$!
  url=$TEST://localhost:$port/1k
  for _ in $(seq 40); do curl -sk -o /dev/null "$url" && break; sleep 0.25; done
  taskset -c 1 h2load --h1 -c"$CONNS" -n20000 "$url" >/dev/null
  perf stat -x, -e "$events" -p "$pid" -o "$out/$proxy.$TEST.perf" &
  st=$!
  sleep 0.5
  reqs=$(taskset -c 1 h2load --h1 -c"$CONNS" -n"$N" "$url" | awk '/^requests:/{print $8}')
  kill -INT "$st"; wait "$st" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$proxy $TEST conns=$CONNS requests=$reqs, per request:"
  awk -F, -v r="$reqs" '$3 ~ /:|context/ && $1+0 > 0 {sub(/^syscalls:sys_enter_/, "", $3); printf "  %-24s %7.3f\n", $3, $1 / r}' \
    "$out/$proxy.$TEST.perf"
done
