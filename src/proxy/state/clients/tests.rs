//! The client table's unit tests: each limit, the listing, and the table's bound.

use std::time::Duration;

use super::*;
use crate::config::limits::Rate;

fn bucket(rate: &str, burst: u32) -> Option<Bucket> {
    Some(Bucket {
        rate: rate.parse::<Rate>().expect("rate"),
        burst,
    })
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

#[test]
fn a_client_rate_refuses_past_the_burst_and_refills() {
    let clients = Clients::new();
    let limits = ClientLimits {
        connection_rate_per_client: bucket("10/s", 3),
        ..ClientLimits::default()
    };
    let now = Instant::now();
    let holds: Vec<_> = (0..3)
        .map(|_| clients.admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now))
        .collect();
    assert!(holds.iter().all(|h| matches!(h, Ok(Some(_)))));
    assert_eq!(
        clients
            .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
            .err(),
        Some(Limit::ClientRate)
    );
    // Another client has its own bucket.
    assert!(clients
        .admit("t", &limits, ip("10.0.0.2"), ClientSource::Peer, now)
        .is_ok());
    // A tenth of a second refills one token.
    let later = now + Duration::from_millis(100);
    assert!(clients
        .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, later)
        .is_ok());
    assert!(clients
        .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, later)
        .is_err());
}

#[test]
fn a_connection_cap_is_released_as_connections_close() {
    let clients = Clients::new();
    let limits = ClientLimits {
        max_connections_per_client: Some(2),
        ..ClientLimits::default()
    };
    let now = Instant::now();
    let a = clients
        .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
        .expect("first");
    let _b = clients
        .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
        .expect("second");
    assert_eq!(
        clients
            .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
            .err(),
        Some(Limit::ClientConnections)
    );
    drop(a);
    assert!(clients
        .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
        .is_ok());
}

#[test]
fn exempt_clients_and_ipv6_prefixes() {
    let clients = Clients::new();
    let limits = ClientLimits {
        max_connections_per_client: Some(1),
        client_limit_exempt: vec!["10.1.0.0/16".parse().expect("net")],
        ..ClientLimits::default()
    };
    let now = Instant::now();
    let exempt: Vec<_> = (0..5)
        .map(|_| clients.admit("t", &limits, ip("10.1.2.3"), ClientSource::Peer, now))
        .collect();
    assert!(exempt.iter().all(|h| matches!(h, Ok(None))));
    // Two addresses of one /64 are one client.
    let _held = clients
        .admit("t", &limits, ip("2001:db8::1"), ClientSource::Peer, now)
        .expect("first");
    assert_eq!(
        clients
            .admit("t", &limits, ip("2001:db8::ffff"), ClientSource::Peer, now)
            .err(),
        Some(Limit::ClientConnections)
    );
    assert!(clients
        .admit("t", &limits, ip("2001:db8:0:1::1"), ClientSource::Peer, now)
        .is_ok());
}

#[test]
fn the_most_active_clients_are_listed_first_and_can_be_forgotten() {
    let clients = Clients::new();
    let limits = ClientLimits {
        max_connections_per_client: Some(2),
        ..ClientLimits::default()
    };
    let now = Instant::now();
    let _a = clients
        .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
        .expect("a");
    let _b: Vec<_> = (0..2)
        .map(|_| {
            clients
                .admit("t", &limits, ip("10.0.0.2"), ClientSource::Peer, now)
                .expect("b")
        })
        .collect();
    assert!(clients
        .admit("t", &limits, ip("10.0.0.2"), ClientSource::Peer, now)
        .is_err());
    let top = clients.top(&limits, 10, now);
    let listed: Vec<_> = top.iter().map(|c| (c.client.to_string(), c.open)).collect();
    assert_eq!(
        listed,
        [("10.0.0.2/32".to_owned(), 2), ("10.0.0.1/32".to_owned(), 1)]
    );
    assert_eq!(top[0].limited, Some(Limit::ClientConnections));
    assert!(
        (top[0].rate - 0.3).abs() < 1e-9,
        "three asked: {}",
        top[0].rate
    );
    let later = clients.top(&limits, 1, now + Duration::from_secs(10));
    assert!((later[0].rate - 0.3 / std::f64::consts::E).abs() < 1e-9);
    assert!(clients.forget(&limits, ip("10.0.0.2")));
    assert!(!clients.forget(&limits, ip("10.0.0.2")));
    assert_eq!(clients.tracked(), 1);
    // Forgotten, it starts again from nothing.
    assert!(clients
        .admit("t", &limits, ip("10.0.0.2"), ClientSource::Peer, now)
        .is_ok());
}

#[test]
fn the_server_rate_counts_every_client() {
    let clients = Clients::new();
    let limits = ClientLimits {
        connection_rate: bucket("1/s", 2),
        ..ClientLimits::default()
    };
    let now = Instant::now();
    assert!(clients
        .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
        .is_ok());
    assert!(clients
        .admit("t", &limits, ip("10.0.0.2"), ClientSource::Peer, now)
        .is_ok());
    assert_eq!(
        clients
            .admit("t", &limits, ip("10.0.0.3"), ClientSource::Peer, now)
            .err(),
        Some(Limit::ServerRate)
    );
    assert_eq!(clients.tracked(), 0, "no per-client limit: nobody tracked");
    assert!(clients
        .admit(
            "t",
            &limits,
            ip("10.0.0.3"),
            ClientSource::Peer,
            now + Duration::from_secs(1)
        )
        .is_ok());
}

#[test]
fn the_table_keeps_at_most_its_size_forgetting_the_least_recently_seen() {
    let clients = Clients::new();
    let limits = ClientLimits {
        connection_rate_per_client: bucket("1/h", 1),
        client_table_size: 1_000,
        ..ClientLimits::default()
    };
    let now = Instant::now();
    for i in 0..100_000u32 {
        let client = IpAddr::from(i.to_be_bytes());
        let _ = clients.admit("t", &limits, client, ClientSource::Peer, now);
    }
    let tracked = clients.tracked();
    assert!(tracked <= 1_000 + SHARDS, "{tracked} tracked");
    assert!(tracked >= 900, "{tracked} tracked");
    // The last client seen is still known (its bucket is empty); the first is not.
    let last = IpAddr::from(99_999u32.to_be_bytes());
    assert!(clients
        .admit("t", &limits, last, ClientSource::Peer, now)
        .is_err());
    let first = IpAddr::from(0u32.to_be_bytes());
    assert!(clients
        .admit("t", &limits, first, ClientSource::Peer, now)
        .is_ok());
}

#[test]
fn a_client_that_floods_past_its_refusals_is_blocked_and_a_forwarded_one_never() {
    let clients = Clients::new();
    let limits = ClientLimits {
        connection_rate_per_client: bucket("1/s", 20),
        client_flood_block: Some(Duration::from_secs(5)),
        client_prefix_v4: 24,
        ..ClientLimits::default()
    };
    let now = Instant::now();
    let admit = |client: &str, source| clients.admit("t", &limits, ip(client), source, now);
    for _ in 0..20 {
        assert!(admit("10.0.0.1", ClientSource::Peer).is_ok());
        assert!(admit("10.0.1.1", ClientSource::Forwarded).is_ok());
    }
    // A burst's worth of refusals first: until then only refused.
    for _ in 0..19 {
        assert!(admit("10.0.0.2", ClientSource::Peer).is_err());
        assert!(admit("10.0.1.2", ClientSource::Forwarded).is_err());
    }
    assert_eq!(clients.blocks.count(now), 0);
    assert!(admit("10.0.0.3", ClientSource::Peer).is_err());
    assert!(admit("10.0.1.3", ClientSource::Forwarded).is_err());
    // The peer's network is blocked, for the configured time; a client behind a
    // trusted front is not (the kernel would see only the front).
    let blocked = clients.blocks.in_force(now);
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].net, "10.0.0.0/24".parse().expect("net"));
    assert_eq!(blocked[0].until, now + Duration::from_secs(5));
    let view = clients.top(&limits, 10, now);
    let listed = view
        .iter()
        .find(|c| c.client == blocked[0].net)
        .expect("listed");
    assert_eq!(listed.blocked_for, Some(Duration::from_secs(5)));
    // Forgetting the client lifts its block.
    assert!(clients.forget(&limits, ip("10.0.0.77")));
    assert_eq!(clients.blocks.count(now), 0);
}

#[test]
fn small_bursts_still_take_a_few_refusals_before_a_block() {
    let clients = Clients::new();
    let limits = ClientLimits {
        connection_rate_per_client: bucket("1/m", 1),
        client_flood_block: Some(Duration::from_secs(5)),
        ..ClientLimits::default()
    };
    let now = Instant::now();
    assert!(clients
        .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
        .is_ok());
    for refusal in 1..=MIN_REFUSALS_TO_BLOCK {
        assert_eq!(clients.blocks.count(now), 0, "after {refusal} refusals");
        assert!(clients
            .admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now)
            .is_err());
    }
    assert_eq!(clients.blocks.count(now), 1);
}

#[test]
fn a_client_back_to_flood_soon_after_its_block_is_blocked_at_once() {
    let clients = Clients::new();
    let block = Duration::from_secs(5);
    let limits = ClientLimits {
        connection_rate_per_client: bucket("1/m", 1),
        client_flood_block: Some(block),
        ..ClientLimits::default()
    };
    let start = Instant::now();
    let admit = |now| clients.admit("t", &limits, ip("10.0.0.1"), ClientSource::Peer, now);
    assert!(admit(start).is_ok());
    for _ in 0..MIN_REFUSALS_TO_BLOCK {
        assert!(admit(start).is_err());
    }
    assert_eq!(clients.blocks.count(start), 1);
    // Its block ended a moment ago: one refusal blocks it again.
    let ended = start + block + Duration::from_millis(1);
    assert_eq!(clients.blocks.count(ended), 0);
    assert!(admit(ended).is_err());
    assert_eq!(clients.blocks.count(ended), 1);
    // Long after, it gets its refusals first, as anyone.
    let later = ended + 3 * block;
    assert!(admit(later).is_err());
    assert_eq!(clients.blocks.count(later), 0);
}

#[test]
fn a_client_used_up_stays_used_up_in_the_process_an_upgrade_starts() {
    let (old, new) = (Clients::new(), Clients::new());
    let limits = ClientLimits {
        connection_rate_per_client: bucket("1/s", 2),
        ..ClientLimits::default()
    };
    let now = Instant::now();
    let client = ip("10.0.0.1");
    for _ in 0..2 {
        let admitted = old.admit("t", &limits, client, ClientSource::Peer, now);
        assert!(matches!(admitted, Ok(Some(_))));
    }
    let refused = old.admit("t", &limits, client, ClientSource::Peer, now);
    assert_eq!(refused.err(), Some(Limit::ClientRate));

    let carried = old.carry(now);
    assert_eq!(carried.len(), 1);
    assert_eq!(carried[0].refusals, 1);
    new.receive(carried, now);
    let refused = new.admit("t", &limits, client, ClientSource::Peer, now);
    assert_eq!(refused.err(), Some(Limit::ClientRate), "no fresh bucket");
    // Another client starts full, as always.
    assert!(new
        .admit("t", &limits, ip("10.0.0.2"), ClientSource::Peer, now)
        .is_ok());
}
