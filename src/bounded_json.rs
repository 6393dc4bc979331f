//! JSON from outside — configuration files, API bodies, discovery answers — checked for
//! size and nesting depth before any parser sees it.
//!
//! serde_json stops at 128 levels by itself, but the configuration reader walks the
//! tree recursively and re-reads each nested value, so a deeply nested document costs
//! stack and time in proportion to depth × size. One linear pass here bounds both: no
//! document deeper than [`MAX_DEPTH`] reaches a recursive parser, which also keeps the
//! reader's work linear in the size of the input.

use serde::Deserialize;

/// Deepest nesting of arrays and objects accepted. Sluice's deepest schema needs six
/// levels; Docker's and Consul's answers about ten.
pub const MAX_DEPTH: usize = 64;

/// A document nested deeper than [`MAX_DEPTH`], refused before parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("nested deeper than {MAX_DEPTH} levels")]
pub struct TooDeep {
    /// Byte offset of the bracket one level too deep.
    pub at: usize,
}

/// Checks that `text` nests arrays and objects at most [`MAX_DEPTH`] deep, ignoring
/// brackets inside strings. Nothing else is checked: the parser reports syntax errors.
/// Sizes are bounded where the text is read (a file, a request body, a response).
pub fn check_depth(text: &[u8]) -> Result<(), TooDeep> {
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
                    return Err(TooDeep { at });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Why [`from_slice`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    TooDeep(#[from] TooDeep),
    #[error(transparent)]
    Syntax(#[from] serde_json::Error),
}

/// `serde_json::from_slice`, after [`check_depth`].
pub fn from_slice<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Result<T, Error> {
    check_depth(text)?;
    Ok(serde_json::from_slice(text)?)
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
            Err(TooDeep { at: MAX_DEPTH })
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
        let result: Result<serde_json::Value, _> = from_slice(deep.as_bytes());
        assert!(matches!(result, Err(Error::TooDeep(TooDeep { at: 64 }))));
    }
}
