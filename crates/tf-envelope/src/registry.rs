//! A client for the Confluent-compatible schema registry REST API (Apicurio's `ccompat/v7`,
//! Confluent, Karapace). Parsed schemas are cached by id: ids are immutable, so the cache never
//! needs invalidating and a hot consumer asks the registry once per schema.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use serde::Deserialize;
use serde_json::json;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
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
}

impl RegistryError {
    /// True when retrying later may succeed (the registry is down or overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

#[derive(Debug)]
pub struct Registry {
    http: reqwest::Client,
    base: String,
    by_id: RwLock<HashMap<u32, Arc<Schema>>>,
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
    /// `base_url` is the API root, e.g. `http://127.0.0.1:18081/apis/ccompat/v7`.
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("static reqwest configuration is valid");
        Registry { http, base: base_url.trim_end_matches('/').to_string(), by_id: RwLock::default() }
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
        if let Some(s) = self.by_id.read().expect("cache lock").get(&id) {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let resp = self.send(self.http.get(&url).header("accept", CONTENT_TYPE), &url).await?;
        let text = match resp.status().as_u16() {
            200 => self.json::<SchemaResponse>(&url, resp).await?.schema,
            404 => return Err(RegistryError::UnknownSchemaId(id)),
            status => return Err(self.failure(&url, format!("fetching schema id {id}"), status, resp).await),
        };
        let schema = Arc::new(check_avro(&format!("id {id}"), &text)?);
        self.by_id.write().expect("cache lock").insert(id, schema.clone());
        Ok(schema)
    }

    async fn post(&self, url: &str, schema: &str) -> Result<reqwest::Response, RegistryError> {
        let body = json!({ "schema": schema, "schemaType": "AVRO" });
        let req = self.http.post(url).header("content-type", CONTENT_TYPE).json(&body);
        self.send(req, url).await
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response, RegistryError> {
        req.send().await.map_err(|e| RegistryError::Unavailable { url: url.to_string(), reason: e.to_string() })
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        resp: reqwest::Response,
    ) -> Result<T, RegistryError> {
        resp.json().await.map_err(|e| RegistryError::Unavailable {
            url: url.to_string(),
            reason: format!("unreadable response: {e}"),
        })
    }

    async fn failure(&self, url: &str, what: String, status: u16, resp: reqwest::Response) -> RegistryError {
        let body = resp.text().await.unwrap_or_default();
        if status >= 500 || status == 429 {
            RegistryError::Unavailable { url: url.to_string(), reason: format!("HTTP {status}: {body}") }
        } else {
            RegistryError::Refused { what, status, body }
        }
    }
}

fn check_avro(what: &str, schema: &str) -> Result<Schema, RegistryError> {
    Schema::parse_str(schema)
        .map_err(|e| RegistryError::InvalidSchema { what: what.to_string(), reason: e.to_string() })
}
