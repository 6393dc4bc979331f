//! The web dashboard in a real headless Chromium, driven through chromedriver, against
//! the real binary: it lists the backends, drains one and reweights another through the
//! API, shows a backend going down, and fits a phone; and, when the API wants a bearer
//! token, asks for it, refuses a wrong one and works with the right one; with BGP, it
//! shows each neighbour's session and what is announced (BIRD the router).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::{sleep, timeout, Instant};

use crate::support::http;
use crate::support::process::*;
use crate::support::*;

/// Chromium and chromedriver start in well under this on a loaded machine.
const BROWSER_WAIT: Duration = Duration::from_secs(30);

/// chromedriver on a loopback port of its own, in its own process group so that the
/// browsers it starts go with it when the test ends, even on a panic.
struct ChromeDriver {
    child: Child,
    url: String,
    log: PathBuf,
    stdout: PathBuf,
    _dir: TempDir,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("chromedriver.log");
        let stdout = dir.path().join("chromedriver.out");
        let child = {
            use std::os::unix::process::CommandExt;
            // Port 0: it takes a free one and says which on its standard output.
            Command::new("chromedriver")
                .arg("--port=0")
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout).expect("chromedriver output"))
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
        };
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "chromedriver is not installed: the dashboard test drives a real headless \
                 Chromium; install the Debian packages chromium and chromium-driver \
                 (apt-get install chromium chromium-driver), or run scripts/test, which \
                 installs them"
            ),
            Err(e) => panic!("cannot start chromedriver: {e}"),
        };
        let mut driver = ChromeDriver {
            child,
            url: String::new(),
            log,
            stdout,
            _dir: dir,
        };
        let addr = driver.wait_ready().await;
        driver.url = format!("http://{addr}");
        driver
    }

    /// The port chromedriver says it listens on, once it has said so.
    fn port(&self) -> Option<u16> {
        let said = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let (_, rest) = said.split_once("started successfully on port ")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// Bounded: waits for chromedriver to name its port, then polls `GET /status` until
    /// it says it is ready; returns its address.
    async fn wait_ready(&mut self) -> SocketAddr {
        let deadline = Instant::now() + BROWSER_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromedriver exited with {status}:\n{}", self.log());
            }
            if let Some(port) = self.port() {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if let Ok((200, body)) = http(addr, "GET", "/status", None, None).await {
                    if body.contains("\"ready\":true") {
                        return addr;
                    }
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "chromedriver was not ready within {BROWSER_WAIT:?}:\n{}\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any Chromium it started for this test.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request to the API or chromedriver: the status and the body. Errors instead of
/// panicking, for the loops that wait on a server to come up.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Accept", "application/json")];
    if let Some(value) = &authorization {
        headers.push(("Authorization", value));
    }
    let response = http::try_request(addr, method, path, &headers, body).await?;
    Ok((response.status, response.body))
}

/// The backends of server `name` as the API reports them; `token` as for [`http`].
async fn backends(api: SocketAddr, token: Option<&str>, name: &str) -> Result<Vec<Value>, String> {
    let path = format!("/servers/{name}/backends");
    let (status, body) = http(api, "GET", &path, None, token)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {path}: {status} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))
}

/// The backend with `key` in the API's list of server `web`; `token` as for [`http`].
async fn api_backend(api: SocketAddr, token: Option<&str>, key: &str) -> Result<Value, String> {
    let list = backends(api, token, "web").await?;
    list.iter()
        .find(|b| b["key"] == key)
        .cloned()
        .ok_or_else(|| format!("no backend {key} in {list:?}"))
}

/// Retries `probe` until it gives `Some`, for at most `within`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {within:?} waiting for: {what}"));
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// The text of the first element matching `css`, if there is one now.
async fn text_of(client: &Client, css: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

/// Clicks the first element matching `css`.
async fn click(client: &Client, css: &str) -> Result<(), String> {
    let element = client
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("find {css}: {e}"))?;
    element
        .click()
        .await
        .map_err(|e| format!("click {css}: {e}"))
}

/// Accepts the confirmation dialog the page opens, once it is open; returns its text.
async fn accept_confirm(client: &Client) -> Result<String, String> {
    let text = until("the confirmation dialog", BROWSER_WAIT, || async {
        client.get_alert_text().await.ok()
    })
    .await?;
    client
        .accept_alert()
        .await
        .map_err(|e| format!("accept the dialog: {e}"))?;
    Ok(text)
}

/// From now on, records each path the page fetches and counts the turns of its poll
/// loop, which re-arms its one timer (`setTimeout`) after each poll: see [`watched`].
async fn watch_page(client: &Client) -> Result<(), String> {
    client
        .execute(
            "window.__watch = { paths: [], turns: 0 }; \
             if (!window.__watching) { \
               window.__watching = true; \
               const fetch0 = window.fetch, setTimeout0 = window.setTimeout; \
               window.fetch = function (path) { \
                 window.__watch.paths.push(String(path)); \
                 return fetch0.apply(window, arguments); }; \
               window.setTimeout = function () { \
                 window.__watch.turns += 1; \
                 return setTimeout0.apply(window, arguments); }; \
             } \
             return null;",
            vec![],
        )
        .await
        .map_err(|e| format!("watch the page: {e}"))?;
    Ok(())
}

/// The paths fetched and the turns of the poll loop since [`watch_page`].
async fn watched(client: &Client) -> Result<(Vec<String>, u64), String> {
    let got = client
        .execute(
            "return [window.__watch.paths, window.__watch.turns];",
            vec![],
        )
        .await
        .map_err(|e| format!("read what the page did: {e}"))?;
    let paths = got[0]
        .as_array()
        .map(|paths| {
            paths
                .iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .ok_or_else(|| format!("paths, not {got}"))?;
    let turns = got[1].as_u64().ok_or_else(|| format!("turns, not {got}"))?;
    Ok((paths, turns))
}

/// Where test artifacts go: `target/test-artifacts`, beside the binary's profile directory.
fn artifacts() -> PathBuf {
    let target = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("target directory of the binary");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create test-artifacts");
    dir
}

async fn screenshot(client: &Client, name: &str) -> Result<(), String> {
    let png = client
        .screenshot()
        .await
        .map_err(|e| format!("screenshot: {e}"))?;
    std::fs::write(artifacts().join(name), png).map_err(|e| format!("write {name}: {e}"))
}

/// The API error the page shows, if any.
async fn page_error(client: &Client) -> Result<Option<String>, String> {
    let shown = client
        .execute(
            "const e = document.getElementById('error'); \
             return e && !e.hidden ? e.textContent.trim() : null;",
            vec![],
        )
        .await
        .map_err(|e| format!("read the error banner: {e}"))?;
    Ok(shown.as_str().map(str::to_owned))
}

/// Sluice with server `web` round-robin over two live backends, a ping health check, and
/// the API on loopback with `api_extra` (more `[api]` lines) in its table.
struct Setup {
    a: TestBackend,
    b: TestBackend,
    /// Where `web` listens.
    proxied: SocketAddr,
    api: SocketAddr,
    sluice: SluiceProcess,
}

impl Setup {
    async fn start(api_extra: &str) -> Setup {
        let a = TestBackend::named("a").await;
        let b = TestBackend::named("b").await;
        let (a_key, b_key) = (a.addr.to_string(), b.addr.to_string());
        let toml = format!(
            r#"shutdown_timeout = "1s"

[logging]
level = "info"

[api]
enabled = true
bind = "127.0.0.1:0"
{api_extra}

[servers.web]
bind = ["127.0.0.1:0", "127.0.0.1:0"]
protocol = "tcp"
balance = "roundrobin"
max_connections_per_client = 2
all_down = "last"
slow_start = "60s"
min_healthy_percent = 60

  [servers.web.discovery]
  kind = "static"
  static_list = ["{a_key} weight=1", "{b_key} weight=2"]

  [servers.web.healthcheck]
  kind = "ping"
  interval = "500ms"
  timeout = "250ms"
"#
        );
        let sluice = SluiceProcess::start(&toml).await;
        let api = sluice.api();
        let (status, _) = http(api, "GET", "/ui", None, None).await.expect("GET /ui");
        assert_eq!(
            status,
            200,
            "the API serves the dashboard, without credentials:\n{}",
            sluice.log()
        );
        Setup {
            a,
            b,
            proxied: sluice.server("web"),
            api,
            sluice,
        }
    }
}

/// A headless Chromium session through its own chromedriver, with a fresh profile (so
/// nothing, a token least of all, carries over from another test).
struct Browser {
    client: Client,
    driver: ChromeDriver,
    _profile: TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let driver = ChromeDriver::start().await;
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        // The test answers each dialog itself; nothing is dismissed behind its back.
        capabilities.insert("unhandledPromptBehavior".to_owned(), json!("ignore"));
        // Sluice's rustls uses ring, fantoccini's brings aws-lc-rs: with both compiled in,
        // rustls will not guess, so pick one (another test may have already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = timeout(
            BROWSER_WAIT,
            ClientBuilder::rustls()
                .expect("TLS roots for the WebDriver client (install the ca-certificates package)")
                .capabilities(capabilities)
                .connect(&driver.url),
        )
        .await
        .unwrap_or_else(|_| panic!("no browser session in time:\n{}", driver.log()))
        .unwrap_or_else(|e| panic!("start Chromium: {e}\n{}", driver.log()));
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Closes the browser, then fails with the message of `result`, if any, and
    /// Sluice's log.
    async fn finish(self, result: Result<(), String>, sluice: &SluiceProcess) {
        let _ = self.client.close().await;
        drop(self.driver);
        if let Err(message) = result {
            panic!("{message}\nsluice log:\n{}", sluice.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_drains_reweights_and_fits_a_phone() {
    let setup = Setup::start("").await;
    // A little traffic, so the counters and the screenshot show something.
    for _ in 0..4 {
        who(setup.proxied).await;
    }
    let browser = Browser::start().await;
    let backends = (setup.a, setup.b);
    let result = exercise(&browser.client, setup.api, setup.proxied, backends).await;
    browser.finish(result, &setup.sluice).await;
}

/// The browser part; an `Err` says what failed, so the caller can close the browser and
/// add Sluice's log before failing.
async fn exercise(
    client: &Client,
    api: SocketAddr,
    proxied: SocketAddr,
    (a, b): (TestBackend, TestBackend),
) -> Result<(), String> {
    let a_key = &a.addr.to_string();
    let b_key = &b.addr.to_string();
    client
        .goto(&format!("http://{api}/ui"))
        .await
        .map_err(|e| format!("open the dashboard: {e}"))?;
    let row = |key: &str| format!(r#"section[data-server="web"] tr[data-backend="{key}"]"#);
    let state_of = |key: &str| format!("{} .state", row(key));
    for key in [a_key, b_key] {
        until(
            &format!("backend {key} listed as up"),
            BROWSER_WAIT,
            || async {
                (text_of(client, &state_of(key)).await.as_deref() == Some("up")).then_some(())
            },
        )
        .await?;
    }

    // Several binds are shown as the list they are.
    let bind = text_of(client, r#"section[data-server="web"] .bind"#).await;
    if bind.as_deref() != Some("127.0.0.1:0, 127.0.0.1:0") {
        return Err(format!("the server's bind shown as {bind:?}"));
    }

    // Client protection: a client past its cap of two connections is listed as limited.
    let source = Some("127.0.0.51".parse().expect("address"));
    let held = [
        hello(proxied, source).await.1,
        hello(proxied, source).await.1,
    ];
    let mut third = connect_from(proxied, source).await;
    assert_closed_without_data(&mut third, WAIT).await;
    let limited = r#"section[data-server="web"] .clients li[data-client="127.0.0.51/32"]"#;
    let line = until(
        "the page lists the limited client",
        BROWSER_WAIT,
        || async { text_of(client, limited).await },
    )
    .await?;
    if !line.contains("max_connections_per_client") || !line.contains("2 open") {
        return Err(format!("the limited client's line: {line:?}"));
    }
    drop(held);

    // Drain: confirm, then the page and the API both say draining.
    click(
        client,
        &format!(r#"{} button[data-action="drain"]"#, row(a_key)),
    )
    .await?;
    let question = accept_confirm(client).await?;
    if !question.contains(a_key) {
        return Err(format!(
            "the confirmation should name {a_key}: {question:?}"
        ));
    }
    until("the page shows draining", BROWSER_WAIT, || async {
        (text_of(client, &state_of(a_key)).await.as_deref() == Some("draining")).then_some(())
    })
    .await?;
    until("the API reports draining", WAIT, || async {
        let a = api_backend(api, None, a_key).await.ok()?;
        (a["state"] == "draining").then_some(())
    })
    .await?;
    let other = api_backend(api, None, b_key).await?;
    if other["state"] != "enabled" {
        return Err(format!("only {a_key} drains, yet {b_key} is {other}"));
    }

    // Enabled again, it warms up (slow_start), and the page says how far.
    click(
        client,
        &format!(r#"{} button[data-action="enable"]"#, row(a_key)),
    )
    .await?;
    accept_confirm(client).await?;
    let tags = until("the page shows a warming up", BROWSER_WAIT, || async {
        let tags = text_of(client, &format!("{} .tags", row(a_key))).await?;
        tags.contains("warming up, ").then_some(tags)
    })
    .await?;
    if !tags.ends_with("% of its share") {
        return Err(format!("the warm-up tag: {tags:?}"));
    }
    // And drained again, for what follows.
    click(
        client,
        &format!(r#"{} button[data-action="drain"]"#, row(a_key)),
    )
    .await?;
    accept_confirm(client).await?;
    until("the page shows draining again", BROWSER_WAIT, || async {
        (text_of(client, &state_of(a_key)).await.as_deref() == Some("draining")).then_some(())
    })
    .await?;

    // Weight: typed, confirmed, and the API has it.
    let weight = client
        .find(Locator::Css(&format!("{} input.weight", row(b_key))))
        .await
        .map_err(|e| format!("find the weight input: {e}"))?;
    // One typing action, as a user would: WebDriver's clear() takes the focus away,
    // and the page's next poll may then write the current weight back before "5".
    let backspaces = "\u{E003}".repeat(8);
    weight
        .send_keys(&format!("{backspaces}5"))
        .await
        .map_err(|e| format!("type weight: {e}"))?;
    click(
        client,
        &format!(r#"{} button[data-action="weight"]"#, row(b_key)),
    )
    .await?;
    accept_confirm(client).await?;
    until("the API reports weight 5", WAIT, || async {
        let other = api_backend(api, None, b_key).await.ok()?;
        (other["weight"] == 5).then_some(())
    })
    .await?;

    // Health: b stops listening, its checks fail, the page shows it down with a mark.
    drop(b);
    until("the page shows b down", BROWSER_WAIT, || async {
        (text_of(client, &state_of(b_key)).await.as_deref() == Some("down")).then_some(())
    })
    .await?;
    let mark = client
        .find(Locator::Css(&format!("{} .marks .mark.down", row(b_key))))
        .await
        .map_err(|e| format!("a down mark in the health history: {e}"))?;
    let title = mark
        .attr("title")
        .await
        .map_err(|e| format!("mark title: {e}"))?;
    if !title.is_some_and(|t| t.starts_with("down since ")) {
        return Err("the down mark should say since when".to_owned());
    }
    // a drains, so b is the tier's only enabled backend: none of it is up.
    let expected = "Below min_healthy_percent (60 %): priority 1 — all enabled backends \
                    there take clients, up or not.";
    until("the page says the tier panics", BROWSER_WAIT, || async {
        let banner = r#"section[data-server="web"] .panic"#;
        (text_of(client, banner).await.as_deref() == Some(expected)).then_some(())
    })
    .await?;
    // a stops too: the server says every backend is down, and where clients go.
    drop(a);
    let expected = "Every backend is down: new clients go to the backends up most recently \
                    (all_down = \"last\").";
    until(
        "the page says every backend is down",
        BROWSER_WAIT,
        || async {
            let banner = r#"section[data-server="web"] .all-down"#;
            (text_of(client, banner).await.as_deref() == Some(expected)).then_some(())
        },
    )
    .await?;

    if let Some(error) = page_error(client).await? {
        return Err(format!("the page shows an error: {error}"));
    }
    // Two more polls, so each chart has a line: the third one started means the second
    // has been drawn (polls run one after another).
    watch_page(client).await?;
    until("two more polls", BROWSER_WAIT, || async {
        let (paths, _) = watched(client).await.ok()?;
        (paths.iter().filter(|p| *p == "/servers").count() >= 3).then_some(())
    })
    .await?;
    screenshot(client, "dashboard.png").await?;

    // Phone width: rows become cards and nothing sticks out sideways.
    client
        .set_window_size(375, 812)
        .await
        .map_err(|e| format!("resize to phone width: {e}"))?;
    let (scroll, inner) = until("a viewport of phone width", BROWSER_WAIT, || async {
        let got = client
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await
            .ok()?;
        let (scroll, inner) = (got[0].as_u64()?, got[1].as_u64()?);
        (inner <= 400).then_some((scroll, inner))
    })
    .await?;
    screenshot(client, "dashboard-phone.png").await?;
    if scroll > inner {
        return Err(format!(
            "horizontal overflow at phone width: scrollWidth {scroll} > innerWidth {inner}"
        ));
    }
    let shown = text_of(client, &state_of(a_key)).await;
    if shown.as_deref() != Some("draining") {
        return Err(format!("at phone width {a_key} shows {shown:?}"));
    }
    Ok(())
}

/// The token the API of [`dashboard_asks_for_a_bearer_token_and_drains_with_it`] wants.
const TOKEN: &str = "dashboard-test-token-7f3a";

/// What the token form says, if it is on show now.
async fn token_form(client: &Client) -> Result<Option<String>, String> {
    let shown = client
        .execute(
            "const f = document.getElementById('token-form'); \
             return f && !f.hidden && f.offsetParent !== null \
               ? document.getElementById('token-note').textContent.trim() : null;",
            vec![],
        )
        .await
        .map_err(|e| format!("read the token form: {e}"))?;
    Ok(shown.as_str().map(str::to_owned))
}

/// How many backend rows the page lists.
async fn listed(client: &Client) -> Result<u64, String> {
    let n = client
        .execute(
            "return document.querySelectorAll('tr[data-backend]').length;",
            vec![],
        )
        .await
        .map_err(|e| format!("count backend rows: {e}"))?;
    n.as_u64().ok_or_else(|| format!("a row count, not {n}"))
}

/// Types `token` into the token form and submits it with its button.
async fn submit_token(client: &Client, token: &str) -> Result<(), String> {
    let input = client
        .find(Locator::Css("#token"))
        .await
        .map_err(|e| format!("find the token input: {e}"))?;
    input
        .send_keys(token)
        .await
        .map_err(|e| format!("type the token: {e}"))?;
    click(client, r#"#token-form button[type="submit"]"#).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_a_bearer_token_and_drains_with_it() {
    let setup = Setup::start(&format!(r#"bearer_token = "{TOKEN}""#)).await;
    let (status, body) = http(setup.api, "GET", "/servers", None, None)
        .await
        .expect("GET /servers");
    assert_eq!(status, 401, "the API wants the token: {body}");
    let browser = Browser::start().await;
    let keys = [setup.a.addr.to_string(), setup.b.addr.to_string()];
    let result = exercise_token(&browser.client, setup.api, &keys).await;
    browser.finish(result, &setup.sluice).await;
}

/// The browser part of the bearer-token test, as [`exercise`] is of the first.
async fn exercise_token(
    client: &Client,
    api: SocketAddr,
    keys: &[String; 2],
) -> Result<(), String> {
    client
        .goto(&format!("http://{api}/ui"))
        .await
        .map_err(|e| format!("open the dashboard: {e}"))?;
    let row = |key: &str| format!(r#"section[data-server="web"] tr[data-backend="{key}"]"#);
    let state_of = |key: &str| format!("{} .state", row(key));

    // No token yet: the API's 401 brings up the form, and nothing is listed.
    let note = until("the token form", BROWSER_WAIT, || async {
        token_form(client).await.ok().flatten()
    })
    .await?;
    if note != "This API needs a token." {
        return Err(format!("the token form first says {note:?}"));
    }
    let n = listed(client).await?;
    if n != 0 {
        return Err(format!("{n} backends listed without a token"));
    }

    // A wrong token: refused, forgotten, the form comes back saying so; still nothing.
    submit_token(client, "not-the-token").await?;
    until(
        "the form back, saying the token was refused",
        BROWSER_WAIT,
        || async {
            let note = token_form(client).await.ok().flatten()?;
            (note == "That token was refused.").then_some(())
        },
    )
    .await?;
    // The page does not go on asking with the bad token: two turns of its poll loop, the
    // second wholly watched, and no request.
    watch_page(client).await?;
    until("two turns of the poll loop", BROWSER_WAIT, || async {
        let (_, turns) = watched(client).await.ok()?;
        (turns >= 2).then_some(())
    })
    .await?;
    let (asked, _) = watched(client).await?;
    if !asked.is_empty() {
        return Err(format!(
            "the page asked again after a wrong token: {asked:?}"
        ));
    }
    let n = listed(client).await?;
    if n != 0 {
        return Err(format!("{n} backends listed after a wrong token"));
    }
    if token_form(client).await?.is_none() {
        return Err("the token form went away after a wrong token".to_owned());
    }
    let kept = client
        .execute("return sessionStorage.getItem('sluice.api-token');", vec![])
        .await
        .map_err(|e| format!("read sessionStorage: {e}"))?;
    if !kept.is_null() {
        return Err(format!("the refused token is still kept: {kept}"));
    }
    screenshot(client, "dashboard-token-refused.png").await?;

    // The right token: both backends listed, the form gone, no error.
    submit_token(client, TOKEN).await?;
    for key in keys {
        until(
            &format!("backend {key} listed as up"),
            BROWSER_WAIT,
            || async {
                (text_of(client, &state_of(key)).await.as_deref() == Some("up")).then_some(())
            },
        )
        .await?;
    }
    if let Some(note) = token_form(client).await? {
        return Err(format!("the token form still shows, saying {note:?}"));
    }
    if let Some(error) = page_error(client).await? {
        return Err(format!("the page shows an error: {error}"));
    }

    // Drain with the token: confirmed, and the API (asked with the token) says draining.
    let (drained, other) = (&keys[1], &keys[0]);
    click(
        client,
        &format!(r#"{} button[data-action="drain"]"#, row(drained)),
    )
    .await?;
    let question = accept_confirm(client).await?;
    if !question.contains(drained.as_str()) {
        return Err(format!(
            "the confirmation should name {drained}: {question:?}"
        ));
    }
    until("the API reports draining", WAIT, || async {
        let b = api_backend(api, Some(TOKEN), drained).await.ok()?;
        (b["state"] == "draining").then_some(())
    })
    .await?;
    until("the page shows draining", BROWSER_WAIT, || async {
        (text_of(client, &state_of(drained)).await.as_deref() == Some("draining")).then_some(())
    })
    .await?;
    let untouched = api_backend(api, Some(TOKEN), other).await?;
    if untouched["state"] != "enabled" {
        return Err(format!("only {drained} drains, yet {other} is {untouched}"));
    }
    if let Some(error) = page_error(client).await? {
        return Err(format!("the page shows an error: {error}"));
    }
    screenshot(client, "dashboard-token.png").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_each_bgp_neighbour_and_what_is_announced() {
    use crate::support::bird::{self, Bird};
    let test = "dashboard_shows_each_bgp_neighbour_and_what_is_announced";
    let port = server_port();
    let Some(router) = bird::or_skip(Bird::start(&crate::bgp::router(port)).await, test) else {
        return;
    };
    let backend = TestBackend::echo().await;
    let toml = format!(
        "{}\n[api]\nenabled = true\nbind = \"127.0.0.1:0\"\n",
        crate::bgp::announcing(port, backend.addr)
    );
    let sluice = SluiceProcess::start(&toml).await;
    let api = sluice.api();
    let browser = Browser::start().await;
    let result = async {
        let client = &browser.client;
        client
            .goto(&format!("http://{api}/ui"))
            .await
            .map_err(|e| format!("open the dashboard: {e}"))?;
        until("the neighbour shown established", BROWSER_WAIT, || async {
            let state = text_of(client, "#bgp-neighbors tr td:nth-child(3)").await;
            (state.as_deref() == Some("established")).then_some(())
        })
        .await?;
        let neighbor = text_of(client, "#bgp-neighbors tr td:nth-child(1)").await;
        if neighbor.as_deref() != Some(&*format!("127.0.0.1:{port}")) {
            return Err(format!("the neighbour's address: {neighbor:?}"));
        }
        until("the prefix shown announced", BROWSER_WAIT, || async {
            let announced = text_of(client, "#bgp-announced").await?;
            let server = text_of(client, r#"section[data-server="web"] .announce"#).await?;
            (announced == crate::bgp::SERVICE && server.ends_with("(announced)")).then_some(())
        })
        .await?;
        screenshot(client, "dashboard-bgp.png").await?;
        if !crate::bgp::holds(&router) {
            return Err("the router does not hold the route the page shows".into());
        }
        match page_error(client).await? {
            Some(error) => Err(format!("the page reported an error: {error}")),
            None => Ok(()),
        }
    }
    .await;
    browser.finish(result, &sluice).await;
}
