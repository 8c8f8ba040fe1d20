//! The harness of tf-api's tests: a tf-api process on a fresh database with tokens of each
//! scope, and a client that checks every answer against the API's own OpenAPI document.

#![allow(dead_code)] // each test binary uses part of it

use std::time::Duration;

use serde_json::Value;
use tf_testkit::{Service, eventually, unique};

pub const ADMIN: &str = "it-admin-token";
pub const READER: &str = "it-reader-token";
pub const CLERK: &str = "it-clerk-token";

pub fn sha256(token: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tf-api")).args(["hash-token", token]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub service: Service,
    /// Where its Prometheus metrics are served.
    pub metrics: String,
    /// Its OpenAPI document: every answer a test gets is checked against it.
    pub doc: tokio::sync::OnceCell<Value>,
}

impl Api {
    /// tf-api with a token of each scope set (ADMIN, READER, CLERK) and a metrics port.
    pub fn spawn(db_url: &str, queue: &str) -> Api {
        let metrics = tf_testkit::free_local_addr();
        let (reader, clerk) = (format!("read:{}", sha256(READER)), format!("tasks:{}", sha256(CLERK)));
        Api::start(
            db_url,
            queue,
            &[("TF_API_METRICS_ADDR", &metrics), ("TF_API_TOKEN__READER", &reader), ("TF_API_TOKEN__CLERK", &clerk)],
            metrics.clone(),
        )
    }

    /// tf-api browsing and redriving `dlq`, with the ADMIN token only and no metrics port.
    pub fn with_dlq(db_url: &str, queue: &str, dlq: &str) -> Api {
        Api::start(db_url, queue, &[("TF_API_METRICS_ADDR", ""), ("TF_DLQ_TOPIC", dlq)], String::new())
    }

    /// The tf-api binary on a free port with the ADMIN token and `extra` settings.
    fn start(db_url: &str, queue: &str, extra: &[(&str, &str)], metrics: String) -> Api {
        let addr = tf_testkit::free_local_addr();
        let admin = format!("read,write,ingest,tasks:{}", sha256(ADMIN));
        let mut envs = vec![("TF_DATABASE_URL", db_url), ("TF_TASK_QUEUE", queue), ("TF_API_ADDR", &addr), ("TF_API_TOKEN__ADMIN", &admin)];
        envs.extend_from_slice(extra);
        let service = Service::spawn(env!("CARGO_BIN_EXE_tf-api"), &unique("tf-api"), &envs);
        Api { base: format!("http://{addr}"), http: reqwest::Client::new(), service, metrics, doc: Default::default() }
    }

    pub async fn ready(&self) {
        eventually(&format!("tf-api to answer; log:\n{}", self.service.log()), Duration::from_secs(30), || async {
            self.http.get(format!("{}/healthz", self.base)).send().await.ok().filter(|r| r.status() == 200).map(|_| ())
        })
        .await;
    }

    /// Signs the console in with ADMIN as a browser's form does (same origin), on a client that
    /// does not follow redirects: the client, the answer's status and its `Set-Cookie`.
    pub async fn console_sign_in(&self) -> (reqwest::Client, u16, String) {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let signed_in = http
            .post(format!("{}/ui/login", self.base))
            .header("origin", &self.base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={ADMIN}"))
            .send()
            .await
            .unwrap();
        let set_cookie = signed_in.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (http, signed_in.status().as_u16(), set_cookie)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let request = || {
            let mut req = self.http.request(method.parse().unwrap(), format!("{}{path}", self.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            req
        };
        // A server may refuse a large body (413) before reading all of it; the client, still
        // writing, then sees a broken pipe instead of the answer. Such a request is sent again
        // (up to 5 times) to read the answer; small bodies are never retried.
        let large = body.as_ref().is_some_and(|b| b.len() > 256 << 10);
        let mut resp = request().send().await;
        for _ in 0..5 {
            match &resp {
                Err(e) if large && e.is_request() => resp = request().send().await,
                _ => break,
            }
        }
        let resp = resp.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let doc = self
            .doc
            .get_or_init(|| async { self.http.get(format!("{}/openapi.json", self.base)).send().await.unwrap().json().await.unwrap() })
            .await;
        if let Some(schema) = documented_schema(doc, method, path, status)
            && let Err(e) = conforms(doc, schema, &body, "body")
        {
            panic!("{method} {path} answered {status} with a body its OpenAPI document does not describe: {e}\n{body}");
        }
        (status, body)
    }
}

/// The document's schema for an answer, when the path is one of its routes and the status one
/// of its responses. A parameter that ends a route may span segments (run and task ids).
pub fn documented_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> Option<&'a Value> {
    let path = path.split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    // A template with one parameter: its segments before and after the parameter match the
    // path's first and last segments, and the parameter takes the (non-empty) rest.
    let matches = |template: &str| {
        let t: Vec<&str> = template.split('/').collect();
        let Some(p) = t.iter().position(|seg| seg.starts_with('{')) else { return false };
        let after = t.len() - p - 1;
        segments.len() >= t.len()
            && t[..p] == segments[..p]
            && t[p + 1..] == segments[segments.len() - after..]
            && segments[p..segments.len() - after].iter().all(|s| !s.is_empty())
    };
    let paths = doc["paths"].as_object()?;
    let method = method.to_lowercase();
    let op = paths
        .get(path)
        .and_then(|p| p.get(&method))
        // The most specific template first: one with as many segments as the path (whose
        // parameter is one segment) before one whose parameter spans several.
        .or_else(|| {
            let mut candidates: Vec<(&String, &Value)> =
                paths.iter().filter(|(t, p)| t.contains('{') && matches(t) && p.get(&method).is_some()).collect();
            candidates.sort_by_key(|(t, _)| std::cmp::Reverse(t.split('/').count()));
            candidates.first().and_then(|(_, p)| p.get(&method))
        })?;
    let response = op["responses"].get(status.to_string())?;
    response["content"].as_object()?.values().next().map(|c| &c["schema"])
}

/// Whether `v` fits `schema`, for the parts of JSON Schema the document uses: `$ref`, `type`
/// (one or a list), `required`, `properties`, `items`, `enum`, `const`, `allOf`, `oneOf`.
pub fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let target = r.trim_start_matches("#/").split('/').fold(doc, |node, key| &node[key]);
        return conforms(doc, target, v, at);
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        conforms(doc, part, v, at)?;
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array()
            && !options.iter().any(|o| conforms(doc, o, v, at).is_ok())
        {
            return Err(format!("{at} = {v} fits none of its {key}"));
        }
    }
    let kind = |k: &str| match k {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    };
    match &schema["type"] {
        Value::String(k) if !kind(k) => return Err(format!("{at} is not {k}")),
        Value::Array(ks) if !ks.iter().any(|k| kind(k.as_str().unwrap_or(""))) => return Err(format!("{at} is none of {ks:?}")),
        _ => {}
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(v)
    {
        return Err(format!("{at} = {v} is not one of {options:?}"));
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return Err(format!("{at} = {v}, not {c}"));
    }
    for key in schema["required"].as_array().into_iter().flatten() {
        if v.get(key.as_str().unwrap()).is_none() {
            return Err(format!("{at}.{key} is missing"));
        }
    }
    for (key, sub) in schema["properties"].as_object().into_iter().flatten() {
        if let Some(value) = v.get(key) {
            conforms(doc, sub, value, &format!("{at}.{key}"))?;
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), v.as_array()) {
        for (i, value) in values.iter().enumerate() {
            conforms(doc, items, value, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// tf-api built in-process on a free port with `tf_api::build` (the function `main` uses), with
/// the ADMIN token; its base URL. It serves until the test's runtime ends. For tests that watch
/// the process itself (its log, its memory) [`Api::spawn`] starts the binary instead.
pub async fn in_process(db_url: &str, queue: &str) -> String {
    let dir = std::env::temp_dir().join(unique("tf-api-tokens"));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, format!("- {{name: admin, sha256: {}, scopes: [read, write, ingest, tasks]}}\n", sha256(ADMIN))).unwrap();
    let config = <tf_api::Config as clap::Parser>::try_parse_from([
        "tf-api",
        "--addr",
        "127.0.0.1:0",
        "--tokens",
        tokens.to_str().unwrap(),
        "--database-url",
        db_url,
        "--task-queue",
        queue,
    ])
    .unwrap();
    let app = tf_api::build(&config).await.unwrap();
    let base = format!("http://{}", app.addr().unwrap());
    tokio::spawn(app.run_until(std::future::pending()));
    base
}
