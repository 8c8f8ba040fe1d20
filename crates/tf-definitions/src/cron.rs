//! Time triggers: a cron expression (parsed and previewed with croner, with Temporal's
//! semantics, turned into the cron string Temporal Schedules expect), an interval (`every`,
//! `offset`: Temporal's IntervalSpec, counted from the Unix epoch), or both, in a time zone.
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

    /// The next `n` fire times after `after`, in the schedule's time zone, as Temporal fires
    /// them across DST changes (checked against the server in
    /// services/tf-worker/tests/schedules.rs): a local time that does not exist (02:30 on a
    /// spring-forward day) is no fire (croner would move it to the next existing minute, which
    /// the expression does not match), and one that happens twice (01:30 on a fall-back day)
    /// fires twice (croner gives only the first).
    pub fn next_fire_times(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<chrono_tz::Tz>> {
        // From an hour earlier, so the second of a repeated time just before `after` is seen.
        let start = self.timezone.from_utc_datetime(&(after - chrono::Duration::hours(1)).naive_utc());
        self.cron
            .iter_after(start)
            .filter(|t| self.cron.is_time_matching(t).unwrap_or(false))
            .flat_map(|t| match self.timezone.from_local_datetime(&t.naive_local()) {
                chrono::LocalResult::Ambiguous(first, second) => vec![first, second],
                _ => vec![t],
            })
            .filter(|t| t.with_timezone(&Utc) > after)
            .take(n)
            .collect()
    }
}

/// An interval trigger: at `offset` past every multiple of `every` since the Unix epoch, as
/// Temporal's IntervalSpec fires (`every: 15m, offset: 2m` fires at :02, :17, :32, :47).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub every: std::time::Duration,
    pub offset: std::time::Duration,
}

impl Interval {
    /// The first fire strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        let (every, offset) = (self.every.as_millis() as i64, self.offset.as_millis() as i64);
        let k = (after.timestamp_millis() - offset).div_euclid(every) + 1;
        DateTime::from_timestamp_millis(k * every + offset).unwrap_or(after)
    }
}

/// When a time trigger fires: its cron expression, its interval, or both (the union of their
/// times), in its time zone (which an interval does not depend on).
#[derive(Debug, Clone)]
pub struct TimeSpec {
    pub cron: Option<CronSchedule>,
    pub interval: Option<Interval>,
    timezone: chrono_tz::Tz,
}

impl TimeSpec {
    /// Needs a cron expression, an interval or both; errors name the field.
    pub fn new(cron: Option<CronSchedule>, interval: Option<Interval>, timezone: &str) -> Result<TimeSpec, (&'static str, String)> {
        let timezone: chrono_tz::Tz = timezone
            .parse()
            .map_err(|_| ("timezone", format!("{timezone:?} is not an IANA time zone name (like Europe/Berlin or UTC)")))?;
        if cron.is_none() && interval.is_none() {
            return Err(("expression", "a time trigger needs `expression` (cron), `every` (an interval) or both".into()));
        }
        Ok(TimeSpec { cron, interval, timezone })
    }

    pub fn timezone(&self) -> &str {
        self.timezone.name()
    }

    /// Temporal's `cron_strings`: empty without an expression.
    pub fn cron_strings(&self) -> Vec<String> {
        self.cron.iter().map(CronSchedule::temporal_cron_string).collect()
    }

    /// The next `n` fire times after `after`, in the trigger's time zone: the cron's and the
    /// interval's merged (a time both give fires once).
    pub fn next_fire_times(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<chrono_tz::Tz>> {
        let mut times: Vec<DateTime<Utc>> =
            self.cron.iter().flat_map(|c| c.next_fire_times(after, n)).map(|t| t.with_timezone(&Utc)).collect();
        if let Some(i) = &self.interval {
            let mut t = after;
            for _ in 0..n {
                t = i.next_after(t);
                times.push(t);
            }
        }
        times.sort();
        times.dedup();
        times.into_iter().take(n).map(|t| t.with_timezone(&self.timezone)).collect()
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
    fn intervals_count_from_the_epoch_with_their_offset_and_mix_with_cron() {
        let quarter = Interval { every: std::time::Duration::from_secs(900), offset: std::time::Duration::from_secs(120) };
        assert_eq!(quarter.next_after(at("2026-01-01T00:00:00Z")).to_rfc3339(), "2026-01-01T00:02:00+00:00");
        assert_eq!(quarter.next_after(at("2026-01-01T00:02:00Z")).to_rfc3339(), "2026-01-01T00:17:00+00:00", "strictly after");
        let both = TimeSpec::new(Some(CronSchedule::parse("0 * * * *", "UTC").unwrap()), Some(quarter), "UTC").unwrap();
        let times: Vec<String> = both.next_fire_times(at("2026-01-01T00:50:00Z"), 4).iter().map(chrono::DateTime::to_rfc3339).collect();
        assert_eq!(
            times,
            ["2026-01-01T01:00:00+00:00", "2026-01-01T01:02:00+00:00", "2026-01-01T01:17:00+00:00", "2026-01-01T01:32:00+00:00"]
        );
        // A time both give fires once.
        let hourly = Interval { every: std::time::Duration::from_secs(3600), offset: std::time::Duration::ZERO };
        let same = TimeSpec::new(Some(CronSchedule::parse("0 * * * *", "UTC").unwrap()), Some(hourly), "UTC").unwrap();
        assert_eq!(same.next_fire_times(at("2026-01-01T00:30:00Z"), 2).len(), 2);
        assert_eq!(same.next_fire_times(at("2026-01-01T00:30:00Z"), 2)[1].to_rfc3339(), "2026-01-01T02:00:00+00:00");
        assert_eq!(TimeSpec::new(None, None, "UTC").unwrap_err().0, "expression");
    }

    #[test]
    fn daily_0230_across_dst_in_new_york() {
        let daily = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        // 2026-03-08: clocks jump 02:00 -> 03:00, so 02:30 does not exist that day.
        let spring: Vec<String> = daily.next_fire_times(at("2026-03-07T00:00:00Z"), 3).iter().map(chrono::DateTime::to_rfc3339).collect();
        // No fire that day at all (not 03:00, where croner would put it): Temporal's behaviour,
        // checked against the server in services/tf-worker/tests/schedules.rs.
        assert_eq!(spring, ["2026-03-07T02:30:00-05:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"]);
        // 2026-11-01: 01:00-02:00 repeats; 02:30 happens once.
        let fall: Vec<String> = daily.next_fire_times(at("2026-10-31T12:00:00Z"), 2).iter().map(chrono::DateTime::to_rfc3339).collect();
        assert_eq!(fall, ["2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"]);
        // 01:30 on that day happens twice, and fires twice.
        let early = CronSchedule::parse("30 1 * * *", "America/New_York").unwrap();
        let twice: Vec<String> = early.next_fire_times(at("2026-10-31T12:00:00Z"), 3).iter().map(chrono::DateTime::to_rfc3339).collect();
        assert_eq!(twice, ["2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00", "2026-11-02T01:30:00-05:00"]);
    }
}
