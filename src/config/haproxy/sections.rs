//! A file's lines, section by section: `global` into [`Global`] (`global`), each
//! `defaults` into the settings the proxies after it start from, and each `frontend`,
//! `backend` and `listen` into a [`Proxy`].

use std::time::Duration;

use super::directives::{self, Settings};
use super::global::{self, Global};
use super::rules::{AclLine, ConnRule, UseBackend};
use super::server::ServerLine;
use super::words::{nearest, shown, Line};
use super::Ctx;
use crate::config::BindRange;

/// What a proxy section is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Defaults,
    Frontend,
    Backend,
    Listen,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Defaults => "defaults",
            Kind::Frontend => "frontend",
            Kind::Backend => "backend",
            Kind::Listen => "listen",
        }
    }

    /// Whether it accepts clients (`bind`, `use_backend`).
    pub fn front(self) -> bool {
        matches!(self, Kind::Frontend | Kind::Listen)
    }

    /// Whether it has servers.
    pub fn back(self) -> bool {
        matches!(self, Kind::Backend | Kind::Listen)
    }
}

/// One `frontend`, `backend`, `listen` or `defaults` section.
#[derive(Clone)]
pub(super) struct Proxy {
    pub kind: Kind,
    pub name: String,
    /// Where its header is.
    pub at: usize,
    /// What it inherits from `defaults` and may set itself.
    pub settings: Settings,
    pub binds: Vec<(BindRange, usize)>,
    pub use_backends: Vec<UseBackend>,
    pub acls: Vec<AclLine>,
    /// `tcp-request connection` rules, in order.
    pub access: Vec<ConnRule>,
    pub inspect_delay: Option<(Duration, usize)>,
    /// `tcp-request content accept if { req_ssl_hello_type 1 }` is written.
    pub hello_accepted: bool,
    /// Where clients without a ClientHello are refused (`tcp-request content reject`).
    pub hello_required: Option<usize>,
    pub servers: Vec<ServerLine>,
    /// A `server` line failed: the backend is reported already and is not built.
    pub broken: bool,
    /// Where a `stats` directive is: a statistics page, if it is nothing else.
    pub stats: Option<usize>,
}

impl Proxy {
    fn new(kind: Kind, name: String, at: usize, settings: Settings) -> Self {
        Proxy {
            kind,
            name,
            at,
            settings,
            binds: Vec::new(),
            use_backends: Vec::new(),
            acls: Vec::new(),
            access: Vec::new(),
            inspect_delay: None,
            hello_accepted: false,
            hello_required: None,
            servers: Vec::new(),
            broken: false,
            stats: None,
        }
    }

    /// `frontend web`, or `defaults` alone: how messages name it.
    /// A statistics page and nothing else: no servers, no backend to send clients to.
    pub fn only_stats(&self) -> bool {
        self.stats.is_some()
            && self.servers.is_empty()
            && self.settings.default_backend.is_none()
            && self.use_backends.is_empty()
    }

    pub fn title(&self) -> String {
        if self.name.is_empty() {
            self.kind.name().to_owned()
        } else {
            format!("{} {}", self.kind.name(), shown(&self.name))
        }
    }
}

/// A whole file, read.
pub(super) struct File {
    pub global: Global,
    /// Frontends, backends and listens, in file order.
    pub proxies: Vec<Proxy>,
}

/// Sections HAProxy has that Sluice does not read.
const OTHER_SECTIONS: &[&str] = &[
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "crt-store",
    "log-forward",
    "traces",
    "acme",
];

const SECTIONS: &[&str] = &["global", "defaults", "frontend", "backend", "listen"];

pub(super) fn read(ctx: &mut Ctx<'_>, lines: &[Line]) -> File {
    let mut file = File {
        global: Global::default(),
        proxies: Vec::new(),
    };
    // The unnamed `defaults` last seen, and every named one, for `from NAME`.
    let mut defaults = Proxy::new(Kind::Defaults, String::new(), 0, Settings::default());
    let mut named: Vec<Proxy> = Vec::new();
    let mut current: Option<Proxy> = None;
    // How many errors and warnings there were when the current section started.
    let mut marks = (0, 0);
    let mut in_global = false;
    let mut skipping = false;
    for line in lines {
        let keyword = line.keyword();
        let kind = match keyword {
            "global" => None,
            "defaults" => Some(Kind::Defaults),
            "frontend" => Some(Kind::Frontend),
            "backend" => Some(Kind::Backend),
            "listen" => Some(Kind::Listen),
            other if OTHER_SECTIONS.contains(&other) => {
                finish(
                    ctx,
                    marks,
                    &mut file,
                    &mut defaults,
                    &mut named,
                    current.take(),
                );
                let message = format!("section \"{other}\" is not supported by Sluice");
                ctx.error(line.at(), message);
                (in_global, skipping) = (false, true);
                continue;
            }
            _ => {
                if let Some(proxy) = &mut current {
                    directives::read(ctx, proxy, line);
                } else if in_global {
                    global::line(ctx, &mut file.global, line);
                } else if !skipping {
                    let hint = nearest(keyword, SECTIONS)
                        .map(|near| format!(" (did you mean \"{near}\"?)"))
                        .unwrap_or_default();
                    let message = format!(
                        "\"{keyword}\" outside a section; a file starts with global, \
                         defaults, frontend, backend or listen{hint}"
                    );
                    ctx.error(line.at(), message);
                    skipping = true;
                }
                continue;
            }
        };
        finish(
            ctx,
            marks,
            &mut file,
            &mut defaults,
            &mut named,
            current.take(),
        );
        (in_global, skipping) = (kind.is_none(), false);
        let Some(kind) = kind else {
            if let Some(extra) = line.args(1).first() {
                ctx.error(extra.at, "global: takes no name");
            }
            continue;
        };
        marks = (ctx.errors.len(), ctx.warnings.len());
        current = header(ctx, line, kind, &defaults, &named);
        skipping = current.is_none();
    }
    finish(
        ctx,
        marks,
        &mut file,
        &mut defaults,
        &mut named,
        current.take(),
    );
    file
}

/// The proxy a section header starts: `KIND NAME [from DEFAULTS]`.
fn header(
    ctx: &mut Ctx<'_>,
    line: &Line,
    kind: Kind,
    defaults: &Proxy,
    named: &[Proxy],
) -> Option<Proxy> {
    let args = line.args(1);
    let name = args.first().map(|w| w.text.clone()).unwrap_or_default();
    let title = kind.name();
    if name.is_empty() && kind != Kind::Defaults {
        ctx.error(line.at(), format!("{title}: needs a name"));
        return None;
    }
    let mut base = defaults;
    match args.get(1..).unwrap_or_default() {
        [] => {}
        [from, parent] if from.text == "from" => {
            match named.iter().rev().find(|d| d.name == parent.text) {
                Some(found) => base = found,
                None => {
                    let message = format!(
                        "{title} {name}: from: no defaults section named \"{}\" above",
                        parent.text
                    );
                    ctx.error(parent.at, message);
                }
            }
        }
        [extra, ..] => {
            let message = format!("{title} {name}: expected \"from DEFAULTS\" after the name");
            ctx.error(extra.at, message);
        }
    }
    let mut settings = base.settings.clone();
    settings.tcp_checks_inherited = true;
    Some(Proxy::new(kind, name, line.at(), settings))
}

/// Files a finished section: a `defaults` becomes what the next proxies start from.
/// A statistics page is ignored as a whole (one warning, from `build`): what its lines
/// said is dropped.
fn finish(
    ctx: &mut Ctx<'_>,
    (errors, warnings): (usize, usize),
    file: &mut File,
    defaults: &mut Proxy,
    named: &mut Vec<Proxy>,
    proxy: Option<Proxy>,
) {
    let Some(proxy) = proxy else { return };
    if proxy.only_stats() {
        ctx.errors.truncate(errors);
        ctx.warnings.truncate(warnings);
    }
    if proxy.kind != Kind::Defaults {
        file.proxies.push(proxy);
        return;
    }
    if !proxy.name.is_empty() {
        named.push(proxy.clone());
    }
    *defaults = proxy;
}
