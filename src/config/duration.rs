//! Go-style durations, as GoBetween writes them: `"500ms"`, `"1h30m"`, `"1.5s"`.
//!
//! Units are `ns`, `us` (or `µs`), `ms`, `s`, `m` and `h`; a value may chain several. The
//! bare `"0"` is allowed without a unit, and for timeouts it means "no limit".

use std::time::Duration;

const UNITS: &str = "ns, us, ms, s, m or h";

/// Parses a Go duration such as `"5s"` or `"1h30m"`. Negative values are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(format!("negative duration \"{s}\" is not allowed"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(format!(
            "invalid duration \"{s}\": expected a number and a unit ({UNITS}), e.g. \"500ms\""
        ));
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = split_number(rest);
        if number.is_empty() || number == "." {
            return Err(format!(
                "invalid duration \"{s}\": expected a number and a unit ({UNITS}), e.g. \"500ms\""
            ));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration \"{s}\" (use {UNITS})")),
            other => {
                return Err(format!(
                    "unknown unit \"{other}\" in duration \"{s}\" (use {UNITS})"
                ))
            }
        };
        nanos = nanos.saturating_add(scaled(number, scale));
        rest = after;
    }
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| format!("duration \"{s}\" is too large"))
}

/// Parses a timeout: like [`parse_duration`], but zero means "no limit" (`None`).
pub fn parse_timeout(s: &str) -> Result<Option<Duration>, String> {
    parse_duration(s).map(|d| (!d.is_zero()).then_some(d))
}

/// Splits `"1.5ms..."` into `"1.5"` and `"ms..."`.
fn split_number(s: &str) -> (&str, &str) {
    let mut seen_dot = false;
    let end = s
        .find(|c: char| {
            if c == '.' && !seen_dot {
                seen_dot = true;
                false
            } else {
                !c.is_ascii_digit()
            }
        })
        .unwrap_or(s.len());
    s.split_at(end)
}

/// `number` (digits with at most one `.`) times `scale` nanoseconds, saturating; digits of
/// the fraction below a nanosecond are dropped, as Go does.
fn scaled(number: &str, scale: u128) -> u128 {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let mut total = whole
        .bytes()
        .fold(0u128, |n, d| {
            n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
        })
        .saturating_mul(scale);
    let mut place = scale;
    for d in fraction.bytes() {
        place /= 10;
        if place == 0 {
            break;
        }
        total = total.saturating_add(u128::from(d - b'0') * place);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn single_units() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("5s"), Ok(ms(5_000)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("100ns"), Ok(Duration::from_nanos(100)));
    }

    #[test]
    fn chains_and_fractions() {
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("1m30.5s"), Ok(ms(90_500)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("1.s"), Ok(ms(1_000)));
        assert_eq!(parse_duration("+3s"), Ok(ms(3_000)));
        assert_eq!(parse_duration("1.0000000001s"), Ok(ms(1_000)));
    }

    #[test]
    fn zero_is_no_limit_for_timeouts() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_timeout("0"), Ok(None));
        assert_eq!(parse_timeout("0s"), Ok(None));
        assert_eq!(parse_timeout("10s"), Ok(Some(ms(10_000))));
    }

    #[test]
    fn errors_are_explained() {
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5 s")
            .unwrap_err()
            .contains("unknown unit \" s\""));
        assert!(parse_duration("5d")
            .unwrap_err()
            .contains("unknown unit \"d\""));
        assert!(parse_duration("").unwrap_err().contains("invalid duration"));
        assert!(parse_duration("s")
            .unwrap_err()
            .contains("invalid duration"));
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("9999999999999h")
            .unwrap_err()
            .contains("too large"));
    }
}
