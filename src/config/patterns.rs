//! Regular expressions of the configuration, compiled once when it is read:
//! `plaintext_regex_pattern` (reads backend lines), `http_body_regexp` and the probe's
//! `probe_recv`. Each is shown, and compared, as it was written.

use regex::Regex;

/// A `plaintext_regex_pattern`: a regex with at least the named groups `host` and `port`.
#[derive(Clone, Debug)]
pub struct LinePattern(Regex);

shown_as_written!(LinePattern, 0);

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

/// A regular expression over text (`http_body_regexp`).
#[derive(Clone, Debug)]
pub struct TextRegex(Regex);

shown_as_written!(TextRegex, 0);

impl TextRegex {
    /// Compiles `text`; the error is the regex crate's own explanation.
    pub fn parse(text: &str) -> Result<TextRegex, regex::Error> {
        Regex::new(text).map(TextRegex)
    }

    /// The compiled expression.
    pub fn regex(&self) -> &Regex {
        &self.0
    }
}

/// A regular expression over bytes (the probe's `probe_recv`).
#[derive(Clone, Debug)]
pub struct BytesRegex(regex::bytes::Regex);

shown_as_written!(BytesRegex, 0);

impl BytesRegex {
    /// Compiles `text`; the error is the regex crate's own explanation.
    pub fn parse(text: &str) -> Result<BytesRegex, regex::Error> {
        regex::bytes::Regex::new(text).map(BytesRegex)
    }

    /// The compiled expression.
    pub fn regex(&self) -> &regex::bytes::Regex {
        &self.0
    }
}
