//! The router's subscription as a value: topic names, and regexes starting with `^` (as
//! librdkafka subscribes). Parsed once, so a bad pattern is refused at startup with its text, and
//! every component that must know which topics the router reads (lag, redrive, the CLI) asks the
//! same matcher.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    patterns: Vec<String>,
    names: Vec<String>,
    regexes: Vec<regex::Regex>,
}

impl Subscription {
    pub fn parse(patterns: &[String]) -> Result<Self, PatternError> {
        let mut names = Vec::new();
        let mut regexes = Vec::new();
        for p in patterns {
            if p.starts_with('^') {
                regexes.push(regex::Regex::new(p).map_err(|e| PatternError { pattern: p.clone(), reason: e.to_string() })?);
            } else {
                names.push(p.clone());
            }
        }
        Ok(Subscription { patterns: patterns.to_vec(), names, regexes })
    }

    /// Whether the router reads `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.names.iter().any(|n| n == topic) || self.regexes.iter().any(|r| r.is_match(topic))
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_regexes() {
        let s = Subscription::parse(&["^events\\..*".into(), "orders".into()]).unwrap();
        assert!(s.matches("events.orders") && s.matches("orders"));
        assert!(!s.matches("taskfactory.results") && !s.matches("eventsxorders") && !s.matches("orders2"));
        assert!(Subscription::parse(&["^(".into()]).is_err());
    }
}
