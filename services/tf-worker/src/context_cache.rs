//! The cache of context answers (`cache:` on a `sql` or `http` source), per worker process:
//! moka, with each entry's own time to live, and single flight: concurrent misses of one key (a
//! burst of events for one customer) make one query, and the others take its answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use serde_json::{Value as Json, json};

/// Enough for a burst of distinct customers; past it, the least used entries go first.
const MAX_ENTRIES: u64 = 10_000;

#[derive(Clone)]
struct Entry {
    value: Json,
    stored: Instant,
    ttl: Duration,
}

/// Each entry lives as long as its source's `cache:` says.
struct OwnTtl;

impl Expiry<String, Entry> for OwnTtl {
    fn expire_after_create(&self, _key: &String, entry: &Entry, _created_at: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

pub struct ContextCache {
    entries: Cache<String, Entry>,
}

impl Default for ContextCache {
    fn default() -> Self {
        ContextCache { entries: Cache::builder().max_capacity(MAX_ENTRIES).expire_after(OwnTtl).build() }
    }
}

/// How a source's answer was obtained, for the run's context record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheUse {
    Off,
    Miss,
    Hit(Duration),
}

impl CacheUse {
    pub fn label(&self) -> &'static str {
        match self {
            CacheUse::Off => "off",
            CacheUse::Miss => "miss",
            CacheUse::Hit(_) => "hit",
        }
    }

    pub fn age_ms(&self) -> Json {
        match self {
            CacheUse::Hit(age) => json!(age.as_millis() as u64),
            _ => Json::Null,
        }
    }
}

impl ContextCache {
    /// The answer for `key`: cached when `ttl` is set and an answer younger than it is held,
    /// else fetched (once for all concurrent callers of the key). Errors are not cached.
    pub async fn get_or_fetch<F, Fut, E>(&self, key: &str, ttl: Option<Duration>, fetch: F) -> Result<(Json, CacheUse), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Json, E>>,
        E: Clone + Send + Sync + 'static,
    {
        let Some(ttl) = ttl.filter(|t| !t.is_zero()) else { return Ok((fetch().await?, CacheUse::Off)) };
        let fetched_here = AtomicBool::new(false);
        let entry = self
            .entries
            .try_get_with(key.to_string(), async {
                fetched_here.store(true, Ordering::Relaxed);
                let value = fetch().await?;
                Ok::<_, E>(Entry { value, stored: Instant::now(), ttl })
            })
            .await
            .map_err(|e| (*e).clone())?;
        let used = if fetched_here.load(Ordering::Relaxed) { CacheUse::Miss } else { CacheUse::Hit(entry.stored.elapsed()) };
        Ok((entry.value, used))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn concurrent_misses_of_one_key_make_one_fetch_and_entries_expire() {
        let cache = Arc::new(ContextCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let get = |key: &'static str, ttl: Option<Duration>| {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            async move {
                cache
                    .get_or_fetch(key, ttl, || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>(json!(key))
                    })
                    .await
                    .unwrap()
            }
        };
        let ttl = Some(Duration::from_millis(300));
        let burst = futures::future::join_all((0..20).map(|_| get("customer-1", ttl))).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one query for a burst of one key");
        assert_eq!(burst.iter().filter(|(_, u)| *u == CacheUse::Miss).count(), 1);
        assert!(burst.iter().all(|(v, _)| *v == json!("customer-1")));
        let (_, later) = get("customer-1", ttl).await;
        assert!(matches!(later, CacheUse::Hit(_)), "{later:?}");
        get("customer-2", ttl).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "another key is another query");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(get("customer-1", ttl).await.1, CacheUse::Miss, "expired after its ttl");
        assert_eq!(get("customer-1", None).await.1, CacheUse::Off);
        assert_eq!(fetches.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_cached() {
        let cache = ContextCache::default();
        let ttl = Some(Duration::from_secs(60));
        let failed = cache.get_or_fetch("k", ttl, || async { Err::<Json, _>("down".to_string()) }).await;
        assert_eq!(failed.unwrap_err(), "down");
        let (v, used) = cache.get_or_fetch("k", ttl, || async { Ok::<_, String>(json!(1)) }).await.unwrap();
        assert_eq!((v, used), (json!(1), CacheUse::Miss));
    }
}
