//! JSON from outside — configuration files, API bodies, discovery answers — checked for
//! size and nesting depth before any parser sees it.
//!
//! serde_json stops at 128 levels by itself, but the configuration reader walks the
//! tree recursively and re-reads each nested value, so a deeply nested document costs
//! stack and time in proportion to depth × size. One linear pass here bounds both: no
//! document deeper than [`MAX_DEPTH`] reaches a recursive parser, which also keeps the
//! reader's work linear in the size of the input.

use std::fmt;

use serde::Deserialize;

/// Deepest nesting of arrays and objects accepted. Sluice's deepest schema needs six
/// levels; Docker's and Consul's answers about ten.
pub const MAX_DEPTH: usize = 64;

/// Why a document was refused before parsing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// Byte offset of the bracket one level too deep.
        at: usize,
    },
    #[error("larger than {limit} bytes ({size} bytes)")]
    TooLarge { size: usize, limit: usize },
}

impl Refused {
    /// The byte offset the refusal points at.
    pub fn offset(&self) -> usize {
        match self {
            Refused::TooDeep { at } => *at,
            Refused::TooLarge { .. } => 0,
        }
    }
}

/// Checks that `text` nests arrays and objects at most [`MAX_DEPTH`] deep, ignoring
/// brackets inside strings. Nothing else is checked: the parser reports syntax errors.
pub fn check_depth(text: &[u8]) -> Result<(), Refused> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (at, &byte) in text.iter().enumerate() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Refused::TooDeep { at });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Checks size and depth of `text`.
pub fn check(text: &[u8], limit: usize) -> Result<(), Refused> {
    if text.len() > limit {
        return Err(Refused::TooLarge {
            size: text.len(),
            limit,
        });
    }
    check_depth(text)
}

/// Why [`from_slice`] failed.
#[derive(Debug)]
pub enum Error {
    Refused(Refused),
    Syntax(serde_json::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(e) => e.fmt(f),
            Error::Syntax(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

/// `serde_json::from_slice`, after [`check`] with `limit`.
pub fn from_slice<'a, T: Deserialize<'a>>(text: &'a [u8], limit: usize) -> Result<T, Error> {
    check(text, limit).map_err(Error::Refused)?;
    serde_json::from_slice(text).map_err(Error::Syntax)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert_eq!(check_depth(nested(MAX_DEPTH).as_bytes()), Ok(()));
        assert_eq!(
            check_depth(nested(MAX_DEPTH + 1).as_bytes()),
            Err(Refused::TooDeep { at: MAX_DEPTH })
        );
        let quoted = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert_eq!(check_depth(quoted.as_bytes()), Ok(()));
        // Siblings do not add up.
        let wide = format!("[{}]", vec![nested(10); 1000].join(","));
        assert_eq!(check_depth(wide.as_bytes()), Ok(()));
    }

    #[test]
    fn deep_documents_are_refused_before_parsing() {
        let deep = nested(1_000_000);
        let result: Result<serde_json::Value, _> = from_slice(deep.as_bytes(), usize::MAX);
        assert!(matches!(
            result,
            Err(Error::Refused(Refused::TooDeep { at: 64 }))
        ));
    }

    #[test]
    fn size_is_limited() {
        let result: Result<serde_json::Value, _> = from_slice(b"[1, 2, 3]", 4);
        assert_eq!(
            result.map_err(|e| e.to_string()).unwrap_err(),
            "larger than 4 bytes (9 bytes)"
        );
    }
}
