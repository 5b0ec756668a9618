#!/usr/bin/bash
# Runs inside the IPVS VM (see run.sh): the real-kernel tests of vipd.
# Usage: guest.sh TEST_BINARY VIPD_BINARY [FILTER]
# (FILTER: run only the tests whose names contain it, in their stage)
# 1. table tests in the initial network namespace;
# 2. DR topology: client -- router -- LAN(director, rs1, rs2, sorry), VIPs
#    on the real servers' lo with arp_ignore=1/arp_announce=2, then the
#    e2e_dr tests inside the director namespace. The client has eight more
#    addresses (203.0.113.11-18: "several clients", curl --interface); VIP2
#    ports 80/443 carry fwmark 99 (tc), VIP3 ports 80/443 fwmark 98 (nft);
#    `sorry` (198.51.100.13) answers "sorry" on port 80;
# 3. NAT topology: nclient -- natdir -- LAN(nrs1, nrs2), then the e2e_nat tests
#    inside the natdir namespace.
# Addresses are documentation ranges inside VM-private namespaces; the VM has
# no NIC. Every process start costs ~0.1 s under TCG: `ip -n NS` (one process)
# is used instead of `ip netns exec NS ip` (two) wherever possible.
set -uo pipefail
T=$1 FILTER=${3:-}
export VIPD_BIN=$2 VIPD_IPVS_VM=1 RUST_BACKTRACE=1
rc=0
t() { cut -d' ' -f1 /proc/uptime; }
tests() { # [ns NAME] BINARY PREFIX: the tests named PREFIX* (and FILTER), one at a time
  local n=$# prefix=${!#} names
  names=$("${@:n-1:1}" --list 2>/dev/null | sed -n 's/: test$//p' | grep -E "(^|::)$prefix" | grep -F -- "$FILTER")
  [ -n "$names" ] || return 0
  # shellcheck disable=SC2086
  "${@:1:n-1}" --exact $names --test-threads=1 || rc=1
}

echo "== table tests (init netns) at $(t)s"
tests "$T" table_

ns() { ip netns exec "$@"; }
mkns() { ip netns add "$1"; ip -n "$1" link set lo up; }
plug() { # ns ifname cidr lan-ns: veth from ns into the bridge br0 of lan-ns
  ip link add "$2" netns "$1" type veth peer name "p-$1" netns "$4"
  ip -n "$4" link set "p-$1" master br0 up
  ip -n "$1" addr add "$3" dev "$2"; ip -n "$1" link set "$2" up
}
serve() { # ns name port...: busybox httpd answering its own name
  mkdir -p "/tmp/www-$1"; echo "$2" > "/tmp/www-$1/index.html"
  local p; for p in "${@:3}"; do ns "$1" busybox httpd -p "0.0.0.0:$p" -h "/tmp/www-$1"; done
}

echo "== DR topology at $(t)s"
VIP=198.51.100.100 VIP2=198.51.100.101 VIP3=198.51.100.102
mkns lan; ip -n lan link add br0 type bridge; ip -n lan link set br0 up
for n in client router director rs1 rs2 sorry; do mkns "$n"; done
ip link add eth0 netns client type veth peer name c0 netns router
ip -n client addr add 203.0.113.2/24 dev eth0; ip -n client link set eth0 up
for i in $(seq 11 18); do ip -n client addr add 203.0.113.$i/24 dev eth0; done
ip -n client route add default via 203.0.113.1
ip -n router addr add 203.0.113.1/24 dev c0; ip -n router link set c0 up
plug router eth1 198.51.100.1/24 lan
ns router sysctl -qw net.ipv4.ip_forward=1
plug director eth0 198.51.100.10/24 lan
plug rs1 eth0 198.51.100.11/24 lan
plug rs2 eth0 198.51.100.12/24 lan
plug sorry eth0 198.51.100.13/24 lan
# the router sends the VIPs to the director, which has ip_forward=0 and no
# route back to the client: a reply that reaches the client came from a real server
for v in $VIP $VIP2 $VIP3; do
  ip -n router route add $v/32 via 198.51.100.10
  ip -n director addr add $v/32 dev eth0
done
for r in rs1 rs2 sorry; do
  ns $r sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
    net.ipv4.conf.lo.arp_ignore=1 net.ipv4.conf.lo.arp_announce=2
  for v in $VIP $VIP2 $VIP3; do ip -n $r addr add $v/32 dev lo; done
  ip -n $r route add default via 198.51.100.1
done
serve rs1 rs1 80 443; serve rs2 rs2 80 443; serve sorry sorry 80
# fwmark 99 for VIP2 ports 80 and 443 (what nft/iptables would do on a real director)
tc -n director qdisc add dev eth0 ingress
for p in 80 443; do
  tc -n director filter add dev eth0 ingress protocol ip prio 1 u32 \
    match ip dst $VIP2/32 match ip dport $p 0xffff action skbedit mark 99
done
# fwmark 98 for VIP3 ports 80 and 443, set by nftables as on most directors
ns director nft -f - <<EOF
table ip vipd_test {
  chain pre { type filter hook prerouting priority mangle; policy accept;
    ip daddr $VIP3 tcp dport { 80, 443 } meta mark set 98
  }
}
EOF
echo "== e2e DR tests (director netns) at $(t)s"
tests ns director "$T" e2e_dr_

echo "== NAT topology at $(t)s"
mkns nlan; ip -n nlan link add br0 type bridge; ip -n nlan link set br0 up
for n in nclient natdir nrs1 nrs2; do mkns "$n"; done
ip link add eth0 netns nclient type veth peer name c0 netns natdir
ip -n nclient addr add 203.0.113.2/24 dev eth0; ip -n nclient link set eth0 up
ip -n nclient route add default via 203.0.113.1
ip -n natdir addr add 203.0.113.1/24 dev c0; ip -n natdir addr add 203.0.113.100/32 dev c0
ip -n natdir link set c0 up
plug natdir eth1 192.0.2.1/24 nlan
plug nrs1 eth0 192.0.2.11/24 nlan
plug nrs2 eth0 192.0.2.12/24 nlan
ns natdir sysctl -qw net.ipv4.ip_forward=1 net.ipv4.vs.conntrack=1
for r in 1 2; do ip -n nrs$r route add default via 192.0.2.1; serve nrs$r rs$r-nat 8080; done
echo "== e2e NAT tests (natdir netns) at $(t)s"
tests ns natdir "$T" e2e_nat_

echo "== guest done at $(t)s, rc=$rc"
exit $rc
