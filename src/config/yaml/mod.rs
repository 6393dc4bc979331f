//! YAML text into a tree that keeps the line and column of every key and value: the
//! first stage of the Samaritan and Mixctl readers, shared by both. It knows nothing of
//! either schema; `reader` walks the tree, and each format's module holds its keys.
//!
//! The parser is `saphyr-parser`, read event by event. What a hostile file could use to
//! make reading costly is refused, not bounded after the fact: aliases (`*name`, the
//! "billion laughs") are an error, so a value is never expanded or shared; nesting
//! deeper than [`MAX_DEPTH`] is an error; the tree holds each node once, so its size
//! follows the file's, itself bounded by [`MAX_FILE_SIZE`](crate::config::MAX_FILE_SIZE).
//! Only one document is read.

pub(crate) mod reader;

use std::collections::HashSet;
use std::path::Path;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};

use crate::config::error::ConfigError;

/// The deepest nesting of lists and mappings read; a configuration needs four.
pub(crate) const MAX_DEPTH: usize = 32;

/// A 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A value and where it starts.
#[derive(Debug)]
pub(crate) struct Node {
    pub at: Pos,
    pub value: Value,
}

#[derive(Debug)]
pub(crate) enum Value {
    /// A scalar as written; `plain` when unquoted (only a plain scalar can be a number,
    /// a boolean or null).
    Scalar {
        text: String,
        plain: bool,
    },
    List(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` of a mapping.
#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_at: Pos,
    pub node: Node,
}

impl Node {
    /// Null: an empty value, `~` or `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the value is, for "expected …, found …": a scalar is shown as written.
    pub fn found(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing".to_owned(),
            Value::Scalar { text, .. } => format!("{text:?}"),
            Value::List(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }
}

/// Parses `text` (named `path` in messages) into its root node, or returns the error
/// that stopped it: a syntax error, an alias, nesting past [`MAX_DEPTH`], a second
/// document. Keys given twice in one mapping are every one reported.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Node, Vec<ConfigError>> {
    let error = |at: Pos, message: String| ConfigError {
        path: path.to_path_buf(),
        line: at.line,
        col: at.col,
        message,
    };
    let mut builder = Builder::default();
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| vec![scan_error(path, &e)])?;
        let at = start(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    let message = "a second YAML document; the file must hold one".into();
                    return Err(vec![error(at, message)]);
                }
            }
            Event::Alias(_) => {
                let message = "aliases (*name) are not read; write the value out".into();
                return Err(vec![error(at, message)]);
            }
            Event::Scalar(text, style, ..) => {
                let plain = style == ScalarStyle::Plain;
                let value = Value::Scalar {
                    text: text.into_owned(),
                    plain,
                };
                builder.add(Node { at, value });
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if builder.open.len() >= MAX_DEPTH {
                    let message = format!("nested more than {MAX_DEPTH} levels deep");
                    return Err(vec![error(at, message)]);
                }
                let map = matches!(event, Event::MappingStart(..));
                builder.open.push(Open::new(at, map));
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close(),
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    if !builder.duplicates.is_empty() {
        let errors = builder.duplicates.into_iter();
        return Err(errors.map(|(at, m)| error(at, m)).collect());
    }
    Ok(builder.root.unwrap_or(Node {
        at: Pos { line: 1, col: 1 },
        value: Value::Scalar {
            text: String::new(),
            plain: true,
        },
    }))
}

/// Where a span starts, as an editor counts (both 1-based).
fn start(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

fn scan_error(path: &Path, e: &ScanError) -> ConfigError {
    ConfigError {
        path: path.to_path_buf(),
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: format!("not valid YAML: {}", e.info()),
    }
}

/// A list or mapping whose end has not been read yet.
struct Open {
    at: Pos,
    map: bool,
    items: Vec<Node>,
    entries: Vec<Entry>,
    /// A mapping's key read, waiting for its value.
    key: Option<(String, Pos)>,
    /// The mapping's keys so far: a hash set, so that a hostile mapping of a million
    /// keys costs a million look-ups, not a million squared comparisons.
    seen: HashSet<String>,
}

impl Open {
    fn new(at: Pos, map: bool) -> Self {
        Open {
            at,
            map,
            items: Vec::new(),
            entries: Vec::new(),
            key: None,
            seen: HashSet::new(),
        }
    }
}

/// Builds the tree from events with an explicit stack, so nesting costs no recursion.
#[derive(Default)]
struct Builder {
    open: Vec<Open>,
    root: Option<Node>,
    duplicates: Vec<(Pos, String)>,
}

impl Builder {
    /// A finished node, into whatever is open.
    fn add(&mut self, node: Node) {
        let Some(open) = self.open.last_mut() else {
            self.root = Some(node);
            return;
        };
        if !open.map {
            open.items.push(node);
            return;
        }
        match open.key.take() {
            None => {
                // A key that is a list or mapping is kept by its text's absence: no
                // schema has one, so it is an unknown key, named "(complex key)".
                let key = match node.value {
                    Value::Scalar { text, .. } => text,
                    _ => "(complex key)".to_owned(),
                };
                if !open.seen.insert(key.clone()) {
                    let message = format!("key \"{key}\" is given twice in this mapping");
                    self.duplicates.push((node.at, message));
                }
                open.key = Some((key, node.at));
            }
            Some((key, key_at)) => open.entries.push(Entry { key, key_at, node }),
        }
    }

    fn close(&mut self) {
        let Some(open) = self.open.pop() else {
            return;
        };
        let value = if open.map {
            Value::Map(open.entries)
        } else {
            Value::List(open.items)
        };
        self.add(Node { at: open.at, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Node {
        parse(Path::new("t.yaml"), text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn failed(text: &str) -> String {
        let errors = parse(Path::new("t.yaml"), text).expect_err("should fail");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        lines.join("\n")
    }

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let root = parsed("servers:\n  - name: a\n    weight: '3'\n");
        let Value::Map(top) = &root.value else {
            panic!("{root:?}")
        };
        assert_eq!(top[0].key_at, Pos { line: 1, col: 1 });
        let Value::List(servers) = &top[0].node.value else {
            panic!()
        };
        let Value::Map(server) = &servers[0].value else {
            panic!()
        };
        assert_eq!(server[0].key, "name");
        assert_eq!(server[0].key_at, Pos { line: 2, col: 5 });
        assert_eq!(server[0].node.at, Pos { line: 2, col: 11 });
        let Value::Scalar { text, plain } = &server[1].node.value else {
            panic!()
        };
        assert_eq!((text.as_str(), *plain), ("3", false));
    }

    #[test]
    fn refuses_aliases_so_nothing_expands() {
        let laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n";
        assert_eq!(
            failed(laughs),
            "t.yaml:2:8: aliases (*name) are not read; write the value out"
        );
    }

    #[test]
    fn bounds_nesting() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            failed(&deep),
            format!(
                "t.yaml:1:{}: nested more than 32 levels deep",
                MAX_DEPTH + 1
            )
        );
        let deepest = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        parsed(&deepest);
        // Far deeper stays an error (the parser's own limit stops it), not a crash.
        let hostile = "[".repeat(1_000_000);
        assert!(failed(&hostile).starts_with("t.yaml:1:"));
        let block: String = (0..40)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect();
        assert_eq!(
            failed(&block),
            "t.yaml:33:65: nested more than 32 levels deep"
        );
    }

    #[test]
    fn reports_syntax_errors_duplicates_and_second_documents() {
        assert!(failed("a: [1, 2\n").starts_with("t.yaml:2:1: not valid YAML: "));
        assert_eq!(
            failed("a: 1\nb: 2\na: 3\n"),
            "t.yaml:3:1: key \"a\" is given twice in this mapping"
        );
        assert_eq!(
            failed("a: 1\n---\nb: 2\n"),
            "t.yaml:2:1: a second YAML document; the file must hold one"
        );
    }

    #[test]
    fn a_wide_mapping_is_read_in_linear_time() {
        let wide: String = (0..200_000).map(|i| format!("k{i}: {i}\n")).collect();
        let started = std::time::Instant::now();
        let Value::Map(entries) = parsed(&wide).value else {
            panic!("a mapping")
        };
        assert_eq!(entries.len(), 200_000);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn empty_text_is_null() {
        assert!(parsed("").is_null());
        assert!(parsed("# only a comment\n").is_null());
        assert_eq!(parsed("x").found(), "\"x\"");
    }
}
