//! `plaintext_regex_pattern`: the regular expression that reads backend lines.

use regex::Regex;

/// A `plaintext_regex_pattern`: a regex with at least the named groups `host` and `port`.
#[derive(Clone, Debug)]
pub struct LinePattern(Regex);

impl LinePattern {
    pub fn parse(text: &str) -> Result<LinePattern, String> {
        let regex = Regex::new(text).map_err(|e| {
            // The regex crate explains over several lines; its last one says what is wrong.
            let text = e.to_string();
            let why = text
                .lines()
                .last()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            format!("not a valid regex: {why}")
        })?;
        for group in ["host", "port"] {
            if !regex.capture_names().flatten().any(|n| n == group) {
                return Err(format!("the regex needs a named group (?P<{group}>...)"));
            }
        }
        Ok(LinePattern(regex))
    }

    /// The compiled expression.
    pub fn regex(&self) -> &Regex {
        &self.0
    }
}
