//! The raw file: a TOML or JSON document read into one tree that keeps the position of
//! every key and value.
//!
//! This is the first of the two loading stages. It knows nothing of the schema: the
//! second stage (`server`) walks the tree against GoBetween's schema, so that every
//! unknown key and bad value is reported, not only the first one serde would stop at.
//! TOML positions come from `toml::de::DeTable`; JSON positions from `serde_json`'s
//! `RawValue`, which borrows each value's text from the input.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use toml::de::{DeTable, DeValue};

use crate::config::error::{ConfigError, Source};

/// A value and the byte offset where it starts.
#[derive(Debug)]
pub(crate) struct Node {
    pub at: usize,
    pub value: Value,
}

#[derive(Debug)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    /// No key of the schema takes a float; only its type matters, for messages.
    Float,
    Bool(bool),
    /// TOML only; no key of the schema takes one.
    Datetime,
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

/// One `key = value` of a table.
#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_at: usize,
    pub node: Node,
}

impl Value {
    /// "a string", "an integer", … for type errors; JSON words for JSON files.
    pub fn type_name(&self, json: bool) -> &'static str {
        match (self, json) {
            (Value::Str(_), _) => "a string",
            (Value::Int(_), false) => "an integer",
            (Value::Float, false) => "a float",
            (Value::Int(_) | Value::Float, true) => "a number",
            (Value::Bool(_), _) => "a boolean",
            (Value::Datetime, _) => "a date-time",
            (Value::Array(_), _) => "an array",
            (Value::Table(_), false) => "a table",
            (Value::Table(_), true) => "an object",
        }
    }
}

/// Parses the whole document into its root table, or returns every syntax error.
pub(crate) fn parse(src: &Source<'_>) -> Result<Node, Vec<ConfigError>> {
    if src.json {
        parse_json(src)
    } else {
        parse_toml(src)
    }
}

fn parse_toml(src: &Source<'_>) -> Result<Node, Vec<ConfigError>> {
    let (root, errors) = DeTable::parse_recoverable(src.text);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| {
                let at = e.span().map_or(0, |s| s.start);
                src.error(at, one_line(e.message()))
            })
            .collect());
    }
    let mut errors = Vec::new();
    let root = Node {
        at: 0,
        value: Value::Table(toml_table(src, root.get_ref(), &mut errors)),
    };
    if errors.is_empty() {
        Ok(root)
    } else {
        Err(errors)
    }
}

fn toml_table(src: &Source<'_>, table: &DeTable<'_>, errors: &mut Vec<ConfigError>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = table
        .iter()
        .map(|(key, value)| Entry {
            key: key.get_ref().to_string(),
            key_at: key.span().start,
            node: toml_node(src, value.get_ref(), value.span().start, errors),
        })
        .collect();
    // DeTable is sorted by key; checks that name "the second one" want file order.
    entries.sort_by_key(|e| e.key_at);
    entries
}

fn toml_node(
    src: &Source<'_>,
    value: &DeValue<'_>,
    at: usize,
    errors: &mut Vec<ConfigError>,
) -> Node {
    let value = match value {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Value::Int(n),
            Err(_) => {
                errors.push(src.error(at, format!("integer {i} is out of range")));
                Value::Int(0)
            }
        },
        DeValue::Float(_) => Value::Float,
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(_) => Value::Datetime,
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| toml_node(src, v.get_ref(), v.span().start, errors))
                .collect(),
        ),
        DeValue::Table(t) => Value::Table(toml_table(src, t, errors)),
    };
    Node { at, value }
}

/// TOML's messages can span lines; each error must print on one.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn parse_json(src: &Source<'_>) -> Result<Node, Vec<ConfigError>> {
    // Bounds the recursion of `json_node` below, and with it the times each value is
    // read again (once per enclosing level).
    crate::bounded_json::check_depth(src.text.as_bytes())
        .map_err(|e| vec![src.error(e.at, e.to_string())])?;
    let raw: &RawValue =
        serde_json::from_str(src.text).map_err(|e| vec![json_error(src, 0, &e)])?;
    let root = json_node(src, raw)?;
    match root {
        Some(
            node @ Node {
                value: Value::Table(_),
                ..
            },
        ) => Ok(node),
        Some(node) => {
            Err(vec![src.error(
                node.at,
                "the configuration must be a JSON object".into(),
            )])
        }
        None => Err(vec![src.error(0, "the configuration is null".into())]),
    }
}

/// A JSON error inside the value that starts at `base`, which serde_json positioned
/// relative to that value's own text.
fn json_error(src: &Source<'_>, base: usize, e: &serde_json::Error) -> ConfigError {
    let message = e.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    let at = if e.line() == 0 {
        base
    } else {
        let (base_line, base_col) = src.position(base);
        let line = base_line + e.line() - 1;
        let col = if e.line() == 1 {
            base_col + e.column() - 1
        } else {
            e.column()
        };
        src.offset(line, col)
    };
    src.error(at, message.to_owned())
}

/// Converts one JSON value; `null` is `None`, as Go leaves a field unset for it.
fn json_node(src: &Source<'_>, raw: &RawValue) -> Result<Option<Node>, Vec<ConfigError>> {
    let text = raw.get();
    let at = offset_in(src.text, text);
    let fail = |e: serde_json::Error| vec![json_error(src, at, &e)];
    let value = match text.as_bytes().first() {
        Some(b'{') => {
            let JsonObject(pairs) = serde_json::from_str(text).map_err(fail)?;
            let mut entries = Vec::with_capacity(pairs.len());
            let mut duplicates = Vec::new();
            for (key, raw_value) in pairs {
                let value_at = offset_in(src.text, raw_value.get());
                let key_at = json_key_start(src.text, value_at);
                if entries.iter().any(|e: &Entry| e.key == key) {
                    duplicates.push(src.error(key_at, format!("duplicate key \"{key}\"")));
                } else if let Some(node) = json_node(src, raw_value)? {
                    entries.push(Entry { key, key_at, node });
                }
            }
            if !duplicates.is_empty() {
                return Err(duplicates);
            }
            Value::Table(entries)
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(fail)?;
            let mut nodes = Vec::with_capacity(items.len());
            for item in items {
                match json_node(src, item)? {
                    Some(node) => nodes.push(node),
                    None => {
                        let at = offset_in(src.text, item.get());
                        return Err(vec![src.error(at, "null is not allowed in a list".into())]);
                    }
                }
            }
            Value::Array(nodes)
        }
        Some(b'"') => Value::Str(serde_json::from_str(text).map_err(fail)?),
        Some(b't' | b'f') => Value::Bool(serde_json::from_str(text).map_err(fail)?),
        Some(b'n') => return Ok(None),
        _ => match text.parse::<i64>() {
            Ok(n) => Value::Int(n),
            Err(_) => Value::Float,
        },
    };
    Ok(Some(Node { at, value }))
}

/// Byte offset of `part` inside `whole`; `part` is a slice serde_json borrowed from it.
fn offset_in(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize)
        .saturating_sub(whole.as_ptr() as usize)
        .min(whole.len())
}

/// Finds the opening quote of the key whose value starts at `value_at`: back over
/// `"key" :` and the blanks around the colon. Falls back to the value itself.
fn json_key_start(text: &str, value_at: usize) -> usize {
    let bytes = text.as_bytes();
    let mut i = value_at;
    let skip_blank = |i: &mut usize| {
        while *i > 0 && bytes[*i - 1].is_ascii_whitespace() {
            *i -= 1;
        }
    };
    skip_blank(&mut i);
    if i == 0 || bytes[i - 1] != b':' {
        return value_at;
    }
    i -= 1;
    skip_blank(&mut i);
    if i < 2 || bytes[i - 1] != b'"' {
        return value_at;
    }
    // `i - 1` is the closing quote; the opening one is the nearest unescaped quote before.
    let mut j = i - 1;
    while j > 0 {
        j -= 1;
        if bytes[j] == b'"' {
            let backslashes = bytes[..j].iter().rev().take_while(|&&b| b == b'\\').count();
            if backslashes % 2 == 0 {
                return j;
            }
        }
    }
    value_at
}

/// A JSON object as its pairs in file order, duplicates kept.
struct JsonObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = JsonObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, &'de RawValue>()? {
                    pairs.push(pair);
                }
                Ok(JsonObject(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn root(path: &str, text: &str) -> Vec<Entry> {
        let src = Source::new(Path::new(path), text);
        match parse(&src).expect("parses").value {
            Value::Table(entries) => entries,
            other => panic!("root is {other:?}"),
        }
    }

    #[test]
    fn toml_keeps_file_order_and_positions() {
        let text = "b = 1\n[a]\nx = \"s\"\n";
        let entries = root("c.toml", text);
        assert_eq!(entries[0].key, "b");
        assert_eq!(entries[1].key, "a");
        assert_eq!(entries[1].node.at, 6, "a header table starts at its `[`");
    }

    #[test]
    fn json_positions_of_keys_values_and_elements() {
        let text = "{\n  \"a\\\"b\" : [1, \"x\"],\n  \"n\": null, \"t\": {\"k\": true}\n}";
        let entries = root("c.json", text);
        assert_eq!(entries.len(), 2, "null entries are dropped");
        assert_eq!(entries[0].key, "a\"b");
        assert_eq!(entries[0].key_at, 4);
        let Value::Array(items) = &entries[0].node.value else {
            panic!("array expected")
        };
        assert_eq!(&text[items[1].at..items[1].at + 3], "\"x\"");
        assert_eq!(&text[entries[1].key_at..entries[1].key_at + 3], "\"t\"");
    }

    #[test]
    fn deep_nesting_is_an_error_at_its_position() {
        let text = format!("{{\n\"servers\": {}", "[".repeat(100_000));
        let src = Source::new(Path::new("c.json"), &text);
        let errors = parse(&src).expect_err("too deep");
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].col), (2, 75));
        assert_eq!(errors[0].message, "nested deeper than 64 levels");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let src = Source::new(Path::new("c.json"), "{\n  \"a\": [1,,]\n}");
        let errors = parse(&src).expect_err("bad JSON");
        assert_eq!((errors[0].line, errors[0].col), (2, 11));
        let src = Source::new(Path::new("c.toml"), "a = 1\nb = \n");
        let errors = parse(&src).expect_err("bad TOML");
        assert_eq!(errors[0].line, 2);
    }
}
