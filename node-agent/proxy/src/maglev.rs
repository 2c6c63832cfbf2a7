//! Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4).
//!
//! Each backend gets a permutation of the table's entries from two hashes
//! of its identity (address, port, protocol); backends then take turns
//! claiming their next preferred free entry until the table is full. The
//! result depends only on the set of backends, never on ids, order of
//! arrival or the node computing it, so every node sends a given flow to
//! the same backend; each backend owns `M / N` entries (rounded), and a
//! backend joining or leaving moves few entries besides its own.
//!
//! The hashes are written out here rather than taken from `std` (whose
//! `DefaultHasher` may change between Rust releases): nodes running agents
//! built by different compilers must agree on every table.

use coxswain_ebpf_common::{MAGLEV_TABLE_SIZE, MaglevTable};

use crate::keys::BackendKey;

/// Marks an entry no backend claimed yet while the table fills.
const EMPTY: u32 = u32::MAX;

/// The lookup table for `backends` (each with the id it has in this
/// node's maps). Backends are taken in their identity order, so callers may
/// pass them in any order. `None` when there is no backend (the Service
/// rejects its traffic and needs no table).
pub(crate) fn table(backends: &[(BackendKey, u32)]) -> Option<Box<MaglevTable>> {
    table_of_size(backends, MAGLEV_TABLE_SIZE).map(|entries| {
        let boxed: Box<[u32]> = entries.into_boxed_slice();
        boxed
            .try_into()
            .expect("table_of_size returns exactly MAGLEV_TABLE_SIZE entries")
    })
}

/// [`table`] for a table of `size` entries (a prime).
fn table_of_size(backends: &[(BackendKey, u32)], size: usize) -> Option<Vec<u32>> {
    if backends.is_empty() {
        return None;
    }
    let m = size as u64;
    let mut sorted: Vec<(BackendKey, u32)> = backends.to_vec();
    sorted.sort_unstable_by_key(|(key, _)| *key);
    sorted.dedup_by_key(|(key, _)| *key);
    // (offset, skip) of each backend's permutation: entry j of backend i's
    // preference list is (offset + j * skip) mod M; skip in 1..M, coprime
    // with the prime M, so the list visits every entry.
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|(key, _)| {
            let identity = identity(key);
            (
                hash64(OFFSET_SEED, &identity) % m,
                hash64(SKIP_SEED, &identity) % (m - 1) + 1,
            )
        })
        .collect();
    // Each backend's position in its preference list, advanced by adding
    // `skip` modulo M (no division on the hot loop).
    let mut position: Vec<u64> = perms.iter().map(|&(offset, _)| offset).collect();
    let mut entries = vec![EMPTY; size];
    let mut filled = 0;
    loop {
        for (i, &(_, id)) in sorted.iter().enumerate() {
            let skip = perms[i].1;
            let mut c = position[i];
            while entries[c as usize] != EMPTY {
                c += skip;
                if c >= m {
                    c -= m;
                }
            }
            entries[c as usize] = id;
            c += skip;
            if c >= m {
                c -= m;
            }
            position[i] = c;
            filled += 1;
            if filled == size {
                return Some(entries);
            }
        }
    }
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// A backend's identity bytes: address, port (big endian), protocol.
fn identity(key: &BackendKey) -> [u8; 7] {
    let [a, b, c, d] = key.addr.octets();
    let [p, q] = key.port.to_be_bytes();
    [a, b, c, d, p, q, key.protocol.number()]
}

/// FNV-1a over `bytes` from `seed`, then splitmix64's finalizer so that
/// every input bit reaches every output bit.
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &byte in bytes {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A digest of a table, to tell whether the maps hold the wanted one
/// without keeping 64 KiB per Service in the agent.
pub(crate) fn digest(table: &[u32]) -> u64 {
    table.iter().fold(0x9e37_79b9_7f4a_7c15, |h: u64, &id| {
        (h ^ u64::from(id)).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::keys::Protocol;

    fn backends(hosts: impl IntoIterator<Item = u8>) -> Vec<(BackendKey, u32)> {
        hosts
            .into_iter()
            .map(|host| {
                (
                    BackendKey {
                        addr: Ipv4Addr::new(10, 244, 1, host),
                        port: 8080,
                        protocol: Protocol::Tcp,
                    },
                    u32::from(host),
                )
            })
            .collect()
    }

    fn shares(table: &[u32]) -> BTreeMap<u32, usize> {
        let mut shares = BTreeMap::new();
        for &id in table {
            *shares.entry(id).or_default() += 1;
        }
        shares
    }

    #[test]
    fn every_backend_owns_an_equal_share() {
        for n in [1u8, 2, 3, 7, 10, 64, 100] {
            let table = table(&backends(1..=n)).unwrap();
            let shares = shares(&table[..]);
            assert_eq!(shares.len(), usize::from(n), "n={n}: every backend has entries");
            let (lo, hi) = (MAGLEV_TABLE_SIZE / usize::from(n), MAGLEV_TABLE_SIZE.div_ceil(usize::from(n)));
            for (id, share) in shares {
                assert!((lo..=hi).contains(&share), "n={n}: backend {id} owns {share}, not {lo}..={hi}");
            }
        }
    }

    #[test]
    fn the_table_depends_on_the_backends_not_on_ids_or_order() {
        let a = backends([1, 2, 3, 4, 5]);
        let mut b: Vec<_> = a.iter().rev().map(|&(key, id)| (key, id + 100)).collect();
        b.swap(0, 2);
        let (ta, tb) = (table(&a).unwrap(), table(&b).unwrap());
        assert!(ta.iter().zip(tb.iter()).all(|(x, y)| x + 100 == *y));
        assert_eq!(table(&[]), None);
    }

    /// Removing one backend of N moves its own entries and few others; adding
    /// one takes about 1/(N+1) of the entries, nearly all from others' fair
    /// shares rather than reshuffling them.
    #[test]
    fn a_backend_change_moves_few_other_entries() {
        for n in [3u8, 10, 50] {
            let before = table(&backends(1..=n)).unwrap();
            let after = table(&backends(2..=n)).unwrap();
            let moved_others = before
                .iter()
                .zip(after.iter())
                .filter(|(b, a)| **b != 1 && b != a)
                .count();
            // Upstream's paper measures a few percent at worst for small M/N.
            assert!(
                moved_others * 100 < MAGLEV_TABLE_SIZE * 2,
                "n={n}: {moved_others} of {MAGLEV_TABLE_SIZE} entries of remaining backends moved"
            );
        }
    }

    /// The exact table is part of the node-to-node contract (every agent
    /// must compute the same): a change to the hash or fill order fails here.
    #[test]
    fn tables_are_stable_across_builds() {
        let table = table_of_size(&backends([1, 2, 3]), 13).unwrap();
        assert_eq!(table, [2, 1, 2, 1, 3, 3, 2, 1, 3, 3, 1, 1, 2]);
        assert_eq!(hash64(0, b"coxswain"), 0x283a_b448_cfca_b314);
    }
}
