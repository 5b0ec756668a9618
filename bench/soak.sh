#!/usr/bin/env bash
# Soak: mixed HTTP, HTTPS and TCP load through vipd with a SIGHUP every 5 s,
# for a fixed time; reports errors (must be 0), RSS after warm-up, every
# 60 s and at the end, and open file descriptors before and after. Not part
# of `cargo test`.
# Usage (as root, from the repo root): bash bench/soak.sh [--duration SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=180
[ "${1:-}" = "--duration" ] && DURATION=$2
command -v wrk >/dev/null || apt-get install -y -qq --no-install-recommends wrk >/dev/null
cargo build --release --locked -q
vipd=$PWD/target/release/vipd
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$vipd" gen-cert --names soak.test --out-dir "$work" --stem soak >/dev/null
# Backends: the two hyper backends of `vipd demo` (127.0.0.11:9000, 127.0.0.12:9000;
# the demo also listens on 8080, 8081 and 8443, unused here).
RUST_LOG=error "$vipd" demo >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.12:9000/ && break; sleep 0.1; done
cat >"$work/vipd.toml" <<CONF
[global]
access_log = "off"

[[listener]]
name = "http"
bind = "127.0.0.1:18911"
protocol = "http"
default_vhost = "soak"

[[listener]]
name = "https"
bind = "127.0.0.1:18912"
protocol = "https"
default_vhost = "soak"

[[listener]]
name = "tcp"
bind = "127.0.0.1:18913"
protocol = "tcp"
pool = "web"

[[vhost]]
name = "soak"
hosts = ["soak.test"]
pool = "web"
certificates = [{ cert = "soak.crt", key = "soak.key" }]

[[pool]]
name = "web"
scheduler = "wrr"
backends = [{ address = "127.0.0.11:9000" }, { address = "127.0.0.12:9000" }]
# Short upstream idle timeout, so that pooled connections are gone when the
# open descriptors are counted at the end.
idle_timeout = "2s"
CONF
RUST_LOG=warn "$vipd" run -c "$work/vipd.toml" 2>"$work/vipd.log" &
vpid=$!; pids+=($vpid)
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18911/index.html && break; sleep 0.1; done
kill -0 "$vpid" 2>/dev/null || { cat "$work/vipd.log"; echo "soak: vipd did not start" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$vpid/status"; }
fds() { ls "/proc/$vpid/fd" | wc -l; }
fd0=$(fds)

# Warm-up with the same mix (reloads and tcp included: the first reload
# builds a second snapshot while connections still hold the first), then
# the baseline RSS.
tcp_loop() { # seconds -> "ok bad" on stdout
  local end ok=0 bad=0
  end=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    if curl -sf -o /dev/null --max-time 5 http://127.0.0.1:18913/index.html; then ok=$((ok+1)); else bad=$((bad+1)); fi
  done
  echo "$ok $bad"
}
wrk -t1 -c32 -d15s http://127.0.0.1:18911/index.html >/dev/null &
warm1=$!
wrk -t1 -c32 -d15s -H "Host: soak.test" https://127.0.0.1:18912/index.html >/dev/null &
warm2=$!
tcp_loop 15 >/dev/null &
warm3=$!
for _ in 1 2; do sleep 5; kill -HUP "$vpid"; done
wait "$warm1" "$warm2" "$warm3"
rss0=$(rss)
echo "soak: ${DURATION}s of mixed load with SIGHUP every 5 s (vipd pid $vpid)"
wrk -t1 -c32 -d"${DURATION}s" http://127.0.0.1:18911/index.html >"$work/http.txt" 2>&1 &
w1=$!
wrk -t1 -c32 -d"${DURATION}s" -H "Host: soak.test" https://127.0.0.1:18912/index.html >"$work/https.txt" 2>&1 &
w2=$!
tcp_loop "$DURATION" >"$work/tcp.txt" &
w3=$!
hups=0
series="$rss0"
end=$(( $(date +%s) + DURATION ))
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 5; kill -HUP "$vpid"; hups=$((hups+1))
  if [ $((hups % 12)) -eq 0 ]; then series="$series $(rss)"; fi
done
wait "$w1" "$w2" "$w3"
sleep 4
rss1=$(rss); fd1=$(fds)

errs() { # socket errors + non-2xx from a wrk report
  local s n
  s=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$1"); n=$(awk '/Non-2xx/ {print $5}' "$1")
  echo $(( ${s:-0} + ${n:-0} ))
}
reqs() { awk '/requests in/ {print $1}' "$1"; }
read -r tcp_ok tcp_bad <"$work/tcp.txt"
http_err=$(errs "$work/http.txt"); https_err=$(errs "$work/https.txt")
reload_fail=$(grep -c "reload failed" "$work/vipd.log" || true)
growth=$(awk -v a="$rss0" -v b="$rss1" 'BEGIN{printf "%.1f", (b-a)*100/a}')
cat <<OUT
| figure | value |
|---|---|
| duration | ${DURATION} s, SIGHUP x ${hups} |
| http requests / errors | $(reqs "$work/http.txt") / ${http_err} |
| https requests / errors | $(reqs "$work/https.txt") / ${https_err} |
| tcp connections / errors | ${tcp_ok} / ${tcp_bad} |
| failed reloads | ${reload_fail} |
| RSS after warm-up -> end | ${rss0} KiB -> ${rss1} KiB (${growth} %) |
| RSS every 60 s (KiB) | ${series// / -> } |
| open fds before -> after | ${fd0} -> ${fd1} |
OUT
cat "$work/http.txt" "$work/https.txt" | grep -E "Socket|Non-2xx" || true
total=$(( http_err + https_err + tcp_bad + reload_fail ))
[ "$total" -eq 0 ] || { echo "soak: FAILED with $total errors"; exit 1; }
echo "soak: OK"
