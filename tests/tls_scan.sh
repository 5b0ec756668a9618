#!/usr/bin/env bash
# TLS scan: runs testssl.sh (Debian package testssl.sh, command `testssl`)
# against a vipd TLS listener on 127.0.0.1 and fails if it offers anything
# below TLS 1.2, a weak cipher category, or is reported vulnerable.
# Certificate trust checks are left out: the scan uses a self-signed
# certificate made by `vipd gen-cert`.
# Usage: bash tests/tls_scan.sh   (builds vipd if needed; needs testssl, python3)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v testssl >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends testssl.sh bsdextrautils >/dev/null; }
cargo build --locked -q
vipd=$PWD/target/debug/vipd
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$vipd" gen-cert --names scan.test --out-dir "$work" --stem scan >/dev/null
# A backend answering HTTP, so that testssl's HTTP probes get answers.
python3 -m http.server --bind 127.0.0.1 0 --directory "$work" >"$work/backend.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/backend.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "tls_scan: backend did not start" >&2; exit 1; }
cat >"$work/vipd.toml" <<CONF
[[listener]]
name = "scan"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "web"

[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:$port" }]

[[vhost]]
name = "scan"
hosts = ["scan.test"]
pool = "web"
certificates = [{ cert = "scan.crt", key = "scan.key" }]
CONF
RUST_LOG=warn,vipd::app=info "$vipd" run -c "$work/vipd.toml" 2>"$work/vipd.log" &
pids+=($!)
for _ in $(seq 100); do
  addr=$(sed -n 's/.*listener=scan addr=\([0-9.:]*\).*/\1/p' "$work/vipd.log" | head -1)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/vipd.log" >&2; echo "tls_scan: vipd did not start" >&2; exit 1; }

echo "tls_scan: scanning $addr (protocols, cipher categories, forward secrecy, vulnerabilities)"
testssl --quiet --color 0 --warnings off --fast --ip one \
  -p -s -f -U --jsonfile "$work/scan.json" "$addr" >"$work/scan.txt" 2>&1 || true
[ -s "$work/scan.json" ] || { cat "$work/scan.txt"; echo "tls_scan: no scan result" >&2; exit 1; }

python3 - "$work/scan.json" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
by_id = {f["id"]: f for f in findings}
bad = []
for proto in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]:
    f = by_id.get(proto)
    if f is None or "not offered" not in f["finding"]:
        bad.append(f"{proto}: {f['finding'] if f else 'missing from the scan'}")
for proto in ["TLS1_2", "TLS1_3"]:
    f = by_id.get(proto)
    if f is None or not f["finding"].startswith("offered"):
        bad.append(f"{proto} should be offered: {f['finding'] if f else 'missing'}")
for f in findings:
    if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and not f["id"].startswith("scanProblem"):
        bad.append(f"{f['id']} [{f['severity']}]: {f['finding']}")
    if f["id"].startswith("scanProblem"):
        bad.append(f"scan problem: {f['finding']}")
print(f"tls_scan: {len(findings)} findings checked")
if bad:
    print("tls_scan: FAILED:\n  " + "\n  ".join(bad))
    sys.exit(1)
print("tls_scan: no protocol below TLS 1.2, no weak cipher, no vulnerability reported")
PY
