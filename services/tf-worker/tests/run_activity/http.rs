//! Outbound HTTP: `http` context sources and tasks call out with JSON, and the guard rails
//! (internal addresses, secrets in errors).

use super::*;

/// A tiny HTTP server on loopback: answers every request with JSON describing it, and keeps
/// what it received for the test to check.
async fn echo_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let log = log.clone();
            tokio::spawn(async move {
                let Some(request) = tf_testkit::http_stub::read_request(&mut stream).await else { return };
                let first = request.lines().next().unwrap_or("").to_string();
                let body_in = request.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(request.clone());
                let body = serde_json::json!({"request": first, "received": serde_json::from_str::<serde_json::Value>(&body_in).unwrap_or(serde_json::Value::Null), "tier": "gold"}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    });
    (base, seen)
}

#[tokio::test]
async fn http_context_and_http_tasks_call_out_with_json() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let (base, seen) = echo_server().await;
    let queue = unique("it-queue");
    let def_id = unique("it-http").to_lowercase();
    let yaml = format!(
        r#"
id: {def_id}
name: HTTP
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
context:
  customer:
    http:
      url: "'{base}/customers/' + event.data.customer"
tasks:
  - name: notify
    type: http
    params:
      url: "'{base}/notify'"
      body: "{{'order': event.data.order_id, 'tier': context.customer.tier}}"
"#
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    // The echo server is on loopback, which only an explicit allow-list reaches.
    let worker = worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let event = json!({"id": "e1", "type": "order.created", "data": {"order_id": "h-1", "customer": "c-42"}});
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "h-1", event)).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse("h-1").unwrap().run_id(&def_id, 1).to_string();
    let (status, output): (String, Option<Json>) = eventually("the http task to finish", Duration::from_secs(60), || async {
        let row: Option<(String, Option<Json>)> =
            sqlx::query_as("SELECT status, output FROM tasks WHERE run_id = $1").bind(&run_id).fetch_optional(&pool).await.unwrap();
        row.filter(|r| r.0 != "pending" && r.0 != "running")
    })
    .await;
    assert_eq!(status, "succeeded", "worker log:\n{}", worker.log());
    let output = output.unwrap();
    assert_eq!(output["status"], 200);
    assert_eq!(output["body"]["request"], "POST /notify HTTP/1.1");
    assert_eq!(output["body"]["received"], json!({"order": "h-1", "tier": "gold"}), "the body used the http context's answer");
    let requests = seen.lock().unwrap().clone();
    assert!(requests.iter().any(|r| r.starts_with("GET /customers/c-42 ")), "{requests:?}");
    assert!(requests.iter().any(|r| r.to_ascii_lowercase().contains(&format!("x-taskfactory-task-id: {run_id}/notify/0"))));
}

#[tokio::test]
async fn an_http_task_may_not_reach_internal_addresses_unless_allowed_and_errors_hide_tokens() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let (base, seen) = echo_server().await;
    let queue = unique("it-queue");
    let def_id = unique("it-ssrf").to_lowercase();
    let yaml = format!(
        "id: {def_id}\nname: SSRF\ntrigger: {{event: {{topics: [events.demo]}}}}\ntasks:\n  - {{name: call, type: http, retry: {{max_attempts: 1}}, params: {{url: \"'{base}/admin?token=s3cret'\"}}}}\n"
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let worker = worker(&db.url, &queue, &[("TF_NO_RELAY", "true")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "s-1", json!({"id": "e"}))).await.unwrap();
    let error: String = eventually("the task to fail", Duration::from_secs(60), || async {
        let row: Option<(String, Option<String>)> = sqlx::query_as("SELECT status, error FROM tasks").fetch_optional(&pool).await.unwrap();
        row.filter(|r| r.0 == "failed").map(|r| r.1.unwrap_or_default())
    })
    .await;
    assert!(error.contains("internal address 127.0.0.1") && error.contains("TF_HTTP_ALLOWED_HOSTS"), "{error}\n{}", worker.log());
    assert!(!error.contains("s3cret"), "{error}");
    assert!(seen.lock().unwrap().is_empty(), "no request reached the server");
    // The run records its end right after the task's result: wait for it, do not race it.
    eventually("the run to end as failed", Duration::from_secs(30), || async {
        let status: String = sqlx::query_scalar("SELECT status FROM activity_runs").fetch_one(&pool).await.unwrap();
        (status == "failed").then_some(())
    })
    .await;
}
