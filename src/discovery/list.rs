//! Backend lists as sources hand them over: text in the backend line grammar (the one of
//! `static_list`), and JSON objects with the same fields.

use std::collections::HashSet;

use serde_json::Value;

use super::json_backend::JsonFields;
use super::DiscoveryError;
use crate::backend::BackendSpec;

/// Largest list a command or file may give; far above any real backend list.
pub const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// One backend per line; blank lines and lines starting with `#` are skipped. A line
/// that does not parse fails the whole list, naming its number.
pub fn parse_lines(text: &str, what: &str) -> Result<Vec<BackendSpec>, DiscoveryError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let spec = line
            .parse::<BackendSpec>()
            .map_err(|e| DiscoveryError::Invalid(format!("{what}, line {}: {e}", i + 1)))?;
        out.push(spec);
    }
    Ok(out)
}

/// A JSON array whose elements are backend lines or objects
/// (`{"host": …, "port": …, "weight": …, "priority": …, "max_connections": …, "sni": …,
/// "backup": …}`, read by [`JsonFields::named`]).
pub fn parse_json(text: &str, what: &str) -> Result<Vec<BackendSpec>, DiscoveryError> {
    let value: Value = crate::bounded_json::from_slice(text.as_bytes())
        .map_err(|e| DiscoveryError::Invalid(format!("{what}: not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(DiscoveryError::Invalid(format!(
            "{what}: expected a JSON array of backends"
        )));
    };
    let fields = JsonFields::named();
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let spec = match item {
                Value::String(line) => line.parse::<BackendSpec>(),
                Value::Object(_) => fields.backend(item),
                _ => Err("expected a backend line or an object".to_owned()),
            };
            spec.map_err(|e| DiscoveryError::Invalid(format!("{what}, element {i}: {e}")))
        })
        .collect()
}

/// `specs` with later entries of an already listed `host:port` (compared without case)
/// dropped: two registrations of one address (a container published on IPv4 and IPv6, a
/// service registered twice, two SRV records to one target) are one backend, and a pool
/// cannot hold the same key twice.
pub fn distinct(specs: Vec<BackendSpec>) -> Vec<BackendSpec> {
    let mut seen = HashSet::with_capacity(specs.len());
    specs
        .into_iter()
        .filter(|spec| seen.insert(spec.key().to_ascii_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_comments_and_name_the_bad_line() {
        let text = "# web\n127.0.0.1:80 weight=2\n\n  [::1]:81 backup  \n";
        let specs = parse_lines(text, "f").expect("valid");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].weight, 2);
        assert!(specs[1].backup);
        let err = parse_lines("127.0.0.1:80\nnope\n", "f").expect_err("invalid");
        assert!(err.to_string().contains("f, line 2"), "{err}");
    }

    #[test]
    fn json_takes_lines_and_objects() {
        let text = r#"["127.0.0.1:80 priority=2",
            {"host": "::1", "port": "81", "weight": 3, "sni": "a.example", "backup": true,
             "max_connections": 7}]"#;
        let specs = parse_json(text, "f").expect("valid");
        assert_eq!(specs[0].priority, 2);
        assert_eq!(specs[1].key(), "[::1]:81");
        assert_eq!(specs[1].weight, 3);
        assert_eq!(specs[1].max_connections, Some(7));
        assert_eq!(specs[1].sni.as_deref(), Some("a.example"));
        assert!(specs[1].backup);
        for bad in [
            r#"{"host": "a"}"#,
            r#"[{"host": "a"}]"#,
            r#"[{"host": "a", "port": 0}]"#,
            r#"[{"host": "a", "port": 80, "weight": 0}]"#,
            r#"[{"host": "a b", "port": 80}]"#,
            r#"[7]"#,
        ] {
            assert!(parse_json(bad, "f").is_err(), "{bad}");
        }
    }

    #[test]
    fn distinct_keeps_the_first_of_each_address() {
        let specs = parse_lines("h:1 weight=2\nH:1\n[::1]:1\nh:2\n", "f").expect("valid");
        let kept: Vec<String> = distinct(specs).iter().map(ToString::to_string).collect();
        assert_eq!(kept, ["h:1 weight=2", "[::1]:1", "h:2"]);
    }
}
