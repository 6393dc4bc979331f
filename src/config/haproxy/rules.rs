//! `acl`, `tcp-request` and `use_backend`: HAProxy's rules, as far as Sluice has them.
//! Connection rules on the client's address become the server's access rules (first
//! match wins, as HAProxy evaluates them in order); `use_backend` by the TLS server name
//! (`req_ssl_sni`) becomes SNI routing, each backend's servers tagged with its names.

use std::time::Duration;

use ipnet::IpNet;

use super::sections::Proxy;
use super::values;
use super::words::{shown, Line, Word};
use super::Ctx;
use crate::acl::{parse_network, Acl, Action, Rule};

/// What an ACL tests, with its values: `src 10.0.0.0/8`, `req_ssl_sni -i a.example`.
#[derive(Clone, Debug)]
pub(super) struct AclBody {
    pub criterion: String,
    pub at: usize,
    /// `-m METHOD`; `None` is the criterion's own (`str` for names).
    pub method: Option<String>,
    pub values: Vec<Word>,
}

/// The server names a route is for, each a regular expression (`true`) or a name.
pub(super) type Patterns = Vec<(bool, String)>;

/// `acl NAME CRITERION [FLAGS] VALUES…`.
#[derive(Clone, Debug)]
pub(super) struct AclLine {
    pub name: String,
    pub body: AclBody,
}

/// `if [!]NAME` or `if [!]{ CRITERION … }`.
#[derive(Clone, Debug)]
pub(super) struct Cond {
    pub negated: bool,
    pub at: usize,
    pub named: Option<String>,
    pub inline: Option<AclBody>,
}

/// `tcp-request connection accept|reject [if COND]`.
#[derive(Clone, Debug)]
pub(super) struct ConnRule {
    pub accept: bool,
    pub at: usize,
    pub cond: Option<Cond>,
}

/// `use_backend NAME if COND`.
#[derive(Clone, Debug)]
pub(super) struct UseBackend {
    pub backend: String,
    pub at: usize,
    pub cond: Cond,
}

/// An ACL's body from its words.
fn body(words: &[Word]) -> Result<AclBody, (usize, String)> {
    let Some((criterion, rest)) = words.split_first() else {
        return Err((0, "expected a criterion and its values".to_owned()));
    };
    let mut method = None;
    let mut i = 0;
    while let Some(flag) = rest.get(i).filter(|w| w.text.starts_with('-')) {
        match flag.text.as_str() {
            "-i" => i += 1,
            "--" => {
                i += 1;
                break;
            }
            "-m" => {
                let m = rest
                    .get(i + 1)
                    .ok_or((flag.at, "-m: expected a method".to_owned()))?;
                method = Some(m.text.clone());
                i += 2;
            }
            other => {
                let message = format!("flag \"{other}\" is not supported (-i, -m METHOD)");
                return Err((flag.at, message));
            }
        }
    }
    Ok(AclBody {
        criterion: criterion.text.clone(),
        at: criterion.at,
        method,
        values: rest[i..].to_vec(),
    })
}

/// `acl NAME CRITERION [FLAGS] VALUES…`.
pub(super) fn acl(ctx: &mut Ctx<'_>, proxy: &mut Proxy, line: &Line) {
    let title = proxy.title();
    let Some((name, rest)) = line.args(1).split_first() else {
        ctx.error(
            line.at(),
            format!("{title}: acl: expected acl NAME CRITERION VALUES"),
        );
        return;
    };
    match body(rest) {
        Ok(body) if body.values.is_empty() => {
            ctx.error(
                body.at,
                format!("{title}: acl {}: expected values", name.text),
            );
        }
        Ok(body) => {
            if body.criterion == "src" {
                for value in &body.values {
                    if let Err(e) = parse_network(&value.text) {
                        ctx.error(value.at, format!("{title}: acl {}: {e}", name.text));
                    }
                }
            }
            proxy.acls.push(AclLine {
                name: name.text.clone(),
                body,
            });
        }
        Err((at, message)) => {
            let at = if at == 0 { line.at() } else { at };
            ctx.error(at, format!("{title}: acl {}: {message}", name.text));
        }
    }
}

/// `if COND`, with `{ … }` for an anonymous ACL; `unless` and several ACLs are not
/// supported.
fn cond(words: &[Word]) -> Result<Option<Cond>, (usize, String)> {
    let Some((keyword, rest)) = words.split_first() else {
        return Ok(None);
    };
    if keyword.text != "if" {
        let message = format!("expected \"if CONDITION\", found \"{}\"", keyword.text);
        return Err((keyword.at, message));
    }
    let Some(first) = rest.first() else {
        return Err((keyword.at, "if: expected a condition".to_owned()));
    };
    let (negated, name) = match first.text.strip_prefix('!') {
        Some("") => (true, rest.get(1)),
        Some(_) => (true, Some(first)),
        None => (false, Some(first)),
    };
    let Some(name) = name else {
        return Err((first.at, "!: expected an ACL".to_owned()));
    };
    let after = rest.iter().position(|w| std::ptr::eq(w, name)).unwrap_or(0) + 1;
    if name.text.trim_start_matches('!') == "{" {
        let close = rest
            .iter()
            .position(|w| w.text == "}")
            .ok_or((name.at, "{ is not closed".to_owned()))?;
        if let Some(extra) = rest.get(close + 1) {
            return Err((
                extra.at,
                "Sluice takes one ACL per rule (no and, or, ||)".to_owned(),
            ));
        }
        let inline =
            body(&rest[after..close]).map_err(|(at, m)| (if at == 0 { name.at } else { at }, m))?;
        return Ok(Some(Cond {
            negated,
            at: first.at,
            named: None,
            inline: Some(inline),
        }));
    }
    if let Some(extra) = rest.get(after) {
        return Err((
            extra.at,
            "Sluice takes one ACL per rule (no and, or, ||)".to_owned(),
        ));
    }
    let named = name.text.trim_start_matches('!').to_owned();
    Ok(Some(Cond {
        negated,
        at: first.at,
        named: Some(named),
        inline: None,
    }))
}

/// `tcp-request inspect-delay TIME`, `tcp-request connection accept|reject [if COND]`,
/// `tcp-request content accept if { req_ssl_hello_type 1 }`.
pub(super) fn tcp_request(ctx: &mut Ctx<'_>, proxy: &mut Proxy, line: &Line) {
    let title = proxy.title();
    let args = line.args(1);
    let fail = |ctx: &mut Ctx<'_>, at: usize, message: String| {
        ctx.error(at, format!("{title}: tcp-request: {message}"));
    };
    match args {
        [delay, time] if delay.text == "inspect-delay" => match values::time(&time.text) {
            Ok(d) => proxy.inspect_delay = Some((d, line.at())),
            Err(e) => fail(ctx, time.at, format!("inspect-delay: {e}")),
        },
        [layer, action, rest @ ..] if layer.text == "connection" => {
            let accept = match action.text.as_str() {
                "accept" => true,
                "reject" => false,
                other => {
                    let message = format!(
                        "connection {other}: not supported; Sluice's access rules accept or reject"
                    );
                    return fail(ctx, action.at, message);
                }
            };
            match cond(rest) {
                Ok(cond) => proxy.access.push(ConnRule {
                    accept,
                    at: line.at(),
                    cond,
                }),
                Err((at, m)) => fail(ctx, at, format!("connection {}: {m}", action.text)),
            }
        }
        [layer, action, rest @ ..] if layer.text == "content" => {
            // Waiting for a ClientHello, and refusing what is not one, is what Sluice's
            // SNI routing does: `accept if { req_ssl_hello_type 1 }`, then `reject`
            // (or `reject if !{ req_ssl_hello_type 1 }`).
            let cond = cond(rest);
            let hello = match &cond {
                Ok(Some(c)) => hello_type(proxy, c).then_some(c.negated),
                _ => None,
            };
            match (action.text.as_str(), hello, &cond) {
                ("accept", Some(false), _) => proxy.hello_accepted = true,
                ("reject", Some(true), _) => proxy.hello_required = Some(line.at()),
                ("reject", None, Ok(None)) if proxy.hello_accepted => {
                    proxy.hello_required = Some(line.at());
                }
                _ => fail(
                    ctx,
                    action.at,
                    format!(
                        "content {}: only \"accept if {{ req_ssl_hello_type 1 }}\" and then \
                         \"reject\" are supported (the wait for a ClientHello, which \
                         Sluice's SNI routing does)",
                        action.text
                    ),
                ),
            }
        }
        [first, ..] => fail(
            ctx,
            first.at,
            format!("\"{}\" rules are not supported", first.text),
        ),
        [] => fail(ctx, line.at(), "expected a rule".to_owned()),
    }
}

/// Whether `cond` tests `req_ssl_hello_type 1` (negated or not), inline or by name.
fn hello_type(proxy: &Proxy, cond: &Cond) -> bool {
    let is = |b: &AclBody| {
        matches!(
            b.criterion.as_str(),
            "req_ssl_hello_type" | "req.ssl_hello_type"
        ) && b.values.len() == 1
            && b.values[0].text == "1"
    };
    bodies(proxy, cond).is_some_and(|all| !all.is_empty() && all.into_iter().all(is))
}

/// `use_backend NAME [if COND]`.
pub(super) fn use_backend(ctx: &mut Ctx<'_>, proxy: &mut Proxy, line: &Line) {
    let title = proxy.title();
    let Some((name, rest)) = line.args(1).split_first() else {
        ctx.error(
            line.at(),
            format!("{title}: use_backend: expected a backend name"),
        );
        return;
    };
    if name.text.contains("%[") {
        let message = format!(
            "{title}: use_backend {}: backend names computed from samples (maps) are not \
             supported; write one use_backend per name",
            name.text
        );
        ctx.error(name.at, message);
        return;
    }
    match cond(rest) {
        Ok(Some(cond)) => proxy.use_backends.push(UseBackend {
            backend: name.text.clone(),
            at: line.at(),
            cond,
        }),
        Ok(None) => {
            let message = format!(
                "{title}: use_backend {}: without a condition, write default_backend",
                name.text
            );
            ctx.error(line.at(), message);
        }
        Err((at, m)) => ctx.error(at, format!("{title}: use_backend {}: {m}", name.text)),
    }
}

/// The ACL bodies `cond` tests (a named ACL's lines are ORed), or `None` if it names an
/// ACL that does not exist.
pub(super) fn bodies<'p>(proxy: &'p Proxy, cond: &'p Cond) -> Option<Vec<&'p AclBody>> {
    if let Some(inline) = &cond.inline {
        return Some(vec![inline]);
    }
    let name = cond.named.as_deref()?;
    let found: Vec<&AclBody> = proxy
        .acls
        .iter()
        .filter(|a| a.name == name)
        .map(|a| &a.body)
        .collect();
    (!found.is_empty()).then_some(found)
}

/// The networks `cond` tests with `src`, or why it cannot be an access rule.
fn networks(proxy: &Proxy, cond: &Cond) -> Result<Vec<IpNet>, (usize, String)> {
    let Some(bodies) = bodies(proxy, cond) else {
        let name = cond.named.clone().unwrap_or_default();
        return Err((cond.at, format!("no acl named \"{name}\" in this section")));
    };
    let mut nets = Vec::new();
    for body in bodies {
        if body.criterion != "src" || body.method.as_deref().is_some_and(|m| m != "ip") {
            let message = format!(
                "\"{}\": Sluice's access rules test the client's address only (src)",
                body.criterion
            );
            return Err((body.at, message));
        }
        for value in &body.values {
            nets.push(parse_network(&value.text).map_err(|e| (value.at, e))?);
        }
    }
    Ok(nets)
}

/// The access rules of `proxy`'s `tcp-request connection` lines: in order, first
/// match wins; a negated rule or one without a condition decides for everyone else, so
/// it must come last.
pub(super) fn access(ctx: &mut Ctx<'_>, proxy: &Proxy) -> Option<Acl> {
    if proxy.access.is_empty() {
        return None;
    }
    let title = proxy.title();
    let mut acl = Acl {
        default: Action::Allow,
        rules: Vec::new(),
    };
    let last = proxy.access.len() - 1;
    for (i, rule) in proxy.access.iter().enumerate() {
        let action = if rule.accept {
            Action::Allow
        } else {
            Action::Deny
        };
        let verb = if rule.accept { "accept" } else { "reject" };
        let context = format!("{title}: tcp-request connection {verb}");
        let final_rule = rule.cond.as_ref().is_none_or(|c| c.negated);
        if final_rule && i != last {
            let message = format!(
                "{context}: a rule {} decides for every client it does not exempt; \
                 Sluice's access rules need it last",
                if rule.cond.is_none() {
                    "without a condition"
                } else {
                    "on a negated ACL"
                }
            );
            ctx.error(rule.at, message);
            return None;
        }
        let Some(cond) = &rule.cond else {
            acl.default = action;
            continue;
        };
        match networks(proxy, cond) {
            // In the networks: on to the default (accept); outside them: this rule.
            Ok(nets) if cond.negated => {
                acl.rules.extend(nets.into_iter().map(|net| Rule {
                    action: Action::Allow,
                    net,
                    to: None,
                }));
                acl.default = action;
            }
            Ok(nets) => acl.rules.extend(nets.into_iter().map(|net| Rule {
                action,
                net,
                to: None,
            })),
            Err((at, message)) => {
                ctx.error(at, format!("{context}: {message}"));
                return None;
            }
        }
    }
    Some(acl)
}

/// The server names a `use_backend` condition routes, each as a regular expression when
/// `regexp` (else as the exact name), or why it cannot be SNI routing.
pub(super) fn sni_patterns(proxy: &Proxy, cond: &Cond) -> Result<Patterns, (usize, String)> {
    let Some(bodies) = bodies(proxy, cond) else {
        let name = cond.named.clone().unwrap_or_default();
        return Err((cond.at, format!("no acl named \"{name}\" in this section")));
    };
    if cond.negated {
        return Err((
            cond.at,
            "a negated condition cannot route by server name".to_owned(),
        ));
    }
    let mut patterns = Vec::new();
    for body in bodies {
        if !matches!(body.criterion.as_str(), "req_ssl_sni" | "req.ssl_sni") {
            let message = format!(
                "\"{}\": Sluice routes to a backend by the TLS server name only \
                 (req_ssl_sni)",
                body.criterion
            );
            return Err((body.at, message));
        }
        let method = body.method.as_deref().unwrap_or("str");
        if !["str", "end", "beg", "sub", "dom", "reg"].contains(&method) {
            let message = format!("-m {method}: not supported (str, beg, end, sub, dom, reg)");
            return Err((body.at, message));
        }
        if body.values.is_empty() {
            return Err((body.at, "expected the server names to route".to_owned()));
        }
        for value in &body.values {
            if value.text.is_empty()
                || value
                    .text
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                let message = format!("\"{}\": a server name holds no spaces", shown(&value.text));
                return Err((value.at, message));
            }
            let escaped = regex::escape(&value.text);
            let pattern = match method {
                "str" => (false, value.text.clone()),
                "end" => (true, format!(".*{escaped}")),
                "beg" => (true, format!("{escaped}.*")),
                "sub" => (true, format!(".*{escaped}.*")),
                "dom" => (true, format!("(?:.*\\.)?{escaped}(?:\\..*)?")),
                "reg" => match regex::Regex::new(&value.text) {
                    // HAProxy searches; Sluice anchors its tags.
                    Ok(_) => (true, format!(".*(?:{}).*", value.text)),
                    Err(e) => {
                        let message = format!("not a regular expression: {}", regex_error(&e));
                        return Err((value.at, message));
                    }
                },
                _ => (false, value.text.clone()),
            };
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

/// How long a client has to send its ClientHello: `inspect-delay`, if set.
pub(super) fn hello_timeout(proxy: &Proxy) -> Option<Duration> {
    proxy.inspect_delay.map(|(d, _)| d)
}

/// A regular expression's error on one line: what is wrong, without the drawing of
/// where.
pub(super) fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default();
    last.trim_start_matches("error: ").to_owned()
}
