//! The `access` subsection of one server read from the file (`discovery` and
//! `healthcheck` have their own modules; the writer is the model's `write_as`).

use super::reader::{Ctx, Section};
use crate::acl::{Acl, Action, Rule};

pub(crate) const ACCESS_KEYS: &[&str] = &["default", "rules"];

pub(crate) fn access(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> Acl {
    let actions = [("allow", Action::Allow), ("deny", Action::Deny)];
    let default = sec
        .take("default")
        .and_then(|f| ctx.choice(&f, &actions))
        .unwrap_or(Action::Allow);
    let mut rules = Vec::new();
    for (at, path, text) in sec
        .take("rules")
        .and_then(|f| ctx.strings(&f))
        .unwrap_or_default()
    {
        match text.parse::<Rule>() {
            Ok(rule) => rules.push(rule),
            Err(message) => ctx.error(at, &path, message),
        }
    }
    sec.finish(ctx, ACCESS_KEYS);
    Acl { default, rules }
}
