//! Property tests for the decoders that read bytes from the network or the
//! kernel: the PROXY protocol parser and the IPVS netlink decoder never panic,
//! and a header vipd encodes parses back to the same addresses.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use vipd::ipvs::{Family, attrs};
use vipd::proxy::proxy_protocol::{self, Parsed};

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    #[test]
    fn the_proxy_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = proxy_protocol::parse(&bytes);
    }

    #[test]
    fn the_proxy_parser_never_panics_on_mutated_v1_and_v2_headers(
        v4 in any::<bool>(), a in any::<[u8; 16]>(), pa in any::<u16>(), pb in any::<u16>(),
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..6),
    ) {
        let (src, dst) = if v4 {
            (SocketAddr::new(IpAddr::from([a[0], a[1], a[2], a[3]]), pa), SocketAddr::new(IpAddr::from([a[4], a[5], a[6], a[7]]), pb))
        } else {
            (SocketAddr::new(IpAddr::from(a), pa), SocketAddr::new(IpAddr::from(a.map(|x| !x)), pb))
        };
        let mut v2 = proxy_protocol::encode_v2(src, dst);
        // Unmutated, what vipd sends parses back to the same addresses.
        match proxy_protocol::parse(&v2) {
            Ok(Parsed::Complete { header, len }) => {
                prop_assert_eq!(len, v2.len());
                prop_assert_eq!(header.source, Some(src));
                prop_assert_eq!(header.destination, Some(dst));
            }
            other => prop_assert!(false, "own header did not parse: {:?}", other),
        }
        let mut v1 = format!("PROXY TCP{} {} {} {} {}\r\n", if v4 { 4 } else { 6 }, src.ip(), dst.ip(), pa, pb).into_bytes();
        for (i, b) in &flips {
            let n = v2.len();
            v2[i % n] = *b;
            let n = v1.len();
            v1[i % n] = *b;
        }
        let _ = proxy_protocol::parse(&v2);
        let _ = proxy_protocol::parse(&v1);
        for cut in 0..v1.len() {
            let _ = proxy_protocol::parse(&v1[..cut]);
        }
    }

    #[test]
    fn the_ipvs_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(msgs) = attrs::messages(&bytes) {
            for m in &msgs {
                let _ = attrs::reply(m);
            }
        }
        let _ = attrs::attributes(&bytes);
        let _ = attrs::parse_service(&bytes);
        let _ = attrs::parse_dest(&bytes, Family::Inet);
        let _ = attrs::parse_dest(&bytes, Family::Inet6);
        let _ = attrs::parse_stats(&bytes, true);
        let _ = attrs::parse_stats(&bytes, false);
        let _ = attrs::parse_info(&bytes);
        let _ = attrs::parse_family_id(&bytes);
    }
}
