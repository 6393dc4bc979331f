//! `kind = "plaintext"`: one backend per line of the fetched body. Without
//! `plaintext_regex_pattern` a line is in the backend line grammar; with it, the regex's
//! named groups `host`, `port` and optional `weight`, `priority`, `sni`,
//! `max_connections`, `backup` give the fields (a `backup` group that matches marks a
//! backup unless it reads `false` or `0`). As in GoBetween, a line that does not match is
//! skipped with a warning.

use serde_json::Value;
use tracing::warn;

use super::http::{deadline, Fetcher};
use super::json_backend::{at, port};
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::{LinePattern, PlaintextParams};

/// The backend of one line read with `pattern`, `None` when the line does not match.
pub fn line_backend(pattern: &LinePattern, line: &str) -> Option<Result<BackendSpec, String>> {
    let caps = pattern.regex().captures(line)?;
    let group = |name: &str| {
        caps.name(name)
            .map(|m| m.as_str())
            .filter(|s| !s.is_empty())
    };
    let (Some(host), Some(port_text)) = (group("host"), group("port")) else {
        return Some(Err("no host or port".into()));
    };
    let port = match port(&Value::String(port_text.to_owned())) {
        Ok(port) => port,
        Err(e) => return Some(Err(e)),
    };
    let mut spec = match at(host, port) {
        Ok(spec) => spec,
        Err(e) => return Some(Err(e)),
    };
    for key in ["weight", "priority", "max_connections", "sni"] {
        if let Some(value) = group(key) {
            // Refused as when backends were built as lines, which a space would split.
            if value.contains(char::is_whitespace) {
                return Some(Err(format!("{key} \"{value}\" contains a space")));
            }
            if let Err(e) = spec.set_option(key, value) {
                return Some(Err(e));
            }
        }
    }
    // A flag group such as `(?P<backup> backup)?` means yes by matching; a group
    // catching a value lets a list say no explicitly.
    spec.backup = group("backup").is_some_and(|v| !matches!(v.trim(), "false" | "0"));
    Some(Ok(spec))
}

/// The `plaintext` source.
pub struct PlaintextSource {
    fetcher: Fetcher,
    pattern: Option<LinePattern>,
}

impl PlaintextSource {
    pub fn new(params: &PlaintextParams) -> Self {
        PlaintextSource {
            fetcher: Fetcher::new(params.endpoint.clone(), params.cacert_path.clone()),
            pattern: params.pattern.clone(),
        }
    }

    /// The backends of a fetched body; lines that do not parse are skipped and logged.
    pub fn backends(&self, body: &str) -> Vec<BackendSpec> {
        let mut out = Vec::new();
        for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let parsed = match &self.pattern {
                Some(pattern) => line_backend(pattern, line)
                    .unwrap_or_else(|| Err("does not match plaintext_regex_pattern".into())),
                None if line.starts_with('#') => continue,
                None => line.parse::<BackendSpec>(),
            };
            match parsed {
                Ok(spec) => out.push(spec),
                Err(e) => warn!(line, error = %e, "plaintext discovery: line skipped"),
            }
        }
        out
    }
}

impl Source for PlaintextSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(async move {
            let body = self.fetcher.get(deadline()).await?;
            Ok(self.backends(&body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Url;

    #[test]
    fn plaintext_lines_and_patterns() {
        let plain = PlaintextSource::new(&PlaintextParams {
            endpoint: Url::parse("http://h/").expect("a valid URL"),
            pattern: None,
            cacert_path: None,
        });
        let specs = plain.backends("127.0.0.1:80 weight=2\n\n# c\nbad line\n[::1]:81\n");
        assert_eq!(specs.len(), 2);
        let pattern = r"^(?P<host>\S+) (?P<port>\d+)(?: w(?P<weight>\d+))?(?P<backup> b)?$";
        let source = PlaintextSource::new(&PlaintextParams {
            endpoint: Url::parse("http://h/").expect("a valid URL"),
            pattern: Some(LinePattern::parse(pattern).expect("a valid pattern")),
            cacert_path: None,
        });
        let specs = source.backends("10.0.0.1 80 w5\n10.0.0.2 81 b\nno match\n");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].weight, 5);
        assert!(specs[1].backup);
        let pattern =
            r"^(?P<host>\S+):(?P<port>\d+) max=(?P<max_connections>\S+) backup=(?P<backup>\S+)$";
        let source = PlaintextSource::new(&PlaintextParams {
            endpoint: Url::parse("http://h/").expect("a valid URL"),
            pattern: Some(LinePattern::parse(pattern).expect("a valid pattern")),
            cacert_path: None,
        });
        let specs = source.backends(
            "a:1 max=3 backup=true\nb:2 max=0 backup=0\nc:3 max=x backup=1\nd:4 max=4 backup=false\n",
        );
        let got: Vec<(String, Option<u32>, bool)> = specs
            .iter()
            .map(|s| (s.key().to_owned(), s.max_connections, s.backup))
            .collect();
        assert_eq!(
            got,
            [
                ("a:1".to_owned(), Some(3), true),
                ("b:2".to_owned(), None, false),
                ("d:4".to_owned(), Some(4), false)
            ]
        );
        assert!(LinePattern::parse("(?P<host>.*)").is_err());
        assert!(LinePattern::parse("(").is_err());
    }
}
