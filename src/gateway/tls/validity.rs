//! The validity period of an X.509 certificate, read straight from its DER: the few fields
//! before it are skipped, nothing else is parsed. (rustls checks client certificates, not its
//! own; a listener must know when the certificate it serves has expired.)

use std::time::{Duration, SystemTime};

/// When a certificate is valid: from `not_before` through `not_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidityError {
    #[error("malformed DER: {0}")]
    Malformed(&'static str),
    #[error("malformed time in the validity period")]
    Time,
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const EXPLICIT_VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Reads `Certificate.tbsCertificate.validity` (RFC 5280 §4.1).
pub fn read_validity(der: &[u8]) -> Result<Validity, ValidityError> {
    let (certificate, _) = element(der, SEQUENCE)?;
    let (mut tbs, _) = element(certificate, SEQUENCE)?;
    if tbs.first() == Some(&EXPLICIT_VERSION) {
        tbs = element(tbs, EXPLICIT_VERSION)?.1;
    }
    let (_, rest) = element(tbs, INTEGER)?; // serialNumber
    let (_, rest) = element(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = element(rest, SEQUENCE)?; // issuer
    let (validity, _) = element(rest, SEQUENCE)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Ok(Validity {
        not_before,
        not_after,
    })
}

/// The contents of the element at the front of `der`, which must have tag `tag`, and what
/// follows it.
fn element(der: &[u8], tag: u8) -> Result<(&[u8], &[u8]), ValidityError> {
    let (&found, rest) = der.split_first().ok_or(ValidityError::Malformed("truncated"))?;
    if found != tag {
        return Err(ValidityError::Malformed("unexpected tag"));
    }
    let (&first, rest) = rest.split_first().ok_or(ValidityError::Malformed("truncated"))?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err(ValidityError::Malformed("bad length"));
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err(ValidityError::Malformed("truncated"));
    }
    Ok(rest.split_at(length))
}

fn time(der: &[u8]) -> Result<(SystemTime, &[u8]), ValidityError> {
    let tag = *der.first().ok_or(ValidityError::Malformed("truncated"))?;
    let (text, rest) = element(der, tag)?;
    let (year, text) = match tag {
        // Two-digit years: 50–99 are 19xx, 00–49 are 20xx (RFC 5280 §4.1.2.5.1).
        UTC_TIME if text.len() == 13 => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 15 => (digits(&text[..4])?, &text[4..]),
        _ => return Err(ValidityError::Time),
    };
    if text[10] != b'Z' {
        return Err(ValidityError::Time);
    }
    let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|at| digits(&text[at..at + 2]));
    let (month, day, hour, minute, second) = (month?, day?, hour?, minute?, second?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(ValidityError::Time);
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let at = if seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    };
    Ok((at, rest))
}

fn digits(text: &[u8]) -> Result<u32, ValidityError> {
    text.iter().try_fold(0u32, |n, &b| {
        b.is_ascii_digit()
            .then(|| n * 10 + u32::from(b - b'0'))
            .ok_or(ValidityError::Time)
    })
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar.
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.self_signed(&key).expect("a certificate").der().to_vec()
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // 2020-01-01 is UTCTime in DER, 2099-12-31 GeneralizedTime (years from 2050 on).
        let validity = read_validity(&certificate((2020, 1, 1), (2099, 12, 31))).expect("readable");
        assert_eq!(validity.not_before, at(1_577_836_800));
        assert_eq!(validity.not_after, at(4_102_358_400));
    }

    #[test]
    fn the_civil_calendar_counts_leap_years() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = certificate((2020, 1, 1), (2030, 1, 1));
        for cut in 0..good.len() {
            let _ = read_validity(&good[..cut]);
        }
        assert!(read_validity(b"").is_err());
        assert!(read_validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(read_validity(&[0x30, 0x03, 0x30, 0x01, 0x02]).is_err());
    }
}
