//! `kind = "json"`: the fetched body is a JSON array; in each element GoBetween's
//! patterns (`json_host_pattern`, … default `host`, `port`, `weight`, `priority`) are
//! paths such as `address.ip` or `ports.[0]`. `host` and `port` are required (the port
//! may be a string); a missing `weight` or `priority` takes the default 1; `sni` is read
//! only with `json_sni_pattern`. Sluice's own `json_max_connections_pattern` (default
//! `max_connections`: a number or a string of digits) and `json_backup_pattern` (default
//! `backup`: `true`/`false`, `1`/`0`, or those as strings) are read when an element has
//! them; any other value there fails the fetch rather than guess.

use serde_json::Value;

use super::http::{deadline, Fetcher};
use super::json_backend::{JsonFields, Reading};
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::JsonParams;

/// The `json` source.
pub struct JsonSource {
    fetcher: Fetcher,
    fields: JsonFields,
}

impl JsonSource {
    pub fn new(params: &JsonParams) -> Self {
        JsonSource {
            fetcher: Fetcher::new(params.endpoint.clone(), params.cacert_path.clone()),
            fields: JsonFields {
                host: params.host_pattern.clone(),
                port: params.port_pattern.clone(),
                weight: params.weight_pattern.clone(),
                priority: params.priority_pattern.clone(),
                max_connections: params.max_connections_pattern.clone(),
                backup: params.backup_pattern.clone(),
                sni: params.sni_pattern.clone(),
                state: None,
                reading: Reading::GoBetween,
            },
        }
    }

    /// The backends of a fetched body.
    pub fn backends(&self, body: &str) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let invalid = |e: String| DiscoveryError::Invalid(format!("JSON discovery: {e}"));
        let value: Value = crate::bounded_json::from_slice(body.as_bytes())
            .map_err(|e| invalid(format!("{e}")))?;
        let Value::Array(items) = value else {
            return Err(invalid("expected a JSON array".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                self.fields
                    .backend(item)
                    .map_err(|e| invalid(format!("element {i}: {e}")))
            })
            .collect()
    }
}

impl Source for JsonSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(async move {
            let body = self.fetcher.get(deadline()).await?;
            self.backends(&body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JsonPath, Url};

    fn path(text: &str) -> JsonPath {
        JsonPath::parse(text).expect("a valid path")
    }

    fn params(patterns: [&str; 4], sni: Option<&str>) -> JsonParams {
        JsonParams {
            endpoint: Url::parse("http://127.0.0.1/").expect("a valid URL"),
            host_pattern: path(patterns[0]),
            port_pattern: path(patterns[1]),
            weight_pattern: path(patterns[2]),
            priority_pattern: path(patterns[3]),
            max_connections_pattern: path("max_connections"),
            backup_pattern: path("backup"),
            sni_pattern: sni.map(path),
            cacert_path: None,
        }
    }

    #[test]
    fn json_max_connections_and_backup() {
        let source = JsonSource::new(&JsonParams {
            max_connections_pattern: path("limits.conns"),
            backup_pattern: path("role.[0]"),
            ..params(["host", "port", "weight", "priority"], None)
        });
        let specs = source
            .backends(
                r#"[{"host": "a", "port": 1, "limits": {"conns": 5}, "role": [true]},
                    {"host": "b", "port": 2, "limits": {"conns": "7"}, "role": ["1"]},
                    {"host": "c", "port": 3, "role": [0]},
                    {"host": "d", "port": 4, "role": ["false"]},
                    {"host": "e", "port": 5, "max_connections": 9, "backup": true}]"#,
            )
            .expect("valid");
        let got: Vec<(Option<u32>, bool)> = specs
            .iter()
            .map(|s| (s.max_connections, s.backup))
            .collect();
        assert_eq!(
            got,
            [
                (Some(5), true),
                (Some(7), true),
                (None, false),
                (None, false),
                (None, false)
            ]
        );
        for bad in [
            r#"[{"host": "a", "port": 1, "role": ["yes"]}]"#,
            r#"[{"host": "a", "port": 1, "role": [2]}]"#,
            r#"[{"host": "a", "port": 1, "limits": {"conns": -1}}]"#,
            r#"[{"host": "a", "port": 1, "limits": {"conns": "5 backup"}}]"#,
        ] {
            assert!(source.backends(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_patterns_as_gobetween() {
        let source = JsonSource::new(&params(["host", "port", "weight", "priority"], None));
        let specs = source
            .backends(
                r#"[{"host": "10.0.0.1", "port": "80", "weight": 3, "priority": 2.0},
                         {"host": "::1", "port": 81, "weight": "heavy", "backup": true}]"#,
            )
            .expect("valid");
        assert_eq!(specs[0].key(), "10.0.0.1:80");
        assert_eq!((specs[0].weight, specs[0].priority), (3, 2));
        assert_eq!((specs[1].weight, specs[1].priority), (1, 1));
        assert!(specs[1].backup);
        let nested = JsonSource::new(&params(
            ["addr.ip", "ports.[0]", "w", "meta.prio"],
            Some("names[1]"),
        ));
        let specs = nested
            .backends(
                r#"[{"addr": {"ip": "h"}, "ports": [90], "meta": {"prio": 4},
                           "names": ["x", "s.example"]}]"#,
            )
            .expect("valid");
        assert_eq!(specs[0].key(), "h:90");
        assert_eq!(specs[0].priority, 4);
        assert_eq!(specs[0].sni.as_deref(), Some("s.example"));
        let sni = JsonSource::new(&params(["host", "port", "weight", "priority"], Some("sni")));
        let injected = r#"[{"host": "h", "port": 1, "sni": "s.example backup weight=9"}]"#;
        assert!(sni.backends(injected).is_err(), "{injected}");
        for bad in [
            r#"{"host": "h"}"#,
            r#"[{"port": 1}]"#,
            r#"[{"host": "h"}]"#,
            "nope",
        ] {
            assert!(source.backends(bad).is_err(), "{bad}");
        }
    }
}
