//! `tf --api-url URL`: the commands `tf-api` serves, over HTTP instead of direct access to
//! PostgreSQL and Temporal, for operators who reach the API but not the databases. Answers are
//! read into the same `tf-store` view types the direct commands print, so both modes print the
//! same objects (a test compares them).

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Value as Json, json};
use tf_store::definitions::{ApplyResult, DefinitionSummary, DefinitionVersion, Retired};
use tf_store::runs::{RunLineage, RunView};
use tf_store::tasks::TaskSummary;

use crate::output::Answer;

/// `GET /runs` as the API answers it.
#[derive(serde::Deserialize)]
struct RunPage {
    runs: Vec<RunView>,
}

/// `GET /tasks` as the API answers it.
#[derive(serde::Deserialize)]
struct TaskPage {
    tasks: Vec<TaskSummary>,
}

/// `GET /definitions` as the API answers it.
#[derive(serde::Deserialize)]
struct DefinitionPage {
    definitions: Vec<DefinitionSummary>,
    next_cursor: Option<String>,
}

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

    pub async fn apply(&self, files: &[PathBuf]) -> anyhow::Result<Answer> {
        let mut docs: Vec<String> = crate::definitions::load(files)?.into_iter().map(|l| l.text).collect();
        docs.dedup();
        let out = self.call(reqwest::Method::POST, "/definitions", Some(("application/yaml", docs.join("\n---\n")))).await?;
        let result: ApplyResult = shaped(out)?;
        crate::definitions::applied(&result)
    }

    /// Every definition: the pages of the API's list, followed to the last.
    pub async fn list_definitions(&self) -> anyhow::Result<Answer> {
        let (mut all, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let query = cursor.as_deref().map(|c| format!("&cursor={}", segment(c))).unwrap_or_default();
            let page: DefinitionPage = shaped(self.call(reqwest::Method::GET, &format!("/definitions?limit=500{query}"), None).await?)?;
            all.extend(page.definitions);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return crate::definitions::listed(&all),
            }
        }
    }

    pub async fn show(&self, id: &str, version: Option<i32>) -> anyhow::Result<Answer> {
        let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
        let d: DefinitionVersion = shaped(self.call(reqwest::Method::GET, &format!("/definitions/{}{query}", segment(id)), None).await?)?;
        crate::definitions::shown(&d)
    }

    pub async fn delete(&self, id: &str) -> anyhow::Result<Answer> {
        let r: Retired = shaped(self.call(reqwest::Method::DELETE, &format!("/definitions/{}", segment(id)), None).await?)?;
        crate::definitions::retired(&r)
    }

    pub async fn list_runs(&self, q: &crate::runs::RunsQuery) -> anyhow::Result<Answer> {
        let mut query = format!("/runs?limit={}", q.limit.clamp(1, 500));
        for (name, value) in [("definition", &q.definition), ("status", &q.status), ("key", &q.key)] {
            if let Some(v) = value {
                query.push_str(&format!("&{name}={}", segment(v)));
            }
        }
        let page: RunPage = shaped(self.call(reqwest::Method::GET, &query, None).await?)?;
        crate::runs::listed(&page.runs)
    }

    pub async fn limits(&self) -> anyhow::Result<Answer> {
        let page: tf_store::flow::Limits = shaped(self.call(reqwest::Method::GET, "/flow/limits", None).await?)?;
        crate::runs::limits_listed(page)
    }

    pub async fn show_run(&self, run_id: &str) -> anyhow::Result<Answer> {
        let run: RunLineage = shaped(self.call(reqwest::Method::GET, &format!("/runs/{}", segment(run_id)), None).await?)?;
        crate::runs::shown(&run)
    }

    /// `retry` or `cancel`.
    pub async fn control_run(&self, run_id: &str, action: &str, reason: &str) -> anyhow::Result<Answer> {
        let body = json!({ "reason": reason }).to_string();
        let r = self.call(reqwest::Method::POST, &format!("/runs/{}/{action}", segment(run_id)), Some(("application/json", body))).await?;
        let text = format!("{run_id}: {}\n", r["outcome"].as_str().unwrap_or("accepted"));
        Ok(Answer::new(r)?.text(text))
    }

    /// The API's inbox holds human tasks only.
    pub async fn list_tasks(&self, status: &str, limit: i64) -> anyhow::Result<Answer> {
        let page: TaskPage =
            shaped(self.call(reqwest::Method::GET, &format!("/tasks?status={status}&limit={}", limit.clamp(1, 500)), None).await?)?;
        crate::runs::tasks_listed(&page.tasks, status)
    }

    /// `claim`, `complete` or `reject` a human task.
    pub async fn decide(&self, task_id: &str, action: &str, body: Json) -> anyhow::Result<Answer> {
        let path = format!("/tasks/{}/{action}", segment(task_id));
        let r = self.call(reqwest::Method::POST, &path, Some(("application/json", body.to_string()))).await?;
        let text = match action {
            "claim" => format!("claimed {task_id} as {}\n", r["claimed_by"].as_str().unwrap_or("?")),
            "complete" => format!("completed {task_id}; its result is published when the workflow records it\n"),
            _ => format!("rejected {task_id}; the task and its run fail with the reason\n"),
        };
        Ok(Answer::new(r)?.text(text))
    }

    pub async fn list_dead_letters(
        &self,
        topic: Option<&str>,
        stage: Option<&str>,
        limit: i64,
        cursor: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut query = format!("/dead-letters?limit={}", limit.clamp(1, 500));
        for (name, value) in [("topic", topic), ("stage", stage), ("cursor", cursor)] {
            if let Some(v) = value {
                query.push_str(&format!("&{name}={}", segment(v)));
            }
        }
        crate::dead_letters::listed(self.call(reqwest::Method::GET, &query, None).await?)
    }

    pub async fn redrive(
        &self,
        records: &[String],
        topic: Option<&str>,
        stage: Option<&str>,
        limit: Option<usize>,
    ) -> anyhow::Result<Answer> {
        let body = crate::dead_letters::redrive_request(records, topic, stage, limit)?;
        crate::dead_letters::redriven(
            self.call(reqwest::Method::POST, "/dead-letters/redrive", Some(("application/json", body.to_string()))).await?,
        )
    }
}

/// A path segment or query value, percent-encoded (run and task ids hold `/`).
fn segment(id: &str) -> String {
    let mut out = String::new();
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The API's answer as this CLI's type of it: the same type the API serializes, so a shape
/// change fails here loudly instead of printing blanks.
fn shaped<T: serde::de::DeserializeOwned>(v: Json) -> anyhow::Result<T> {
    serde_json::from_value(v).context("the API's answer does not have the shape this CLI knows; are tf and tf-api the same version?")
}
