//! Timestamps: now, RFC 3339 in and out, and the `Mon DD HH:MM:SS.mmm` of compact output,
//! without a date library (UTC only; civil dates from day numbers, Howard Hinnant's method).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use httpkit::civil;

pub use prost_types::Timestamp;

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    from_system(SystemTime::now())
}

pub fn from_system(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn to_system(t: &Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
}

/// Nanoseconds since the epoch, for ordering (negative times clamp to 0).
pub fn nanos(t: &Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

/// The day number of a civil date (inverse of [`civil`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    minute: i64,
    second: i64,
    millis: i32,
}

fn parts(t: &Timestamp) -> Parts {
    let (days, rem) = (t.seconds.div_euclid(86_400), t.seconds.rem_euclid(86_400));
    let (year, month, day) = civil(days);
    Parts {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
        millis: t.nanos / 1_000_000,
    }
}

/// `2026-11-26T10:35:54.123Z`.
pub fn rfc3339(t: &Timestamp) -> String {
    let p = parts(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Nov 26 10:35:54.123`, as hubble's compact output writes times (UTC here).
pub fn compact(t: &Timestamp) -> String {
    let p = parts(t);
    let month = MONTHS[usize::try_from(p.month.clamp(1, 12) - 1).unwrap_or(0)];
    format!(
        "{month} {:2} {:02}:{:02}:{:02}.{:03}",
        p.day, p.hour, p.minute, p.second, p.millis
    )
}

/// Parses RFC 3339 (`2026-11-26T10:35:54Z`, `...54.5+01:00`) or a time relative to `now`
/// (`30s`, `5m`, `1h30m`, `2d` ago), as `hubble observe --since` accepts.
pub fn parse(text: &str, now: SystemTime) -> Result<Timestamp, String> {
    if let Some(d) = parse_duration(text) {
        let t = now.checked_sub(d).unwrap_or(UNIX_EPOCH);
        return Ok(from_system(t));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("{text:?} is neither RFC 3339 (2026-11-26T10:00:00Z) nor a duration (5m, 1h30m)")
    })
}

/// `1h30m`, `90s`, `2d`, `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        let digits = &frac[..n.min(9)];
        if digits.is_empty() {
            return None;
        }
        nanos = digits.parse::<i64>().ok()? * 10i64.pow(9 - u32::try_from(digits.len()).ok()?);
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let h: i64 = o[1..3].parse().ok()?;
            let m: i64 = o[4..6].parse().ok()?;
            let v = h * 3600 + m * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    let days = days_from_civil(year, u32::try_from(month).ok()?, u32::try_from(day).ok()?);
    Some(Timestamp {
        seconds: days * 86_400 + hour * 3600 + minute * 60 + second - offset,
        nanos: i32::try_from(nanos).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let t = parse_rfc3339("2026-11-26T10:35:54.123Z").expect("parses");
        assert_eq!(rfc3339(&t), "2026-11-26T10:35:54.123Z");
        assert_eq!(compact(&t), "Nov 26 10:35:54.123");
        let shifted = parse_rfc3339("2026-11-26T11:35:54.123+01:00").expect("parses");
        assert_eq!(shifted, t);
        let leap = parse_rfc3339("2024-02-29T00:00:00Z").expect("parses");
        assert_eq!(rfc3339(&leap), "2024-02-29T00:00:00.000Z");
        assert!(parse_rfc3339("2024-13-01T00:00:00Z").is_none());
    }

    #[test]
    fn durations_count_back_from_now() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(parse("10s", now).expect("parses").seconds, 990);
        assert!(parse("yesterday", now).is_err());
    }
}
