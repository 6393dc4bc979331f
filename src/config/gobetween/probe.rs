//! `kind = "probe"` read from the file: GoBetween's exchange (`probe_send`, `probe_recv`,
//! `probe_strategy`, `probe_recv_len`) or a conversation (`probe_steps`), over TCP, UDP
//! or TLS.

use super::health::{escaped, regex_message, required, tls_keys};
use super::reader::{Ctx, Field, Section};
use crate::config::health::*;
use crate::config::BytesRegex;

pub(super) fn probe(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, at: usize) -> Option<ProbeSettings> {
    let protocols = [
        ("tcp", ProbeProtocol::Tcp),
        ("udp", ProbeProtocol::Udp),
        ("tls", ProbeProtocol::Tls),
    ];
    let protocol = match sec.take("probe_protocol") {
        Some(f) => ctx.choice(&f, &protocols),
        None => Some(ProbeProtocol::Tcp),
    };
    let script = match sec.take("probe_steps") {
        Some(steps) => {
            let exchange = [
                "probe_send",
                "probe_recv",
                "probe_strategy",
                "probe_recv_len",
            ];
            for key in exchange {
                if let Some(f) = sec.take(key) {
                    let message = "not used with probe_steps (which says what is sent and \
                                   expected, step by step)";
                    ctx.error(f.at, f.path(), message);
                }
            }
            if protocol == Some(ProbeProtocol::Udp) {
                let message = "probe_steps converse over one connection: probe_protocol \
                               \"tcp\" or \"tls\"";
                ctx.error(steps.at, steps.path(), message);
            }
            probe_steps(ctx, &steps)
        }
        None => exchange(ctx, sec, at),
    };
    let tls = tls_keys(ctx, sec);
    let (protocol, script, tls) = (protocol?, script?, tls?);
    if protocol != ProbeProtocol::Tls && tls != TlsSettings::default() {
        let message = "tls_* keys are only used with probe_protocol = \"tls\"";
        ctx.error(at, &sec.path, message);
        return None;
    }
    Some(ProbeSettings {
        protocol,
        script,
        tls,
    })
}

/// `probe_send` and `probe_recv`, with `probe_strategy` and `probe_recv_len`.
fn exchange(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, at: usize) -> Option<ProbeScript> {
    let send = required(ctx, sec, "probe_send", "probe", at).and_then(|f| escaped(ctx, &f));
    let strategies = [("starts_with", false), ("regexp", true)];
    let regexp = match sec.take("probe_strategy") {
        Some(f) => ctx.choice(&f, &strategies),
        None => Some(false),
    };
    let recv = required(ctx, sec, "probe_recv", "probe", at);
    let recv_len = sec.take("probe_recv_len");
    let expect = match (regexp?, recv?) {
        (false, recv) => {
            if let Some(f) = &recv_len {
                let message = "only used with probe_strategy = \"regexp\" (\"starts_with\" \
                               reads as many bytes as probe_recv has)";
                ctx.error(f.at, f.path(), message);
            }
            ProbeExpect::StartsWith(escaped(ctx, &recv)?)
        }
        (true, recv) => {
            let pattern = ctx.parse(&recv, "a regular expression", |p| {
                BytesRegex::parse(p).map_err(regex_message)
            });
            let Some(f) = recv_len else {
                let message = "missing required key \"probe_recv_len\" for probe_strategy \
                               \"regexp\" (how many bytes of the reply to match)";
                ctx.error(at, &sec.path, message);
                return None;
            };
            let len = ctx.u32_at_least(&f, 1)?;
            if len > MAX_RECV_LEN {
                let message = format!("must be at most {MAX_RECV_LEN}, got {len}");
                ctx.error(f.at, f.path(), message);
                return None;
            }
            ProbeExpect::Regexp {
                pattern: pattern?,
                len,
            }
        }
    };
    Some(ProbeScript::Exchange {
        send: send?,
        expect,
    })
}

/// `probe_steps = [{ send = "..." }, { expect = "..." }, { expect_regexp = "..." }, ...]`:
/// each step one key; at least one expectation, so that a step list checks something.
fn probe_steps(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<ProbeScript> {
    let mut steps = Vec::new();
    let mut ok = true;
    for mut step in ctx.tables(f)? {
        let fields = step.take_all();
        let [field] = fields.as_slice() else {
            let message = "a step is one of send, expect or expect_regexp";
            ctx.error(step.at, &step.path, message);
            ok = false;
            continue;
        };
        let parsed = match field.key {
            "send" => escaped(ctx, field).map(ProbeStep::Send),
            "expect" => escaped(ctx, field).map(ProbeStep::Contains),
            "expect_regexp" => ctx
                .parse(field, "a regular expression", |p| {
                    BytesRegex::parse(p).map_err(regex_message)
                })
                .map(ProbeStep::Matches),
            other => {
                let message = format!(
                    "unknown step \"{other}\": a step is one of send, expect or expect_regexp"
                );
                ctx.error(field.at, field.path(), message);
                None
            }
        };
        match parsed {
            Some(parsed) => steps.push(parsed),
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    if !steps.iter().any(|s| !matches!(s, ProbeStep::Send(_))) {
        let message = "give at least one expect or expect_regexp step";
        ctx.error(f.at, f.path(), message);
        return None;
    }
    Some(ProbeScript::Steps { steps })
}
