//! The one reader of backends from JSON: where an element holds each field (a
//! [`JsonPath`] per field) and how strictly its values are read. The `json` kind reads
//! GoBetween's patterns loosely, as GoBetween did; backend lists (`file`) and etcd values
//! read the fields at their own names strictly. Either way the values are checked as a
//! backend line's are ([`BackendSpec::checked`], [`BackendSpec::set_option`]).

use serde_json::Value;

use crate::backend::BackendSpec;
use crate::config::JsonPath;

/// How the values of a backend's fields are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// GoBetween's `json` kind: a weight or priority that is not a number is left at its
    /// default (a priority may have decimals, which are dropped); `max_connections` may
    /// be digits in a string; `backup` may be `1`/`0` or either as a string; an SNI that
    /// is not a string is not read; `null` is an absent field.
    GoBetween,
    /// Backend lists and registries: a field present must be of its type (`port` may be
    /// a string of digits, `sni` may be empty for none); `null` is an absent field.
    Strict,
}

/// Where a JSON element holds each field of a backend.
#[derive(Clone, Debug)]
pub struct JsonFields {
    pub host: JsonPath,
    pub port: JsonPath,
    pub weight: JsonPath,
    pub priority: JsonPath,
    pub max_connections: JsonPath,
    pub backup: JsonPath,
    /// Without it no SNI is read.
    pub sni: Option<JsonPath>,
    /// Without it no admin state is read.
    pub state: Option<JsonPath>,
    pub reading: Reading,
}

impl JsonFields {
    /// Each field at its own name (`host`, `port`, `weight`, `priority`,
    /// `max_connections`, `sni`, `backup`), read strictly; no `state`.
    pub fn named() -> JsonFields {
        JsonFields {
            host: JsonPath::key("host"),
            port: JsonPath::key("port"),
            weight: JsonPath::key("weight"),
            priority: JsonPath::key("priority"),
            max_connections: JsonPath::key("max_connections"),
            backup: JsonPath::key("backup"),
            sni: Some(JsonPath::key("sni")),
            state: None,
            reading: Reading::Strict,
        }
    }

    /// The backend in one element; `host` and `port` are required, the other fields
    /// take the line grammar's defaults.
    pub fn backend(&self, item: &Value) -> Result<BackendSpec, String> {
        let strict = self.reading == Reading::Strict;
        let host = match (self.host.find(item), strict) {
            (Some(Value::String(host)), _) => host,
            (_, true) => return Err("\"host\" is missing or not a string".into()),
            (Some(_), false) => return Err("the host is not a string".into()),
            (None, false) => return Err("no host".into()),
        };
        // A strict `null` port is a port that is not a number, not a missing one.
        let port_value = if strict {
            self.port.get(item).ok_or("\"port\" is missing")?
        } else {
            self.port.find(item).ok_or("no port")?
        };
        let mut spec = at(host, port(port_value)?)?;
        let numbers = [
            ("weight", &self.weight),
            ("priority", &self.priority),
            ("max_connections", &self.max_connections),
        ];
        for (name, path) in numbers {
            if let Some(value) = path.find(item) {
                if let Some(text) = self.number(name, value)? {
                    spec.set_option(name, &text)?;
                }
            }
        }
        if let Some(value) = self.sni.as_ref().and_then(|path| path.find(item)) {
            let spaced = |sni: &str| sni.contains(char::is_whitespace);
            match (value, strict) {
                (Value::String(sni), true) if sni.is_empty() => {}
                (Value::String(sni), false) if spaced(sni) => {
                    return Err(format!("sni \"{sni}\" contains a space"));
                }
                (Value::String(sni), _) if !spaced(sni) => spec.set_option("sni", sni)?,
                (_, true) => return Err("\"sni\" is not a host name".into()),
                // GoBetween's reading leaves an SNI that is not a string unread.
                (_, false) => {}
            }
        }
        if let Some(value) = self.backup.find(item) {
            spec.backup = match (value, strict) {
                (Value::Bool(backup), true) => *backup,
                (_, true) => return Err("\"backup\" is not true or false".into()),
                (value, false) => json_flag(value)
                    .ok_or_else(|| format!("backup {value} is not true, false, 1 or 0"))?,
            };
        }
        if let Some(value) = self.state.as_ref().and_then(|path| path.find(item)) {
            let Value::String(state) = value else {
                return Err("\"state\" is not a string".into());
            };
            spec.set_option("state", state)?;
        }
        Ok(spec)
    }

    /// The text of a number field's value as a backend line would give it; `None` leaves
    /// the field at its default.
    fn number(&self, name: &str, value: &Value) -> Result<Option<String>, String> {
        match (self.reading, name, value) {
            (Reading::Strict, _, Value::Number(n)) => Ok(Some(n.to_string())),
            (Reading::Strict, _, _) => Err(format!("\"{name}\" is not a number")),
            (Reading::GoBetween, "weight", value) => Ok(value.as_i64().map(|w| w.to_string())),
            // As GoBetween, whose priorities were floats: the decimals are dropped.
            (Reading::GoBetween, "priority", value) => {
                Ok(value.as_f64().map(|p| (p as i64).to_string()))
            }
            (Reading::GoBetween, _, Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
            (Reading::GoBetween, _, Value::String(s))
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(Some(s.clone()))
            }
            (Reading::GoBetween, _, other) => Err(format!("{name} {other} is not a number")),
        }
    }
}

/// A JSON yes/no as registries write it: a boolean, `1`/`0`, or either as a string.
fn json_flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A port given as a number or a string of digits.
pub fn port(value: &Value) -> Result<u16, String> {
    let port = match value {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse::<u16>().ok(),
        _ => None,
    };
    match port {
        Some(port) if port > 0 => Ok(port),
        _ => Err(format!("port {value} is not a number from 1 to 65535")),
    }
}

/// The backend at `host` (an IPv6 literal with or without brackets) and `port`, checked
/// as a backend line's address is.
pub fn at(host: &str, port: u16) -> Result<BackendSpec, String> {
    BackendSpec::checked(host.trim_start_matches('[').trim_end_matches(']'), port)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::backend::AdminState;

    #[test]
    fn strict_and_gobetween_readings() {
        let strict = JsonFields::named();
        let loose = JsonFields {
            reading: Reading::GoBetween,
            ..JsonFields::named()
        };
        let item = json!({"host": "[::1]", "port": "80", "weight": 2, "sni": "a.example",
                          "backup": true, "max_connections": 0});
        for fields in [&strict, &loose] {
            let spec = fields.backend(&item).expect("valid");
            assert_eq!(spec.to_string(), "[::1]:80 weight=2 sni=a.example backup");
        }
        let gobetween = json!({"host": "h", "port": 1, "weight": "heavy", "priority": 2.7,
                               "max_connections": "5", "backup": "1", "sni": 7});
        let spec = loose.backend(&gobetween).expect("GoBetween's forms");
        assert_eq!(spec.to_string(), "h:1 priority=2 max_connections=5 backup");
        assert!(strict.backend(&gobetween).is_err());
        for (bad, expected) in [
            (
                json!({"host": "h", "port": 1, "sni": "a b"}),
                "not a host name",
            ),
            (json!({"host": "h", "port": null}), "port null"),
            (json!({"port": 1}), "\"host\" is missing"),
            (json!({"host": "h", "port": 1, "weight": 0}), "at least 1"),
        ] {
            let err = strict.backend(&bad).expect_err(expected);
            assert!(err.contains(expected), "{bad}: {err}");
        }
        let empty_sni = strict.backend(&json!({"host": "h", "port": 1, "sni": ""}));
        assert_eq!(empty_sni.map(|s| s.sni), Ok(None));
        let with_state = JsonFields {
            state: Some(JsonPath::key("state")),
            ..JsonFields::named()
        };
        let item = json!({"host": "h", "port": 1, "state": "disabled"});
        assert_eq!(
            with_state.backend(&item).map(|s| s.admin),
            Ok(AdminState::Disabled)
        );
        assert_eq!(
            strict.backend(&item).map(|s| s.admin),
            Ok(AdminState::Enabled)
        );
        assert!(with_state
            .backend(&json!({"host": "h", "port": 1, "state": 1}))
            .is_err());
    }
}
