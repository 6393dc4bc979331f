//! The Redis, MySQL and PostgreSQL health checks against the real servers from Debian's
//! packages, called directly on a backend.

use sluice::backend::{Backend, BackendSpec};
use sluice::health::{CheckError, HealthCheck, MysqlCheck, PgsqlCheck, RedisCheck, RedisRole};
use tokio::time::timeout;

use crate::support::servers::{
    redis_command, shared_mariadb, shared_postgres, start_redis, MARIADB_ED25519_USER,
    MARIADB_USER, PG_CLEARTEXT_USER, PG_MD5_USER, PG_SCRAM_USER, PG_TRUST_USER,
};
use crate::support::{eventually, WAIT};

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

fn pgsql(user: &str, password: Option<&str>, database: Option<&str>, query: bool) -> PgsqlCheck {
    PgsqlCheck {
        user: user.to_owned(),
        password: password.map(str::to_owned),
        database: database.map(str::to_owned),
        query,
        startup_only: false,
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
