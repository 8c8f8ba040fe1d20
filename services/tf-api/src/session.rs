//! Console sessions: signing in trades the API token for a random session id, held in this
//! process with an idle and an absolute expiry, removed on sign-out. The cookie carries the id,
//! never the token, so a leaked cookie dies with its session and signing out revokes it.
//!
//! Sessions live in memory: a restart signs everyone out, and replicas behind a load balancer
//! need sticky sessions (or a sign-in per replica). The token itself stays where it already was,
//! in this process's memory for the length of the session.
//!
//! Cross-site requests: every console form posts to `/ui`, and [`same_origin`] refuses a POST
//! whose `Origin` (or, without one, `Referer`) is not this host, on top of `SameSite=Strict`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub const COOKIE: &str = "tf_session";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, used or not.
const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most; signing in past it ends the oldest (each sign-in needs a valid token,
/// so only a token holder can push others out).
const MAX_SESSIONS: usize = 10_000;

struct Entry {
    token: String,
    created: Instant,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Entry>>,
    /// Mark cookies `Secure` (the console is served over TLS, directly or behind a proxy).
    pub secure: bool,
}

impl Sessions {
    pub fn new(secure: bool) -> Sessions {
        Sessions { by_id: Mutex::default(), secure }
    }

    /// Starts a session for `token`; returns the `Set-Cookie` value.
    pub fn start(&self, token: String) -> String {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("the operating system's random source");
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut map = self.by_id.lock().expect("sessions lock");
        map.retain(|_, e| live(e, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.created).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), Entry { token, created: now, last_seen: now });
        self.cookie(&id, ABSOLUTE.as_secs())
    }

    /// The token of the request's live session, refreshing its idle time.
    pub fn token(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie_value(headers)?;
        let now = Instant::now();
        let mut map = self.by_id.lock().expect("sessions lock");
        let entry = map.get_mut(&id)?;
        if !live(entry, now) {
            map.remove(&id);
            return None;
        }
        entry.last_seen = now;
        Some(entry.token.clone())
    }

    /// Ends the request's session; returns the `Set-Cookie` value that clears the cookie.
    pub fn end(&self, headers: &HeaderMap) -> String {
        if let Some(id) = cookie_value(headers) {
            self.by_id.lock().expect("sessions lock").remove(&id);
        }
        self.cookie("", 0)
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={max_age}{secure}")
    }
}

fn live(e: &Entry, now: Instant) -> bool {
    now.duration_since(e.last_seen) < IDLE && now.duration_since(e.created) < ABSOLUTE
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_string))
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Refuses a console POST from another origin: its `Origin` (or `Referer`) must name this host.
/// A POST with neither is refused too; browsers send `Origin` with every form POST.
pub async fn same_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == Method::POST && req.uri().path().starts_with("/ui/") && !from_this_host(req.headers()) {
        return (StatusCode::FORBIDDEN, "cross-origin form posts to the console are refused").into_response();
    }
    next.run(req).await
}

fn from_this_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let origin = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|o| o.to_str().ok())
        .and_then(|o| url::Url::parse(o).ok());
    origin.is_some_and(|o| {
        let authority = match (o.host_str(), o.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return false,
        };
        authority.eq_ignore_ascii_case(host)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_cookie(set_cookie: &str) -> HeaderMap {
        let pair = set_cookie.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, pair.parse().unwrap());
        h
    }

    #[test]
    fn a_session_holds_the_token_server_side_and_ends_on_sign_out() {
        let sessions = Sessions::new(true);
        let set = sessions.start("secret-token".into());
        assert!(!set.contains("secret-token"), "{set}");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("; Secure") && set.contains("Max-Age="));
        let h = with_cookie(&set);
        assert_eq!(sessions.token(&h).as_deref(), Some("secret-token"));
        let cleared = sessions.end(&h);
        assert!(cleared.contains("Max-Age=0"));
        assert_eq!(sessions.token(&h), None, "revoked server-side: the old cookie no longer works");
        // A raw token in the cookie (the old format) is no session.
        assert_eq!(sessions.token(&with_cookie("tf_session=secret-token")), None);
        assert!(!Sessions::new(false).start("t".into()).contains("Secure"));
    }

    #[test]
    fn only_this_hosts_forms_may_post() {
        let h = |pairs: &[(header::HeaderName, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(k.clone(), v.parse().unwrap());
            }
            m
        };
        assert!(from_this_host(&h(&[(header::HOST, "127.0.0.1:18088"), (header::ORIGIN, "http://127.0.0.1:18088")])));
        assert!(from_this_host(&h(&[(header::HOST, "tf.example"), (header::REFERER, "https://tf.example/ui/runs")])));
        assert!(!from_this_host(&h(&[(header::HOST, "127.0.0.1:18088"), (header::ORIGIN, "http://evil.example")])));
        assert!(!from_this_host(&h(&[(header::HOST, "127.0.0.1:18088"), (header::ORIGIN, "null")])));
        assert!(!from_this_host(&h(&[(header::HOST, "127.0.0.1:18088")])), "neither Origin nor Referer");
    }
}
