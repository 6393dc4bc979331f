//! `iphash` and `iphash1`: the client's IP address decides the backend.
//!
//! Both use fixed hash functions (FNV-1a over the bytes, then a splitmix64 finaliser for
//! well-mixed low and high bits), never std's randomly seeded `RandomState`, so a client
//! keeps its backend across rebuilds, restarts and balancer instances. An IPv4-mapped
//! IPv6 address (`::ffff:a.b.c.d`) hashes as the IPv4 address it carries.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::bounded::{self, LoadBound};
use super::{reduce, PickContext, Strategy};
use crate::backend::{AdminState, Backend, LoadWatch};

/// The client's address hashed to 64 bits.
pub(super) fn client_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => mix64(fnv1a(&v4.octets(), FNV_OFFSET)),
        IpAddr::V6(v6) => mix64(fnv1a(&v6.octets(), FNV_OFFSET)),
    }
}

/// A backend key (`host:port`) hashed to 64 bits; different `seed`s give independent
/// hashes of the same key.
pub(super) fn key_hash(key: &str, seed: u64) -> u64 {
    mix64(fnv1a(key.as_bytes(), FNV_OFFSET ^ mix64(seed)))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8], offset: u64) -> u64 {
    bytes
        .iter()
        .fold(offset, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// splitmix64's finaliser: every input bit affects every output bit.
pub(super) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// GoBetween's `iphash`: the client's hash modulo the number of eligible backends.
///
/// Simple and even, but when a backend becomes ineligible most clients move; `iphash1`
/// and `maglev` move only that backend's clients. The backends up and enabled are kept
/// in a list, renewed when health, ejection or admin state change ([`Strategy::refresh`]),
/// so a pick is O(1); when the backend it lands on cannot take the connection (already
/// tried, at its cap, routed away) it counts the eligible backends and walks to the
/// chosen one, O(n).
///
/// Backends are taken in the order of their keys' hashes, not the list's: nodes of a
/// fleet that list the same backends in another order (or discover them in another
/// order) send each client to the same backend.
///
/// With a load bound, a backend above it passes its client on to the next backend of
/// the list that is within it.
pub struct IpHash {
    backends: Vec<Arc<Backend>>,
    /// Indexes of the backends in the order of their keys' hashes (then keys).
    order: Vec<u32>,
    /// Indexes of the backends up and enabled, in that order.
    live: ArcSwap<Vec<u32>>,
    bound: Option<Arc<LoadBound>>,
}

impl IpHash {
    pub fn new(backends: &[Arc<Backend>], bound: Option<Arc<LoadBound>>) -> IpHash {
        let mut order: Vec<u32> = (0..backends.len() as u32).collect();
        order.sort_by_cached_key(|&i| {
            let key = backends[i as usize].key();
            (key_hash(key, 0), key.to_owned())
        });
        let hash = IpHash {
            backends: backends.to_vec(),
            order,
            live: ArcSwap::from_pointee(Vec::new()),
            bound,
        };
        hash.refresh();
        hash
    }
}

impl Strategy for IpHash {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        if !ctx.any_health {
            let live = self.live.load();
            let start = reduce(client_hash(ctx.client), live.len());
            // Without a bound only the hashed backend is looked at; with one, the walk
            // ends at the first within it, and the first eligible is kept in case none is.
            let lap = if self.bound.is_some() { live.len() } else { 1 };
            let mut first_eligible = None;
            for step in 0..lap.min(live.len()) {
                let i = live[(start + step) % live.len()] as usize;
                let Some(backend) = backends.get(i).filter(|b| (ctx.eligible)(b)) else {
                    continue;
                };
                if self
                    .bound
                    .as_ref()
                    .is_none_or(|bound| bound.admits(backend))
                {
                    return Some(i);
                }
                first_eligible.get_or_insert(i);
            }
            if first_eligible.is_some() {
                return first_eligible;
            }
        }
        let eligible = backends.iter().filter(|b| (ctx.eligible)(b)).count();
        if eligible == 0 {
            return None;
        }
        let target = reduce(client_hash(ctx.client), eligible);
        let (mut seen, mut last) = (0, None);
        for i in self.order.iter().map(|&i| i as usize) {
            let Some(backend) = backends.get(i) else {
                continue;
            };
            if (ctx.eligible)(backend) {
                if seen == target {
                    return Some(i);
                }
                seen += 1;
                last = Some(i);
            }
        }
        // Eligibility changed between the two passes: any eligible backend will do.
        last
    }

    fn refresh(&self) {
        let live = self
            .order
            .iter()
            .copied()
            .filter(|&i| {
                let b = &self.backends[i as usize];
                b.is_up() && b.admin_state() == AdminState::Enabled
            })
            .collect();
        self.live.store(Arc::new(live));
        bounded::refresh(self.bound.as_ref());
    }

    fn load_watch(&self) -> Option<Arc<dyn LoadWatch>> {
        bounded::watch(self.bound.as_ref())
    }
}

/// `iphash1`: weighted rendezvous (highest random weight) hashing.
///
/// Every eligible backend scores `−weight / ln(h)` for `h = hash(client, backend)` mapped
/// into (0, 1), and the highest score wins; that gives each backend a share proportional
/// to its weight, and a backend that becomes ineligible loses only the clients it won,
/// which move to their second-best backend. Key hashes are computed at build time, so a
/// pick is O(n) with no string hashing (and no logarithm when all weights are equal).
///
/// With a load bound, the best-scoring backend within it wins (the client's next choice
/// when its first is above), and the best of all when none is.
pub struct Rendezvous {
    keys: Vec<u64>,
    /// All weights equal: the raw hash orders the scores, no logarithm needed.
    uniform: bool,
    bound: Option<Arc<LoadBound>>,
}

impl Rendezvous {
    pub fn new(backends: &[Arc<Backend>], bound: Option<Arc<LoadBound>>) -> Self {
        Rendezvous {
            keys: backends.iter().map(|b| key_hash(b.key(), 0)).collect(),
            uniform: backends.windows(2).all(|w| w[0].weight() == w[1].weight()),
            bound,
        }
    }

    fn score(&self, client: u64, key: u64, weight: u32) -> f64 {
        let h = mix64(client ^ key);
        if self.uniform {
            return h as f64;
        }
        // The top 53 bits as a float strictly inside (0, 1).
        let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -f64::from(weight) / unit.ln()
    }
}

impl Strategy for Rendezvous {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let client = client_hash(ctx.client);
        // The best of all eligible backends, and the best within the bound.
        let mut best: Option<(f64, u64, usize)> = None;
        let mut best_within: Option<(f64, u64, usize)> = None;
        for (i, (backend, &key)) in backends.iter().zip(&self.keys).enumerate() {
            if !(ctx.eligible)(backend) {
                continue;
            }
            let score = self.score(client, key, backend.weight());
            // Ties (rare) go to the larger key hash, so list order never matters.
            let better = |best: Option<(f64, u64, usize)>| {
                best.is_none_or(|(s, k, _)| (score, key) > (s, k))
            };
            if better(best) {
                best = Some((score, key, i));
            }
            if let Some(bound) = &self.bound {
                if better(best_within) && bound.admits(backend) {
                    best_within = Some((score, key, i));
                }
            }
        }
        best_within.or(best).map(|(_, _, i)| i)
    }

    fn load_watch(&self) -> Option<Arc<dyn LoadWatch>> {
        bounded::watch(self.bound.as_ref())
    }

    fn refresh(&self) {
        bounded::refresh(self.bound.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::balance::testing::{self, all, available};

    fn pick(strategy: &dyn Strategy, backends: &[Arc<Backend>], ip: &str) -> usize {
        let ctx = PickContext {
            client: ip.parse().unwrap(),
            eligible: &all,
            any_health: false,
        };
        strategy.pick(backends, &ctx).unwrap()
    }

    #[test]
    fn hashes_are_fixed_forever() {
        // Golden values: changing them moves every hashed client after an upgrade.
        assert_eq!(
            client_hash("192.0.2.1".parse().unwrap()),
            0x1e00_e9a1_2f82_49cb
        );
        assert_eq!(key_hash("10.0.0.1:80", 0), 0xdbbc_907f_2153_1a73);
    }

    #[test]
    fn ipv4_mapped_ipv6_hashes_as_ipv4() {
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let mapped = IpAddr::V6("::ffff:198.51.100.7".parse::<Ipv6Addr>().unwrap());
        assert_eq!(client_hash(v4), client_hash(mapped));
        assert_ne!(client_hash(v4), client_hash("2001:db8::7".parse().unwrap()));
    }

    #[test]
    fn iphash_is_even_and_stable_across_rebuilds() {
        let backends = testing::equal(4);
        let counts = testing::counts(&IpHash::new(&backends, None), &backends, 40_000, &all);
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        for ip in ["203.0.113.9", "2001:db8::1", "::ffff:10.1.2.3"] {
            let again = testing::equal(4);
            assert_eq!(
                pick(&IpHash::new(&backends, None), &backends, ip),
                pick(&IpHash::new(&again, None), &again, ip)
            );
        }
    }

    #[test]
    fn iphash_takes_the_hash_modulo_the_eligible_backends() {
        let backends = testing::equal(5);
        let hash = IpHash::new(&backends, None);
        for down in [0, 2, 4] {
            backends[down].set_healthy(false);
        }
        // Before the list of backends up is renewed, an eligible one all the same; once
        // it is, the same as a hash over those two alone.
        let scanned = testing::assignment(&hash, &backends, 1000, &available);
        assert!(scanned.iter().all(|&i| i == 1 || i == 3), "{scanned:?}");
        hash.refresh();
        let listed = testing::assignment(&hash, &backends, 1000, &available);
        let two = vec![Arc::clone(&backends[1]), Arc::clone(&backends[3])];
        let with_two = testing::assignment(&IpHash::new(&two, None), &two, 1000, &all);
        let expected: Vec<usize> = with_two.iter().map(|&i| i * 2 + 1).collect();
        assert_eq!(listed, expected);
        // Whatever the list says, a backend the pick may not take is passed over.
        let not_one = |b: &Backend| b.is_available() && !b.key().ends_with(".2:80");
        let others = testing::assignment(&hash, &backends, 1000, &not_one);
        assert!(others.iter().all(|&i| i == 3), "{others:?}");
    }

    /// Nodes of a fleet may list (or discover) the same backends in another order: every
    /// hash strategy sends a client to the same backend whatever the order.
    #[test]
    fn every_hash_strategy_ignores_list_order() {
        let backends = testing::backends(&[1, 2, 3, 4, 1, 1, 2]);
        let mut shuffled: Vec<_> = backends.iter().rev().cloned().collect();
        shuffled.rotate_left(3);
        let key = |list: &[Arc<Backend>], i: usize| list[i].key().to_owned();
        type Build = fn(&[Arc<Backend>]) -> Box<dyn Strategy>;
        let strategies: [(&str, Build); 3] = [
            ("iphash", |list| Box::new(IpHash::new(list, None))),
            ("iphash1", |list| Box::new(Rendezvous::new(list, None))),
            ("maglev", |list| {
                Box::new(crate::balance::maglev::Maglev::new(list, None))
            }),
        ];
        for (name, build) in strategies {
            let (a, b) = (build(&backends), build(&shuffled));
            for n in 0..2_000 {
                let ip = testing::client(n).to_string();
                let (on_a, on_b) = (pick(&*a, &backends, &ip), pick(&*b, &shuffled, &ip));
                assert_eq!(key(&backends, on_a), key(&shuffled, on_b), "{name}: {ip}");
            }
            // With one backend down on both, too (iphash's live list and its scan).
            backends[2].set_healthy(false);
            a.refresh();
            b.refresh();
            for n in 0..2_000 {
                let ip = testing::client(n).to_string();
                let ctx = |ip: &str| PickContext {
                    client: ip.parse().unwrap(),
                    eligible: &available,
                    any_health: false,
                };
                let on_a = a.pick(&backends, &ctx(&ip)).unwrap();
                let on_b = b.pick(&shuffled, &ctx(&ip)).unwrap();
                assert_eq!(
                    key(&backends, on_a),
                    key(&shuffled, on_b),
                    "{name} down: {ip}"
                );
            }
            backends[2].set_healthy(true);
        }
    }

    #[test]
    fn iphash1_follows_the_weights() {
        let backends = testing::backends(&[1, 2, 5]);
        let counts = testing::counts(&Rendezvous::new(&backends, None), &backends, 80_000, &all);
        for (count, weight) in counts.iter().zip([1.0, 2.0, 5.0]) {
            let share = f64::from(*count) / 80_000.0;
            assert!((share - weight / 8.0).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn iphash1_ineligible_backend_moves_only_its_own_clients() {
        for weights in [&[1; 7][..], &[1, 3, 2, 1, 5, 1, 1]] {
            let backends = testing::backends(weights);
            let hrw = Rendezvous::new(&backends, None);
            let before = testing::assignment(&hrw, &backends, 20_000, &all);
            let down = Arc::clone(&backends[4]);
            let up = move |b: &Backend| !std::ptr::eq(b, &*down);
            let after = testing::assignment(&hrw, &backends, 20_000, &up);
            for (was, is) in before.iter().zip(&after) {
                assert_ne!(*is, 4);
                if *was != 4 {
                    assert_eq!(was, is, "a client of another backend moved");
                }
            }
        }
    }

    #[test]
    fn iphash1_does_not_depend_on_list_order() {
        let backends = testing::backends(&[1, 2, 3, 4]);
        let reversed: Vec<_> = backends.iter().rev().cloned().collect();
        let (a, b) = (
            Rendezvous::new(&backends, None),
            Rendezvous::new(&reversed, None),
        );
        for ip in ["192.0.2.1", "192.0.2.200", "2001:db8::abcd", "fe80::1"] {
            let key =
                |s: &Rendezvous, list: &[Arc<Backend>]| list[pick(s, list, ip)].key().to_owned();
            assert_eq!(key(&a, &backends), key(&b, &reversed), "{ip}");
        }
    }

    #[test]
    fn eligibility_is_respected() {
        let backends = testing::backends(&[1, 2, 3]);
        testing::check_eligibility(&IpHash::new(&backends, None), &backends, 1);
        testing::check_eligibility(&Rendezvous::new(&backends, None), &backends, 2);
        let equal = testing::equal(3);
        testing::check_eligibility(&Rendezvous::new(&equal, None), &equal, 0);
    }
}
