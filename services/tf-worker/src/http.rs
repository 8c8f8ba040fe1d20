//! Outbound HTTP for `http` context sources and tasks, with the guard rails a definition author
//! cannot turn off: which hosts may be called, no redirects, a cap on the response size, and
//! URLs without credentials or query strings in every error and result.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value as Json;

/// Why a call did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Retrying later may help: connection refused, timeout, 5xx, 429.
    #[error("{0}")]
    Transient(String),
    /// It will not: a host not allowed, a 4xx, a redirect, an oversize body.
    #[error("{0}")]
    Permanent(String),
}

/// A JSON (or text) answer.
pub struct Answer {
    pub status: u16,
    pub body: Json,
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

    /// Sends `method url` with optional JSON `body` and `headers`; the answer's body is parsed
    /// as JSON, or kept as a string when it is not JSON.
    pub async fn call(&self, method: &str, url: &str, body: Option<&Json>, headers: &[(&str, &str)]) -> Result<Answer, HttpError> {
        let shown = redact(url);
        let parsed = reqwest::Url::parse(url).map_err(|e| HttpError::Permanent(format!("{shown}: not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(HttpError::Permanent(format!("{shown}: only http and https URLs are called")));
        }
        self.check_host(&parsed, &shown).await?;
        let method: reqwest::Method = method.parse().map_err(|_| HttpError::Permanent(format!("{method:?} is not an HTTP method")))?;
        let mut req = self.client.request(method.clone(), parsed);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let mut resp = req.send().await.map_err(|e| HttpError::Transient(format!("{method} {shown}: {}", e.without_url())))?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| HttpError::Transient(format!("{method} {shown}: {}", e.without_url())))? {
            if bytes.len() + chunk.len() > self.max_body_bytes {
                return Err(HttpError::Permanent(format!(
                    "{method} {shown}: the response is over the {}-byte limit (TF_HTTP_MAX_BODY_BYTES)",
                    self.max_body_bytes
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(HttpError::Transient(format!("{method} {shown} answered {status}")));
        }
        if status.is_redirection() {
            let to = resp.headers().get("location").and_then(|l| l.to_str().ok()).map(redact).unwrap_or_default();
            return Err(HttpError::Permanent(format!("{method} {shown} answered {status} (to {to}); redirects are not followed")));
        }
        if !status.is_success() {
            let excerpt: String = text.chars().take(500).collect();
            return Err(HttpError::Permanent(format!("{method} {shown} answered {status}: {excerpt}")));
        }
        Ok(Answer { status: status.as_u16(), body: serde_json::from_str(&text).unwrap_or(Json::String(text)) })
    }

    async fn check_host(&self, url: &reqwest::Url, shown: &str) -> Result<(), HttpError> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if !self.allowed_hosts.is_empty() {
            return if self
                .allowed_hosts
                .iter()
                .any(|a| a == &host || a.strip_prefix("*.").is_some_and(|d| host.ends_with(&format!(".{d}"))))
            {
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
                .map_err(|e| HttpError::Transient(format!("{shown}: cannot resolve {host}: {e}")))?
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

    #[tokio::test]
    async fn hosts_are_checked_before_any_connection() {
        let open = HttpClient::new(vec![], 1024).unwrap();
        let err = open.call("GET", "http://127.0.0.1:9/x?token=s3cret", None, &[]).await.err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, HttpError::Permanent(_)) && text.contains("internal address 127.0.0.1"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let listed = HttpClient::new(vec!["api.example.com".into(), "*.corp.example".into()], 1024).unwrap();
        let err = listed.call("GET", "http://localhost:9/", None, &[]).await.err().unwrap();
        assert!(err.to_string().contains("not in TF_HTTP_ALLOWED_HOSTS"), "{err}");
        assert!(listed.call("GET", "ftp://api.example.com/", None, &[]).await.err().unwrap().to_string().contains("only http"));
    }
}
