//! Outbound HTTP for `http` context sources and tasks, with the guard rails a definition author
//! cannot turn off: which hosts may be called, no redirects, a cap on the response size, and
//! URLs without credentials or query strings in every error and result.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value as Json;

/// Why a call did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Retrying later may help: connection refused, timeout, 408, 429, 5xx. `retry_after` is the
    /// server's `Retry-After`, when it sent one.
    #[error("{message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// It will not: a host not allowed, another 4xx, a redirect, an oversize body.
    #[error("{0}")]
    Permanent(String),
}

impl HttpError {
    fn transient(message: String) -> HttpError {
        HttpError::Transient { message, retry_after: None }
    }
}

/// A JSON (or text) answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Json,
}

/// What to send.
#[derive(Debug, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// Sent as they are: secrets already expanded by the caller.
    pub headers: Vec<(String, String)>,
    pub body: Option<Body>,
    /// Default: the client's (60 s).
    pub timeout: Option<Duration>,
    /// Status codes that count as success; empty: any 2xx.
    pub expect: &'a [u16],
    /// Hosts the operator named for this call (an `http` datasource's): allowed even when
    /// internal, and the only hosts allowed.
    pub datasource_hosts: &'a [String],
}

#[derive(Debug)]
pub enum Body {
    Json(Json),
    Text(String),
}

#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// Hosts that may be called, whatever they resolve to. Empty: any host that does not
    /// resolve to a loopback, private, link-local or unspecified address.
    allowed_hosts: Vec<String>,
    max_body_bytes: usize,
}

impl HttpClient {
    pub fn new(allowed_hosts: Vec<String>, max_body_bytes: usize) -> reqwest::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            // A redirect could lead anywhere, including inside the network: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let allowed_hosts = allowed_hosts.into_iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        Ok(HttpClient { client, allowed_hosts, max_body_bytes })
    }

    /// Sends a request; the answer's body is parsed as JSON, or kept as a string when it is not
    /// JSON. Statuses outside `expect` (any 2xx without it) are errors: 408, 429 and 5xx
    /// transient, the others permanent.
    pub async fn send(&self, r: Request<'_>) -> Result<Answer, HttpError> {
        let shown = redact(r.url);
        let parsed = reqwest::Url::parse(r.url).map_err(|e| HttpError::Permanent(format!("{shown}: not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(HttpError::Permanent(format!("{shown}: only http and https URLs are called")));
        }
        if r.datasource_hosts.is_empty() {
            self.check_host(&parsed, &shown).await?;
        } else {
            let host = host_of(&parsed);
            if !r.datasource_hosts.iter().any(|a| host_matches(a, &host)) {
                return Err(HttpError::Permanent(format!("{shown}: host {host} is not among the datasource's allowed hosts")));
            }
        }
        let method: reqwest::Method =
            r.method.parse().map_err(|_| HttpError::Permanent(format!("{:?} is not an HTTP method", r.method)))?;
        let mut req = self.client.request(method.clone(), parsed);
        for (k, v) in &r.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| HttpError::Permanent(format!("{k:?} is not an HTTP header name")))?;
            // The value is not quoted: it may hold a secret.
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| HttpError::Permanent(format!("the value of header {k} is not a valid header value")))?;
            req = req.header(name, value);
        }
        match r.body {
            Some(Body::Json(b)) => req = req.json(&b),
            Some(Body::Text(t)) => {
                if !r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                    req = req.header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8");
                }
                req = req.body(t);
            }
            None => {}
        }
        if let Some(t) = r.timeout {
            req = req.timeout(t);
        }
        let failed = |e: reqwest::Error| {
            let what = if e.is_timeout() { "timed out".to_string() } else { e.without_url().to_string() };
            HttpError::transient(format!("{method} {shown}: {what}"))
        };
        let mut resp = req.send().await.map_err(failed)?;
        let status = resp.status();
        let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            if bytes.len() + chunk.len() > self.max_body_bytes {
                return Err(HttpError::Permanent(format!(
                    "{method} {shown}: the response is over the {}-byte limit (TF_HTTP_MAX_BODY_BYTES)",
                    self.max_body_bytes
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let code = status.as_u16();
        let success = if r.expect.is_empty() { status.is_success() } else { r.expect.contains(&code) };
        if success {
            return Ok(Answer { status: code, body: serde_json::from_str(&text).unwrap_or(Json::String(text)) });
        }
        if status.is_server_error() || code == 429 || code == 408 {
            return Err(HttpError::Transient { message: format!("{method} {shown} answered {status}"), retry_after });
        }
        if status.is_redirection() {
            let to = resp.headers().get("location").and_then(|l| l.to_str().ok()).map(redact).unwrap_or_default();
            return Err(HttpError::Permanent(format!("{method} {shown} answered {status} (to {to}); redirects are not followed")));
        }
        let excerpt: String = text.chars().take(500).collect();
        let expected = if r.expect.is_empty() { String::new() } else { format!(" (expected {:?})", r.expect) };
        Err(HttpError::Permanent(format!("{method} {shown} answered {status}{expected}: {excerpt}")))
    }

    async fn check_host(&self, url: &reqwest::Url, shown: &str) -> Result<(), HttpError> {
        let host = host_of(url);
        if !self.allowed_hosts.is_empty() {
            return if self.allowed_hosts.iter().any(|a| host_matches(a, &host)) {
                Ok(())
            } else {
                Err(HttpError::Permanent(format!("{shown}: host {host} is not in TF_HTTP_ALLOWED_HOSTS")))
            };
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| HttpError::transient(format!("{shown}: cannot resolve {host}: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        if let Some(ip) = addrs.iter().find(|ip| internal(ip)) {
            return Err(HttpError::Permanent(format!(
                "{shown}: {host} resolves to the internal address {ip}; list the host in TF_HTTP_ALLOWED_HOSTS to call it"
            )));
        }
        Ok(())
    }
}

fn host_of(url: &reqwest::Url) -> String {
    url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// `api.example.com` matches itself; `*.corp.example` any host below it.
fn host_matches(allowed: &str, host: &str) -> bool {
    let allowed = allowed.trim().to_ascii_lowercase();
    allowed == host || allowed.strip_prefix("*.").is_some_and(|d| host.ends_with(&format!(".{d}")))
}

/// `Retry-After` as seconds or an HTTP date; capped at an hour (a server asking for more is
/// better served by the task's own retry policy).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(Duration::from_secs(3600)))
}

/// Loopback, private, link-local (cloud metadata), shared, unspecified and multicast ranges.
fn internal(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| internal(&IpAddr::V4(v4)))
        }
    }
}

/// A URL as errors and results may show it: no user, password or query string (tokens live
/// there).
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            if u.query().is_some() {
                u.set_query(Some("…"));
            }
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(redact("https://bob:secret@api.example.com/v1/x?token=abc#f"), "https://api.example.com/v1/x?%E2%80%A6");
        assert_eq!(redact("http://h/p"), "http://h/p");
        assert_eq!(redact("::"), "(unparsable URL)");
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(internal(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!internal(&ip.parse().unwrap()), "{ip}");
        }
    }

    fn get(url: &str) -> Request<'_> {
        Request { method: "GET", url, ..Request::default() }
    }

    #[tokio::test]
    async fn hosts_are_checked_before_any_connection() {
        let open = HttpClient::new(vec![], 1024).unwrap();
        let err = open.send(get("http://127.0.0.1:9/x?token=s3cret")).await.err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, HttpError::Permanent(_)) && text.contains("internal address 127.0.0.1"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let listed = HttpClient::new(vec!["api.example.com".into(), "*.corp.example".into()], 1024).unwrap();
        let err = listed.send(get("http://localhost:9/")).await.err().unwrap();
        assert!(err.to_string().contains("not in TF_HTTP_ALLOWED_HOSTS"), "{err}");
        assert!(listed.send(get("ftp://api.example.com/")).await.err().unwrap().to_string().contains("only http"));
        let hosts = ["crm.local".to_string()];
        let err = open.send(Request { datasource_hosts: &hosts, ..get("http://other.local/") }).await.err().unwrap();
        assert!(err.to_string().contains("not among the datasource's allowed hosts"), "{err}");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
