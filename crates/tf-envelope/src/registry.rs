//! A client for the Confluent-compatible schema registry REST API (Apicurio's `ccompat/v7`,
//! Confluent, Karapace). Parsed schemas are cached by id: ids are immutable, so the cache never
//! needs invalidating and a hot consumer asks the registry once per schema.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use moka::Expiry;
use moka::future::Cache;
use serde::Deserialize;
use serde_json::json;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or answered 5xx: a dependency failure, not bad input.
    #[error("schema registry unavailable at {url}: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("schema id {0} is not known to the schema registry")]
    UnknownSchemaId(u32),
    #[error("schema registry refused {what}: HTTP {status}: {body}")]
    Refused { what: String, status: u16, body: String },
    #[error("schema {what} is not valid Avro: {reason}")]
    InvalidSchema { what: String, reason: String },
    /// The registry refuses us, not the record: credentials refused, or a URL that is not a
    /// registry API root. Nothing can be decoded until the setting is fixed.
    #[error(
        "schema registry at {url} refused the request (HTTP {status}); check TF_SCHEMA_REGISTRY_URL and the registry credentials: {body}"
    )]
    Misconfigured { url: String, status: u16, body: String },
}

impl RegistryError {
    /// True when retrying later may succeed: the registry is down or overloaded, or it refuses
    /// our settings (an operator fixes them; the record must not be dead-lettered meanwhile).
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. } | RegistryError::Misconfigured { .. })
    }

    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, RegistryError::Misconfigured { .. })
    }
}

/// The deepest nesting of records, arrays, maps and unions a writer schema may have. Decoding
/// recurses once per level; a deep or recursive schema would let a record blow the stack.
const MAX_SCHEMA_DEPTH: usize = 32;

/// Refuses recursive schemas (a named type that contains itself) and absurdly deep ones.
pub fn check_schema_shape(schema: &Schema) -> Result<(), String> {
    fn walk<'a>(s: &'a Schema, depth: usize, enclosing: &mut Vec<&'a apache_avro::schema::Name>) -> Result<(), String> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!("nested deeper than {MAX_SCHEMA_DEPTH} levels"));
        }
        match s {
            Schema::Ref { name } => {
                if enclosing.iter().any(|n| n.name == name.name && n.namespace == name.namespace) {
                    return Err(format!("recursive: {} contains itself", name.fullname(None)));
                }
                Ok(())
            }
            Schema::Record(r) => {
                enclosing.push(&r.name);
                for f in &r.fields {
                    walk(&f.schema, depth + 1, enclosing)?;
                }
                enclosing.pop();
                Ok(())
            }
            Schema::Array(a) => walk(&a.items, depth + 1, enclosing),
            Schema::Map(m) => walk(&m.types, depth + 1, enclosing),
            Schema::Union(u) => u.variants().iter().try_for_each(|v| walk(v, depth + 1, enclosing)),
            _ => Ok(()),
        }
    }
    walk(schema, 0, &mut Vec::new())
}

#[derive(Debug)]
pub struct Registry {
    http: reqwest::Client,
    base: String,
    /// Parsed writer schemas by id (ids are immutable). Concurrent lookups of one id (a batch of
    /// records of a new schema) send one request; the others take its answer.
    schemas: Cache<u32, Arc<Schema>>,
    /// Whether an id is registered under a subject: a yes kept while the cache has room, a no
    /// for [`MISS_TTL`] (the id may be registered under the subject later). Single flight too.
    subjects: Cache<(String, u32), bool>,
    /// Errors that speak against a record (an unknown id, a refused schema), kept for
    /// [`MISS_TTL`]: a flood of records with bad ids costs one registry request per id and
    /// minute, not one per record (which the registry's rate limit would turn into a pause for
    /// the good records too). Not for ever: the id may be registered later.
    misses: Cache<Miss, RegistryError>,
    /// Requests sent to the registry, for tests and diagnostics.
    requests: std::sync::atomic::AtomicU64,
}

/// A no is kept for [`MISS_TTL`], a yes for as long as there is room.
struct YesOutlivesNo;

impl Expiry<(String, u32), bool> for YesOutlivesNo {
    fn expire_after_create(&self, _key: &(String, u32), has: &bool, _created_at: std::time::Instant) -> Option<Duration> {
        (!has).then_some(MISS_TTL)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Miss {
    Schema(u32),
    NotUnder(String, u32),
}

/// How long an answer against a record is remembered.
const MISS_TTL: Duration = Duration::from_secs(60);
/// Remembered misses at most: past it, the least used go first, which only costs their
/// requests again.
const MISS_MAX: u64 = 10_000;
/// Schemas and subject answers kept at most (far more than a deployment registers).
const KNOWN_MAX: u64 = 100_000;

#[derive(Deserialize)]
struct SubjectVersion {
    subject: String,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

impl Registry {
    /// `base_url` is the API root, e.g. `http://127.0.0.1:18081/apis/ccompat/v7`. Credentials
    /// come from `TF_SCHEMA_REGISTRY_*` ([`auth`]); a bad setting there was reported at start,
    /// and a client made anyway has none (the registry then answers 401: misconfigured).
    pub fn new(base_url: &str) -> Self {
        Registry::with_auth(base_url, &auth().unwrap_or_default())
    }

    pub fn with_auth(base_url: &str, auth: &tf_config::registry::RegistryAuth) -> Self {
        use tf_config::registry::RegistryAuth;
        let mut headers = reqwest::header::HeaderMap::new();
        let value = match auth {
            RegistryAuth::None => None,
            RegistryAuth::Basic { user, password } => Some(format!("Basic {}", base64(&format!("{user}:{password}")))),
            RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
        };
        if let Some(mut v) = value.and_then(|v| reqwest::header::HeaderValue::from_str(&v).ok()) {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .expect("static reqwest configuration is valid");
        Registry {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            schemas: Cache::builder().max_capacity(KNOWN_MAX).build(),
            subjects: Cache::builder().max_capacity(KNOWN_MAX).expire_after(YesOutlivesNo).build(),
            misses: Cache::builder().max_capacity(MISS_MAX).time_to_live(MISS_TTL).build(),
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Requests this client sent to the registry so far.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Registers `schema` (Avro JSON) under `subject`; the registry returns the existing id
    /// when the subject already has this schema, so this is idempotent.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        check_avro(subject, schema)?;
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let resp = self.post(&url, schema).await?;
        match resp.status().as_u16() {
            200 => Ok(self.json::<IdResponse>(&url, resp).await?.id),
            status => Err(self.failure(&url, format!("registering subject {subject}"), status, resp).await),
        }
    }

    /// The id of `schema` under `subject`, or `None` when the subject does not have it.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        let url = format!("{}/subjects/{subject}", self.base);
        let resp = self.post(&url, schema).await?;
        match resp.status().as_u16() {
            200 => Ok(Some(self.json::<IdResponse>(&url, resp).await?.id)),
            404 => Ok(None),
            status => Err(self.failure(&url, format!("looking up subject {subject}"), status, resp).await),
        }
    }

    /// The parsed writer schema for `id`, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        let miss = Miss::Schema(id);
        if let Some(e) = self.misses.get(&miss).await {
            return Err(e);
        }
        match self.schemas.try_get_with(id, self.fetch_schema(id)).await {
            Ok(schema) => Ok(schema),
            Err(e) => {
                let e = RegistryError::clone(&e);
                if matches!(e, RegistryError::UnknownSchemaId(_) | RegistryError::InvalidSchema { .. }) {
                    self.misses.insert(miss, e.clone()).await;
                }
                Err(e)
            }
        }
    }

    async fn fetch_schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let resp = self.send(self.http.get(&url).header("accept", CONTENT_TYPE), &url).await?;
        let text = match resp.status().as_u16() {
            200 => self.json::<SchemaResponse>(&url, resp).await?.schema,
            404 => {
                // Only the registry's own "schema not found" (40403) speaks about the record; a
                // bare 404 means the URL is not a registry API root.
                let body = resp.text().await.unwrap_or_default();
                let code = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["error_code"].as_i64());
                return Err(if code == Some(40403) {
                    RegistryError::UnknownSchemaId(id)
                } else {
                    RegistryError::Misconfigured { url, status: 404, body: truncate(&body) }
                });
            }
            status => return Err(self.failure(&url, format!("fetching schema id {id}"), status, resp).await),
        };
        let schema = check_avro(&format!("id {id}"), &text)?;
        check_schema_shape(&schema).map_err(|reason| RegistryError::InvalidSchema {
            what: format!("id {id}"),
            reason: format!("refused as a writer schema: {reason}"),
        })?;
        Ok(Arc::new(schema))
    }

    /// Whether schema `id` is registered under `subject` (Confluent API
    /// `GET /schemas/ids/{id}/versions`).
    pub async fn subject_has(&self, subject: &str, id: u32) -> Result<bool, RegistryError> {
        let miss = Miss::NotUnder(subject.to_string(), id);
        if let Some(e) = self.misses.get(&miss).await {
            return Err(e);
        }
        match self.subjects.try_get_with((subject.to_string(), id), self.fetch_subject_has(subject, id)).await {
            Ok(has) => Ok(has),
            Err(e) => {
                let e = RegistryError::clone(&e);
                if matches!(e, RegistryError::UnknownSchemaId(_)) {
                    self.misses.insert(miss, e.clone()).await;
                }
                Err(e)
            }
        }
    }

    async fn fetch_subject_has(&self, subject: &str, id: u32) -> Result<bool, RegistryError> {
        let url = format!("{}/schemas/ids/{id}/versions", self.base);
        let resp = self.send(self.http.get(&url).header("accept", CONTENT_TYPE), &url).await?;
        let versions: Vec<SubjectVersion> = match resp.status().as_u16() {
            200 => self.json(&url, resp).await?,
            404 => return Err(RegistryError::UnknownSchemaId(id)),
            status => return Err(self.failure(&url, format!("listing the subjects of schema id {id}"), status, resp).await),
        };
        Ok(versions.iter().any(|v| v.subject == subject))
    }

    async fn post(&self, url: &str, schema: &str) -> Result<reqwest::Response, RegistryError> {
        let body = json!({ "schema": schema, "schemaType": "AVRO" });
        let req = self.http.post(url).header("content-type", CONTENT_TYPE).json(&body);
        self.send(req, url).await
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response, RegistryError> {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        req.send().await.map_err(|e| RegistryError::Unavailable { url: url.to_string(), reason: e.to_string() })
    }

    async fn json<T: for<'de> Deserialize<'de>>(&self, url: &str, resp: reqwest::Response) -> Result<T, RegistryError> {
        resp.json().await.map_err(|e| RegistryError::Unavailable { url: url.to_string(), reason: format!("unreadable response: {e}") })
    }

    async fn failure(&self, url: &str, what: String, status: u16, resp: reqwest::Response) -> RegistryError {
        let body = truncate(&resp.text().await.unwrap_or_default());
        if status >= 500 || status == 429 {
            RegistryError::Unavailable { url: url.to_string(), reason: format!("HTTP {status}: {body}") }
        } else if status == 401 || status == 403 {
            RegistryError::Misconfigured { url: url.to_string(), status, body }
        } else {
            RegistryError::Refused { what, status, body }
        }
    }
}

/// The registry credentials of this process (`TF_SCHEMA_REGISTRY_USER`/`_PASSWORD` or
/// `_TOKEN`), read once. Binaries call this at startup so a bad setting stops them.
pub fn auth() -> Result<tf_config::registry::RegistryAuth, tf_config::registry::RegistryAuthError> {
    static AUTH: std::sync::OnceLock<Result<tf_config::registry::RegistryAuth, tf_config::registry::RegistryAuthError>> =
        std::sync::OnceLock::new();
    AUTH.get_or_init(tf_config::registry::from_env).clone()
}

/// Standard base64 with padding, for the basic-auth header.
fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Error bodies end up in logs and DLQ headers: keep them short.
fn truncate(body: &str) -> String {
    match body.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &body[..at]),
        None => body.to_string(),
    }
}

fn check_avro(what: &str, schema: &str) -> Result<Schema, RegistryError> {
    Schema::parse_str(schema).map_err(|e| RegistryError::InvalidSchema { what: what.to_string(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_auth_is_standard_base64() {
        assert_eq!(super::base64("Aladdin:open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(super::base64("ab"), "YWI=");
        assert_eq!(super::base64("abc"), "YWJj");
    }

    use super::*;

    #[test]
    fn recursive_and_deep_schemas_are_refused_shared_types_are_not() {
        let list =
            r#"{"type": "record", "name": "Node", "fields": [{"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]}]}"#;
        let err = check_schema_shape(&Schema::parse_str(list).unwrap()).unwrap_err();
        assert!(err.contains("recursive: Node contains itself"), "{err}");
        let shared = r#"{"type": "record", "name": "Pair", "fields": [
            {"name": "a", "type": {"type": "record", "name": "P", "fields": [{"name": "x", "type": "int"}]}},
            {"name": "b", "type": "P"}]}"#;
        assert_eq!(check_schema_shape(&Schema::parse_str(shared).unwrap()), Ok(()), "a named type used twice is fine");
        let mut deep = String::from("\"int\"");
        for _ in 0..40 {
            deep = format!("{{\"type\": \"array\", \"items\": {deep}}}");
        }
        assert!(check_schema_shape(&Schema::parse_str(&deep).unwrap()).unwrap_err().contains("deeper than 32"));
        assert_eq!(check_schema_shape(&Schema::parse_str(crate::ENVELOPE_SCHEMA).unwrap()), Ok(()));
    }

    /// A registry behind an authenticating proxy, or a base URL that is not the API root. Apicurio
    /// with authentication needs an OIDC server, which does not install here; this loopback
    /// server answers the way such a registry does, to pin the classification.
    async fn answering(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        base
    }

    #[tokio::test]
    async fn refused_credentials_and_foreign_404s_are_misconfiguration_not_bad_input() {
        for (status, body) in [("401 Unauthorized", "{}"), ("403 Forbidden", "{}"), ("404 Not Found", "<html>no such path</html>")] {
            let registry = Registry::new(&answering(status, body).await);
            let err = registry.schema(7).await.unwrap_err();
            assert!(err.is_misconfiguration() && err.is_transient(), "{status}: {err:?}");
        }
        let registry = Registry::new(&answering("404 Not Found", r#"{"error_code": 40403, "message": "Schema not found"}"#).await);
        let err = registry.schema(7).await.unwrap_err();
        assert!(!err.is_misconfiguration() && !err.is_transient(), "the registry's own 40403 speaks about the record: {err:?}");
        let registry = Registry::new(&answering("503 Service Unavailable", "{}").await);
        let err = registry.schema(7).await.unwrap_err();
        assert!(!err.is_misconfiguration() && err.is_transient(), "{err:?}");
    }
}
