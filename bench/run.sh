#!/usr/bin/env bash
# =============================================================================
# bench/run.sh - vipd side by side with haproxy and nginx on one host.
#
#   bash bench/run.sh                 # full run (as root on Debian): medians of
#                                     # REPS runs, writes bench/RESULTS.md
#   bash bench/run.sh --quick         # 1 short run per figure (development)
#   bash bench/run.sh --smoke         # CI: --quick, 1 worker, tiny runs, debug
#                                     # build; fails unless every contestant
#                                     # started and every figure is non-zero
#
# Options
#   --quick | --smoke          see above
#   --reps N --duration S      runs per figure (median reported), seconds each
#   --workers "1 2"            worker/thread counts to test
#   --tests "a b"              subset of: mem mem_noreq mem_tls mem_tcp mem_tcp_noreq https_h1 https_h2 http_ka hs_full
#                              hs_resume hs_full_tls hs_resume_tls tcp_bulk tcp_cps
#                              tls_bulk lat_https lat_tcp
#   --proxies "haproxy nginx vipd"   contestants
#   --no-install               do not apt-get install missing peers
#   --no-build                 use VIPD_BIN (default target/<profile>/vipd)
#   --results FILE             where the results file goes (default
#                              bench/RESULTS.md for full runs, $OUT/RESULTS.md
#                              for --quick/--smoke)
# Environment
#   WORK=/tmp/vipd-bench OUT=$WORK/out-DATE   scratch and result directories
#   VIPD_PROFILE=release (smoke: dev)  cargo profile; VIPD_BIN=path skips build
#   VIPD_LOG=warn        RUST_LOG of vipd (the peers log nothing per connection)
#   CONNS=64 HS_CONNS=32 H2_CONNS=16 H2_STREAMS=16 BULK_CONNS=4
#   LAT_CONNS=16 LAT_DELAY_MS=10   fixed-load latency test (~1,500 req/s)
#   MEM_CONNS=10000      idle TLS connections for the memory tests
#   PROXY_CPU, LOAD_CPU             CPU placement (defaults: see cpu_plan)
#   BASE_PORT=19000      backends BASE+1, BASE+2; instance i: BASE+100*(i+1)+k
#
# What is measured (one table; per-core = figure / proxy utime+stime share):
#   https_h1   HTTPS/1.1 keep-alive req/s, 1 KiB body, wrk -c CONNS
#   https_h2   HTTPS h2 req/s, 1 KiB, h2load -c H2_CONNS -m H2_STREAMS
#   http_ka    plain HTTP/1.1 keep-alive req/s, 1 KiB
#   hs_full    new TLS connection per request, resumption disabled, conn/s
#   hs_resume  same on the listener with session tickets, conn/s
#   hs_full_tls, hs_resume_tls  the same through `tls` listeners (TLS
#              terminated, then a new L4 connection to the backend each time)
#   tcp_bulk   L4 tcp pass-through of a 10 MiB body, MB/s (BULK_CONNS conns)
#   tcp_cps    L4 tcp, new TCP connection per request, conn/s (accept path)
#   tls_bulk   `tls` listener (TLS terminated, raw TCP upstream), 10 MiB, MB/s
#   lat_https  p99 latency (wrk --latency) at a fixed moderate load: LAT_CONNS
#              keep-alive connections, each pausing LAT_DELAY_MS between
#              requests (wrk Lua delay(); closed loop, not wrk2's open loop)
#   lat_tcp    the same through the L4 tcp listener
#   mem        VmRSS growth of the proxy per idle TLS keep-alive connection
#              after one request on each (KiB/conn), as real keep-alive
#              connections are: MEM_CONNS connections, on a fresh process
#   mem_noreq  the same for TLS connections that never sent a request
#   mem_tls    the same through the `tls` listener (TLS terminated, one backend
#              connection each), after one request per connection
#   mem_tcp    the same for idle L4 tcp connections that carried one request
#   mem_tcp_noreq  the same for idle L4 tcp connections that never sent a byte
#              (mem_tls/mem_tcp*: capped so that 2 fds per connection fit the
#              fd limit)
# A mode vipd's build does not serve (refused by `vipd check`, or accepted but
# failing a functional probe) is reported "n/a: vipd has no <mode> yet".
# =============================================================================
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LIB=$HERE/lib/benchlib.py
TPL=$HERE/templates
CMDLINE="bash bench/run.sh $*"

QUICK=0 SMOKE=0 INSTALL=1 BUILD=1 RESULTS_FILE=
ALL_TESTS="mem mem_noreq mem_tls mem_tcp mem_tcp_noreq https_h1 https_h2 http_ka hs_full hs_resume hs_full_tls hs_resume_tls tcp_bulk tcp_cps tls_bulk lat_https lat_tcp"
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) QUICK=1 ;;
    --smoke) QUICK=1; SMOKE=1 ;;
    --reps) REPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --workers) WORKERS_LIST=$2; shift ;;
    --tests) TESTS=$2; shift ;;
    --proxies) PROXIES=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --results) RESULTS_FILE=$2; shift ;;
    -h|--help) sed -n '3,/^# ====/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if ((SMOKE)); then
  : "${DURATION:=1}" "${REPS:=1}" "${WORKERS_LIST:=1}" "${MEM_CONNS:=200}" "${VIPD_PROFILE:=dev}"
elif ((QUICK)); then
  : "${DURATION:=3}" "${REPS:=1}" "${MEM_CONNS:=1000}"
fi
DURATION=${DURATION:-8}
REPS=${REPS:-3}
WORKERS_LIST=${WORKERS_LIST:-"1 2"}
TESTS=${TESTS:-$ALL_TESTS}
PROXIES=${PROXIES:-"haproxy nginx vipd"}
MEM_CONNS=${MEM_CONNS:-10000}
CONNS=${CONNS:-64}
HS_CONNS=${HS_CONNS:-32}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-16}
BULK_CONNS=${BULK_CONNS:-4}
LAT_CONNS=${LAT_CONNS:-16}
LAT_DELAY_MS=${LAT_DELAY_MS:-10}
VIPD_PROFILE=${VIPD_PROFILE:-release}
VIPD_LOG=${VIPD_LOG:-warn}
BASE_PORT=${BASE_PORT:-19000}
WORK=${WORK:-/tmp/vipd-bench}
OUT=${OUT:-$WORK/out-$(date -u +%Y%m%d-%H%M%S)}
if [[ -z $RESULTS_FILE ]]; then
  if ((QUICK)); then RESULTS_FILE=$OUT/RESULTS.md; else RESULTS_FILE=$REPO/bench/RESULTS.md; fi
fi
NCPU=$(nproc)
B1=127.0.0.1:$((BASE_PORT + 1)) B2=127.0.0.1:$((BASE_PORT + 2))
T_START=$(date +%s)

log() { printf '[%(%H:%M:%S)T +%ss] %s\n' -1 $(($(date +%s) - T_START)) "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ----------------------------------------------------------- CPU placement
# 1-worker proxies get PROXY_CPU alone; the load generator and the backend
# nginx share LOAD_CPU(S). 2-worker proxies get PROXY_CPUS2 (on a 2- or 3-core
# machine: unpinned, everything shares the machine).
cpu_plan() {
  if ((NCPU >= 4)); then
    PROXY_CPU=${PROXY_CPU:-0}; PROXY_CPUS2=${PROXY_CPUS2:-0,1}; LOAD_CPU=${LOAD_CPU:-2-$((NCPU - 1))}
  elif ((NCPU >= 2)); then
    PROXY_CPU=${PROXY_CPU:-0}; PROXY_CPUS2=${PROXY_CPUS2:-}; LOAD_CPU=${LOAD_CPU:-1}
  else
    PROXY_CPU=${PROXY_CPU:-}; PROXY_CPUS2=${PROXY_CPUS2:-}; LOAD_CPU=${LOAD_CPU:-}
  fi
}
proxy_cpus() { if [[ $1 == 1 ]]; then echo "$PROXY_CPU"; else echo "$PROXY_CPUS2"; fi; }
load_cpus() { if [[ $1 == 1 || -n $PROXY_CPUS2 ]]; then echo "$LOAD_CPU"; fi; }
ncpus_in() { # count CPUs in a taskset list like "2-5,7"; "" -> NCPU
  [[ -z $1 ]] && { echo "$NCPU"; return; }
  python3 -c "
n=0
for p in '$1'.split(','):
    a,_,b=p.partition('-'); n+=int(b or a)-int(a)+1
print(n)"
}
load_threads() { # wrk/h2load threads for worker count $1
  local c; c=$(load_cpus "$1")
  if [[ -n $c ]]; then ncpus_in "$c"; else echo "$1"; fi
}

# ------------------------------------------------------------ dependencies
ensure_deps() {
  local need=() pair
  for pair in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl \
              curl:curl taskset:util-linux setsid:util-linux python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  [[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || need+=(libnginx-mod-stream)
  ((${#need[@]})) || return 0
  ((INSTALL)) || die "missing: ${need[*]} (and --no-install given)"
  [[ $(id -u) == 0 ]] || die "missing packages ${need[*]}; run as root or install them"
  log "installing from Debian: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$WORK/apt.log" 2>&1 \
    || die "apt-get install failed; see $WORK/apt.log"
  # Debian may start the packaged nginx/haproxy services; this script never
  # uses or touches them (everything here binds 127.0.0.1 high ports).
}

build_vipd() {
  local dir=release
  [[ $VIPD_PROFILE == dev ]] && dir=debug
  [[ $VIPD_PROFILE != release && $VIPD_PROFILE != dev ]] && dir=$VIPD_PROFILE
  VIPD_BIN=${VIPD_BIN:-$REPO/target/$dir/vipd}
  if ((BUILD)); then
    command -v cargo >/dev/null || die "cargo not found (install Rust, or pass --no-build with VIPD_BIN)"
    log "building vipd (profile $VIPD_PROFILE); a release build from scratch takes minutes (fat LTO)"
    local t0=$SECONDS
    local build=(cargo build --locked --profile "$VIPD_PROFILE" --bin vipd)
    # dev profile (smoke/CI): build it the way `cargo test` does, which puts
    # target/debug/vipd in place with the test build's dependency features,
    # so that right after CI's `cargo test` this is a no-op instead of a
    # second compile of every dependency
    [[ $VIPD_PROFILE == dev ]] && build=(cargo test --locked --no-run)
    (cd "$REPO" && "${build[@]}") >"$WORK/build.log" 2>&1 \
      || { tail -20 "$WORK/build.log" >&2; die "vipd build failed; see $WORK/build.log"; }
    log "vipd built in $((SECONDS - t0))s: $VIPD_BIN"
  fi
  [[ -x $VIPD_BIN ]] || die "no vipd binary at $VIPD_BIN"
}

# ------------------------------------------------------ process bookkeeping
PIDS=()
start_time() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0; s=${s##*) }; set -- $s; echo "${20}"; }
start_bg() { # start_bg NAME CPUS CMD... -> LAST_PID (own session / process group)
  local name=$1 cpus=$2; shift 2
  if [[ -n $cpus ]]; then
    setsid taskset -c "$cpus" "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null &
  else
    setsid "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null &
  fi
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  printf '%s\t%s\t%s\n' "$LAST_PID" "$name" "$(start_time "$LAST_PID")" >>"$WORK/pids"
}
kill_group() {
  local pid=$1 i
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 -- "-$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null
  return 0
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill_group "$p"; done
  wait 2>/dev/null
  rm -f "$WORK/pids"
}
stale_cleanup() { # only processes this script recorded, checked by start time
  [[ -f $WORK/pids ]] || return 0
  local pid name st
  while IFS=$'\t' read -r pid name st; do
    if [[ -n $st && $(start_time "$pid") == "$st" ]]; then
      log "stopping $name (pid $pid) left over from an earlier run"
      kill_group "$pid"
    fi
  done <"$WORK/pids"
  rm -f "$WORK/pids"
}
port_open() { timeout 0.5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
wait_port() { local i; for i in $(seq "${2:-100}"); do port_open "$1" && return 0; sleep 0.1; done; return 1; }

# ---------------------------------------------------------------- fixtures
make_fixtures() {
  mkdir -p "$WORK/www" "$WORK/tls"
  if [[ ! -s $WORK/tls/certkey.pem ]]; then
    log "generating a self-signed ECDSA P-256 certificate"
    openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/tls/key.ec.pem" 2>/dev/null || die "openssl ecparam"
    # PKCS#8 key: read by openssl-based peers and by rustls-pemfile alike
    openssl pkcs8 -topk8 -nocrypt -in "$WORK/tls/key.ec.pem" -out "$WORK/tls/key.pem" || die "openssl pkcs8"
    openssl req -x509 -new -key "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" -days 3650 \
      -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' 2>/dev/null || die "openssl req"
    cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/certkey.pem"
  fi
  [[ $(stat -c %s "$WORK/www/1k" 2>/dev/null) == 1024 ]] || head -c 1024 /dev/zero | tr '\0' 'a' >"$WORK/www/1k"
  [[ $(stat -c %s "$WORK/www/10m" 2>/dev/null) == 10485760 ]] || head -c 10485760 /dev/urandom >"$WORK/www/10m"
}

render() { # render TEMPLATE OUT MODES KEY=VALUE...
  python3 "$LIB" render "$@" || die "cannot render $1"
}
common_kv() { # common_kv DIR WORKERS PORTBASE
  local b=$3
  echo "DIR=$1" "WORKERS=$2" "HTTP_PORT=$((b + 1))" "HTTPS_PORT=$((b + 2))" "HTTPS_NR_PORT=$((b + 3))" \
    "TCP_PORT=$((b + 4))" "TLS_PORT=$((b + 5))" "TLS_NR_PORT=$((b + 6))" "BACKEND1=$B1" "BACKEND2=$B2" \
    "CERT=$WORK/tls/cert.pem" "KEY=$WORK/tls/key.pem" "CERTKEY=$WORK/tls/certkey.pem" \
    "MAXCONN=$MAXCONN" "FD_LIMIT=$FD_LIMIT" "WWW=$WORK/www"
}

# --------------------------------------------------------------- backends
start_backend() {
  local d=$WORK/backend p
  mkdir -p "$d/tmp"
  for p in ${B1##*:} ${B2##*:}; do port_open "$p" && die "port $p is in use (set BASE_PORT)"; done
  render "$TPL/backend-nginx.conf" "$d/nginx.conf" "" $(common_kv "$d" 1 0)
  nginx -t -p "$d" -c "$d/nginx.conf" >"$d/configtest.log" 2>&1 || die "backend nginx config: $(cat "$d/configtest.log")"
  start_bg backend "$LOAD_CPU" nginx -p "$d" -c "$d/nginx.conf"
  BACKEND_PID=$LAST_PID
  wait_port "${B1##*:}" && wait_port "${B2##*:}" || die "backend nginx did not start; see $WORK/logs/backend.log"
  log "backends: nginx (1 worker, cpu ${LOAD_CPU:-any}) on $B1 $B2"
}

# ------------------------------------------------------ vipd mode detection
# A mode is served when `vipd check` accepts a config with just that listener
# AND a vipd started with it answers a request through it.
VIPD_MODES=""
probe_get() { # probe_get URL [curl args] -> prints http_version if a 1 KiB body came back
  local out
  out=$(curl -s -k --max-time 5 -o "$WORK/tmp/probe.body" -w '%{http_code} %{size_download} %{http_version}' "$@" 2>/dev/null) || return 1
  set -- $out
  [[ $1 == 200 && $2 == 1024 ]] && echo "$3"
}
detect_vipd_modes() {
  local m d=$WORK/probe rc kv v port
  mkdir -p "$d"
  local base=$((BASE_PORT + 90))
  for m in tcp tls http https; do
    local modes="$m"; [[ $m == tls || $m == https ]] && modes+=" vhost"; [[ $m == http ]] && modes+=" vhost"
    render "$TPL/vipd.toml" "$d/$m.toml" "$modes" $(common_kv "$d" 1 "$base") TICKETS=true SESSION_CACHE=1024
    if ! "$VIPD_BIN" check -c "$d/$m.toml" >"$d/$m.check" 2>&1; then
      log "vipd: no $m (vipd check refuses it: $(head -c 300 "$d/$m.check" | tr '\n' ' '))"
      echo "{\"kind\": \"mode\", \"mode\": \"$m\", \"ok\": false, \"why\": \"check\"}" >>"$RESULTS"
      continue
    fi
    case $m in tcp) port=$((base + 4)) ;; tls) port=$((base + 5)) ;; http) port=$((base + 1)) ;; https) port=$((base + 2)) ;; esac
    port_open "$port" && die "port $port is in use (set BASE_PORT)"
    RUST_LOG=$VIPD_LOG start_bg "probe-vipd-$m" "" "$VIPD_BIN" run -c "$d/$m.toml"
    local pid=$LAST_PID ok=""
    if wait_port "$port" 50; then
      case $m in
        tcp) ok=$(probe_get "http://127.0.0.1:$port/1k") ;;
        tls) ok=$(probe_get "https://127.0.0.1:$port/1k") ;;
        http) ok=$(probe_get "http://127.0.0.1:$port/1k") ;;
        https)
          ok=$(probe_get "https://127.0.0.1:$port/1k" --http1.1)
          [[ -n $ok ]] && v=$(probe_get "https://127.0.0.1:$port/1k" --http2) && [[ $v == 2 ]] && VIPD_MODES+=" h2" ;;
      esac
    fi
    kill_group "$pid"
    if [[ -n $ok ]]; then
      VIPD_MODES+=" $m"
    else
      log "vipd: no $m (vipd check accepts it, but a request through it failed; log: $WORK/logs/probe-vipd-$m.log)"
    fi
  done
  VIPD_MODES=${VIPD_MODES# }
  log "vipd serves: ${VIPD_MODES:-nothing}"
}

# -------------------------------------------------------------- instances
INST=() I_PROXY=() I_W=() I_PIDS=() I_MAIN=() I_BASE=() I_MODES=()
add_instance() { # add_instance PROXY WORKERS
  local i=${#INST[@]}
  INST+=("$1-w$2"); I_PROXY+=("$1"); I_W+=("$2"); I_PIDS+=(""); I_MAIN+=("")
  I_BASE+=($((BASE_PORT + 100 * (i + 1))))
  if [[ $1 == vipd ]]; then I_MODES+=("$VIPD_MODES"); else I_MODES+=("tcp tls http https h2"); fi
}
port_of() { # port_of INSTANCE KIND
  local b=${I_BASE[$1]}
  case $2 in http) echo $((b + 1)) ;; https) echo $((b + 2)) ;; https_nr) echo $((b + 3)) ;; tcp) echo $((b + 4)) ;; tls) echo $((b + 5)) ;; tls_nr) echo $((b + 6)) ;; esac
}
has_mode() { [[ " ${I_MODES[$1]} " == *" $2 "* ]]; }

start_instance() {
  local i=$1 name=${INST[$1]} proxy=${I_PROXY[$1]} w=${I_W[$1]} d=$WORK/${INST[$1]} cpus p k
  cpus=$(proxy_cpus "$w")
  mkdir -p "$d/tmp"
  for k in http https https_nr tcp tls tls_nr; do p=$(port_of "$i" $k); port_open "$p" && die "port $p is in use (set BASE_PORT)"; done
  local kv; kv=$(common_kv "$d" "$w" "${I_BASE[$i]}")
  case $proxy in
    haproxy)
      render "$TPL/haproxy.cfg" "$d/haproxy.cfg" "" $kv
      haproxy -c -f "$d/haproxy.cfg" >"$d/configtest.log" 2>&1 || die "haproxy config: $(cat "$d/configtest.log")"
      start_bg "$name" "$cpus" haproxy -db -f "$d/haproxy.cfg"
      I_PIDS[$i]=$LAST_PID ;;
    nginx)
      render "$TPL/nginx.conf" "$d/nginx.conf" "" $kv
      nginx -t -p "$d" -c "$d/nginx.conf" >"$d/configtest.log" 2>&1 || die "nginx config: $(cat "$d/configtest.log")"
      start_bg "$name" "$cpus" nginx -p "$d" -c "$d/nginx.conf"
      I_PIDS[$i]=$LAST_PID ;;
    vipd)
      local modes=${I_MODES[$i]}
      [[ -z $modes ]] && { log "vipd serves no mode: $name not started"; return 0; }
      local m1="${modes/h2/} vhost"
      render "$TPL/vipd.toml" "$d/vipd.toml" "$m1" $kv TICKETS=true SESSION_CACHE=20480
      "$VIPD_BIN" check -c "$d/vipd.toml" >"$d/configtest.log" 2>&1 || die "vipd config: $(cat "$d/configtest.log")"
      RUST_LOG=$VIPD_LOG start_bg "$name" "$cpus" "$VIPD_BIN" run -c "$d/vipd.toml"
      I_PIDS[$i]=$LAST_PID
      if has_mode "$i" https || has_mode "$i" tls; then
        # full-handshake listeners: a second process, tickets and cache off
        local nr="vhost"
        has_mode "$i" https && nr+=" https_nr"
        has_mode "$i" tls && nr+=" tls_nr"
        render "$TPL/vipd.toml" "$d/vipd-noresume.toml" "$nr" $kv TICKETS=false SESSION_CACHE=0
        "$VIPD_BIN" check -c "$d/vipd-noresume.toml" >"$d/configtest-nr.log" 2>&1 || die "vipd config: $(cat "$d/configtest-nr.log")"
        RUST_LOG=$VIPD_LOG start_bg "$name-noresume" "$cpus" "$VIPD_BIN" run -c "$d/vipd-noresume.toml"
        I_PIDS[$i]+=" $LAST_PID"
      fi ;;
  esac
  local m
  for m in ${I_MODES[$i]}; do
    [[ $m == h2 ]] && continue
    wait_port "$(port_of "$i" "$m")" || die "$name did not open its $m port; log: $WORK/logs/$name.log"
  done
  has_mode "$i" https && { wait_port "$(port_of "$i" https_nr)" || die "$name did not open its https no-resume port"; }
  has_mode "$i" tls && { wait_port "$(port_of "$i" tls_nr)" || die "$name did not open its tls no-resume port"; }
  echo "{\"kind\": \"started\", \"proxy\": \"$proxy\", \"workers\": $w}" >>"$RESULTS"
  log "started $name (pids ${I_PIDS[$i]}, cpus ${cpus:-all}) modes: ${I_MODES[$i]}"
}

check_instance() { # functional checks: both backends used, resumption on/off, ALPN
  local i=$1 res="" b
  backends_seen() {
    for n in 1 2 3 4; do curl -s -k --max-time 3 -o /dev/null -D - "$1" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-backend"{print $2}'; done | sort -u | tr '\n' ' '
  }
  has_mode "$i" http && { b=$(backends_seen "http://127.0.0.1:$(port_of "$i" http)/1k"); res+="http->[${b% }] "; }
  has_mode "$i" tcp && { b=$(backends_seen "http://127.0.0.1:$(port_of "$i" tcp)/1k"); res+="tcp->[${b% }] "; }
  local kind
  for kind in https tls; do
    has_mode "$i" $kind || continue
    local port lab sess=$WORK/tmp/sess-${INST[$i]}.pem r
    for lab in resume noresume; do
      port=$(port_of "$i" $kind); [[ $lab == noresume ]] && port=$(port_of "$i" ${kind}_nr)
      rm -f "$sess"
      (printf 'GET /1k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'; sleep 1) |
        timeout 5 openssl s_client -connect "127.0.0.1:$port" -sess_out "$sess" -ign_eof >/dev/null 2>&1
      if [[ -s $sess ]]; then
        r=$( (printf 'GET /1k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'; sleep 0.5) |
          timeout 5 openssl s_client -connect "127.0.0.1:$port" -sess_in "$sess" -ign_eof 2>/dev/null | grep -E '^(Reused|New),' | head -1)
      else
        r="New (no ticket issued)" # nothing to resume with: every handshake is full
      fi
      res+="$kind-$lab:${r%%,*} "
    done
    [[ $res == *"$kind-resume:Reused"* && $res == *"$kind-noresume:New"* ]] || log "WARNING: ${INST[$i]}: $kind resumption not as expected (want resume:Reused noresume:New)"
  done
  if has_mode "$i" https; then
    r=$(echo | timeout 5 openssl s_client -connect "127.0.0.1:$(port_of "$i" https)" -alpn h2,http/1.1 2>/dev/null | sed -n 's/^ALPN protocol: //p')
    res+="alpn:${r:-none}"
  fi
  [[ $res == *"->[b1]"* || $res == *"->[b2]"* ]] && log "WARNING: ${INST[$i]} used only one backend"
  log "check ${INST[$i]}: $res"
  echo "- ${INST[$i]}: $res" >>"$OUT/checks.md"
}

# ------------------------------------------------------------------- tests
needs_mode() {
  case $1 in
    http_ka) echo http ;; https_h1|hs_full|hs_resume|lat_https|mem|mem_noreq) echo https ;;
    https_h2) echo h2 ;; tcp_bulk|tcp_cps|lat_tcp|mem_tcp|mem_tcp_noreq) echo tcp ;; tls_bulk|mem_tls|hs_*_tls) echo tls ;;
  esac
}
unit_of() { case $1 in tcp_bulk|tls_bulk) echo MB/s ;; lat_*) echo ms ;; mem*) echo KiB/conn ;; hs_*|tcp_cps) echo conn/s ;; *) echo req/s ;; esac; }

CMD=()
test_cmd() { # test_cmd TEST INSTANCE DURATION -> CMD
  local t=$1 i=$2 d=$3 th; th=$(load_threads "${I_W[$i]}")
  local wrk=(wrk -t"$th" -d"${d}s" --timeout 5s --latency)
  local tls13='--tls13-ciphers=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256'
  case $t in
    https_h1) CMD=("${wrk[@]}" -c"$CONNS" "https://127.0.0.1:$(port_of "$i" https)/1k") ;;
    https_h2) CMD=(h2load -t"$th" -c"$H2_CONNS" -m"$H2_STREAMS" -D "$d" "$tls13" "https://127.0.0.1:$(port_of "$i" https)/1k") ;;
    http_ka) CMD=("${wrk[@]}" -c"$CONNS" "http://127.0.0.1:$(port_of "$i" http)/1k") ;;
    hs_full) CMD=("${wrk[@]}" -c"$HS_CONNS" -H 'Connection: close' "https://127.0.0.1:$(port_of "$i" https_nr)/1k") ;;
    hs_resume) CMD=("${wrk[@]}" -c"$HS_CONNS" -H 'Connection: close' "https://127.0.0.1:$(port_of "$i" https)/1k") ;;
    hs_full_tls) CMD=("${wrk[@]}" -c"$HS_CONNS" -H 'Connection: close' "https://127.0.0.1:$(port_of "$i" tls_nr)/1k") ;;
    hs_resume_tls) CMD=("${wrk[@]}" -c"$HS_CONNS" -H 'Connection: close' "https://127.0.0.1:$(port_of "$i" tls)/1k") ;;
    tcp_bulk) CMD=("${wrk[@]}" -c"$BULK_CONNS" "http://127.0.0.1:$(port_of "$i" tcp)/10m") ;;
    tcp_cps) CMD=("${wrk[@]}" -c"$HS_CONNS" -H 'Connection: close' "http://127.0.0.1:$(port_of "$i" tcp)/1k") ;;
    tls_bulk) CMD=("${wrk[@]}" -c"$BULK_CONNS" "https://127.0.0.1:$(port_of "$i" tls)/10m") ;;
    lat_https) CMD=(wrk -t1 -d"${d}s" --timeout 5s --latency -c"$LAT_CONNS" -s "$TPL/delay.lua" "https://127.0.0.1:$(port_of "$i" https)/1k") ;;
    lat_tcp) CMD=(wrk -t1 -d"${d}s" --timeout 5s --latency -c"$LAT_CONNS" -s "$TPL/delay.lua" "http://127.0.0.1:$(port_of "$i" tcp)/1k") ;;
    *) return 1 ;;
  esac
}

skip() { # skip TEST PROXY REASON
  printf '{"kind": "skip", "test": "%s", "proxy": "%s", "reason": "%s"}\n' "$1" "$2" "$3" >>"$RESULTS"
}

mem_test() { # mem_test INSTANCE TEST
  local i=$1 t=$2 n=$MEM_CONNS port req=1 plain=0
  [[ $t == mem_noreq ]] && req=0
  port=$(port_of "$i" https)
  if [[ $t == mem_tcp* || $t == mem_tls ]]; then
    # every idle L4 connection also holds a backend connection: 2 fds in the
    # proxy, 1 in the backend nginx; one request through it, then idle
    port=$(port_of "$i" tcp); plain=1; req=1
    [[ $t == mem_tcp_noreq ]] && req=0
    [[ $t == mem_tls ]] && { port=$(port_of "$i" tls); plain=0; }
    ((n > (FD_LIMIT - 2000) / 2)) && n=$(((FD_LIMIT - 2000) / 2))
  fi
  log "$t: $n idle connections to ${INST[$i]} (request=$req)"
  timeout -k 5 300 python3 "$LIB" mem --port "$port" --n "$n" --pids "${I_PIDS[$i]}" \
    --jsonl "$RESULTS" --cpus "$(load_cpus "${I_W[$i]}")" --request "$req" --plain "$plain" \
    --meta test="$t" --meta proxy="${I_PROXY[$i]}" --meta workers="${I_W[$i]}" --meta rep=1 --meta unit=KiB/conn \
    || log "WARNING: $t test of ${INST[$i]} failed"
  # allocators and haproxy's pools keep freed memory: the next measurement
  # on this instance gets a fresh process
  restart_instance "$i"
}

restart_instance() {
  local p
  for p in ${I_PIDS[$1]}; do kill_group "$p"; done
  I_PIDS[$1]=""
  start_instance "$1"
}

run_tests() {
  local t i rep mode
  for t in $TESTS; do
    mode=$(needs_mode "$t")
    [[ -n $mode ]] || die "unknown test $t"
    for p in $PROXIES; do
      [[ $p == vipd && " $VIPD_MODES " != *" $mode "* ]] && skip "$t" vipd "vipd has no $mode yet"
    done
    if [[ $t == mem* ]]; then
      for i in "${!INST[@]}"; do has_mode "$i" "$mode" && mem_test "$i" "$t"; done
      continue
    fi
    # warm-up, not recorded (fills upstream pools, ticket keys, caches)
    if ((!SMOKE)); then
      for i in "${!INST[@]}"; do
        has_mode "$i" "$mode" || continue
        test_cmd "$t" "$i" 1
        local lc; lc=$(load_cpus "${I_W[$i]}")
        if [[ -n $lc ]]; then CMD=(taskset -c "$lc" "${CMD[@]}"); fi
        BENCH_DELAY_MS=$LAT_DELAY_MS timeout -k 2 20 "${CMD[@]}" >/dev/null 2>&1
      done
    fi
    for rep in $(seq "$REPS"); do
      for i in "${!INST[@]}"; do
        has_mode "$i" "$mode" || continue
        kill -0 "${I_PIDS[$i]%% *}" 2>/dev/null || { log "WARNING: ${INST[$i]} is not running"; continue; }
        test_cmd "$t" "$i" "$DURATION"
        BENCH_DELAY_MS=$LAT_DELAY_MS python3 "$LIB" load --raw "$OUT/raw/$t.${INST[$i]}.$rep.txt" --jsonl "$RESULTS" \
          --timeout $((DURATION + 20)) --cpus "$(load_cpus "${I_W[$i]}")" --proxy-pids "${I_PIDS[$i]}" \
          --meta test="$t" --meta proxy="${I_PROXY[$i]}" --meta workers="${I_W[$i]}" --meta rep="$rep" \
          --meta unit="$(unit_of "$t")" --meta load_cpus="$(load_cpus "${I_W[$i]}")" \
          --meta threads="$(load_threads "${I_W[$i]}")" -- "${CMD[@]}"
      done
    done
  done
}

# -------------------------------------------------------------- reporting
write_results() {
  local table=$1 f=$RESULTS_FILE
  mkdir -p "$(dirname "$f")"
  {
    echo "# vipd benchmark results"
    echo
    echo "Generated by \`bench/run.sh\`; re-run it to refresh this file."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- command: \`$CMDLINE\` (as root, from the repository root)"
    echo "- machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr), $(awk '/MemTotal/{printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
    echo "- load average at start: $LOADAVG"
    if python3 -c "import sys; sys.exit(0 if float('${LOADAVG%% *}') > 0.5 * $NCPU else 1)"; then
      echo "- **WARNING: the machine was busy when this run started (load average ${LOADAVG%% *} on $NCPU CPUs): these numbers are noise.**"
    fi
    ((QUICK)) && echo "- **quick mode: one short run per figure; a smoke signal, not a measurement.**"
    echo "- vipd: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet HEAD 2>/dev/null || echo ' (dirty)') built with profile $VIPD_PROFILE, RUST_LOG=$VIPD_LOG; serves: ${VIPD_MODES:-nothing}"
    echo "- $(haproxy -v | head -1)"
    echo "- $(nginx -v 2>&1)"
    echo "- $(openssl version); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); h2load $(h2load --version | awk '{print $2}')"
    echo "- settings: DURATION=${DURATION}s REPS=$REPS WORKERS='$WORKERS_LIST' CONNS=$CONNS HS_CONNS=$HS_CONNS H2=${H2_CONNS}x$H2_STREAMS BULK_CONNS=$BULK_CONNS LAT=${LAT_CONNS}conns/${LAT_DELAY_MS}ms MEM_CONNS=$MEM_CONNS"
    echo "- CPU placement: 1-worker proxies on CPU ${PROXY_CPU:-any}, load generator + backend nginx on CPU ${LOAD_CPU:-any}; 2-worker proxies on ${PROXY_CPUS2:-all CPUs (unpinned, shared with the load generator)}"
    echo
    echo "Method: wrk 4.1 (HTTP/1.1, OpenSSL client, TLS 1.3) and h2load (HTTP/2) against 127.0.0.1; each load run is"
    echo "bounded (${DURATION}s, killed after $((DURATION + 20))s). Handshake figures open a new connection per request"
    echo "('Connection: close'); wrk resumes with the server's ticket when it gets one (checked: haproxy reports 100 %"
    echo "session reuse on the ticket listener, 0 % on the no-resume one). p99 latency: wrk --latency with $LAT_CONNS"
    echo "keep-alive connections each pausing ${LAT_DELAY_MS} ms between requests (Lua delay(); a closed loop at a"
    echo "moderate rate, not wrk2's open-loop rate, which Debian does not ship). Memory: VmRSS growth of the proxy's"
    echo "processes divided by the idle connections opened, on a fresh process."
    echo
    echo "Figures are medians of $REPS run(s); in brackets the figure per proxy core (figure / share of one core the"
    echo "proxy process used, utime+stime). Ratios are vipd / peer (raw, and per core in brackets). For p99 and"
    echo "memory lower is better. Targets are issue 8's, as vipd/haproxy per core (raw for p99 and memory)."
    echo
    cat "$table"
    echo
    echo "Functional checks (backends seen through each listener; TLS resumption on the ticket and no-resume listeners; ALPN):"
    echo
    cat "$OUT/checks.md" 2>/dev/null
    echo
    echo "Raw outputs of this run were in \`$OUT\`. Profiles and explanations of the gaps: \`bench/ANALYSIS.md\`."
  } >"$f"
  log "wrote $f"
}

# ------------------------------------------------------------------- main
main() {
  mkdir -p "$WORK/logs" "$WORK/tmp"
  stale_cleanup
  trap cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM
  [[ $(id -u) == 0 ]] || log "note: not root; packages must already be installed"
  ensure_deps
  ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  FD_LIMIT=$(ulimit -n); [[ $FD_LIMIT == unlimited ]] && FD_LIMIT=200000
  MAXCONN=$((FD_LIMIT - 1000)); ((MAXCONN > 100000)) && MAXCONN=100000
  if ((MEM_CONNS > FD_LIMIT - 2000)); then
    log "MEM_CONNS lowered from $MEM_CONNS to $((FD_LIMIT - 2000)): the fd limit is $FD_LIMIT (ulimit -Hn)"
    MEM_CONNS=$((FD_LIMIT - 2000))
  fi
  cpu_plan
  LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
  mkdir -p "$OUT/raw"
  RESULTS=$OUT/results.jsonl
  : >"$RESULTS"; : >"$OUT/checks.md"
  log "out: $OUT; $NCPU CPUs, load average $LOADAVG; fd limit $FD_LIMIT"
  ((QUICK)) && log "quick mode: 1 short run per figure: the numbers are a smoke signal, not a measurement"
  build_vipd
  make_fixtures
  start_backend
  if [[ " $PROXIES " == *" vipd "* ]]; then detect_vipd_modes; fi
  local w p i
  for w in $WORKERS_LIST; do
    for p in $PROXIES; do add_instance "$p" "$w"; done
  done
  for i in "${!INST[@]}"; do start_instance "$i"; done
  sleep 0.5
  for i in "${!INST[@]}"; do [[ -n ${I_PIDS[$i]} ]] && check_instance "$i"; done
  run_tests
  python3 "$LIB" summary "$RESULTS" "$OUT/table.md" "$PROXIES" >/dev/null || die "summary failed"
  echo
  cat "$OUT/table.md"
  write_results "$OUT/table.md"
  log "done in $(($(date +%s) - T_START))s; results: $RESULTS_FILE, raw: $OUT"
  if ((SMOKE)); then
    python3 "$LIB" check "$RESULTS" "$PROXIES" || exit 1
  fi
}

main "$@"
