//! Paths into JSON values, as discovery names them: GoBetween's JSON patterns, keys and
//! `[N]` indexes separated by dots (`address.ip`, `ports.[0]`, `ports[0]`), and etcd's
//! DSN paths, where a number indexes an array (`conn.urls.1`).

use serde_json::Value;

/// A path into a JSON value: keys and `[N]` indexes separated by dots. Shown, and
/// compared, as it was written.
#[derive(Clone, Debug)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    /// A number in a DSN path: an index into an array, a key of an object.
    KeyOrIndex(String, usize),
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let mut steps = Vec::new();
        for part in text.split('.') {
            // `ports[0]` is `ports` then `[0]`.
            let (key, mut indexes) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                steps.push(Step::Key(key.to_owned()));
            }
            while !indexes.is_empty() {
                let index = indexes
                    .strip_prefix('[')
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(n, rest)| n.parse::<usize>().ok().map(|n| (n, rest)));
                let Some((n, rest)) = index else {
                    return Err(format!("\"{text}\": bad index in \"{part}\""));
                };
                steps.push(Step::Index(n));
                indexes = rest;
            }
            if key.is_empty() && !part.starts_with('[') {
                return Err(format!("\"{text}\" has an empty step"));
            }
        }
        Ok(JsonPath {
            text: text.to_owned(),
            steps,
        })
    }

    /// An `etcd_dsn_json_path`: dot-separated steps, empty ones skipped; a step that is a
    /// number indexes an array (and is a key in an object). Any text is such a path.
    pub fn dsn(text: &str) -> JsonPath {
        let steps = text
            .split('.')
            .filter(|step| !step.is_empty())
            .map(|step| match step.parse::<usize>() {
                Ok(i) => Step::KeyOrIndex(step.to_owned(), i),
                Err(_) => Step::Key(step.to_owned()),
            })
            .collect();
        JsonPath {
            text: text.to_owned(),
            steps,
        }
    }

    /// The path of one key: a default pattern such as `host`.
    pub(crate) fn key(name: &str) -> JsonPath {
        JsonPath {
            text: name.to_owned(),
            steps: vec![Step::Key(name.to_owned())],
        }
    }

    /// The value at the end of the path, `null` included.
    pub fn get<'v>(&self, mut value: &'v Value) -> Option<&'v Value> {
        for step in &self.steps {
            value = match (step, value) {
                (Step::KeyOrIndex(_, i), Value::Array(items)) => items.get(*i)?,
                (Step::Key(key) | Step::KeyOrIndex(key, _), _) => value.get(key)?,
                (Step::Index(i), _) => value.get(i)?,
            };
        }
        Some(value)
    }

    /// The value at the end of the path; `null` counts as none.
    pub fn find<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.get(value).filter(|value| !value.is_null())
    }
}

shown_as_written!(JsonPath, text);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths() {
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[x]").is_err());
    }

    #[test]
    fn dsn_paths_index_arrays_with_numbers() {
        let value = serde_json::json!({"a": [{"1": "x"}, {"1": "y"}], "n": null});
        assert_eq!(JsonPath::dsn("a.1.1").get(&value), Some(&Value::from("y")));
        assert_eq!(
            JsonPath::dsn(".a..0.1.").get(&value),
            Some(&Value::from("x"))
        );
        assert_eq!(JsonPath::dsn("a.x").get(&value), None);
        assert_eq!(JsonPath::dsn("n").get(&value), Some(&Value::Null));
        assert_eq!(JsonPath::dsn("n").find(&value), None);
        assert_eq!(
            JsonPath::parse("a.1").map(|p| p.get(&value).cloned()),
            Ok(None)
        );
        assert_eq!(JsonPath::dsn("a.1").to_string(), "a.1");
    }
}
