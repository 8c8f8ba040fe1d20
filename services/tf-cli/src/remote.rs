//! `tf --api-url URL`: the commands `tf-api` serves, over HTTP instead of direct access to
//! PostgreSQL and Temporal, for operators who reach the API but not the databases. Output
//! matches the direct commands where the API returns the same facts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value as Json, json};

pub struct Remote {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Remote {
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Remote> {
        let token = token
            .filter(|t| !t.is_empty())
            .context("--api-url needs a token: --api-token or TF_API_TOKEN (the local stack's is demo-token)")?;
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        Ok(Remote { base: base.trim_end_matches('/').to_string(), token: token.to_string(), http })
    }

    /// Sends a request and returns the JSON body of a 2xx answer; any other answer becomes an
    /// error with the API's message and the field it names.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<(&str, String)>) -> anyhow::Result<Json> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.token);
        if let Some((content_type, body)) = body {
            req = req.header("content-type", content_type).body(body);
        }
        let resp = req.send().await.with_context(|| format!("{method} {url}: tf-api did not answer"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body: Json = serde_json::from_str(&text).unwrap_or(Json::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let e = &body["error"];
        let mut message = e["message"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
        if let Some(field) = e["field"].as_str() {
            message = format!("{field}: {message}");
        }
        for d in e["details"].as_array().into_iter().flatten() {
            message.push_str(&format!("\n  {}: {}", d["field"].as_str().unwrap_or("?"), d["message"].as_str().unwrap_or("?")));
        }
        anyhow::bail!("{method} {path}: {status}: {message}")
    }

    pub async fn apply(&self, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
        let mut docs = Vec::new();
        for (path, _) in crate::definitions::load(files)? {
            docs.push(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?);
        }
        docs.dedup();
        let out = self.call(reqwest::Method::POST, "/definitions", Some(("application/yaml", docs.join("\n---\n")))).await?;
        for a in out["applied"].as_array().into_iter().flatten() {
            let (id, version) = (a["id"].as_str().unwrap_or("?"), a["version"].as_i64().unwrap_or(0));
            match a["outcome"].as_str().unwrap_or("?") {
                "new_version" => {
                    let previous = a["previous_version"].as_i64().unwrap_or(0);
                    println!("  new version {id} v{version} (was v{previous}; runs pinned to v{previous} keep it)");
                }
                other => println!("  {other:<10} {id} v{version}"),
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_definitions(&self, format: crate::Format) -> anyhow::Result<ExitCode> {
        let out = self.call(reqwest::Method::GET, "/definitions", None).await?;
        let Some(rows) = listed(&out, "definitions", format)? else { return Ok(ExitCode::SUCCESS) };
        println!("{:<32} {:>7} {:<8} {:<6} NAME", "ID", "VERSION", "STATE", "KIND");
        for r in &rows {
            println!(
                "{:<32} {:>7} {:<8} {:<6} {}",
                r["id"].as_str().unwrap_or("?"),
                r["version"],
                crate::definitions::state(r["retired"].as_bool().unwrap_or(false), r["enabled"].as_bool().unwrap_or(false)),
                r["trigger"].as_str().unwrap_or("?"),
                r["name"].as_str().unwrap_or("")
            );
        }
        if rows.is_empty() {
            println!("(no definitions; apply some with `tf definitions apply -f examples/definitions`)");
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn show(&self, id: &str, version: Option<i32>) -> anyhow::Result<ExitCode> {
        let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
        let r = self.call(reqwest::Method::GET, &format!("/definitions/{}{query}", segment(id)), None).await?;
        println!(
            "# {} v{} ({}; created {}; sha256 {})",
            r["id"].as_str().unwrap_or("?"),
            r["version"],
            if r["enabled"].as_bool().unwrap_or(false) { "enabled" } else { "disabled" },
            r["created_at"].as_str().unwrap_or("?"),
            r["spec_sha256"].as_str().unwrap_or("?")
        );
        print!("{}", yaml_serde::to_string(&r["spec"])?);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn delete(&self, id: &str) -> anyhow::Result<ExitCode> {
        let r = self.call(reqwest::Method::DELETE, &format!("/definitions/{}", segment(id)), None).await?;
        println!(
            "retired {id} ({} version(s) kept for the runs pinned to them); its schedule, if any, is removed by the scheduler",
            r["versions"]
        );
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_runs(&self, limit: i64, format: crate::Format) -> anyhow::Result<ExitCode> {
        let out = self.call(reqwest::Method::GET, &format!("/runs?limit={}", limit.clamp(1, 500)), None).await?;
        let runs: Vec<tf_store::runs::RunView> =
            serde_json::from_value(out["runs"].clone()).context("the API's runs do not have this CLI's shape")?;
        crate::runs::print_runs(&runs, format)
    }

    /// `retry` or `cancel`.
    pub async fn control_run(&self, run_id: &str, action: &str, reason: &str) -> anyhow::Result<ExitCode> {
        let body = json!({ "reason": reason }).to_string();
        let r = self.call(reqwest::Method::POST, &format!("/runs/{run_id}/{action}"), Some(("application/json", body))).await?;
        println!("{run_id}: {}", r["outcome"].as_str().unwrap_or("accepted"));
        Ok(ExitCode::SUCCESS)
    }

    /// The API's inbox holds human tasks only.
    pub async fn list_tasks(&self, status: &str, limit: i64, format: crate::Format) -> anyhow::Result<ExitCode> {
        let out = self.call(reqwest::Method::GET, &format!("/tasks?status={status}&limit={}", limit.clamp(1, 500)), None).await?;
        let Some(tasks) = listed(&out, "tasks", format)? else { return Ok(ExitCode::SUCCESS) };
        if tasks.is_empty() {
            println!("(no {status} human tasks)");
        }
        for t in &tasks {
            let claimed = t["claimed_by"].as_str().map(|c| format!("  claimed by {c}")).unwrap_or_default();
            println!(
                "{}  human  {}  {}  params {}{claimed}",
                t["created_at"].as_str().unwrap_or("?"),
                t["status"].as_str().unwrap_or("?"),
                t["task_id"].as_str().unwrap_or("?"),
                t["params"]
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn complete(&self, task_id: &str, result: &str) -> anyhow::Result<ExitCode> {
        let output: Json = serde_json::from_str(result).with_context(|| format!("--result is not JSON: {result}"))?;
        let body = json!({ "output": output }).to_string();
        self.call(reqwest::Method::POST, &format!("/tasks/{task_id}/complete"), Some(("application/json", body))).await?;
        println!("completed {task_id}; its result is published when the workflow records it");
        Ok(ExitCode::SUCCESS)
    }
}

/// A definition id as one path segment (ids are `[a-z0-9._-]`, so this only guards typos).
fn segment(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F").replace('?', "%3F").replace('#', "%23")
}

/// The list under `field` of an API answer to show as a table, or `None` once it has been
/// printed as JSON (`-o json`).
fn listed(out: &Json, field: &str, format: crate::Format) -> anyhow::Result<Option<Vec<Json>>> {
    if format == crate::Format::Json {
        crate::print_json(&out[field])?;
        return Ok(None);
    }
    Ok(Some(out[field].as_array().cloned().unwrap_or_default()))
}
