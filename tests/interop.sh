#!/usr/bin/env bash
# Interop check of the HTTP proxy with independent clients: curl over
# HTTP/1.1 and HTTP/2 (h2c prior knowledge and TLS with ALPN) and h2load,
# against the built vipd binary in front of `vipd demo`'s backends
# (127.0.0.11:9000 and 127.0.0.12:9000). Installs curl and nghttp2-client if missing.
#
# Usage: tests/interop.sh   (from the repository root; builds vipd first)
set -euo pipefail
cd "$(dirname "$0")/.."

HTTP_PORT=${HTTP_PORT:-18080}
HTTPS_PORT=${HTTPS_PORT:-18443}

if ! command -v curl >/dev/null || ! command -v h2load >/dev/null; then
  echo "installing curl and nghttp2-client"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ca-certificates curl nghttp2-client >/dev/null
fi

cargo build --locked --quiet
VIPD=target/debug/vipd

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$VIPD" gen-cert --names www.example.test,secure.example.test --out-dir "$work" --stem site >/dev/null
cat >"$work/vipd.toml" <<TOML
[global]
access_log = "off"

[[listener]]
name = "http"
bind = "127.0.0.1:$HTTP_PORT"
protocol = "http"
default_vhost = "www"

[[listener]]
name = "https"
bind = "127.0.0.1:$HTTPS_PORT"
protocol = "https"
default_vhost = "www"

[[pool]]
name = "demo"
backends = [{ address = "127.0.0.11:9000" }, { address = "127.0.0.12:9000" }]

[[vhost]]
name = "www"
hosts = ["www.example.test"]
pool = "demo"
hsts_max_age = "1d"
certificates = [{ cert = "$work/site.crt", key = "$work/site.key" }]

[[vhost]]
name = "secure"
hosts = ["secure.example.test"]
redirect_https = true
pool = "demo"
certificates = [{ cert = "$work/site.crt", key = "$work/site.key" }]
TOML

"$VIPD" demo >"$work/demo.log" 2>&1 &
pids+=($!)
"$VIPD" run --config "$work/vipd.toml" >"$work/vipd.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
  if curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/" && curl -s -o /dev/null "http://127.0.0.12:9000/"; then
    break
  fi
  sleep 0.1
done

failures=0
check() { # name expected actual
  if [[ "$2" == "$3" ]]; then
    echo "ok   $1"
  else
    echo "FAIL $1: expected [$2], got [$3]"
    failures=$((failures + 1))
  fi
}

resolve=(--resolve "www.example.test:$HTTPS_PORT:127.0.0.1" --resolve "secure.example.test:$HTTPS_PORT:127.0.0.1" --cacert "$work/site.crt")
fmt='%{http_code} %{http_version}'

check "curl --http1.1 over http" "200 1.1" \
  "$(curl -s -o /dev/null -w "$fmt" --http1.1 -H 'Host: www.example.test' "http://127.0.0.1:$HTTP_PORT/")"
check "curl --http2-prior-knowledge over http" "200 2" \
  "$(curl -s -o /dev/null -w "$fmt" --http2-prior-knowledge "http://127.0.0.1:$HTTP_PORT/")"
check "curl --http1.1 over https" "200 1.1" \
  "$(curl -s -o /dev/null -w "$fmt" --http1.1 "${resolve[@]}" "https://www.example.test:$HTTPS_PORT/")"
check "curl --http2 over https (ALPN)" "200 2" \
  "$(curl -s -o /dev/null -w "$fmt" --http2 "${resolve[@]}" "https://www.example.test:$HTTPS_PORT/")"
check "backend body through the proxy" "hello from" \
  "$(curl -s --http2 "${resolve[@]}" "https://www.example.test:$HTTPS_PORT/" | head -1 | cut -c1-10)"
check "HSTS on https" "strict-transport-security: max-age=86400" \
  "$(curl -s -D - -o /dev/null "${resolve[@]}" "https://www.example.test:$HTTPS_PORT/" | tr -d '\r' | grep -i '^strict-transport-security' | tr 'A-Z' 'a-z')"
check "redirect to https" "308 https://secure.example.test/a?b=1" \
  "$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' -H 'Host: secure.example.test' "http://127.0.0.1:$HTTP_PORT/a?b=1")"
check "SNI/Host mismatch is 421" "421" \
  "$(curl -s -o /dev/null -w '%{http_code}' --http1.1 "${resolve[@]}" -H 'Host: secure.example.test' "https://www.example.test:$HTTPS_PORT/")"

h2load_check() { # name args...
  local name=$1
  shift
  local out
  out=$(h2load "$@" 2>&1 || true)
  check "$name" "1000 succeeded, 0 failed; 1000 2xx" \
    "$(echo "$out" | sed -n 's/^requests: .* \([0-9]* succeeded, [0-9]* failed\).*/\1/p'); $(echo "$out" | sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1 2xx/p')"
}
h2load_check "h2load -n 1000 h2 over https" -n 1000 -c 10 -m 10 "https://127.0.0.1:$HTTPS_PORT/"
h2load_check "h2load -n 1000 h2c" -n 1000 -c 10 -m 10 "http://127.0.0.1:$HTTP_PORT/"
h2load_check "h2load -n 1000 http/1.1" --h1 -n 1000 -c 10 "http://127.0.0.1:$HTTP_PORT/"

if ((failures > 0)); then
  echo "interop: $failures check(s) failed; vipd log:"
  tail -n 50 "$work/vipd.log"
  exit 1
fi
echo "interop: all checks passed"
