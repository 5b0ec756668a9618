//! Golden-byte tests: the vectors were captured from ipvsadm 1.31 talking to
//! Linux 6.1 (`strace -e trace=sendmsg -e write=all`), with seq/pid zeroed and
//! the dynamic family id 0x20 (32) of that boot.

use super::*;

const FAMILY: u16 = 0x20;

/// Hex (whitespace and `#` comments ignored) to bytes.
fn hex(s: &str) -> Vec<u8> {
    let digits: String = s
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.chars().filter(|c| c.is_ascii_hexdigit()))
        .collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

fn tcp(addr: &str) -> ServiceKey {
    ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: addr.parse().unwrap(),
    }
}

fn dr(addr: &str, weight: u32) -> Dest {
    Dest {
        addr: addr.parse().unwrap(),
        forward: Forward::Dr,
        weight,
        upper_threshold: 0,
        lower_threshold: 0,
    }
}

/// `ipvsadm -A -t 192.0.2.10:80 -s wrr` (NEW_SERVICE, 104 bytes)
const NEW_SERVICE_TCP: &str = "
    68000000 2000 0500 00000000 00000000   # nlmsghdr: len 104, type 0x20, REQUEST|ACK, seq, pid
    01 01 0000                             # genlmsghdr: cmd NEW_SERVICE, version 1
    5400 0180                              # nest SERVICE (1|NLA_F_NESTED), 84 bytes
      0600 0100 0200 0000                  #   AF = AF_INET (u16, padded)
      0600 0200 0600 0000                  #   PROTOCOL = TCP
      1400 0300 c000020a 00000000 00000000 00000000  # ADDR 192.0.2.10 in 16 bytes
      0600 0400 0050 0000                  #   PORT 80, big-endian
      0800 0600 77727200                   #   SCHED_NAME \"wrr\\0\"
      0c00 0700 00000000 ffffffff          #   FLAGS {flags 0, mask ~0}
      0800 0800 00000000                   #   TIMEOUT 0
      0800 0900 ffffffff                   #   NETMASK 255.255.255.255
";

/// `ipvsadm -A -f 99 -s rr -p 300` (NEW_SERVICE, 76 bytes)
const NEW_SERVICE_FWM: &str = "
    4c000000 2000 0500 00000000 00000000   # nlmsghdr: len 76
    01 01 0000                             # NEW_SERVICE v1
    3800 0180                              # nest SERVICE, 56 bytes
      0600 0100 0200 0000                  #   AF = AF_INET
      0800 0500 63000000                   #   FWMARK 99
      0700 0600 72720000                   #   SCHED_NAME \"rr\\0\" + 1 pad byte
      0c00 0700 01000000 ffffffff          #   FLAGS {PERSISTENT, mask ~0}
      0800 0800 2c010000                   #   TIMEOUT 300
      0800 0900 ffffffff                   #   NETMASK 255.255.255.255
";

/// `ipvsadm -a -t 192.0.2.10:80 -r 192.0.2.21:80 -g -w 1` (NEW_DEST, 200 bytes)
const NEW_DEST_TCP: &str = "
    c8000000 2000 0500 00000000 00000000   # nlmsghdr: len 200
    05 01 0000                             # NEW_DEST v1
    5400 0180                              # nest SERVICE, 84 bytes (the identity + defaults)
      0600 0100 0200 0000                  #   AF = AF_INET
      0600 0200 0600 0000                  #   PROTOCOL = TCP
      1400 0300 c000020a 00000000 00000000 00000000  # ADDR 192.0.2.10
      0600 0400 0050 0000                  #   PORT 80
      0500 0600 00000000                   #   SCHED_NAME \"\" (just the NUL)
      0c00 0700 00000000 ffffffff          #   FLAGS {0, ~0}
      0800 0800 00000000                   #   TIMEOUT 0
      0800 0900 ffffffff                   #   NETMASK
    6000 0280                              # nest DEST (2|NLA_F_NESTED), 96 bytes
      0600 0b00 0200 0000                  #   ADDR_FAMILY = AF_INET
      1400 0100 c0000215 00000000 00000000 00000000  # ADDR 192.0.2.21
      0600 0200 0050 0000                  #   PORT 80
      0800 0300 03000000                   #   FWD_METHOD = DROUTE
      0800 0400 01000000                   #   WEIGHT 1
      0500 0d00 00000000                   #   TUN_TYPE = IPIP (u8)
      0600 0e00 0000 0000                  #   TUN_PORT 0
      0600 0f00 0000 0000                  #   TUN_FLAGS 0
      0800 0500 00000000                   #   U_THRESH 0
      0800 0600 00000000                   #   L_THRESH 0
";

/// `ipvsadm -a -f 99 -r 192.0.2.21:0 -g -w 1` (NEW_DEST, 172 bytes)
const NEW_DEST_FWM: &str = "
    ac000000 2000 0500 00000000 00000000   # nlmsghdr: len 172
    05 01 0000                             # NEW_DEST v1
    3800 0180                              # nest SERVICE, 56 bytes
      0600 0100 0200 0000                  #   AF = AF_INET
      0800 0500 63000000                   #   FWMARK 99
      0500 0600 00000000                   #   SCHED_NAME \"\"
      0c00 0700 00000000 ffffffff          #   FLAGS {0, ~0}
      0800 0800 00000000                   #   TIMEOUT 0
      0800 0900 ffffffff                   #   NETMASK
    6000 0280                              # nest DEST, 96 bytes
      0600 0b00 0200 0000                  #   ADDR_FAMILY = AF_INET
      1400 0100 c0000215 00000000 00000000 00000000  # ADDR 192.0.2.21
      0600 0200 0000 0000                  #   PORT 0 (fwmark service)
      0800 0300 03000000                   #   FWD_METHOD = DROUTE
      0800 0400 01000000                   #   WEIGHT 1
      0500 0d00 00000000                   #   TUN_TYPE
      0600 0e00 0000 0000                  #   TUN_PORT
      0600 0f00 0000 0000                  #   TUN_FLAGS
      0800 0500 00000000                   #   U_THRESH
      0800 0600 00000000                   #   L_THRESH
";

/// `ipvsadm -A -t [2001:db8::10]:443 -s sh -p 60` (NEW_SERVICE, 104 bytes)
const NEW_SERVICE_V6: &str = "
    68000000 2000 0500 00000000 00000000   # nlmsghdr: len 104
    01 01 0000                             # NEW_SERVICE v1
    5400 0180                              # nest SERVICE, 84 bytes
      0600 0100 0a00 0000                  #   AF = AF_INET6
      0600 0200 0600 0000                  #   PROTOCOL = TCP
      1400 0300 20010db8 00000000 00000000 00000010  # ADDR 2001:db8::10
      0600 0400 01bb 0000                  #   PORT 443
      0700 0600 73680000                   #   SCHED_NAME \"sh\\0\"
      0c00 0700 01000000 ffffffff          #   FLAGS {PERSISTENT, ~0}
      0800 0800 3c000000                   #   TIMEOUT 60
      0800 0900 80000000                   #   NETMASK: IPv6 prefix length 128
";

fn fwm_service() -> Service {
    let mut s = Service::new(
        ServiceKey::Fwmark {
            mark: 99,
            family: Family::Inet,
        },
        "rr",
    );
    s.timeout = Some(300);
    s
}

#[test]
fn new_service_tcp_matches_ipvsadm_byte_for_byte() {
    let svc = Service::new(tcp("192.0.2.10:80"), "wrr");
    assert_eq!(
        Request::NewService(&svc).encode(FAMILY, 0),
        hex(NEW_SERVICE_TCP)
    );
}

#[test]
fn new_service_fwmark_persistent_matches_ipvsadm_byte_for_byte() {
    assert_eq!(
        Request::NewService(&fwm_service()).encode(FAMILY, 0),
        hex(NEW_SERVICE_FWM)
    );
}

#[test]
fn new_service_ipv6_matches_ipvsadm_byte_for_byte() {
    let mut svc = Service::new(tcp("[2001:db8::10]:443"), "sh");
    svc.timeout = Some(60);
    assert_eq!(
        Request::NewService(&svc).encode(FAMILY, 0),
        hex(NEW_SERVICE_V6)
    );
}

#[test]
fn new_dest_matches_ipvsadm_byte_for_byte() {
    let key = tcp("192.0.2.10:80");
    let d = dr("192.0.2.21:80", 1);
    assert_eq!(
        Request::NewDest(&key, &d).encode(FAMILY, 0),
        hex(NEW_DEST_TCP)
    );
}

#[test]
fn new_dest_for_fwmark_matches_ipvsadm_byte_for_byte() {
    let key = ServiceKey::Fwmark {
        mark: 99,
        family: Family::Inet,
    };
    let d = dr("192.0.2.21:0", 1);
    assert_eq!(
        Request::NewDest(&key, &d).encode(FAMILY, 0),
        hex(NEW_DEST_FWM)
    );
}

/// Decodes a request as if it were a kernel reply: one message, no ack.
fn nest(bytes: &[u8], ty: u16) -> Vec<u8> {
    let msgs = messages(bytes).unwrap();
    assert_eq!(msgs.len(), 1);
    let Reply::Data { attrs, .. } = reply(&msgs[0]).unwrap() else {
        panic!("not data")
    };
    top_nest(attrs, ty, "nest").unwrap().to_vec()
}

#[test]
fn golden_services_decode_back_to_the_same_service() {
    for (golden, want) in [
        (NEW_SERVICE_TCP, Service::new(tcp("192.0.2.10:80"), "wrr")),
        (NEW_SERVICE_FWM, fwm_service()),
        (NEW_SERVICE_V6, {
            let mut s = Service::new(tcp("[2001:db8::10]:443"), "sh");
            s.timeout = Some(60);
            s
        }),
    ] {
        let got = parse_service(&nest(&hex(golden), IPVS_CMD_ATTR_SERVICE)).unwrap();
        assert_eq!(got.to_service(), want);
        assert_eq!(got.stats, Stats::default());
    }
}

#[test]
fn golden_dests_decode_back_to_the_same_dest() {
    for (golden, want) in [
        (NEW_DEST_TCP, dr("192.0.2.21:80", 1)),
        (NEW_DEST_FWM, dr("192.0.2.21:0", 1)),
    ] {
        let got = parse_dest(&nest(&hex(golden), IPVS_CMD_ATTR_DEST), Family::Inet).unwrap();
        assert_eq!(got.dest, want);
        assert!(got.is_idle());
    }
}

#[test]
fn every_forwarding_method_threshold_and_netmask_round_trips() {
    for forward in [Forward::Dr, Forward::Nat, Forward::Tunnel] {
        let key = tcp("[2001:db8::10]:80");
        let d = Dest {
            addr: "[2001:db8::21]:80".parse().unwrap(),
            forward,
            weight: 7,
            upper_threshold: 100,
            lower_threshold: 10,
        };
        let bytes = Request::SetDest(&key, &d).encode(FAMILY, 9);
        let got = parse_dest(&nest(&bytes, IPVS_CMD_ATTR_DEST), Family::Inet6).unwrap();
        assert_eq!(got.dest, d);
    }
    for (family, prefix) in [(Family::Inet, 24), (Family::Inet, 0), (Family::Inet6, 64)] {
        let mut s = Service::new(ServiceKey::Fwmark { mark: 7, family }, "lc");
        s.timeout = Some(30);
        s.netmask = prefix;
        s.flags = IP_VS_SVC_F_ONEPACKET;
        let got = parse_service(&nest(
            &Request::SetService(&s).encode(FAMILY, 1),
            IPVS_CMD_ATTR_SERVICE,
        ))
        .unwrap();
        assert_eq!(got.to_service(), s);
    }
}

#[test]
fn ipv4_netmask_is_sent_in_network_byte_order() {
    let mut s = Service::new(tcp("192.0.2.10:80"), "rr");
    s.timeout = Some(360);
    s.netmask = 24;
    let bytes = Request::NewService(&s).encode(FAMILY, 0);
    assert_eq!(&bytes[bytes.len() - 4..], &[0xff, 0xff, 0xff, 0x00]);
}

#[test]
fn delete_and_dump_requests_carry_the_right_command_and_flags() {
    let key = tcp("192.0.2.10:80");
    let del = Request::DelDest(&key, "192.0.2.21:80".parse().unwrap()).encode(FAMILY, 5);
    assert_eq!(&del[4..8], &hex("2000 0500"));
    assert_eq!(del[16], IPVS_CMD_DEL_DEST);
    let dump = Request::GetServices.encode(FAMILY, 6);
    // nlmsghdr: len 20 (header + genl header only), REQUEST|DUMP, seq 6
    assert_eq!(dump, hex("14000000 2000 0103 06000000 00000000 04 01 0000"));
    let fam = get_family(1, "IPVS");
    // GETFAMILY to GENL_ID_CTRL with CTRL_ATTR_FAMILY_NAME "IPVS\0" (len 9, padded to 12)
    assert_eq!(
        fam,
        hex("20000000 1000 0500 01000000 00000000 03 01 0000 0900 0200 49505653 00000000")
    );
}

#[test]
fn ack_error_and_done_are_recognised() {
    // NLMSG_ERROR -17 (EEXIST) followed by the echoed request header, then DONE
    let buf = hex(
        "24000000 0200 0000 01000000 00000000 efffffff 14000000 2000 0500 01000000 00000000
                   14000000 0300 0200 02000000 00000000 00000000",
    );
    let msgs = messages(&buf).unwrap();
    assert_eq!(reply(&msgs[0]).unwrap(), Reply::Error(libc::EEXIST));
    assert_eq!(reply(&msgs[1]).unwrap(), Reply::Done);
    let ack =
        hex("24000000 0200 0000 01000000 00000000 00000000 14000000 2000 0500 01000000 00000000");
    assert_eq!(reply(&messages(&ack).unwrap()[0]).unwrap(), Reply::Ack);
}

#[test]
fn stats64_replies_decode_all_counters() {
    // a GET_SERVICE reply nest as the kernel sends it: identity, sched, flags
    // (PERSISTENT|HASHED), timeout, netmask, then STATS64
    let mut m = MsgBuilder::new(FAMILY, 0, 0, IPVS_CMD_NEW_SERVICE, 1);
    let n = m.begin_nest(IPVS_CMD_ATTR_SERVICE);
    m.put_u16(IPVS_SVC_ATTR_AF, AF_INET);
    m.put_u32(IPVS_SVC_ATTR_FWMARK, 99);
    m.put_str(IPVS_SVC_ATTR_SCHED_NAME, "rr");
    m.put(IPVS_SVC_ATTR_FLAGS, &hex("03000000 ffffffff"));
    m.put_u32(IPVS_SVC_ATTR_TIMEOUT, 300);
    m.put(IPVS_SVC_ATTR_NETMASK, &hex("ffffff00"));
    let s = m.begin_nest(IPVS_SVC_ATTR_STATS64);
    for (i, ty) in (IPVS_STATS_ATTR_CONNS..=IPVS_STATS_ATTR_OUTBPS).enumerate() {
        m.put(ty, &(i as u64 + 1).to_ne_bytes());
    }
    m.end_nest(s);
    m.end_nest(n);
    let got = parse_service(&nest(&m.finish(), IPVS_CMD_ATTR_SERVICE)).unwrap();
    assert_eq!(got.netmask, 24);
    assert!(got.persistent());
    assert_eq!(got.flags, IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_HASHED);
    let want = Stats {
        conns: 1,
        inpkts: 2,
        outpkts: 3,
        inbytes: 4,
        outbytes: 5,
        cps: 6,
        inpps: 7,
        outpps: 8,
        inbps: 9,
        outbps: 10,
    };
    assert_eq!(got.stats, want);
}

#[test]
fn parse_errors_name_the_nest_and_attribute() {
    // a DEST nest whose PORT attribute is one byte long
    let buf = hex(
        "0600 0b00 0200 0000  1400 0100 c0000215 00000000 00000000 00000000  0500 0200 00000000",
    );
    let err = parse_dest(&buf, Family::Inet).unwrap_err();
    assert_eq!(err.to_string(), "dest > attr PORT: 1 bytes, expected 2");
    let err = parse_service(&hex("0600 0100 0200 0000")).unwrap_err();
    assert_eq!(err.to_string(), "service > attr PROTOCOL: missing");
    let err = messages(&hex("30000000 0200 0000")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "netlink message at byte 0: 8 bytes left, header needs 16"
    );
}
