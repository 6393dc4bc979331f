//! Where the configuration comes from, through the real binary: GoBetween's command line
//! (`-c`, `from-file`, `from-url`, `-f`, `-p`), `sluice convert`, and the GoBetween file
//! of the seed article as people copy it.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::support::process::*;
use crate::support::servers::FileServer;
use crate::support::*;

/// One TCP server `test` on `port` in front of `backend`, as GoBetween's TOML.
fn one_backend(port: u16, backend: std::net::SocketAddr) -> String {
    format!(
        "[servers.test]\nbind = \"127.0.0.1:{port}\"\n\
         [servers.test.discovery]\nkind = \"static\"\nstatic_list = [\"{backend}\"]\n"
    )
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_runs_what_nginx_serves_and_a_reload_fetches_it_again() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let web = FileServer::start().await;
    let port = free_port();
    // No extension in the URL: `-f toml` says what it is.
    web.write("lb", &one_backend(port, a.addr));
    let expected = sluice::config::parse(&one_backend(port, a.addr), Path::new("lb.toml"))
        .expect("valid")
        .config;
    let dir = tempfile::tempdir().expect("temp dir");
    let unused = dir.path().join("unused.toml");
    let url = web.url("lb");
    let mut sluice = SluiceProcess::start_args(
        dir,
        unused,
        &args(&["from-url", "-f", "toml", &url]),
        &expected,
    )
    .await;
    assert_eq!(who(sluice.addr).await, "a");

    web.write("lb", &one_backend(port, b.addr));
    sluice.signal("HUP");
    eventually("the reload fetches the new configuration", || async {
        who(sluice.addr).await == "b"
    })
    .await;

    // An answer that is not a configuration, or none: the running one stays.
    web.write("lb", "[servers.test]\nbind = 1\n");
    sluice.signal("HUP");
    eventually("the bad answer is reported", || async {
        sluice.log().contains("servers.test.bind")
    })
    .await;
    web.remove("lb");
    sluice.signal("HUP");
    eventually("the missing answer is reported", || async {
        sluice.log().contains("cannot fetch the configuration")
    })
    .await;
    assert_eq!(who(sluice.addr).await, "b");
    let log = sluice.log();
    assert!(
        log.contains(&format!("{url}: cannot fetch the configuration")),
        "{log}"
    );
    sluice.signal("TERM");
    assert!(sluice.exit(Duration::from_secs(30)).await.success());
}

#[tokio::test]
async fn from_url_refuses_what_it_could_not_write_back_and_a_server_that_is_down() {
    let web = FileServer::start().await;
    let persisting = format!(
        "[api]\nenabled = true\nbind = \"127.0.0.1:0\"\npersist = true\n{}",
        one_backend(free_port(), dead_addr())
    );
    web.write("lb.toml", &persisting);
    let url = web.url("lb.toml");
    let (status, _, stderr) = run_sluice(&["from-url", &url]).await;
    assert!(!status.success());
    assert_eq!(
        stderr,
        format!(
            "{url}: api.persist: a configuration fetched from a URL cannot be written back; \
             turn persist off, or run from a file\n"
        )
    );
    let (status, _, stderr) = run_sluice(&["from-url", &web.url("missing.toml")]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("cannot fetch the configuration"),
        "{stderr}"
    );
    assert!(stderr.contains("404"), "{stderr}");
    let (status, _, stderr) = run_sluice(&["from-url", "ftp://example.org/lb.toml"]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("is not an http:// or https:// URL"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_file_names_the_running_sluice_refuses_a_second_and_goes_at_exit() {
    let a = TestBackend::named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("sluice.pid");
    let first = write_file(dir.path(), "first.toml", &one_backend(free_port(), a.addr));
    let second = write_file(dir.path(), "second.toml", &one_backend(free_port(), a.addr));
    let expected = sluice::config::load(Path::new(&first))
        .expect("valid")
        .config;
    let pid_arg = pidfile.to_str().expect("utf-8 path").to_owned();
    let mut sluice = SluiceProcess::start_args(
        tempfile::tempdir().expect("temp dir"),
        first.clone().into(),
        &args(&["-p", &pid_arg, "from-file", &first]),
        &expected,
    )
    .await;
    let pid = sluice.child.id().expect("running");
    let written = std::fs::read_to_string(&pidfile).expect("the pid file is written");
    assert_eq!(written, format!("{pid}\n"));

    let (status, _, stderr) = run_sluice(&["-p", &pid_arg, "-c", &second]).await;
    assert!(!status.success());
    assert_eq!(
        stderr,
        format!(
            "sluice: {pid_arg}: a process with pid {pid} is running (another Sluice?); stop it \
             or remove the file\n"
        )
    );
    assert_eq!(who(sluice.addr).await, "a", "the first one still serves");

    sluice.signal("TERM");
    assert!(sluice.exit(Duration::from_secs(30)).await.success());
    assert!(!pidfile.exists(), "the pid file goes with the process");
}

/// The seed article's `gobetween.toml`, addresses changed to loopback, as a user copies it.
fn article_gobetween(api: u16, port: u16, backends: &[std::net::SocketAddr]) -> String {
    format!(
        "[api]\nenabled = true\nbind = \"127.0.0.1:{api}\"\n\n\
         [servers.sample]\nbind = \"127.0.0.1:{port}\"\nprotocol = \"tcp\"\n\n\
         [servers.sample.discovery]\nkind = \"static\"\nstatic_list = [\n  \"{}\",\n  \"{}\",\n  \"{}\"\n]\n\n\
         [servers.sample.balance]\nstrategy = \"leastconn\"\n\n\
         [servers.sample.healthcheck]\nfails = 3\npasses = 2\ninterval = \"5s\"\nkind = \"tcp\"\n\
         timeout = \"2s\"\n",
        backends[0], backends[1], backends[2]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_articles_gobetween_file_runs_with_two_warnings_and_balances_by_least_connections() {
    let backends = [
        TestBackend::named("a").await,
        TestBackend::named("b").await,
        TestBackend::named("c").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let text = article_gobetween(free_port(), free_port(), &addrs);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(dir.path(), "gobetween.toml", &text);
    let (status, stdout, stderr) = run_sluice(&["check", "-c", &file]).await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("balance leastconn"), "{stdout}");
    assert!(stdout.contains("ping check every 5s"), "{stdout}");
    assert_eq!(stderr.matches("warning:").count(), 2, "{stderr}");
    assert!(stderr.contains("balance = \"leastconn\""), "{stderr}");
    assert!(stderr.contains("kind = \"ping\""), "{stderr}");

    let mut sluice = SluiceProcess::start_file("gobetween.toml", &text, None).await;
    // Least connections: while one connection to each backend is held open, every
    // backend has one and the next goes to none of them twice in a row.
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..3 {
        let (name, stream) = hello(sluice.addr, None).await;
        names.push(name);
        held.push(stream);
    }
    names.sort();
    assert_eq!(
        names,
        ["a", "b", "c"],
        "each backend took one open connection"
    );
    sluice.signal("TERM");
    drop(held);
    assert!(sluice.exit(Duration::from_secs(30)).await.success());
}

#[tokio::test]
async fn convert_writes_a_file_that_loads_as_the_same_configuration() {
    let addrs = [dead_addr(), dead_addr(), dead_addr()];
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(
        dir.path(),
        "gobetween.toml",
        &article_gobetween(free_port(), free_port(), &addrs),
    );
    let (status, stdout, stderr) = run_sluice(&["convert", "-c", &file]).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr.matches("warning:").count(), 2, "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "# Converted by `sluice convert` from {file} (GoBetween TOML).\n"
        )),
        "{stdout}"
    );
    let converted = write_file(dir.path(), "sluice.toml", &stdout);
    let (status, _, stderr) = run_sluice(&["check", "-c", &converted]).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr, "", "the converted file has nothing to warn of");
    let original = sluice::config::load(Path::new(&file)).expect("valid");
    let again = sluice::config::load(Path::new(&converted)).expect("valid");
    assert_eq!(original.config, again.config);
}

/// An HAProxy file and a Samaritan file, each reloaded by SIGHUP as Sluice's own is: the
/// new backend takes the new connections. Neither format can turn on the API, so SIGHUP
/// is their reload (`POST /reload` reads the same origin, tested with Sluice's own file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_file_in_another_format() {
    let old = TestBackend::named("old").await;
    let new = TestBackend::named("new").await;
    let haproxy = |backend: std::net::SocketAddr| {
        format!(
            "frontend front\n    bind 127.0.0.1:0\n    mode tcp\n    default_backend pool\n\
             backend pool\n    mode tcp\n    server only {backend}\n"
        )
    };
    let samaritan = |port: u16, backend: std::net::SocketAddr| {
        format!(
            "servers:\n  - name: front\n    listen: \"127.0.0.1:{port}\"\n    protocol: tcp\n\
             \x20   backends:\n      - address: \"{backend}\"\n"
        )
    };
    let port = free_port();
    for (name, first, second) in [
        ("lb.cfg", haproxy(old.addr), haproxy(new.addr)),
        (
            "lb.yaml",
            samaritan(port, old.addr),
            samaritan(port, new.addr),
        ),
    ] {
        let mut sluice = SluiceProcess::start_file(name, &first, None).await;
        assert_eq!(who(sluice.addr).await, "old", "{name}");
        sluice.rewrite(&second);
        sluice.signal("HUP");
        eventually(&format!("{name}: the reload takes effect"), || async {
            who(sluice.addr).await == "new"
        })
        .await;
        sluice.signal("TERM");
        assert!(sluice.exit(Duration::from_secs(30)).await.success());
    }
}

#[tokio::test]
async fn convert_writes_an_haproxy_file_as_sluices_own() {
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/configs/haproxy/valid/seed_l4.cfg"
    );
    let (status, stdout, stderr) = run_sluice(&["convert", "-c", source]).await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("(HAProxy)"), "{stdout}");
    assert!(stdout.contains("[servers.tcp_front]"), "{stdout}");
    let dir = tempfile::tempdir().expect("temp dir");
    let converted = write_file(dir.path(), "sluice.toml", &stdout);
    let original = sluice::config::load(Path::new(source)).expect("valid");
    let again = sluice::config::load(Path::new(&converted)).expect("the conversion loads");
    assert_eq!(original.config, again.config);
    // Read as another format on purpose, the file is reported in that format's terms.
    let (status, _, stderr) = run_sluice(&["check", "-f", "toml", "-c", source]).await;
    assert!(!status.success());
    let hint = format!(
        "{source}: read as GoBetween TOML (by --format or the extension), but it looks like \
         a HAProxy configuration: give --format haproxy\n{source}:2:10: "
    );
    assert!(stderr.starts_with(&hint), "{stderr}");
}
