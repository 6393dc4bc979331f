//! Paths into JSON values, as discovery patterns name them: keys and `[N]` indexes
//! separated by dots (`address.ip`, `ports.[0]`, `ports[0]`).

use std::fmt;

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

    /// The path of one key: a default pattern such as `host`.
    pub(crate) fn key(name: &str) -> JsonPath {
        JsonPath {
            text: name.to_owned(),
            steps: vec![Step::Key(name.to_owned())],
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn find<'v>(&self, mut value: &'v Value) -> Option<&'v Value> {
        for step in &self.steps {
            value = match step {
                Step::Key(key) => value.get(key)?,
                Step::Index(i) => value.get(i)?,
            };
        }
        (!value.is_null()).then_some(value)
    }
}

impl PartialEq for JsonPath {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for JsonPath {}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths() {
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[x]").is_err());
    }
}
