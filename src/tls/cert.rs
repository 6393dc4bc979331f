//! The validity dates of an X.509 certificate, read straight from its DER encoding: a
//! few fixed steps into the structure, so no certificate-parsing dependency is needed.

/// `notAfter` of a DER certificate, in seconds since the Unix epoch; `None` if the
/// encoding is not what a certificate looks like.
pub(crate) fn not_after(der: &[u8]) -> Option<i64> {
    validity(der).map(|(_, not_after)| not_after)
}

/// `(notBefore, notAfter)` of a DER certificate, in seconds since the Unix epoch; `None`
/// if the encoding is not what a certificate looks like.
pub(crate) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //   serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, … } … }
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (tag, validity, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, time, after_not_before) = tlv(validity)?;
    let not_before = parse_time(tag, std::str::from_utf8(time).ok()?)?;
    let (tag, time, _) = tlv(after_not_before)?;
    let not_after = parse_time(tag, std::str::from_utf8(time).ok()?)?;
    Some((not_before, not_after))
}

/// The serial number of a DER certificate, as encoded (big-endian, a leading zero byte
/// when its top bit is set); `None` if the encoding is not what a certificate looks like.
pub(crate) fn serial(der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (mut tag, mut serial, after) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, serial, _) = tlv(after)?;
    }
    (tag == 0x02).then_some(serial)
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18).
fn parse_time(tag: u8, text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            // RFC 5280: two-digit years 50-99 are 19xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2024, 5, 6);
        params.not_after = rcgen::date_time_ymd(2031, 2, 3);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.clone().self_signed(&key).expect("cert");
        // 2024-05-06T00:00:00Z, 2031-02-03T00:00:00Z
        assert_eq!(validity(cert.der()), Some((1_714_953_600, 1_927_843_200)));
        assert_eq!(not_after(cert.der()), Some(1_927_843_200));
        params.not_after = rcgen::date_time_ymd(2060, 1, 1);
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(not_after(cert.der()), Some(2_840_140_800));
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0x02, 0x03]));
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(serial(cert.der()), Some(&[0x01, 0x02, 0x03][..]));
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
        assert_eq!(serial(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
        assert_eq!(parse_time(0x17, "9912312359Z"), None);
        assert_eq!(parse_time(0x17, "700101000000Z"), Some(0));
    }
}
