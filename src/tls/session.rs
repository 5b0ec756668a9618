//! Lifetimes for resumed sessions (nginx `ssl_session_timeout`): rustls'
//! session cache keeps an entry until it is pushed out, and its ticketer
//! accepts a ticket for as long as its key lives (up to 12 hours). These
//! wrappers stamp each cached session and each ticket with the time it
//! was made (in milliseconds), and refuse it once `[tls] session_timeout` or
//! `ticket_lifetime` has passed since; the client then does a full
//! handshake. The stamp is inside the encrypted ticket, so a client cannot
//! change it. Stamping the birth (not the end) makes a new lifetime apply
//! at once to what was issued before a reload.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::{ProducesTickets, StoresServerSessions};

/// Milliseconds since the epoch, the stamp's unit.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `value` with its birth stamp in front.
fn stamp(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&now().to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The value behind a stamp younger than `lifetime`.
fn unstamp(stamped: Vec<u8>, lifetime: Duration) -> Option<Vec<u8>> {
    let born = u64::from_be_bytes(stamped.get(..8)?.try_into().ok()?);
    let age = now().checked_sub(born)?;
    (u128::from(age) < lifetime.as_millis()).then(|| stamped[8..].to_vec())
}

/// A session cache whose entries last `lifetime`.
#[derive(Debug)]
pub(super) struct TimedCache {
    pub(super) inner: Arc<dyn StoresServerSessions>,
    pub(super) lifetime: Duration,
}

impl StoresServerSessions for TimedCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, stamp(&value))
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        unstamp(self.inner.get(key)?, self.lifetime)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        unstamp(self.inner.take(key)?, self.lifetime)
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// A ticketer whose tickets last `lifetime` (and say so to clients).
#[derive(Debug)]
pub(super) struct TimedTickets {
    pub(super) inner: Arc<dyn ProducesTickets>,
    pub(super) lifetime: Duration,
}

impl ProducesTickets for TimedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(&stamp(plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        unstamp(self.inner.decrypt(cipher)?, self.lifetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_ticket_is_refused_by_the_server_whatever_the_client_keeps() {
        let keys = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        let tickets = TimedTickets {
            inner: keys.clone(),
            lifetime: Duration::from_secs(60),
        };
        assert_eq!(tickets.lifetime(), 60);
        let ticket = tickets.encrypt(b"resumption secret").unwrap();
        assert_eq!(
            tickets.decrypt(&ticket).as_deref(),
            Some(&b"resumption secret"[..])
        );
        // a ticket issued 61 s ago under the same keys
        let mut old = (now() - 61_000).to_be_bytes().to_vec();
        old.extend_from_slice(b"resumption secret");
        let old = keys.encrypt(&old).unwrap();
        assert_eq!(tickets.decrypt(&old), None);
    }

    #[test]
    fn a_stamp_is_refused_once_its_lifetime_has_passed() {
        let fresh = stamp(b"session");
        assert_eq!(
            unstamp(fresh.clone(), Duration::from_secs(1)).as_deref(),
            Some(&b"session"[..])
        );
        let mut old = fresh;
        old[..8].copy_from_slice(&(now() - 300_000).to_be_bytes());
        assert_eq!(unstamp(old.clone(), Duration::from_secs(300)), None);
        assert!(unstamp(old, Duration::from_secs(301)).is_some());
        assert_eq!(unstamp(b"short".to_vec(), Duration::from_secs(60)), None);
    }
}
