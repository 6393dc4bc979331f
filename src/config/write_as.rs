//! How values the configuration holds typed are written in GoBetween's schema: the
//! `serialize_with` functions of the configuration's `Serialize` derives (secrets are in
//! `secrets`).

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::{dump, escape};
use crate::acl::{Acl, Action};

/// A Go duration string, as [`dump::duration`].
pub(crate) fn duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&dump::duration(*value))
}

/// A timeout: `"0"` is no limit.
pub(crate) fn timeout<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    duration(&value.unwrap_or_default(), serializer)
}

/// A limit: `0` is none.
pub(crate) fn zero_if_none<S: Serializer>(
    value: &Option<u32>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u32(value.unwrap_or(0))
}

/// A file path, as it displays.
pub(crate) fn path<S: Serializer>(value: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&value.display())
}

/// An optional file path (a field skipped when `None`), as [`path`].
pub(crate) fn optional_path<S, P>(value: &Option<P>, serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    P: AsRef<Path>,
{
    match value {
        Some(value) => path(value.as_ref(), serializer),
        None => serializer.serialize_none(),
    }
}

/// A value as it displays (`Display` is the configuration's syntax).
pub(crate) fn shown<S: Serializer>(value: &impl Display, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// A list, each value as it displays.
pub(crate) fn each_shown<S, T>(values: &[T], serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Display,
{
    serializer.collect_seq(values.iter().map(ToString::to_string))
}

/// Bytes with [`escape`]'s escapes, as probe strings are written.
pub(crate) fn escaped<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&escape(value))
}

/// Optional bytes (a field skipped when `None`), as [`escaped`].
pub(crate) fn optional_escaped<S: Serializer>(
    value: &Option<Vec<u8>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => escaped(value, serializer),
        None => serializer.serialize_none(),
    }
}

/// `[servers.NAME.access]` as the reader reads it: the default action and each rule as
/// `"ACTION NETWORK"`.
pub(crate) fn written_access<S: Serializer>(
    acl: &Option<Acl>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Written<'a> {
        #[serde(serialize_with = "shown")]
        default: &'a Action,
        rules: Vec<String>,
    }
    acl.as_ref()
        .map(|acl| Written {
            default: &acl.default,
            rules: acl.rules.iter().map(ToString::to_string).collect(),
        })
        .serialize(serializer)
}
