//! The directives of a proxy section this reader sorts without reading them: those that
//! mean something only to HTTP (errors), the harmless ones (warnings saying what Sluice
//! does instead), and every name it knows, for "did you mean".

/// Directives that mean something only to HTTP.
pub(super) const HTTP_ONLY: &[&str] = &[
    "http-request",
    "http-response",
    "http-after-response",
    "http-reuse",
    "http-send-name-header",
    "http-error",
    "cookie",
    "capture",
    "compression",
    "errorfile",
    "errorfiles",
    "errorloc",
    "errorloc302",
    "errorloc303",
    "redirect",
    "monitor-uri",
    "unique-id-format",
    "unique-id-header",
    "use-fcgi-app",
    "filter",
];

/// `option` names that mean something only to HTTP.
pub(super) const HTTP_OPTIONS: &[&str] = &[
    "forwardfor",
    "httplog",
    "http-server-close",
    "httpclose",
    "http-keep-alive",
    "http-buffer-request",
    "http-pretend-keepalive",
    "http-use-htx",
    "originalto",
    "forwarded",
    "h1-case-adjust-bogus-client",
    "h1-case-adjust-bogus-server",
    "accept-invalid-http-request",
    "accept-invalid-http-response",
    "http-ignore-probes",
    "http-no-delay",
    "http-restrict-req-hdr-names",
    "persist",
];

/// Harmless directives: what Sluice does instead.
pub(super) const HARMLESS: &[(&str, &str)] = &[
    (
        "log",
        "Sluice logs through [logging] (or RUST_LOG), one access-log line per connection",
    ),
    ("description", "Sluice keeps no description"),
    (
        "stats",
        "Sluice's statistics are its API ([api]) and Prometheus endpoint ([metrics])",
    ),
    (
        "option tcplog",
        "Sluice's access-log line has the client, backend, bytes and duration",
    ),
    (
        "option dontlognull",
        "Sluice logs every connection, at info",
    ),
    (
        "option dontlog-normal",
        "Sluice logs every connection, at info",
    ),
    (
        "option log-health-checks",
        "Sluice logs each backend going up or down",
    ),
    (
        "option splice-auto",
        "Sluice splices large transfers on its own",
    ),
    (
        "option splice-request",
        "Sluice splices large transfers on its own",
    ),
    (
        "option splice-response",
        "Sluice splices large transfers on its own",
    ),
];

/// Every directive this reader knows, for "did you mean".
pub(super) const KNOWN: &[&str] = &[
    "mode",
    "bind",
    "default_backend",
    "use_backend",
    "maxconn",
    "timeout",
    "retries",
    "option",
    "balance",
    "hash-type",
    "hash-balance-factor",
    "acl",
    "tcp-request",
    "tcp-check",
    "http-check",
    "server",
    "default-server",
    "log",
    "description",
];
