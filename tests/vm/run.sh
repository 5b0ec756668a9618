#!/usr/bin/env bash
# Real-kernel IPVS test suite: builds vipd and the `ipvs_kernel` test binary
# (feature vm-tests), boots Debian's stock kernel in QEMU (tests/vm/run-vm.sh)
# with the repository shared over 9p, runs tests/vm/guest.sh in it, and exits
# with the guest's status. Run as root: bash tests/vm/run.sh
# The first run installs qemu-system-x86, ipvsadm, busybox-static, nftables
# and curl and caches the kernel in /var/tmp/ipvs-vm (about 75 s more; two
# runs at once are safe, see run-vm.sh). VIPD_VM_FILTER=TEXT runs only the
# tests whose names contain TEXT. A warm run takes about 3 minutes on 2 cores
# (build, ~10 s initramfs, ~170 s guest under TCG).
set -euo pipefail
t0=$(date +%s)
cd "$(dirname "$0")/../.."
repo=$PWD
elapsed() { echo $(( $(date +%s) - t0 ))s; }

echo "vm: building vipd and the in-VM tests"
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
if ! cargo test --locked --features vm-tests --test ipvs_kernel --no-run 2>"$build_log"; then
  cat "$build_log" >&2; exit 1
fi
test_bin=$(sed -n 's/.*Executable .*(\(.*\))$/\1/p' "$build_log" | tail -1)
[ -n "$test_bin" ] || { cat "$build_log" >&2; echo "vm: test binary not found" >&2; exit 1; }
# cargo prints the path relative to the repository when the target
# directory is inside it, and absolute otherwise (CARGO_TARGET_DIR elsewhere)
case $test_bin in /*) ;; *) test_bin=$repo/$test_bin ;; esac
echo "vm: built in $(elapsed): $test_bin"
# Stripped copies go into the initramfs: a 70 MB debug binary read over 9p
# costs about a second per process start under TCG.
bins=$(mktemp -d /var/tmp/vipd-vm-bin.XXXXXX)
trap 'rm -f "$build_log"; rm -rf "$bins"' EXIT
strip -g -o "$bins/vipd" "$(dirname "$test_bin")/../vipd"
strip -g -o "$bins/ipvs_kernel" "$test_bin"

set +e
# nft marks the fwmark-98 group; curl is the client with several source
# addresses (--interface); both are installed on the host if missing
bash tests/vm/run-vm.sh --timeout "${VIPD_VM_TIMEOUT:-1200}" --share "$repo" --nft --curl \
  --bin "$bins/vipd" --bin "$bins/ipvs_kernel" tests/vm/guest.sh "$bins/ipvs_kernel" "$bins/vipd" "${VIPD_VM_FILTER:-}"
rc=$?
set -e
echo "vm: IPVS kernel suite $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)") in $(elapsed)"
exit $rc
