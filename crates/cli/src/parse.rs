//! Parsers for argument values; clap turns their errors into usage errors (exit 2).

use std::time::Duration;

/// A `--grant STORE_ID[:ro]` value.
#[derive(Clone, Debug)]
pub struct Grant {
    pub store: String,
    pub read_only: bool,
}

pub fn grant(text: &str) -> Result<Grant, String> {
    let (store, read_only) = match text.strip_suffix(":ro") {
        Some(store) => (store, true),
        None => (text, false),
    };
    theater_store::StoreId::parse(store).map_err(|e| e.to_string())?;
    Ok(Grant {
        store: store.to_owned(),
        read_only,
    })
}

/// `BUCKET[:PREFIX]`: a bucket (a store id, which has no `:`) and the
/// keys in it to watch.
pub fn watched(text: &str) -> Result<theater_store_host::WatchedBucket, String> {
    let (bucket, prefix) = text.split_once(':').unwrap_or((text, ""));
    theater_store::StoreId::parse(bucket).map_err(|e| e.to_string())?;
    Ok(theater_store_host::WatchedBucket {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Sizes such as `4096`, `64KiB`, `64MiB`, `1GiB` (K, M, G are binary too).
pub fn size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 64MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text} is too large"))
}

/// Durations such as `0`, `30s`, `10m`, `1h`, `2d`, `500ms`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s, 10m or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// A positive number of seconds, fractions allowed.
pub fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{text} is not a positive number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_grants() {
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        assert!(size("12 parsecs").is_err() && size("MiB").is_err());
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("1y").is_err());
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(seconds("0").is_err() && seconds("-1").is_err());
        let ro = grant("shared:ro").unwrap();
        assert_eq!((ro.store.as_str(), ro.read_only), ("shared", true));
        assert!(!grant("mine").unwrap().read_only);
        assert!(grant("../x").is_err());
    }
}

/// A `--range START..END` (END exclusive) or `START..` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// `None`: to the end of the content.
    pub end: Option<u64>,
}

pub fn range(text: &str) -> Result<ByteRange, String> {
    let usage = || format!("{text:?} is not a range such as 100..200 or 100..");
    let (start, end) = text.split_once("..").ok_or_else(usage)?;
    let start = start.trim().parse().map_err(|_| usage())?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse().map_err(|_| usage())?),
    };
    if end.is_some_and(|end| end < start) {
        return Err(format!("{text:?}: the end comes before the start"));
    }
    Ok(ByteRange { start, end })
}

/// A `--env` value: `NAME=VALUE`, or `NAME` to pass this environment's
/// value through.
pub fn env(text: &str) -> Result<(String, Option<String>), String> {
    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value.to_owned())),
        None => (text, None),
    };
    if name.is_empty() || name.contains('\0') || value.as_deref().is_some_and(|v| v.contains('\0'))
    {
        return Err(format!("{text:?} is not NAME=VALUE or NAME"));
    }
    Ok((name.to_owned(), value))
}

/// A `--trim-before` value: an event position (`1200`), a time
/// (`2026-11-01T00:00:00Z`), or an age (`30d`: events recorded more than
/// 30 days ago).
pub fn trim_before(text: &str) -> Result<theater_store::TrimBefore, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text
            .parse()
            .map(theater_store::TrimBefore::Seq)
            .map_err(|_| format!("{text} is too large for an event position"));
    }
    let time = time_or_age(text, "an event position (1200)")?;
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text} is before the Unix epoch"))?
        .as_millis();
    Ok(theater_store::TrimBefore::Time(
        u64::try_from(millis).unwrap_or(u64::MAX),
    ))
}

/// A point of a store's change log: `SEQ` (right after that change), a
/// time (`2026-11-01T00:00:00Z`) or an age (`30m`: that long ago).
pub fn point(text: &str) -> Result<theater_store::Point, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text
            .parse()
            .map(theater_store::Point::After)
            .map_err(|_| format!("{text} is too large for a change number"));
    }
    time_or_age(text, "a change number (1200)").map(theater_store::Point::Time)
}

/// A time (RFC 3339) or an age before now (`30d`); `other` names what else
/// the argument could have been, for the error.
fn time_or_age(text: &str, other: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    let age = duration(text).map_err(|_| {
        format!("{text:?} is neither {other}, a time (2026-11-01T00:00:00Z) nor an age (30d)")
    })?;
    std::time::SystemTime::now()
        .checked_sub(age)
        .ok_or_else(|| format!("{text} reaches back before the Unix epoch"))
}
