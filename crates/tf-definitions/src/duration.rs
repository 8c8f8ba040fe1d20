//! Durations as written in definitions: `500ms`, `30s`, `10m`, `24h`, `7d`, or combined `1h30m`.

use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration like 30s, 10m, 24h or 7d"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "" => return Err(format!("{text:?} needs a unit (ms, s, m, h, d)")),
            other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m, h, d)")),
        };
        total += scale * u32::try_from(n).map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[unit..];
    }
    Ok(total)
}

/// Writes a duration as [`parse`] reads it, in its largest whole unit (`1m`, `90s`, `1500ms`),
/// for messages that quote a definition's periods back.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0ms".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn formats_in_the_largest_whole_unit_and_reads_back() {
        for (ms, text) in [(1000, "1s"), (60_000, "1m"), (3_600_000, "1h"), (86_400_000, "1d"), (1500, "1500ms"), (90_000, "90s")] {
            let d = Duration::from_millis(ms);
            assert_eq!(format(d), text);
            assert_eq!(parse(text), Ok(d));
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        assert!(parse("").is_err());
        assert!(parse("10").unwrap_err().contains("needs a unit"));
        assert!(parse("5 weeks").unwrap_err().contains("unknown unit"));
        assert!(parse("h").is_err());
    }
}
