//! Reaching the user's systems: the datasources this worker was configured with, the secrets
//! their calls carry, and the cache of context answers. Both `sql`/`http` context sources and
//! `http` tasks go through [`Sources`], so allow-lists, secret expansion and redaction apply to
//! every outbound call alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json, json};
use tf_config::{Datasource, Datasources, HttpDatasource, Secrets};
use tf_definitions::{Bindings, ContextSource, Definition};
use tf_store::context::ContextPool;

use crate::context_cache::{CacheUse, ContextCache};
use crate::http::{Answer, Body, HttpClient, HttpError, Request};

/// Why a source or call gave no value; the message is already redacted and names the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub message: String,
    /// Retrying may help (a timeout, a refused connection, a 5xx).
    pub transient: bool,
    /// How long the server asked us to wait.
    pub retry_after: Option<Duration>,
}

impl SourceError {
    fn permanent(message: String) -> SourceError {
        SourceError { message, transient: false, retry_after: None }
    }
}

enum Runtime {
    Sql {
        pool: ContextPool,
        statement_timeout: Duration,
    },
    /// Configured but not usable (a secret of its URL is missing): runs that name it fail
    /// with this reason; the others are not held up by it.
    Broken(String),
    Http(HttpDatasource),
}

/// One outbound HTTP call, as a context source or a task describes it.
pub struct HttpCall<'a> {
    pub what: &'a str,
    pub datasource: Option<&'a str>,
    pub method: &'a str,
    pub url: &'a str,
    /// Values may hold `${secret:name}` references, expanded only here.
    pub headers: Vec<(String, String)>,
    pub body: Option<Body>,
    pub timeout: Option<Duration>,
    pub expect: &'a [u16],
}

/// The context and, per source, how it was obtained (for the run's snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub values: Json,
    pub sources: Json,
}

pub struct Sources {
    datasources: BTreeMap<String, Runtime>,
    configured: String,
    http: HttpClient,
    secrets: Arc<Secrets>,
    cache: ContextCache,
}

impl Sources {
    pub fn new(datasources: &Datasources, http: HttpClient, secrets: Arc<Secrets>) -> anyhow::Result<Sources> {
        let mut runtime = BTreeMap::new();
        for (name, d) in datasources.iter() {
            let r = match d {
                Datasource::Postgres(p) | Datasource::Mysql(p) => {
                    let url = match secrets.expand(&p.url) {
                        Ok(url) => url,
                        Err(e) => {
                            tracing::warn!(datasource = name, error = %e, "datasource not usable; runs that use it fail");
                            runtime.insert(name.to_string(), Runtime::Broken(e.to_string()));
                            continue;
                        }
                    };
                    if let Ok(parsed) = reqwest::Url::parse(&url)
                        && let Some(pw) = parsed.password()
                    {
                        secrets.remember(pw);
                        // The URL form too: a driver error may quote it percent-encoded.
                        if let Ok(decoded) = percent_encoding::percent_decode_str(pw).decode_utf8() {
                            secrets.remember(&decoded);
                        }
                    }
                    let (timeout, connect, max) = (p.statement_timeout, p.connect_timeout, p.max_connections);
                    let pool = match d {
                        Datasource::Mysql(_) => ContextPool::mysql(&url, timeout, connect, max),
                        _ => ContextPool::postgres(&url, timeout, connect, max),
                    }
                    .map_err(|e| anyhow::anyhow!("datasource {name}: {e}"))?;
                    Runtime::Sql { pool, statement_timeout: timeout }
                }
                Datasource::Http(h) => Runtime::Http(h.clone()),
            };
            runtime.insert(name.to_string(), r);
        }
        Ok(Sources { datasources: runtime, configured: datasources.describe(), http, secrets, cache: ContextCache::default() })
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Resolves the definition's context sources in name order (later sources see earlier ones).
    pub async fn resolve(&self, definition: &Definition, event: &Json, run: &Json) -> Result<Resolved, SourceError> {
        let mut values = Map::new();
        let mut sources = Map::new();
        for (name, source) in &definition.context {
            let field = format!("context.{name}");
            let b = Bindings { event: event.clone(), context: Json::Object(values.clone()), run: run.clone(), ..Bindings::default() };
            let eval = |e: &tf_definitions::Expr| e.eval(&b).map_err(|e| SourceError::permanent(self.secrets.redact(&e.to_string())));
            let started = Instant::now();
            let (value, meta) = match source {
                ContextSource::Static(v) => (v.clone(), json!({"kind": "static"})),
                ContextSource::Sql(sql) => {
                    let params: Vec<Json> = sql.params.iter().map(&eval).collect::<Result<_, _>>()?;
                    let key = format!("sql\0{}\0{}\0{}", sql.datasource, sql.query, Json::Array(params.clone()));
                    let (value, cache) = self
                        .cached(&key, sql.cache, || async {
                            let (pool, timeout) = match self.datasources.get(&sql.datasource) {
                                Some(Runtime::Sql { pool, statement_timeout }) => (pool, *statement_timeout),
                                Some(Runtime::Broken(why)) => {
                                    return Err(SourceError::permanent(format!(
                                        "{field}.sql: datasource {} is not usable: {why}",
                                        sql.datasource
                                    )));
                                }
                                _ => return Err(self.unknown(&format!("{field}.sql"), &sql.datasource, "sql")),
                            };
                            pool.query(&sql.query, &params, timeout).await.map_err(|e| {
                                let transient = e.transient;
                                let hint = if e.timed_out {
                                    format!(" (cut by the datasource's statement_timeout of {})", humanize(timeout))
                                } else {
                                    String::new()
                                };
                                SourceError {
                                    message: self.secrets.redact(&format!("{field}.sql on datasource {}: {e}{hint}", sql.datasource)),
                                    transient,
                                    retry_after: None,
                                }
                            })
                        })
                        .await?;
                    (value, json!({"kind": "sql", "datasource": sql.datasource, "cache": cache.label(), "age_ms": cache.age_ms()}))
                }
                ContextSource::Http(h) => {
                    let url = h.url.eval_string(&b).map_err(|e| SourceError::permanent(self.secrets.redact(&e.to_string())))?;
                    let body = match (&h.body, &h.text) {
                        (Some(e), _) => Some(Body::Json(eval(e)?)),
                        (None, Some(e)) => Some(Body::Text(e.eval_string(&b).map_err(|e| SourceError::permanent(e.to_string()))?)),
                        (None, None) => None,
                    };
                    let mut headers = Vec::new();
                    for (k, e) in &h.headers {
                        let mut v = eval(e)?;
                        tf_definitions::expr::seal_secret_refs(&mut v)
                            .map_err(|err| SourceError::permanent(format!("{field}.http.headers.{k}: {err}")))?;
                        headers.push((k.clone(), header_text(v)));
                    }
                    let key = format!(
                        "http\0{}\0{}\0{url}\0{headers:?}\0{}",
                        h.datasource.as_deref().unwrap_or(""),
                        h.method,
                        body.as_ref().map(|b| format!("{b:?}")).unwrap_or_default()
                    );
                    let what = format!("{field}.http");
                    let (value, cache) = self
                        .cached(&key, h.cache, || async {
                            let call = HttpCall {
                                what: &what,
                                datasource: h.datasource.as_deref(),
                                method: &h.method,
                                url: &url,
                                headers,
                                body,
                                timeout: h.timeout,
                                expect: &h.expect,
                            };
                            self.call(call).await.map(|a| a.body)
                        })
                        .await?;
                    let mut meta = json!({"kind": "http", "cache": cache.label(), "age_ms": cache.age_ms()});
                    if let Some(d) = &h.datasource {
                        meta["datasource"] = json!(d);
                    }
                    (value, meta)
                }
            };
            let mut meta = meta;
            meta["ms"] = json!(started.elapsed().as_millis() as u64);
            sources.insert(name.clone(), meta);
            values.insert(name.clone(), value);
        }
        Ok(Resolved { values: Json::Object(values), sources: Json::Object(sources) })
    }

    /// Sends one call: through its datasource (base URL, default headers, timeout, hosts) when
    /// it names one, with secrets expanded at the last moment and masked in what comes back.
    pub async fn call(&self, call: HttpCall<'_>) -> Result<Answer, SourceError> {
        let what = call.what;
        let (url, mut headers, timeout, hosts) = match call.datasource {
            None => (call.url.to_string(), Vec::new(), call.timeout, Vec::new()),
            Some(name) => {
                let Some(Runtime::Http(d)) = self.datasources.get(name) else { return Err(self.unknown(what, name, "http")) };
                if call.url.contains("://") || call.url.starts_with("//") {
                    return Err(SourceError::permanent(format!(
                        "{what}: with datasource {name} the URL must be a path below its base URL, not {:?}",
                        crate::http::redact(call.url)
                    )));
                }
                let url = if call.url.is_empty() {
                    d.base_url.clone()
                } else {
                    format!("{}/{}", d.base_url.trim_end_matches('/'), call.url.trim_start_matches('/'))
                };
                // A definition's secret() goes only through a datasource bound to that secret:
                // anyone with the write scope could otherwise send the worker's Kafka or registry
                // credentials, or another datasource's, to this one's host.
                if let Some(secret) = call
                    .headers
                    .iter()
                    .flat_map(|(_, v)| tf_config::secrets::referenced(v))
                    .find(|secret| !d.secrets.iter().any(|s| s == secret))
                {
                    return Err(SourceError::permanent(format!(
                        "{what}: secret {secret:?} is not one datasource {name} may carry (its `secrets`: {:?})",
                        d.secrets
                    )));
                }
                let defaults: Vec<(String, String)> = d.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                (url, defaults, call.timeout.or(Some(d.timeout)), d.allowed_hosts.clone())
            }
        };
        // The call's own headers win over the datasource's defaults.
        headers.retain(|(k, _)| !call.headers.iter().any(|(c, _)| c.eq_ignore_ascii_case(k)));
        headers.extend(call.headers);
        let carries_secrets = headers.iter().any(|(_, v)| v.contains(tf_config::secrets::REF_OPEN));
        let mut expanded = Vec::with_capacity(headers.len());
        for (k, v) in headers {
            let v = self.secrets.expand(&v).map_err(|e| SourceError::permanent(format!("{what}: header {k}: {e}")))?;
            expanded.push((k, v));
        }
        let request = Request {
            method: call.method,
            url: &url,
            headers: expanded,
            body: call.body,
            timeout,
            expect: call.expect,
            datasource_hosts: &hosts,
            carries_secrets,
        };
        match self.http.send(request).await {
            Ok(mut answer) => {
                self.secrets.redact_json(&mut answer.body);
                Ok(answer)
            }
            Err(HttpError::Transient { message, retry_after }) => {
                Err(SourceError { message: self.secrets.redact(&format!("{what}: {message}")), transient: true, retry_after })
            }
            Err(HttpError::Permanent(message)) => Err(SourceError::permanent(self.secrets.redact(&format!("{what}: {message}")))),
        }
    }

    fn unknown(&self, what: &str, name: &str, kind: &str) -> SourceError {
        SourceError::permanent(format!(
            "{what}: no {kind} datasource named {name:?} on this worker; configured: {} (TF_DATASOURCES)",
            self.configured
        ))
    }

    async fn cached<F, Fut>(&self, key: &str, ttl: Option<Duration>, fetch: F) -> Result<(Json, CacheUse), SourceError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Json, SourceError>>,
    {
        self.cache.get_or_fetch(key, ttl, fetch).await
    }
}

/// A header's value as text: strings as they are, anything else as JSON.
pub fn header_text(v: Json) -> String {
    match v {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A definition's `secret()` reaches only datasources bound to it: by default the secrets
    /// the datasource's own values refer to, or the operator's `secrets` list. Refused before
    /// any connection (port 9 on loopback refuses the ones that pass).
    #[tokio::test]
    async fn a_secret_goes_only_through_a_datasource_bound_to_it() {
        let vars = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let datasources = tf_config::Datasources::load(
            None,
            vars(&[
                ("TF_DATASOURCE__CRM__URL", "http://127.0.0.1:9/api/"),
                ("TF_DATASOURCE__CRM__HEADER__AUTHORIZATION", "Bearer ${secret:crm_token}"),
                ("TF_DATASOURCE__BILLING__URL", "http://127.0.0.1:9/billing/"),
                ("TF_DATASOURCE__BILLING__SECRETS", "billing_key"),
            ]),
        )
        .unwrap();
        let secrets = Arc::new(tf_config::Secrets::new(
            vars(&[("TF_SECRET_CRM_TOKEN", "t0k3n"), ("TF_SECRET_KAFKA_PASSWORD", "kafka-pw"), ("TF_SECRET_BILLING_KEY", "bk")]),
            None,
        ));
        let sources = Sources::new(&datasources, HttpClient::new(vec![], 1024).unwrap(), secrets).unwrap();
        let call = |datasource: &'static str, secret: &str| HttpCall {
            what: "tasks.t",
            datasource: Some(datasource),
            method: "GET",
            url: "/x",
            headers: vec![("authorization".into(), format!("Bearer ${{secret:{secret}}}"))],
            body: None,
            timeout: Some(Duration::from_millis(100)),
            expect: &[],
        };
        for (datasource, secret) in [("crm", "kafka_password"), ("crm", "billing_key"), ("billing", "crm_token")] {
            let err = sources.call(call(datasource, secret)).await.unwrap_err();
            assert!(err.message.contains(&format!("secret {secret:?} is not one datasource {datasource} may carry")), "{}", err.message);
            assert!(!err.transient);
        }
        // Bound secrets pass this check (and then fail on the closed port, transiently).
        for (datasource, secret) in [("crm", "crm_token"), ("billing", "billing_key")] {
            let err = sources.call(call(datasource, secret)).await.unwrap_err();
            assert!(!err.message.contains("may carry"), "{}", err.message);
        }
    }

    #[tokio::test]
    async fn datasource_calls_stay_below_their_base_and_name_what_is_missing() {
        let ds = Datasources::load(
            None,
            [
                ("TF_DATASOURCE__CRM__URL".to_string(), "http://crm.local:9/api/".to_string()),
                ("TF_DATASOURCE__CRM__SECRETS".to_string(), "crm_token".to_string()),
                ("TF_DATASOURCE__ORDERS__URL".to_string(), "postgres://r:${secret:missing}@127.0.0.1:9/orders".to_string()),
            ],
        )
        .unwrap();
        let sources = Sources::new(&ds, HttpClient::new(vec![], 1024).unwrap(), Arc::new(Secrets::new([], None))).unwrap();
        let call = |url: &'static str, datasource: &'static str| HttpCall {
            what: "context.c.http",
            datasource: Some(datasource),
            method: "GET",
            url,
            headers: vec![("authorization".into(), "Bearer ${secret:crm_token}".into())],
            body: None,
            timeout: None,
            expect: &[],
        };
        let e = sources.call(call("http://evil.example/x", "crm")).await.unwrap_err();
        assert!(e.message.contains("must be a path below its base URL"), "{e}");
        let e = sources.call(call("/x", "billing")).await.unwrap_err();
        assert_eq!(
            e.message,
            "context.c.http: no http datasource named \"billing\" on this worker; configured: crm (http), orders (postgres) (TF_DATASOURCES)"
        );
        let e = sources.call(call("/x", "crm")).await.unwrap_err();
        assert!(e.message.contains("secret \"crm_token\" is not set"), "{e}");
        // A datasource whose secret is missing fails the runs that use it, not the worker.
        let d = Definition::from_yaml(
            "d",
            "id: d\nname: d\ntrigger: {event: {topics: [t]}}\ncontext:\n  o: {sql: {datasource: orders, query: SELECT 1}}\ntasks: [{name: t, type: human}]\n",
        )
        .unwrap()
        .remove(0);
        let e = sources.resolve(&d, &Json::Null, &Json::Null).await.unwrap_err();
        assert_eq!(
            e.message,
            "context.o.sql: datasource orders is not usable: secret \"missing\" is not set (TF_SECRET_MISSING or a file missing in TF_SECRETS_DIR)"
        );
        assert!(!e.transient);
    }
}
