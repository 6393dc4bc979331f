//! Proxying semantics: bytes both ways, half-close, large transfers, many connections.

use sluice::balance::BalanceKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn roundrobin_rotates_exactly() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let c = TestBackend::named("c").await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![a.spec(), b.spec(), c.spec()])).await;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..30 {
        *counts.entry(who(lb.addr).await).or_insert(0) += 1;
    }
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]);
}

#[tokio::test]
async fn client_half_close_still_gets_the_reply() {
    let echo = TestBackend::echo().await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![echo.spec()])).await;
    let mut s = connect_from(lb.addr, None).await;
    s.write_all(b"hello after which I stop sending").await.unwrap();
    s.shutdown().await.unwrap();
    let got = read_to_end(&mut s).await;
    assert_eq!(got, b"hello after which I stop sending");
}
