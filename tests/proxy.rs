//! Proxying semantics: bytes both ways, half-close, large transfers, many connections,
//! a backend failing mid-stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::balance::BalanceKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Barrier};

use crate::support::data::{expected, receive_stream, send_stream};
use crate::support::*;

#[tokio::test]
async fn client_half_close_still_gets_the_reply() {
    let echo = TestBackend::echo().await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![echo.spec()])).await;
    let mut s = connect_from(lb.addr, None).await;
    s.write_all(b"hello after which I stop sending")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let got = read_to_end(&mut s).await;
    assert_eq!(got, b"hello after which I stop sending");
}

#[tokio::test]
async fn client_fin_reaches_the_backend_which_still_replies() {
    // The backend reads to EOF first and only then answers: the answer can only arrive
    // if the client's FIN was passed on and the way back stayed open.
    let backend = TestBackend::serving("counter", "127.0.0.1:0", |mut s| async move {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).await.is_ok() {
            let reply = format!("got {} bytes after EOF", got.len());
            let _ = s.write_all(reply.as_bytes()).await;
        }
    })
    .await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![backend.spec()])).await;
    let mut s = connect_from(lb.addr, None).await;
    s.write_all(&[7u8; 1000]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"got 1000 bytes after EOF");
}

#[tokio::test]
async fn backend_fin_reaches_the_client_which_can_still_send() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let backend = TestBackend::serving("closer", "127.0.0.1:0", move |mut s| {
        let tx = tx.clone();
        async move {
            s.write_all(b"bye").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            let read = s.read_to_end(&mut got).await.map(|_| got);
            let _ = tx.send(read.map_err(|e| e.to_string()));
        }
    })
    .await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![backend.spec()])).await;
    let mut s = connect_from(lb.addr, None).await;
    assert_eq!(
        read_to_end(&mut s).await,
        b"bye",
        "client sees EOF after the data"
    );
    s.write_all(b"still talking").await.unwrap();
    s.write_all(b" after your FIN").await.unwrap();
    s.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("backend finished in time")
        .expect("backend reported");
    assert_eq!(got.unwrap(), b"still talking after your FIN");
}

/// 256 MiB each way at once, through Sluice, each checked against its checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_both_ways_at_once() {
    const LEN: u64 = 256 << 20;
    let backend = TestBackend::serving("big", "127.0.0.1:0", |s| async move {
        let (mut r, mut w) = s.into_split();
        let send = tokio::spawn(async move {
            let sum = send_stream(&mut w, 2, LEN).await;
            w.shutdown().await.unwrap();
            sum
        });
        let got = receive_stream(&mut r).await;
        assert_eq!(
            got,
            expected(1, LEN),
            "backend received the client's stream"
        );
        send.await.unwrap();
    })
    .await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![backend.spec()])).await;
    let started = Instant::now();
    let (mut r, mut w) = connect_from(lb.addr, None).await.into_split();
    let send = tokio::spawn(async move {
        let sum = send_stream(&mut w, 1, LEN).await;
        w.shutdown().await.unwrap();
        sum
    });
    let got = tokio::time::timeout(Duration::from_secs(60), receive_stream(&mut r))
        .await
        .expect("transfer finished in time");
    let sent = send.await.unwrap();
    assert_eq!(sent, expected(1, LEN));
    assert_eq!(
        got,
        expected(2, LEN),
        "client received the backend's stream"
    );
    eprintln!("256 MiB each way in {:?}", started.elapsed());
}

/// A thousand connections open at the same time, each echoing its own data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_each_get_their_own_bytes() {
    const CONNS: usize = 1000;
    let echo = TestBackend::echo().await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![echo.spec()])).await;
    let all_open = Arc::new(Barrier::new(CONNS));
    let tasks: Vec<_> = (0..CONNS)
        .map(|i| {
            let all_open = Arc::clone(&all_open);
            let addr = lb.addr;
            tokio::spawn(async move {
                let mut s = connect_from(addr, None).await;
                all_open.wait().await;
                let msg: Vec<u8> = format!("connection {i} says hello; ")
                    .repeat(200)
                    .into_bytes();
                s.write_all(&msg).await.unwrap();
                s.shutdown().await.unwrap();
                let got = read_to_end(&mut s).await;
                assert!(
                    got == msg,
                    "connection {i} got {} bytes, not its own",
                    got.len()
                );
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(WAIT * 3, task)
            .await
            .expect("connection finished in time")
            .expect("connection checks passed");
    }
    assert_eq!(echo.accepted(), CONNS);
    let shared = lb.shared().await;
    eventually("every connection is released", || async {
        shared
            .stats
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
            && lb.active(0).await == 0
    })
    .await;
}

#[tokio::test]
async fn backend_reset_mid_stream_closes_the_client() {
    let backend = TestBackend::serving("resetter", "127.0.0.1:0", |mut s| async move {
        let _ = s.write_all(b"partial answer").await;
        let mut buf = [0u8; 5];
        let _ = s.read_exact(&mut buf).await;
        // Linger 0: close sends a reset instead of a FIN.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    })
    .await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![backend.spec()])).await;
    let mut s = connect_from(lb.addr, None).await;
    let mut first = [0u8; 14];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"partial answer");
    s.write_all(b"go on").await.unwrap();
    // The client keeps sending; Sluice must close it rather than leave it hanging.
    let chunk = [1u8; 16 * 1024];
    let closed = async {
        for _ in 0..10_000 {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("client could still write 160 MiB after the backend reset");
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("client closed in time");
    let shared = lb.shared().await;
    eventually("the connection is released", || {
        let shared = Arc::clone(&shared);
        async move {
            shared
                .stats
                .active
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
        }
    })
    .await;
}

#[tokio::test]
async fn host_names_in_backend_lists_are_resolved_before_traffic() {
    let backend = TestBackend::named("by-name").await;
    let spec = sluice::backend::BackendSpec::new("localhost", backend.addr.port());
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![spec])).await;
    let resolved = lb.shared().await.pool.load().backends()[0].addrs();
    assert!(
        resolved.contains(&backend.addr),
        "localhost resolved to {resolved:?}"
    );
    // If localhost also resolves to ::1, where nothing listens, the dial moves on to
    // 127.0.0.1 within the same attempt.
    for _ in 0..3 {
        assert_eq!(who(lb.addr).await, "by-name");
    }
}

/// Bulk bytes switch a direction to the zero-copy path and small messages afterwards
/// switch it back; neither switch may lose or reorder a byte.
#[tokio::test]
async fn bulk_then_small_messages_on_one_connection_keep_every_byte_in_order() {
    let echo = TestBackend::echo().await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![echo.spec()])).await;
    let mut s = connect_from(lb.addr, None).await;
    let mut prng = crate::support::data::Prng::new(7);
    for round in 0..3 {
        // 4 MiB in one go: full reads, so the relay goes zero-copy.
        let mut bulk = vec![0u8; 4 << 20];
        prng.fill(&mut bulk);
        let (mut r, mut w) = s.split();
        let (sent, echoed) = tokio::join!(w.write_all(&bulk), async {
            let mut back = vec![0u8; bulk.len()];
            tokio::time::timeout(WAIT, r.read_exact(&mut back))
                .await
                .map(|_| back)
        });
        sent.unwrap();
        assert!(
            echoed.expect("bulk echoed in time") == bulk,
            "round {round}: bulk bytes differ"
        );
        // Then request/response-sized messages: back to the buffered path.
        for i in 0..20u8 {
            let msg = [round as u8, i, 0xab, 0xcd];
            s.write_all(&msg).await.unwrap();
            let mut back = [0u8; 4];
            tokio::time::timeout(WAIT, s.read_exact(&mut back))
                .await
                .expect("small echo in time")
                .unwrap();
            assert_eq!(back, msg, "round {round}, message {i}");
        }
    }
    s.shutdown().await.unwrap();
    assert!(read_to_end(&mut s).await.is_empty());
}
