//! The dedupe key as a type: parsed once, where the key is evaluated, so every store it reaches
//! (a PostgreSQL `text` column, a Temporal workflow id, the `DedupeKey` search attribute) accepts
//! it. Also the window bounds and the run's workflow id, which carries the claim's generation
//! (docs/design.md, "Dedupe and exactly-once").

use std::time::Duration;

/// Keys longer than this many bytes are refused: it keeps the `DedupeKey` search attribute far
/// below Temporal's 2 KiB keyword limit and the workflow id below its length limit.
pub const MAX_KEY_BYTES: usize = 1024;

/// The shortest dedupe window a definition may have.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

/// How long generations (windows) are kept after they end, and so the longest window a
/// definition may have. Topics the router consumes must not retain events longer than this,
/// or a replay of an event older than its window's record would open a new generation.
pub const CLAIM_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A dedupe key every downstream store accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DedupeKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DedupeKeyError {
    #[error("the dedupe key is empty")]
    Empty,
    #[error("the dedupe key is {0} bytes, over the {MAX_KEY_BYTES}-byte limit")]
    TooLong(usize),
    #[error("the dedupe key contains the control character U+{0:04X} at byte {1}")]
    ControlCharacter(u32, usize),
}

impl DedupeKey {
    pub fn parse(key: impl Into<String>) -> Result<DedupeKey, DedupeKeyError> {
        let key = key.into();
        if key.is_empty() {
            return Err(DedupeKeyError::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(DedupeKeyError::TooLong(key.len()));
        }
        // NUL cannot be stored in PostgreSQL text; other control characters break logs,
        // visibility queries and the Temporal UI.
        if let Some((at, c)) = key.char_indices().find(|(_, c)| c.is_control()) {
            return Err(DedupeKeyError::ControlCharacter(c as u32, at));
        }
        Ok(DedupeKey(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id (and workflow id) of this key's run in `generation`: `run/<definition>/<key>/<generation>`,
    /// readable for short plain keys; long or unusual keys are hashed (with a readable prefix)
    /// so the id stays short and free of characters that confuse visibility queries.
    pub fn run_id(&self, definition_id: &str, generation: u32) -> crate::RunId {
        const MAX_PLAIN: usize = 120;
        let key = self.as_str();
        let plain = key.len() <= MAX_PLAIN && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'));
        if plain {
            crate::RunId::from_workflow_id(format!("run/{definition_id}/{key}/{generation}"))
        } else {
            // The first 16 bytes of the hash are enough to tell keys apart.
            let digest = &crate::sha256_hex(key.as_bytes())[..32];
            let prefix: String = key.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(48).collect();
            crate::RunId::from_workflow_id(format!("run/{definition_id}/{prefix}~{digest}/{generation}"))
        }
    }
}

impl TryFrom<String> for DedupeKey {
    type Error = DedupeKeyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DedupeKey::parse(s)
    }
}

impl From<DedupeKey> for String {
    fn from(k: DedupeKey) -> String {
        k.0
    }
}

impl std::fmt::Display for DedupeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Event times the claim store can hold: 1970-01-01 up to the end of year 9999, in ms.
pub fn valid_event_time(ms: i64) -> bool {
    (0..=253_402_300_799_999).contains(&ms)
}

/// How old an event may be, by its event time, and still be routed. A generation lives at least
/// [`CLAIM_RETENTION`] after it was opened, and an event is routed no earlier than its event
/// time, so a repeat of any event younger than the retention still finds its window. Older
/// events might not (their window may have expired): the router dead-letters them instead of
/// risking a second run. A day short of the retention leaves room for clock skew between the
/// router and PostgreSQL and for the expiry, which runs every ten minutes.
pub const REPLAY_HORIZON: Duration = Duration::from_secs(CLAIM_RETENTION.as_secs() - 24 * 3600);

/// Whether an event dated `event_ms` is within the replay horizon at `now_ms`.
pub fn within_replay_horizon(event_ms: i64, now_ms: i64) -> bool {
    event_ms >= now_ms - REPLAY_HORIZON.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_horizon_is_inside_the_claim_retention() {
        let now = 100 * 24 * 3600 * 1000;
        let day = 24 * 3600 * 1000;
        assert!(within_replay_horizon(now, now) && within_replay_horizon(now - 28 * day, now));
        assert!(!within_replay_horizon(now - 29 * day - 1, now) && !within_replay_horizon(now - 40 * day, now));
        assert!(REPLAY_HORIZON < CLAIM_RETENTION);
    }

    #[test]
    fn keys_every_store_accepts() {
        assert_eq!(DedupeKey::parse("o-42").unwrap().as_str(), "o-42");
        assert_eq!(DedupeKey::parse("Zoë's order #1").unwrap().as_str(), "Zoë's order #1");
        assert_eq!(DedupeKey::parse(""), Err(DedupeKeyError::Empty));
        assert_eq!(DedupeKey::parse("a\0b"), Err(DedupeKeyError::ControlCharacter(0, 1)));
        assert_eq!(DedupeKey::parse("line\nbreak"), Err(DedupeKeyError::ControlCharacter(10, 4)));
        assert_eq!(DedupeKey::parse("x".repeat(MAX_KEY_BYTES + 1)), Err(DedupeKeyError::TooLong(MAX_KEY_BYTES + 1)));
        assert!(DedupeKey::parse("x".repeat(MAX_KEY_BYTES)).is_ok());
        let json: Result<DedupeKey, _> = serde_json::from_str("\"a\\u0000\"");
        assert!(json.is_err(), "deserialising validates too");
    }

    #[test]
    fn workflow_ids_carry_the_generation() {
        let k = DedupeKey::parse("o-42").unwrap();
        assert_eq!(k.run_id("orders", 1).to_string(), "run/orders/o-42/1");
        assert_eq!(k.run_id("orders", 2).to_string(), "run/orders/o-42/2");
        let at = DedupeKey::parse("a@b.example").unwrap();
        assert_eq!(at.run_id("welcome", 3).to_string(), "run/welcome/a@b.example/3");
    }

    #[test]
    fn long_or_odd_keys_are_hashed_with_a_readable_prefix() {
        let long = DedupeKey::parse("x".repeat(500)).unwrap();
        let id = long.run_id("orders", 1).to_string();
        assert!(id.starts_with("run/orders/xxxxxxxx") && id.ends_with("/1") && id.len() < 130, "{id}");
        let odd = DedupeKey::parse("Zoë's order #1").unwrap().run_id("orders", 1).to_string();
        assert!(odd.starts_with("run/orders/Zos") && odd.contains('~'), "{odd}");
        // A slash in a key would make `a/1` at generation 2 look like `a` at generation `1/2`.
        let slash = DedupeKey::parse("a/1").unwrap().run_id("orders", 2).to_string();
        assert!(slash.contains('~'), "{slash}");
        let (a, b) = (DedupeKey::parse("a b").unwrap(), DedupeKey::parse("a_b").unwrap());
        assert_ne!(a.run_id("orders", 1).to_string(), b.run_id("orders", 1).to_string(), "distinct keys, distinct ids");
        assert_eq!(a.run_id("orders", 1).to_string(), a.run_id("orders", 1).to_string(), "deterministic");
    }

    #[test]
    fn event_time_bounds() {
        assert!(valid_event_time(0) && valid_event_time(1_800_000_000_000));
        assert!(!valid_event_time(-1) && !valid_event_time(i64::MAX));
    }
}
