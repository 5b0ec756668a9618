//! Hashing schedulers: `sh` (source hashing, ip_vs_sh.c) and `mh` (Maglev
//! consistent hashing, ip_vs_mh.c). Both map a client address to a bucket
//! of a table built once per backend set; a pick is one hash and one lookup.
//!
//! Both behave as the kernel's `*-fallback` flag variants (`ipvsadm -b
//! sh-fallback` / `mh-fallback`): when the client's backend is unavailable,
//! they look for another one from the same hash instead of refusing.

use std::net::{IpAddr, SocketAddr};

use super::{Backend, Scheduler, gcd_weight, mix64};

/// Fold a client address to 32 bits as the kernel does: the IPv4 address,
/// or the xor of the four 32-bit words of an IPv6 one.
fn fold(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u32) ^ ((v >> 32) as u32) ^ ((v >> 64) as u32) ^ ((v >> 96) as u32)
        }
    }
}

/// The kernel's hash_32: multiply by the golden ratio, keep the top bits.
fn hash_32(v: u32, bits: u32) -> u32 {
    v.wrapping_mul(0x61C8_8647) >> (32 - bits)
}

/// `sh` (`ipvsadm -s sh -b sh-fallback`): the client address hashes to one
/// of 2^bits buckets, filled round robin with each backend taking `weight`
/// consecutive buckets (at least one), as ip_vs_sh_reassign does. The table
/// has the kernel's default 256 buckets, grown to the next power of two
/// when the weights add up to more, so that every backend gets a bucket.
/// Source port is not hashed (no `sh-port`).
#[derive(Debug)]
pub struct SourceHash {
    bits: u32,
    /// Backend index of each bucket.
    buckets: Vec<u32>,
}

/// The kernel's default IP_VS_SH_TAB_BITS.
const SH_BITS: u32 = 8;

impl SourceHash {
    /// Fill the buckets for `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        let total: u64 = backends.iter().map(|b| u64::from(b.weight().max(1))).sum();
        let mut bits = SH_BITS;
        while (1u64 << bits) < total && bits < 20 {
            bits += 1;
        }
        let size = 1usize << bits;
        let mut buckets = Vec::with_capacity(size);
        let (mut d, mut count) = (0usize, 0u32);
        while !backends.is_empty() && buckets.len() < size {
            buckets.push(d as u32);
            count += 1;
            if count >= backends[d].weight() {
                d = (d + 1) % backends.len();
                count = 0;
            }
        }
        Self { bits, buckets }
    }
}

impl Scheduler for SourceHash {
    fn pick(&self, backends: &[Backend], client: IpAddr) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let size = self.buckets.len();
        let mask = size - 1;
        let h = hash_32(fold(client), self.bits) as usize;
        let first = self.buckets[h] as usize;
        if backends[first].available() {
            return Some(first);
        }
        // ip_vs_sh_get_fallback: walk the table from the client's bucket.
        (0..size).find_map(|offset| {
            let roffset = (offset + h) % size;
            let i = self.buckets[(roffset + h) & mask] as usize;
            backends[i].available().then_some(i)
        })
    }
}

/// `mh` (`ipvsadm -s mh -b mh-fallback`): Maglev consistent hashing
/// (Eisenbud et al., NSDI 2016) as ip_vs_mh_populate builds it. Each
/// backend has a permutation of the table's slots (`offset`, `skip` from a
/// hash of its address); backends take turns claiming their next free slot,
/// each taking `weight / gcd` slots per turn (scaled down for large weights
/// as the kernel does), until the table is full. Adding or removing one of
/// N backends moves about 1/N of the clients.
///
/// The hash is splitmix64 rather than the kernel's hsiphash: fixed, so every
/// vipd instance and every build maps clients the same way.
#[derive(Debug)]
pub struct Maglev {
    /// Backend index of each slot; empty when no backend has a weight.
    table: Vec<u32>,
}

const MH_SEED_OFFSET: u64 = 0x9e37_79b9_7f4a_7c15;
const MH_SEED_SKIP: u64 = 0xc2b2_ae3d_27d4_eb4f;
const MH_SEED_CLIENT: u64 = 0x1656_67b1_9e37_79f9;

fn hash_backend(addr: SocketAddr, seed: u64) -> u64 {
    let ip = match addr.ip() {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    };
    mix64(mix64(mix64(seed ^ ip as u64) ^ (ip >> 64) as u64) ^ u64::from(addr.port()))
}

fn hash_client(client: IpAddr, offset: u64) -> u64 {
    mix64(MH_SEED_CLIENT ^ (u64::from(fold(client)) + offset))
}

impl Maglev {
    /// Populate a table of `size` slots (a prime) for `backends`; backends
    /// of weight 0 get no slot.
    pub fn new(backends: &[Backend], size: u32) -> Self {
        let m = size.max(1) as usize;
        if backends.iter().all(|b| b.weight() == 0) {
            return Self { table: Vec::new() };
        }
        let gcd = gcd_weight(backends);
        let max = backends.iter().map(Backend::weight).max().unwrap_or(1) / gcd;
        // ip_vs_mh_shift_weight: keep turns within IP_VS_MH_TAB_BITS bits.
        let tab_bits = m.ilog2() / 2;
        let shift = (32 - max.leading_zeros()).saturating_sub(tab_bits);
        struct Setup {
            perm: usize,
            skip: usize,
            turns: u32,
        }
        let mut setup: Vec<Setup> = backends
            .iter()
            .map(|b| Setup {
                perm: (hash_backend(b.address, MH_SEED_OFFSET) % m as u64) as usize,
                skip: (hash_backend(b.address, MH_SEED_SKIP) % (m as u64 - 1).max(1)) as usize + 1,
                turns: (b.weight() / gcd) >> shift,
            })
            .collect();
        // A weight shifted to 0 turns would leave its backend out; give
        // every weighted backend at least one turn.
        for (s, b) in setup.iter_mut().zip(backends) {
            if b.weight() > 0 && s.turns == 0 {
                s.turns = 1;
            }
        }
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (d, s) in setup.iter_mut().enumerate() {
                for _ in 0..s.turns {
                    while table[s.perm] != u32::MAX {
                        s.perm = (s.perm + s.skip) % m;
                    }
                    table[s.perm] = d as u32;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Self { table }
    }
}

/// Rehash attempts when a client's backend is unavailable, before the walk
/// over the backend list that always finds one if any is available.
const MH_FALLBACK_TRIES: u64 = 32;

impl Scheduler for Maglev {
    fn pick(&self, backends: &[Backend], client: IpAddr) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        let h = hash_client(client, 0);
        let first = self.table[(h % m) as usize] as usize;
        if backends[first].available() {
            return Some(first);
        }
        // ip_vs_mh_get_fallback rehashes with growing offsets.
        let found = (1..=MH_FALLBACK_TRIES).find_map(|offset| {
            let i = self.table[(hash_client(client, offset) % m) as usize] as usize;
            backends[i].available().then_some(i)
        });
        found.or_else(|| {
            let n = backends.len();
            let start = (h % n as u64) as usize;
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| backends[i].available())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    #[test]
    fn sh_fills_buckets_round_robin_by_weight_as_the_kernel() {
        let b = backends(&[2, 0, 1]);
        let sh = SourceHash::new(&b);
        assert_eq!(sh.buckets.len(), 256);
        assert_eq!(&sh.buckets[..8], &[0, 0, 1, 2, 0, 0, 1, 2]);
        let big = backends(&vec![1; 300]);
        assert_eq!(SourceHash::new(&big).buckets.len(), 512);
    }

    #[test]
    fn sh_maps_a_client_to_the_kernel_bucket() {
        let b = backends(&[1; 256]);
        let sh = SourceHash::new(&b);
        // hash_32(0x0a000001, 8) = (0x0a000001 * 0x61c88647) >> 24
        let want = (0x0a00_0001u32.wrapping_mul(0x61c8_8647) >> 24) as usize;
        assert_eq!(sh.pick(&b, "10.0.0.1".parse().unwrap()), Some(want));
    }

    #[test]
    fn sh_is_stable_per_client_and_spreads_by_weight_over_100k_clients() {
        let w = [2, 1, 1];
        let b = backends(&w);
        let sh = SourceHash::new(&b);
        for i in 0..1000 {
            assert_eq!(sh.pick(&b, client(i)), sh.pick(&b, client(i)));
        }
        assert_weighted(&counts(&sh, &b, 100_000, false), &w);
    }

    #[test]
    fn sh_falls_back_only_for_clients_of_an_unavailable_backend() {
        let b = backends(&[1, 1, 1, 1]);
        let sh = SourceHash::new(&b);
        let before: Vec<_> = (0..1000).map(|i| sh.pick(&b, client(i)).unwrap()).collect();
        b[1].state.healthy.store(false, Ordering::Relaxed);
        for (i, was) in before.iter().enumerate() {
            let now = sh.pick(&b, client(i as u32)).unwrap();
            if *was == 1 {
                assert_ne!(now, 1);
            } else {
                assert_eq!(now, *was);
            }
        }
    }

    #[test]
    fn mh_spreads_by_weight_over_100k_clients() {
        let w = [4, 3, 2, 1];
        let b = backends(&w);
        let mh = Maglev::new(&b, 65_537);
        let slots = (0..4)
            .map(|d| mh.table.iter().filter(|&&x| x == d).count())
            .collect::<Vec<_>>();
        assert_eq!(slots.iter().sum::<usize>(), 65_537);
        assert_weighted(&slots.iter().map(|&s| s as u32).collect::<Vec<_>>(), &w);
        // Clients hash like random draws: a 10% share over 100k clients has
        // a 0.95% relative standard deviation, so count over 1M clients.
        assert_weighted(&counts(&mh, &b, 1_000_000, false), &w);
    }

    fn owners(mh: &Maglev, b: &[Backend], clients: u32) -> HashMap<u32, SocketAddr> {
        (0..clients)
            .map(|i| (i, b[mh.pick(b, client(i)).unwrap()].address))
            .collect()
    }

    #[test]
    fn mh_removing_one_of_ten_backends_moves_about_a_tenth_of_clients() {
        let ten = backends(&[1; 10]);
        let before = owners(&Maglev::new(&ten, 65_537), &ten, 100_000);
        let removed = ten[3].address;
        let nine: Vec<Backend> = ten
            .iter()
            .filter(|b| b.address != removed)
            .cloned()
            .collect();
        let after = owners(&Maglev::new(&nine, 65_537), &nine, 100_000);
        let on_removed = before.values().filter(|a| **a == removed).count();
        let moved = before.iter().filter(|(c, a)| after[c] != **a).count();
        // Everyone on the removed backend moves, and few others do.
        assert!((9_000..11_000).contains(&on_removed), "{on_removed}");
        assert!(moved >= on_removed);
        assert!(
            moved < on_removed + 2_000,
            "{moved} clients moved for {on_removed} on the removed backend"
        );
    }

    #[test]
    fn mh_unhealthy_backend_moves_only_its_own_clients() {
        let b = backends(&[1; 5]);
        let mh = Maglev::new(&b, 251);
        let before: Vec<_> = (0..2000).map(|i| mh.pick(&b, client(i)).unwrap()).collect();
        b[2].state.healthy.store(false, Ordering::Relaxed);
        for (i, was) in before.iter().enumerate() {
            let now = mh.pick(&b, client(i as u32)).unwrap();
            assert_eq!(now == *was, *was != 2);
        }
    }
}
