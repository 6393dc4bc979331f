//! The Redis, MySQL and PostgreSQL health checks against the real servers from Debian's
//! packages: called directly on a backend, and through Sluice, where client traffic
//! follows what they find.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice::backend::{Backend, BackendSpec};
use sluice::balance::BalanceKind;
use sluice::config::{
    HealthConfig, HealthKind, InitialStatus, MysqlSettings, PgsqlSettings, RedisSettings,
    ServerConfig,
};
use sluice::health::{CheckError, HealthCheck, MysqlCheck, PgsqlCheck, RedisCheck, RedisRole};
use sluice::proxy::state::ServerShared;
use sluice::proxy::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::support::resp::redis_through;
use crate::support::servers::{
    mariadb_status, redis_command, shared_mariadb, shared_postgres, start_redis,
    MARIADB_ED25519_USER, MARIADB_USER, PG_CLEARTEXT_USER, PG_MD5_USER, PG_SCRAM_USER,
    PG_TRUST_USER,
};
use crate::support::{
    assert_closed_without_data, config, connect_from, eventually, server, spec_of, Sluice, WAIT,
};

fn backend(port: u16) -> Backend {
    Backend::new(BackendSpec::new("127.0.0.1", port), true)
}

/// One check of `port`, bounded by [`WAIT`].
async fn check(check: &dyn HealthCheck, port: u16) -> Result<(), CheckError> {
    timeout(WAIT, check.check(&backend(port)))
        .await
        .unwrap_or(Err(CheckError::Timeout))
}

/// The check fails as unhealthy (the server answered) with a message holding `words`.
async fn assert_unhealthy(c: &dyn HealthCheck, port: u16, words: &str) {
    match check(c, port).await {
        Err(CheckError::Unhealthy(m)) if m.contains(words) => {}
        other => panic!("expected Unhealthy(…{words}…), got {other:?}"),
    }
}

fn redis(password: Option<&str>, user: Option<&str>, role: RedisRole) -> RedisCheck {
    RedisCheck {
        password: password.map(str::to_owned),
        user: user.map(str::to_owned),
        role,
        proxy: None,
    }
}

#[tokio::test]
async fn redis_check_follows_the_server_going_down_and_up() {
    let server = start_redis(None, &[]).await;
    let port = server.port;
    let any = redis(None, None, RedisRole::Any);
    check(&any, port).await.expect("redis up");
    server.stop().await;
    match check(&any, port).await {
        Err(CheckError::Io(_)) => {}
        other => panic!("expected a connection error, got {other:?}"),
    }
    let _server = start_redis(Some(port), &[]).await;
    check(&any, port).await.expect("redis up again");
}

#[tokio::test]
async fn redis_master_role_follows_a_failover() {
    let a = start_redis(None, &[]).await;
    let b = start_redis(None, &["--replicaof", "127.0.0.1", &a.port.to_string()]).await;
    let master = redis(None, None, RedisRole::Master);
    let any = redis(None, None, RedisRole::Any);
    check(&master, a.port).await.expect("a is the master");
    assert_unhealthy(&master, b.port, "role is slave").await;
    check(&any, b.port).await.expect("a replica passes `any`");

    assert_eq!(
        redis_command(b.port, &["REPLICAOF", "NO", "ONE"]).await,
        "+OK"
    );
    let b_port = b.port.to_string();
    assert_eq!(
        redis_command(a.port, &["REPLICAOF", "127.0.0.1", &b_port]).await,
        "+OK"
    );
    eventually("b passes as master and a fails", || async {
        check(&master, b.port).await.is_ok()
            && matches!(check(&master, a.port).await,
                Err(CheckError::Unhealthy(m)) if m == "role is slave")
    })
    .await;
    check(&any, a.port)
        .await
        .expect("the new replica passes `any`");
}

#[tokio::test]
async fn redis_auth_with_password_and_acl_users() {
    let server = start_redis(
        None,
        &[
            "--requirepass",
            "default-pw",
            "--user",
            "checker",
            "on",
            ">checker-pw",
            "+ping",
            "+info",
            "--user",
            "pinger",
            "on",
            ">pinger-pw",
            "+ping",
        ],
    )
    .await;
    let port = server.port;
    assert_unhealthy(&redis(None, None, RedisRole::Any), port, "NOAUTH").await;
    check(&redis(Some("default-pw"), None, RedisRole::Master), port)
        .await
        .expect("default user");
    assert_unhealthy(
        &redis(Some("wrong"), None, RedisRole::Any),
        port,
        "AUTH: WRONGPASS",
    )
    .await;
    check(
        &redis(Some("checker-pw"), Some("checker"), RedisRole::Master),
        port,
    )
    .await
    .expect("ACL user");
    assert_unhealthy(
        &redis(Some("default-pw"), Some("checker"), RedisRole::Any),
        port,
        "WRONGPASS",
    )
    .await;
    // Allowed PING but not INFO: fine for `any`, and a clear refusal for `master`.
    let pinger = |role| redis(Some("pinger-pw"), Some("pinger"), role);
    check(&pinger(RedisRole::Any), port)
        .await
        .expect("PING allowed");
    assert_unhealthy(&pinger(RedisRole::Master), port, "INFO: NOPERM").await;
}

fn mysql(login: Option<(&str, &str)>) -> MysqlCheck {
    MysqlCheck {
        login: login.map(|(u, p)| (u.to_owned(), p.to_owned())),
        proxy: None,
    }
}

#[tokio::test]
async fn mysql_check_logs_in_to_mariadb_and_reports_refusals() {
    let port = shared_mariadb().await.port;
    check(&mysql(None), port).await.expect("greeting only");
    check(&mysql(Some(MARIADB_USER)), port)
        .await
        .expect("good login and SELECT 1");
    assert_unhealthy(
        &mysql(Some((MARIADB_USER.0, "wrong"))),
        port,
        "login refused: error 1045: Access denied for user 'sluice'@'127.0.0.1' (using password: YES)",
    )
    .await;
    assert_unhealthy(
        &mysql(Some((MARIADB_USER.0, ""))),
        port,
        "using password: NO",
    )
    .await;
    assert_unhealthy(&mysql(Some(("nobody-here", "x"))), port, "Access denied").await;
    // The server asks to switch to a plugin the check does not speak: it says which.
    assert_unhealthy(&mysql(Some(MARIADB_ED25519_USER)), port, "client_ed25519").await;
}

/// What `sluice check` warns of: a check without a user reads the greeting and hangs up,
/// and MariaDB counts each one as an aborted connection, with a warning in its log.
#[tokio::test]
async fn a_mysql_check_without_a_user_is_an_aborted_connect_to_mariadb() {
    let server = shared_mariadb().await;
    let before = mariadb_status("Aborted_connects").await;
    for _ in 0..3 {
        check(&mysql(None), server.port)
            .await
            .expect("greeting only");
    }
    // Other tests' checks add to the count too, never take from it.
    eventually("three aborted connects counted", || async {
        mariadb_status("Aborted_connects").await >= before + 3
    })
    .await;
    assert!(
        server.log().contains("Aborted connection"),
        "{}",
        server.log()
    );
}

fn pgsql(user: &str, password: Option<&str>, database: Option<&str>, query: bool) -> PgsqlCheck {
    PgsqlCheck {
        user: user.to_owned(),
        password: password.map(str::to_owned),
        database: database.map(str::to_owned),
        query,
        startup_only: false,
        proxy: None,
    }
}

#[tokio::test]
async fn pgsql_check_logs_in_with_each_method() {
    let port = shared_postgres().await.port;
    let (scram_user, scram_pw) = PG_SCRAM_USER;
    check(&pgsql(scram_user, Some(scram_pw), None, true), port)
        .await
        .expect("SCRAM login and SELECT 1");
    check(
        &pgsql(scram_user, Some(scram_pw), Some("template1"), false),
        port,
    )
    .await
    .expect("SCRAM login, another database");
    assert_unhealthy(
        &pgsql(scram_user, Some("wrong"), None, true),
        port,
        "FATAL: password authentication failed for user \"postgres\"",
    )
    .await;
    assert_unhealthy(
        &pgsql(scram_user, None, None, false),
        port,
        "none is configured",
    )
    .await;

    let (md5_user, md5_pw) = PG_MD5_USER;
    check(&pgsql(md5_user, Some(md5_pw), Some("postgres"), true), port)
        .await
        .expect("MD5 login");
    assert_unhealthy(
        &pgsql(md5_user, Some("wrong"), Some("postgres"), true),
        port,
        "password authentication failed",
    )
    .await;

    let (clear_user, clear_pw) = PG_CLEARTEXT_USER;
    check(
        &pgsql(clear_user, Some(clear_pw), Some("postgres"), true),
        port,
    )
    .await
    .expect("cleartext login");
    check(&pgsql(PG_TRUST_USER, None, Some("postgres"), true), port)
        .await
        .expect("trusted login");
    assert_unhealthy(
        &pgsql(PG_TRUST_USER, None, Some("no_such_db"), false),
        port,
        "database \"no_such_db\" does not exist",
    )
    .await;
}

#[tokio::test]
async fn pgsql_default_is_the_postgres_user() {
    assert_eq!(PgsqlCheck::default().user, "postgres");
    let port = shared_postgres().await.port;
    let c = PgsqlCheck {
        password: Some(PG_SCRAM_USER.1.to_owned()),
        ..PgsqlCheck::default()
    };
    check(&c, port)
        .await
        .expect("default user with its password");
    // No credentials at all: the start-up exchange alone passes (the server asks for a
    // password, which shows it is up and speaking the protocol).
    let startup = PgsqlCheck {
        startup_only: true,
        ..PgsqlCheck::default()
    };
    check(&startup, port).await.expect("start-up exchange only");
}

// ---- Through Sluice: client traffic follows the checks ---------------------------------

/// A database check every 100 ms. Three failures in a row take a backend down, so one
/// slow check on a busy machine does not flap a good one.
fn every_100ms(kind: HealthKind, initial_status: InitialStatus) -> HealthConfig {
    HealthConfig {
        kind,
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        fails: 3,
        passes: 1,
        initial_status,
        passive_fails: 0,
    }
}

/// Waits until backend `i` of `shared` has the given health.
async fn wait_health(shared: &ServerShared, i: usize, healthy: bool) {
    eventually(&format!("backend {i} healthy = {healthy}"), || {
        let up = shared.pool.load().backends()[i].is_healthy();
        async move { up == healthy }
    })
    .await;
}

fn is_healthy(shared: &ServerShared, i: usize) -> bool {
    shared.pool.load().backends()[i].is_healthy()
}

fn checks(shared: &ServerShared, i: usize) -> (u64, u64) {
    let pool = shared.pool.load();
    let stats = &pool.backends()[i].state.stats;
    (
        stats.checks_passed.load(Ordering::Relaxed),
        stats.checks_failed.load(Ordering::Relaxed),
    )
}

/// Sluice with two servers over the same database: `test`, whose check logs in, and
/// `refused`, whose check uses a wrong password. Returns the address of `refused` and
/// both servers' live state once the first is up and the second down.
///
/// `test` starts unhealthy and `refused` healthy, so each has to be moved by its check.
async fn good_and_refused(
    good: HealthKind,
    wrong: HealthKind,
    port: u16,
) -> (Sluice, SocketAddr, Arc<ServerShared>, Arc<ServerShared>) {
    let backend = spec_of(SocketAddr::from(([127, 0, 0, 1], port)));
    let with_check = |kind, initial| ServerConfig {
        healthcheck: every_100ms(kind, initial),
        ..server(BalanceKind::RoundRobin, vec![backend.clone()])
    };
    let mut cfg = config(with_check(good, InitialStatus::Unhealthy));
    cfg.servers.insert(
        "refused".to_owned(),
        with_check(wrong, InitialStatus::Healthy),
    );
    let sluice = Sluice::start_config(cfg).await;
    let refused_addr = sluice.runtime.local_addrs().await["refused"];
    let good = sluice.shared().await;
    let refused = sluice
        .runtime
        .server("refused")
        .await
        .expect("server refused");
    wait_health(&good, 0, true).await;
    wait_health(&refused, 0, false).await;
    (sluice, refused_addr, good, refused)
}

/// A client through Sluice to a server whose only backend is down is closed without a
/// byte, and counted as finding no backend.
async fn assert_no_traffic(addr: SocketAddr, shared: &ServerShared) {
    let before = shared.stats.refused(CloseReason::NoBackend);
    for _ in 0..3 {
        let mut client = connect_from(addr, None).await;
        assert_closed_without_data(&mut client, WAIT).await;
    }
    assert_eq!(
        shared.stats.refused(CloseReason::NoBackend),
        before + 3,
        "each client found no backend"
    );
    assert_eq!(shared.pool.load().backends()[0].active(), 0);
}

#[tokio::test]
async fn redis_traffic_follows_the_master_through_a_failover() {
    let a = start_redis(None, &[]).await;
    let b = start_redis(None, &["--replicaof", "127.0.0.1", &a.port.to_string()]).await;
    let master_only = HealthKind::Redis(RedisSettings {
        role: sluice::config::RedisRole::Master,
        ..RedisSettings::default()
    });
    let lb = Sluice::start(ServerConfig {
        healthcheck: every_100ms(master_only, InitialStatus::Healthy),
        ..server(
            BalanceKind::RoundRobin,
            vec![spec_of(a.addr()), spec_of(b.addr())],
        )
    })
    .await;
    let shared = lb.shared().await;
    wait_health(&shared, 1, false).await;
    assert!(is_healthy(&shared, 0), "the master is up");
    for i in 0..6 {
        let seen = redis_through(lb.addr, &format!("a{i}")).await;
        assert_eq!(seen.port, a.port, "connection {i} reached the master");
        assert_eq!(seen.role, "master");
        assert_eq!(seen.write, "+OK");
    }
    // The replica refuses writes: what the check spares the clients.
    assert!(redis_command(b.port, &["SET", "k", "v"])
        .await
        .starts_with("-READONLY"));

    // Fail over: b becomes the master, a its replica.
    assert_eq!(
        redis_command(b.port, &["REPLICAOF", "NO", "ONE"]).await,
        "+OK"
    );
    let b_port = b.port.to_string();
    assert_eq!(
        redis_command(a.port, &["REPLICAOF", "127.0.0.1", &b_port]).await,
        "+OK"
    );
    eventually("health follows the failover", || {
        let moved = !is_healthy(&shared, 0) && is_healthy(&shared, 1);
        async move { moved }
    })
    .await;
    for i in 0..6 {
        let seen = redis_through(lb.addr, &format!("b{i}")).await;
        assert_eq!(seen.port, b.port, "connection {i} reached the new master");
        assert_eq!(seen.role, "master");
        assert_eq!(seen.write, "+OK");
    }
    assert!(redis_command(a.port, &["SET", "k", "v"])
        .await
        .starts_with("-READONLY"));
}

#[tokio::test]
async fn mariadb_refusing_the_login_is_down_and_gets_no_traffic() {
    let port = shared_mariadb().await.port;
    let (user, password) = MARIADB_USER;
    let login = |password: &str| {
        HealthKind::Mysql(MysqlSettings {
            user: Some(user.to_owned()),
            password: Some(password.to_owned()),
        })
    };
    let (lb, refused_addr, good, refused) =
        good_and_refused(login(password), login("wrong"), port).await;
    assert!(checks(&good, 0).0 >= 1, "the good login passed");
    assert!(checks(&refused, 0).1 >= 3, "the wrong one failed");

    // Through the server whose check logs in: MariaDB's greeting (protocol 10).
    for _ in 0..3 {
        let mut client = connect_from(lb.addr, None).await;
        let mut header = [0u8; 4];
        timeout(WAIT, client.read_exact(&mut header))
            .await
            .expect("greeting in time")
            .expect("greeting header");
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        assert!(len <= 16 * 1024, "greeting of {len} bytes");
        let mut payload = vec![0; len];
        timeout(WAIT, client.read_exact(&mut payload))
            .await
            .expect("greeting in time")
            .expect("greeting payload");
        assert_eq!(payload[0], 10, "protocol 10 greeting");
        let version = &payload[1..payload.iter().position(|&b| b == 0).expect("version")];
        assert!(
            String::from_utf8_lossy(version).contains("MariaDB"),
            "{version:?}"
        );
    }
    assert_no_traffic(refused_addr, &refused).await;
    assert!(is_healthy(&good, 0), "the good login still passes");
}

#[tokio::test]
async fn postgres_refusing_the_login_is_down_and_gets_no_traffic() {
    let port = shared_postgres().await.port;
    let (user, password) = PG_SCRAM_USER;
    let login = |password: &str| {
        HealthKind::Pgsql(PgsqlSettings {
            user: Some(user.to_owned()),
            password: Some(password.to_owned()),
            database: Some("postgres".to_owned()),
        })
    };
    let (lb, refused_addr, good, refused) =
        good_and_refused(login(password), login("wrong"), port).await;
    assert!(checks(&good, 0).0 >= 1, "the good login passed");
    assert!(checks(&refused, 0).1 >= 3, "the wrong one failed");

    // Through the server whose check logs in: PostgreSQL answers an SSLRequest (no TLS
    // configured: `N`), then a StartupMessage with its SCRAM challenge.
    for _ in 0..3 {
        let mut client = connect_from(lb.addr, None).await;
        let mut ssl_request = 8u32.to_be_bytes().to_vec();
        ssl_request.extend(80_877_103u32.to_be_bytes());
        client.write_all(&ssl_request).await.expect("SSLRequest");
        let mut answer = [0u8; 1];
        timeout(WAIT, client.read_exact(&mut answer))
            .await
            .expect("SSLRequest answered in time")
            .expect("SSLRequest answer");
        assert_eq!(answer[0], b'N');

        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (key, value) in [("user", user), ("database", "postgres")] {
            for s in [key, value] {
                body.extend(s.as_bytes());
                body.push(0);
            }
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend(body);
        client.write_all(&startup).await.expect("StartupMessage");
        // AuthenticationSASL: tag, length, code 10.
        let mut auth = [0u8; 9];
        timeout(WAIT, client.read_exact(&mut auth))
            .await
            .expect("authentication request in time")
            .expect("authentication request");
        assert_eq!(auth[0], b'R', "{auth:?}");
        assert_eq!(u32::from_be_bytes([auth[5], auth[6], auth[7], auth[8]]), 10);
    }
    assert_no_traffic(refused_addr, &refused).await;
    assert!(is_healthy(&good, 0), "the good login still passes");
}
