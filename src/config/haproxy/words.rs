//! HAProxy's line grammar: a line is cut into words at spaces and tabs, `#` starts a
//! comment, and quotes and backslashes decide what is a delimiter, as HAProxy's own
//! parser does (its manual, "Quoting and escaping"):
//!
//! - outside quotes, `\ ` `\#` `\\` `\'` `\"` stand for the character, `\n` `\r` `\t`
//!   `\xNN` for the byte; any other escape is kept as written (`\.` in a regular
//!   expression);
//! - `"..."` keeps spaces, `#` and `'`, and decodes the same escapes; `$VAR` (which
//!   HAProxy expands from its environment) is an error here: a configuration reads
//!   the same wherever it is loaded;
//! - `'...'` keeps everything as written.
//!
//! Each word keeps the byte offset it starts at, for `FILE:LINE:COL` messages.

/// One word of a line, unquoted and unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Word {
    /// The word's bytes (`\xNN` may make them any byte).
    pub bytes: Vec<u8>,
    /// The same, as text (bytes that are not UTF-8 replaced), for names and messages.
    pub text: String,
    /// Byte offset in the file where the word starts.
    pub at: usize,
}

/// A line with at least one word.
#[derive(Clone, Debug)]
pub(super) struct Line {
    pub words: Vec<Word>,
}

impl Line {
    /// Where the line's first word (its keyword) starts.
    pub fn at(&self) -> usize {
        self.words[0].at
    }

    pub fn keyword(&self) -> &str {
        &self.words[0].text
    }

    /// The words after the first `n`.
    pub fn args(&self, n: usize) -> &[Word] {
        self.words.get(n..).unwrap_or_default()
    }
}

/// Every line of `text` that holds a word, or the problems of the lines that do not
/// read (an unclosed quote, `$VAR`, a bad `\x`), each with its offset.
pub(super) fn lines(text: &str) -> (Vec<Line>, Vec<(usize, String)>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let body = raw.trim_end_matches(['\n', '\r']);
        match words(body, start) {
            Ok(words) if words.is_empty() => {}
            Ok(words) => lines.push(Line { words }),
            Err(problem) => problems.push(problem),
        }
        start += raw.len();
    }
    (lines, problems)
}

#[derive(Clone, Copy, PartialEq)]
enum Quote {
    None,
    Weak,
    Strong,
}

/// The words of one line starting at byte `base` of the file.
fn words(line: &str, base: usize) -> Result<Vec<Word>, (usize, String)> {
    let bytes = line.as_bytes();
    let mut words = Vec::new();
    let mut word: Option<(usize, Vec<u8>)> = None;
    let mut quote = Quote::None;
    let mut quote_at = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let at = base + i;
        match (quote, b) {
            (Quote::None, b' ' | b'\t') => {
                if let Some((start, w)) = word.take() {
                    words.push(finish(start, w));
                }
                i += 1;
                continue;
            }
            (Quote::None, b'#') => break,
            (Quote::Strong, b'\'') | (Quote::Weak, b'"') => quote = Quote::None,
            (Quote::None, b'\'') => (quote, quote_at) = (Quote::Strong, at),
            (Quote::None, b'"') => (quote, quote_at) = (Quote::Weak, at),
            (Quote::Weak, b'$') => {
                let message = "environment variables are not expanded; write the value \
                               (or escape the dollar sign: \\$)";
                return Err((at, message.to_owned()));
            }
            (Quote::None | Quote::Weak, b'\\') => {
                let (decoded, used) = escape(&bytes[i + 1..]).map_err(|m| (at, m))?;
                word.get_or_insert((at, Vec::new())).1.extend(decoded);
                i += 1 + used;
                continue;
            }
            (_, b) => word.get_or_insert((at, Vec::new())).1.push(b),
        }
        // A quote opens or closes a word, even an empty one (`''`).
        word.get_or_insert((at, Vec::new()));
        i += 1;
    }
    if quote != Quote::None {
        return Err((quote_at, "this quote is not closed on its line".to_owned()));
    }
    if let Some((start, w)) = word {
        words.push(finish(start, w));
    }
    Ok(words)
}

fn finish(at: usize, bytes: Vec<u8>) -> Word {
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Word { bytes, text, at }
}

/// What the escape after a backslash decodes to, and how many bytes it used.
fn escape(rest: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let decoded = match rest.first() {
        Some(b' ') => b' ',
        Some(b'#') => b'#',
        Some(b'\\') => b'\\',
        Some(b'\'') => b'\'',
        Some(b'"') => b'"',
        Some(b'$') => b'$',
        Some(b'\t') => b'\t',
        Some(b'n') => b'\n',
        Some(b'r') => b'\r',
        Some(b't') => b'\t',
        Some(b'x') => {
            let hex = rest
                .get(1..3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let byte = hex
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("\\x must be followed by two hex digits")?;
            return Ok((vec![byte], 3));
        }
        // Kept as written, as HAProxy does: `\.` in a regular expression.
        Some(&other) => return Ok((vec![b'\\', other], 1)),
        None => return Ok((vec![b'\\'], 0)),
    };
    Ok((vec![decoded], 1))
}

/// `text` for a message: control characters escaped (`\u{0}`), the rest as it is.
pub(super) fn shown(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The nearest of `known` to `word`, if near enough to be a typo.
pub(super) fn nearest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let near = known.iter().min_by_key(|k| edit_distance(word, k))?;
    (edit_distance(word, near) <= 2.max(word.len() / 4)).then_some(*near)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        let words = words(line, 0).expect("reads");
        words.into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn words_split_at_blanks_and_stop_at_comments() {
        assert_eq!(
            texts("  server a  1.2.3.4:80\tcheck # up"),
            ["server", "a", "1.2.3.4:80", "check"]
        );
        assert!(texts("# only a comment").is_empty());
        let (lines, problems) = lines("global\n\n  maxconn 10 # x\n");
        assert!(problems.is_empty());
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].at(), 10);
        assert_eq!(lines[1].keyword(), "maxconn");
    }

    #[test]
    fn escapes_and_quotes_as_haproxy_reads_them() {
        let line = r"tcp-check send info\ replication\r\n";
        let words = words(line, 0).expect("reads");
        assert_eq!(words[2].bytes, b"info replication\r\n");
        assert_eq!(words[2].at, 15);
        assert_eq!(
            texts(r#"a "b c#d" 'e\n f' g\#h \x41"#),
            ["a", "b c#d", r"e\n f", "g#h", "A"]
        );
        assert_eq!(texts(r#"x "" y"#), ["x", "", "y"]);
        assert_eq!(texts(r"rstring ^role:\w+"), ["rstring", r"^role:\w+"]);
        assert_eq!(texts(r#"a"b"'c'd"#), ["abcd"]);
    }

    #[test]
    fn unreadable_lines_say_where() {
        assert_eq!(words("a 'b", 10).unwrap_err().0, 12);
        assert!(words(r#"a "$HOME""#, 0)
            .unwrap_err()
            .1
            .contains("environment"));
        assert!(words(r"a \x4", 0).unwrap_err().1.contains("two hex digits"));
        assert_eq!(texts(r#"a "\$HOME""#), ["a", "$HOME"]);
    }

    #[test]
    fn nearest_names_typos() {
        assert_eq!(nearest("balanse", &["balance", "bind"]), Some("balance"));
        assert_eq!(nearest("zzzzzz", &["balance", "bind"]), None);
    }
}
