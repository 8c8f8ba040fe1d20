//! Cron triggers: parsed and previewed with croner (with Temporal's semantics), turned into
//! the cron string Temporal Schedules expect.
//!
//! Definitions accept 5 fields (minute hour day-of-month month day-of-week) or 6 fields with
//! seconds first (croner's convention). Temporal reads a 6-field string as ending in a *year*,
//! so a 6-field definition is sent as 7 fields (seconds ... day-of-week, year `*`). Temporal
//! requires day-of-month AND day-of-week to match when both are set; the preview does the same.

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron expression in an IANA time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    cron: Cron,
    timezone: chrono_tz::Tz,
}

impl CronSchedule {
    /// Parses `expression` (5 or 6 fields) in `timezone`; errors name what is wrong.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, (&'static str, String)> {
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err((
                "expression",
                format!("{expression:?} has {fields} fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(true)
            .build()
            .parse(expression)
            .map_err(|e| ("expression", format!("{expression:?}: {e}")))?;
        let timezone: chrono_tz::Tz = timezone
            .parse()
            .map_err(|_| ("timezone", format!("{timezone:?} is not an IANA time zone name (like Europe/Berlin or UTC)")))?;
        Ok(CronSchedule { expression: expression.to_string(), cron, timezone })
    }

    pub fn timezone(&self) -> &str {
        self.timezone.name()
    }

    /// The expression as Temporal's `cron_strings` reads it.
    pub fn temporal_cron_string(&self) -> String {
        if self.expression.split_whitespace().count() == 6 {
            format!("{} *", self.expression.trim())
        } else {
            self.expression.trim().to_string()
        }
    }

    /// The next `n` fire times after `after`, in the schedule's time zone.
    pub fn next_fire_times(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<chrono_tz::Tz>> {
        let start = self.timezone.from_utc_datetime(&after.naive_utc());
        self.cron.iter_after(start).take(n).collect()
    }
}

/// Parses an RFC 3339 time (`2026-03-08T00:00:00Z`).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    #[test]
    fn five_and_six_field_expressions() {
        let every_minute = CronSchedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(every_minute.temporal_cron_string(), "* * * * *");
        let times = every_minute.next_fire_times(at("2026-01-01T00:00:30Z"), 2);
        assert_eq!(times[0].to_rfc3339(), "2026-01-01T00:01:00+00:00");
        let every_10s = CronSchedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(every_10s.temporal_cron_string(), "*/10 * * * * * *");
        assert_eq!(every_10s.next_fire_times(at("2026-01-01T00:00:01Z"), 1)[0].to_rfc3339(), "2026-01-01T00:00:10+00:00");
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(CronSchedule::parse("* * *", "UTC").unwrap_err().0, "expression");
        assert_eq!(CronSchedule::parse("61 * * * *", "UTC").unwrap_err().0, "expression");
        let (field, message) = CronSchedule::parse("0 3 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(field, "timezone");
        assert!(message.contains("Mars/Olympus"));
    }

    #[test]
    fn daily_0230_across_dst_in_new_york() {
        let daily = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        // 2026-03-08: clocks jump 02:00 -> 03:00, so 02:30 does not exist that day.
        let spring: Vec<String> = daily.next_fire_times(at("2026-03-07T00:00:00Z"), 3).iter().map(chrono::DateTime::to_rfc3339).collect();
        assert_eq!(spring[0], "2026-03-07T02:30:00-05:00");
        assert!(!spring.iter().any(|t| t.starts_with("2026-03-08T02:30")), "{spring:?}");
        // 2026-11-01: 01:00-02:00 repeats; 02:30 happens once.
        let fall: Vec<String> = daily.next_fire_times(at("2026-10-31T12:00:00Z"), 2).iter().map(chrono::DateTime::to_rfc3339).collect();
        assert_eq!(fall, ["2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"]);
    }
}
