//! Outbound HTTP for `http` context sources and tasks, with the guard rails a definition author
//! cannot turn off: which hosts may be called, no redirects, a cap on the response size, and
//! URLs without credentials or query strings in every error and result.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use crate::egress::{Lookup, PublicOnly, Refused, ResolveError, SystemLookup, internal_range};

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
    /// The headers hold secret references (expanded by the caller): allowed only to approved
    /// hosts.
    pub carries_secrets: bool,
}

#[derive(Debug)]
pub enum Body {
    Json(Json),
    Text(String),
}

#[derive(Clone)]
pub struct HttpClient {
    /// For hosts nobody approved: connects only to public addresses its resolver checked.
    open: reqwest::Client,
    /// For operator-approved hosts (a datasource's, `TF_HTTP_ALLOWED_HOSTS`): internal allowed.
    approved: reqwest::Client,
    /// Hosts that may be called, whatever they resolve to. Empty: any host that does not
    /// resolve to an internal address (see [`crate::egress`]).
    allowed_hosts: Vec<String>,
    max_body_bytes: usize,
    /// Whether a call that names no datasource may carry secrets in its headers.
    secrets_without_datasource: bool,
}

impl HttpClient {
    pub fn new(allowed_hosts: Vec<String>, max_body_bytes: usize) -> reqwest::Result<HttpClient> {
        HttpClient::with_lookup(allowed_hosts, max_body_bytes, Arc::new(SystemLookup))
    }

    /// [`HttpClient::new`] resolving open hosts through `lookup`.
    pub fn with_lookup(allowed_hosts: Vec<String>, max_body_bytes: usize, lookup: Arc<dyn Lookup>) -> reqwest::Result<HttpClient> {
        let builder = || {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .connect_timeout(Duration::from_secs(5))
                // A redirect could lead anywhere, including inside the network: never follow.
                .redirect(reqwest::redirect::Policy::none())
        };
        let open = builder().dns_resolver(Arc::new(PublicOnly(lookup))).build()?;
        let approved = builder().build()?;
        let allowed_hosts = allowed_hosts.into_iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        Ok(HttpClient { open, approved, allowed_hosts, max_body_bytes, secrets_without_datasource: false })
    }

    /// Lets a call that names no datasource carry secrets in its headers
    /// (`TF_HTTP_SECRETS_WITHOUT_DATASOURCE`).
    pub fn secrets_without_datasource(mut self, allow: bool) -> HttpClient {
        self.secrets_without_datasource = allow;
        self
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
        let approved = self.approved_host(&parsed, r.datasource_hosts, &shown)?;
        // A secret goes only where the operator bound it, through a datasource: a definition's
        // author (the `write` scope) must not be able to send any worker secret to a URL of
        // their choosing, allowed host or not.
        if r.carries_secrets && r.datasource_hosts.is_empty() && !self.secrets_without_datasource {
            return Err(HttpError::Permanent(format!(
                "{shown}: secrets are sent only through a datasource (name one with `datasource:`; TF_HTTP_SECRETS_WITHOUT_DATASOURCE=true lifts this)"
            )));
        }
        let client = if approved { &self.approved } else { &self.open };
        let method: reqwest::Method =
            r.method.parse().map_err(|_| HttpError::Permanent(format!("{:?} is not an HTTP method", r.method)))?;
        let mut req = client.request(method.clone(), parsed);
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
            if let Some(refused) = refused_by_resolver(&e) {
                return HttpError::Permanent(format!("{method} {shown}: {refused}; list the host in TF_HTTP_ALLOWED_HOSTS to call it"));
            }
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

    /// Whether the operator approved the URL's host (a datasource's hosts, or
    /// `TF_HTTP_ALLOWED_HOSTS`); an error when a list exists and the host is not on it, or when
    /// an open call names an internal address literally (no resolver sees a literal).
    fn approved_host(&self, url: &reqwest::Url, datasource_hosts: &[String], shown: &str) -> Result<bool, HttpError> {
        let host = host_of(url);
        if !datasource_hosts.is_empty() {
            return if datasource_hosts.iter().any(|a| host_matches(a, &host)) {
                Ok(true)
            } else {
                Err(HttpError::Permanent(format!("{shown}: host {host} is not among the datasource's allowed hosts")))
            };
        }
        if !self.allowed_hosts.is_empty() {
            return if self.allowed_hosts.iter().any(|a| host_matches(a, &host)) {
                Ok(true)
            } else {
                Err(HttpError::Permanent(format!("{shown}: host {host} is not in TF_HTTP_ALLOWED_HOSTS")))
            };
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && let Some(range) = internal_range(&ip)
        {
            let refused = Refused { host: host.clone(), ip, range };
            return Err(HttpError::Permanent(format!("{shown}: {refused}; list the host in TF_HTTP_ALLOWED_HOSTS to call it")));
        }
        Ok(false)
    }
}

/// The resolver's refusal inside a reqwest error, if that is why the call failed.
fn refused_by_resolver(e: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(ResolveError::Refused(r)) = err.downcast_ref::<ResolveError>() {
            return Some(r);
        }
        source = err.source();
    }
    None
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

    /// A DNS server that rebinds: the first answer for a name is public, every later one is
    /// the loopback address where a listener waits.
    struct Rebinding(std::sync::atomic::AtomicUsize);

    impl Lookup for Rebinding {
        fn lookup(&self, _host: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ip: IpAddr = if n == 0 { "93.184.215.14".parse().unwrap() } else { "127.0.0.1".parse().unwrap() };
            Box::pin(async move { Ok(vec![ip]) })
        }
    }

    #[tokio::test]
    async fn a_rebinding_name_never_reaches_the_internal_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(3), listener.accept()).await.is_ok() });
        let lookup = Arc::new(Rebinding(std::sync::atomic::AtomicUsize::new(0)));
        // A check passes on the first (public) answer, as the old check-then-connect did...
        assert!(crate::egress::resolve_public(lookup.as_ref(), "rebind.test").await.is_ok());
        // ...but the connection resolves for itself, through the checking resolver, and is
        // refused when the name now points inside. No public address is ever connected to.
        let client = HttpClient::with_lookup(vec![], 1024, lookup.clone()).unwrap();
        let url = format!("http://rebind.test:{port}/");
        match client.send(get(&url)).await {
            Err(HttpError::Permanent(m)) => assert!(m.contains("internal address 127.0.0.1 (loopback"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(lookup.0.load(std::sync::atomic::Ordering::SeqCst), 2, "one resolution for the check, one for the connection");
        assert!(!accepted.await.unwrap(), "no connection reached the internal listener");
    }

    #[tokio::test]
    async fn secrets_go_only_through_datasources() {
        let open = HttpClient::new(vec![], 1024).unwrap();
        let with_secret = Request { carries_secrets: true, ..get("http://attacker.example/") };
        let err = open.send(with_secret).await.err().unwrap();
        assert!(matches!(&err, HttpError::Permanent(m) if m.contains("secrets are sent only through a datasource")), "{err}");
        // An allowed host is not enough: the operator binds secrets to datasources.
        let listed = HttpClient::new(vec!["127.0.0.1".into()], 1024).unwrap();
        let err = listed.send(Request { carries_secrets: true, ..get("http://127.0.0.1:9/") }).await.err().unwrap();
        assert!(err.to_string().contains("only through a datasource"), "{err}");
        let hosts = ["127.0.0.1".to_string()];
        // Through a datasource (approved, internal allowed) the refusal is not about secrets.
        let through = Request { carries_secrets: true, datasource_hosts: &hosts, ..get("http://127.0.0.1:9/") };
        let err = open.send(through).await.err().unwrap();
        assert!(!err.to_string().contains("secrets"), "{err}");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
