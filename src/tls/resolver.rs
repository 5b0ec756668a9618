//! SNI certificate selection for one listener.
//!
//! Lookup order: the exact SNI name, then the `*.` wildcard for its parent
//! domain (one label), then the listener's default vhost, unless the
//! listener is `strict_sni`, in which case the handshake is refused. Among
//! the certificates of the chosen vhost, the first whose key can sign with
//! one of the client's signature schemes wins, so a vhost with an ECDSA and
//! an RSA certificate serves ECDSA to modern clients and RSA to the rest.
//!
//! A resolver is immutable: a reload builds new resolvers (and new rustls
//! `ServerConfig`s) and swaps them in with the proxy snapshot, so a
//! handshake never takes a lock and always sees one consistent set.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificates of one vhost, in configuration order.
pub type CertList = Arc<[Arc<CertifiedKey>]>;

/// Chooses a listener's certificate from the client's SNI.
#[derive(Debug, Default)]
pub struct SniResolver {
    /// Exact host names, lower case.
    exact: HashMap<Box<str>, CertList>,
    /// Wildcards keyed by the part after `*.`.
    wildcard: HashMap<Box<str>, CertList>,
    /// Answer for absent or unknown SNI; `None` refuses (strict SNI).
    default: Option<CertList>,
}

impl SniResolver {
    /// An empty resolver; `default` answers absent or unknown names
    /// (`None` refuses them).
    pub fn new(default: Option<CertList>) -> Self {
        Self {
            default,
            ..Self::default()
        }
    }

    /// Serve `certs` for `host` (an exact name or `*.suffix`, lower case).
    /// The first vhost to claim a name keeps it; returns false for a
    /// duplicate.
    pub fn insert(&mut self, host: &str, certs: CertList) -> bool {
        let (map, key) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, host),
        };
        if map.contains_key(key) {
            return false;
        }
        map.insert(key.into(), certs);
        true
    }

    /// The certificates for SNI `name` (`None`: the client sent no SNI).
    pub fn lookup(&self, name: Option<&str>) -> Option<&CertList> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        // The same normal form as the Host a request is routed by.
        let Some(name) = crate::authority::server_name(name) else {
            return self.default.as_ref();
        };
        let name = &*name;
        if let Some(c) = self.exact.get(name) {
            return Some(c);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return Some(c);
            }
        }
        self.default.as_ref()
    }

    /// The first certificate whose key can sign with one of `schemes`.
    pub fn choose(certs: &CertList, schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        certs
            .iter()
            .find(|c| c.key.choose_scheme(schemes).is_some())
            .cloned()
    }

    /// Number of exact and wildcard names served.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether no name is served (the default may still answer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.lookup(hello.server_name())?;
        Self::choose(certs, hello.signature_schemes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A one-certificate list for `name`; lists are told apart by pointer.
    fn certs(name: &str) -> CertList {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let der = CertificateDer::from(ck.cert.der().to_vec());
        let certified = CertifiedKey::from_der(vec![der], key, &provider).unwrap();
        Arc::from(vec![Arc::new(certified)])
    }

    fn same(a: Option<&CertList>, b: &CertList) -> bool {
        a.is_some_and(|a| Arc::ptr_eq(a, b))
    }

    #[test]
    fn exact_names_win_over_wildcards_which_win_over_the_default() {
        let (exact, wild, default) = (certs("a.example.com"), certs("*.example.com"), certs("d"));
        let mut r = SniResolver::new(Some(default.clone()));
        assert!(r.insert("a.example.com", exact.clone()));
        assert!(r.insert("*.example.com", wild.clone()));
        assert!(same(r.lookup(Some("a.example.com")), &exact));
        assert!(same(r.lookup(Some("b.example.com")), &wild));
        assert!(same(r.lookup(Some("example.com")), &default));
        assert!(same(r.lookup(Some("x.b.example.com")), &default));
        assert!(same(r.lookup(None), &default));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn lookups_ignore_case_and_a_trailing_dot() {
        let exact = certs("a.example.com");
        let mut r = SniResolver::new(None);
        r.insert("a.example.com", exact.clone());
        assert!(same(r.lookup(Some("A.Example.COM")), &exact));
        assert!(same(r.lookup(Some("a.example.com.")), &exact));
    }

    #[test]
    fn without_a_default_unknown_and_absent_names_resolve_to_nothing() {
        let mut r = SniResolver::new(None);
        r.insert("a.example.com", certs("a.example.com"));
        assert!(r.lookup(Some("b.example.com")).is_none());
        assert!(r.lookup(None).is_none());
    }

    #[test]
    fn the_first_vhost_to_claim_a_name_keeps_it() {
        let (first, second) = (certs("a"), certs("b"));
        let mut r = SniResolver::new(None);
        assert!(r.insert("a.example.com", first.clone()));
        assert!(!r.insert("a.example.com", second));
        assert!(same(r.lookup(Some("a.example.com")), &first));
    }

    #[test]
    fn the_certificate_chosen_is_the_first_that_can_sign_an_offered_scheme() {
        let list = certs("a.example.com");
        let ecdsa = [SignatureScheme::ECDSA_NISTP256_SHA256];
        let rsa = [SignatureScheme::RSA_PSS_SHA256];
        assert!(SniResolver::choose(&list, &ecdsa).is_some());
        assert!(SniResolver::choose(&list, &rsa).is_none());
    }
}
