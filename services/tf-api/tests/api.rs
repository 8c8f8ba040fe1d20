//! tf-api through real HTTP on the real stack: tokens and scopes, definitions applied over HTTP
//! reaching their Temporal Schedule, CloudEvents in all three modes becoming exactly the expected
//! runs, and one run's lineage from its ingress offset to its result's offset.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::Duration;

use serde_json::{Value, json};
use tf_testkit::{FreshDatabase, Service, create_topic, eventually, settings, unique, workspace_binary};

mod support;
use support::{ADMIN, Api, CLERK, READER};

fn tf(args: &[&str], db_url: &str) -> std::process::Output {
    std::process::Command::new(workspace_binary("tf")).args(args).env("TF_DATABASE_URL", db_url).output().unwrap()
}

#[tokio::test]
async fn tokens_scopes_and_definitions_over_http_reach_their_schedule() {
    let s = settings();
    let (db, _pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let api = Api::spawn(&db.url, &queue);
    api.ready().await;
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_SCHEDULER_REFRESH_MS", "500")]);

    // Auth: 401 without or with an unknown token, 403 without the scope; health is open.
    assert_eq!(api.call("GET", "/definitions", None, None, None).await.0, 401);
    assert_eq!(api.call("GET", "/definitions", Some("guess"), None, None).await.0, 401);
    let (status, body) = api.call("POST", "/definitions", Some(READER), None, Some("id: x".into())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("lacks the write scope"));
    assert_eq!(api.call("GET", "/healthz", None, None, None).await.0, 200);
    // The OpenAPI document is open, and every operation it lists is served: without a token a
    // secured one answers 401 (not the 404 of an unknown path), an open one 200.
    let (status, doc) = api.call("GET", "/openapi.json", None, None, None).await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));
    let mut operations = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", "x").replace("{run_id}", "run/x/y/1").replace("{topic}", "t").replace("{path}", "a/b/claim");
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let (status, body) = api.call(&method.to_uppercase(), &concrete, None, None, None).await;
            let open = op["security"].as_array().is_some_and(std::vec::Vec::is_empty);
            assert_eq!(status, if open { 200 } else { 401 }, "{method} {path}: {body}");
        }
    }
    assert!(operations >= 15, "{doc}");
    assert_eq!(api.call("GET", "/no/such/thing", Some(ADMIN), None, None).await.0, 404);

    // Validation names every field at fault.
    let bad =
        "id: Bad Id\nname: x\ntrigger: {event: {topics: [t], filter: 'event.data.x >'}}\ntasks: [{name: t, type: http, params: {}}]\n";
    let (status, body) = api.call("POST", "/definitions/validate", Some(READER), None, Some(bad.into())).await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["error"]["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["id", "trigger.event.filter", "tasks[0].params.url"], "{body}");

    // Apply a cron definition: created, then unchanged, then a new version; its schedule appears.
    let id = unique("it-api-cron").to_lowercase();
    let cron = format!(
        "id: {id}\nname: Nightly\ntrigger: {{cron: {{expression: '0 3 * * *', timezone: UTC}}}}\ntasks: [{{name: t, type: human}}]\n"
    );
    let (status, body) = api.call("POST", "/definitions/validate", Some(READER), None, Some(cron.clone())).await;
    assert_eq!((status, body["definitions"][0]["next_fire_times"].as_array().map(Vec::len)), (200, Some(5)), "{body}");
    let (status, body) = api.call("POST", "/definitions", Some(ADMIN), Some("application/yaml"), Some(cron.clone())).await;
    assert_eq!((status, body["applied"][0]["outcome"].as_str(), body["applied"][0]["version"].as_i64()), (200, Some("created"), Some(1)));
    let (_, body) = api.call("POST", "/definitions", Some(ADMIN), None, Some(cron.clone())).await;
    assert_eq!(body["applied"][0]["outcome"], "unchanged");
    let (_, body) = api.call("POST", "/definitions", Some(ADMIN), None, Some(cron.replace("'0 3 * * *'", "'0 4 * * *'"))).await;
    assert_eq!((body["applied"][0]["outcome"].as_str(), body["applied"][0]["previous_version"].as_i64()), (Some("new_version"), Some(1)));
    let (status, body) = api.call("GET", &format!("/definitions/{id}?version=1"), Some(READER), None, None).await;
    assert_eq!((status, body["spec"]["trigger"]["cron"]["expression"].as_str()), (200, Some("0 3 * * *")), "{body}");
    let (_, list) = api.call("GET", "/definitions", Some(READER), None, None).await;
    assert!(list["definitions"].as_array().unwrap().iter().any(|d| d["id"] == id.as_str() && d["version"] == 2), "{list}");
    // The worker reconciles the schedule to version 2 (04:00).
    eventually("the worker to create the definition's schedule at v2", Duration::from_secs(60), || async {
        let out = tf(&["schedules", "describe", &id], &db.url);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.contains("minute 0 hour 4 ")).then_some(())
    })
    .await;

    // The CLI through the API (`--api-url`): the same commands and output, with a database URL
    // that leads nowhere to prove it is not used.
    let remote = |token: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(workspace_binary("tf"));
        cmd.args(["--api-url", &api.base]).env("TF_DATABASE_URL", "postgres://nobody@127.0.0.1:9/nowhere").env_remove("TF_API_TOKEN");
        if let Some(t) = token {
            cmd.args(["--api-token", t]);
        }
        let out = cmd.args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = remote(Some(READER), &["definitions", "list"]);
    assert!(
        ok && text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [id.as_str(), "2", "enabled", "cron", "Nightly"]),
        "{text}"
    );
    // `-o json` for scripts: the API's objects, the same in both modes.
    let (ok, text) = remote(Some(READER), &["-o", "json", "definitions", "list"]);
    let listed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(ok && listed.as_array().unwrap().iter().any(|d| d["id"] == id.as_str() && d["version"] == 2), "{listed}");
    let direct = tf(&["-o", "json", "definitions", "list"], &db.url);
    let direct: Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(direct, listed, "direct and through the API, one shape");
    let (ok, text) = remote(Some(READER), &["definitions", "show", &id, "1"]);
    assert!(ok && text.contains(&format!("# {id} v1 (")) && text.contains("0 3 * * *"), "{text}");
    let file = std::env::temp_dir().join(format!("{id}.yaml"));
    std::fs::write(&file, cron.replace("'0 3 * * *'", "'0 4 * * *'").replace("name: Nightly", "name: Nightly\nenabled: false")).unwrap();
    let (ok, text) = remote(Some(READER), &["definitions", "apply", "-f", file.to_str().unwrap()]);
    assert!(!ok && text.contains("403") && text.contains("lacks the write scope"), "{text}");
    let (ok, text) = remote(Some(ADMIN), &["definitions", "apply", "-f", file.to_str().unwrap()]);
    assert!(ok && text.contains(&format!("disabled   {id} v2")), "{text}");
    let (ok, text) =
        remote(Some(ADMIN), &["definitions", "apply", "-f", file.to_str().unwrap().replace(".yaml", "-enabled.yaml").as_str()]);
    assert!(!ok && text.contains("No such file"), "{text}");
    std::fs::write(&file, cron.replace("'0 3 * * *'", "'0 4 * * *'")).unwrap();
    let (ok, text) = remote(Some(ADMIN), &["definitions", "apply", "-f", file.to_str().unwrap()]);
    assert!(ok && text.contains(&format!("enabled    {id} v2")), "{text}");
    let (ok, text) = remote(Some(ADMIN), &["runs", "list"]);
    assert!(ok && text.contains("(no runs yet)"), "{text}");
    let (ok, text) = remote(Some(ADMIN), &["runs", "cancel", "run/nope/x/1"]);
    assert!(!ok && text.contains("404") && text.contains("no run run/nope/x/1"), "{text}");
    let (ok, text) = remote(None, &["runs", "list"]);
    assert!(!ok && text.contains("--api-url needs a token"), "{text}");

    // Retire: gone from routing and scheduling; 404 for what does not exist.
    let (status, _) = api.call("DELETE", &format!("/definitions/{id}"), Some(ADMIN), None, None).await;
    assert_eq!(status, 200);
    eventually("the schedule to be deleted", Duration::from_secs(60), || async {
        (!tf(&["schedules", "describe", &id], &db.url).status.success()).then_some(())
    })
    .await;
    assert_eq!(api.call("DELETE", "/definitions/nope", Some(ADMIN), None, None).await.0, 404);
    assert!(api.service.log().contains("token=admin"), "changes are logged with the token's name:\n{}", api.service.log());
}

#[tokio::test]
async fn a_hundred_cloudevents_in_three_modes_become_the_expected_runs_with_lineage() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let topic = unique("events.it-api");
    let (dlq, sink) = (unique("it-api-dlq"), unique("it-api-sink"));
    for t in [&topic, &dlq, &sink] {
        create_topic(&s, t, 2).await;
    }
    let api = Api::spawn(&db.url, &queue);
    api.ready().await;

    // A topic without the envelope's subject takes no events.
    let one = |id: &str, order: &str| json!({"specversion": "1.0", "id": id, "source": "/it/api", "type": "com.example.order.created", "data": {"order_id": order}});
    let (status, body) = api
        .call("POST", &format!("/events/{topic}"), Some(ADMIN), Some("application/cloudevents+json"), Some(one("x", "x").to_string()))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no envelope schema is registered"), "{body}");
    let codec = tf_envelope::Codec::new(std::sync::Arc::new(tf_envelope::Registry::new(&s.schema_registry_url)));
    let probe = tf_envelope::Event::new("probe", "/it", "probe", json!({})).unwrap();
    codec.encode_event(&format!("{topic}-value"), &probe).await.unwrap();

    // Size limits answer 413 with the JSON error shape: a body over TF_API_MAX_BODY_BYTES (4 MiB)
    // before anything is read into an event, an event over TF_API_MAX_EVENT_BYTES (900 000,
    // under Kafka's message.max.bytes) naming its data; nothing of either is produced.
    // The server answers 413 as soon as it sees the size; a client still writing the body then
    // may get a broken pipe instead of the answer, so a failed send is tried again.
    let huge = json!({"specversion": "1.0", "id": "huge", "source": "/it", "type": "com.example.order.created", "data": {"blob": "x".repeat(5 << 20)}});
    let (status, body) = {
        let mut answer = None;
        for _ in 0..10 {
            let sent = api
                .http
                .post(format!("{}/events/{topic}", api.base))
                .bearer_auth(ADMIN)
                .header("content-type", "application/cloudevents+json")
                .body(huge.to_string())
                .send()
                .await;
            if let Ok(resp) = sent {
                let status = resp.status().as_u16();
                answer = Some((status, resp.json::<Value>().await.unwrap_or(Value::Null)));
                break;
            }
        }
        answer.expect("an answer to the oversize body")
    };
    assert_eq!((status, body["error"]["code"].as_str(), body["error"]["field"].as_str()), (413, Some("too_large"), Some("body")), "{body}");
    let big = json!({"specversion": "1.0", "id": "big", "source": "/it", "type": "com.example.order.created", "data": {"blob": "x".repeat(1 << 20)}});
    let batch = json!([one("small", "small"), big]).to_string();
    let (status, body) =
        api.call("POST", &format!("/events/{topic}"), Some(ADMIN), Some("application/cloudevents-batch+json"), Some(batch)).await;
    assert_eq!((status, body["error"]["field"].as_str()), (413, Some("[1].data")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("TF_API_MAX_EVENT_BYTES"), "{body}");
    let (status, body) = api.call("POST", &format!("/events/{topic}"), Some(ADMIN), Some("text/csv"), Some("a,b".into())).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("with no ce-* headers"), "{body}");
    let consumer: rdkafka::consumer::BaseConsumer = tf_kafka::client_config(&s.kafka_brokers).create().unwrap();
    use rdkafka::consumer::Consumer;
    let (low, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10)).unwrap();
    let (low1, high1) = consumer.fetch_watermarks(&topic, 1, Duration::from_secs(10)).unwrap();
    assert_eq!((high - low) + (high1 - low1), 0, "a refused batch produces none of its events");

    let def = format!(
        "id: {}\nname: Orders over HTTP\ntrigger: {{event: {{topics: [{topic}], type: com.example.order.*}}}}\ndedupe: {{key: event.data.order_id}}\ntasks:\n  - {{name: ship, type: kafka, params: {{topic: \"'{sink}'\", key: event.data.order_id, value: 'event.data'}}}}\n",
        unique("it-api-orders").to_lowercase()
    );
    let (status, body) = api.call("POST", "/definitions", Some(ADMIN), None, Some(def)).await;
    assert_eq!(status, 200, "{body}");
    let def_id = body["applied"][0]["id"].as_str().unwrap().to_string();
    let group = unique("it-api-group");
    let _router = Service::spawn(
        &workspace_binary("tf-router"),
        &unique("tf-router"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_ROUTER_TOPICS", &topic),
            ("TF_ROUTER_GROUP", &group),
            ("TF_DLQ_TOPIC", &dlq),
            ("TF_ROUTER_METRICS_ADDR", "127.0.0.1:0"),
        ],
    );
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &unique("it-relay")), ("TF_NO_SCHEDULER", "true")]);

    // Malformed requests: 400 naming the field, nothing produced.
    let path = format!("/events/{topic}");
    let ce = Some("application/cloudevents+json");
    let (status, body) = api.call("POST", &path, Some(ADMIN), ce, Some("{not json".into())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("body")));
    let mut no_type = one("e", "o");
    no_type.as_object_mut().unwrap().remove("type");
    let (status, body) = api.call("POST", &path, Some(ADMIN), ce, Some(no_type.to_string())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("type")), "{body}");
    let batch_bad = json!([one("b1", "o"), {"specversion": "1.0", "id": "b2", "source": "/s", "type": "t", "time": "soon"}]);
    let (status, body) =
        api.call("POST", &path, Some(ADMIN), Some("application/cloudevents-batch+json"), Some(batch_bad.to_string())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("[1].time")), "{body}");
    let (status, body) = api.call("POST", &path, Some(READER), ce, Some(one("r", "r").to_string())).await;
    assert_eq!(status, 403, "{body}");

    // 100 events, 90 distinct orders: 40 structured, 30 binary (10 of them repeat an order
    // already sent, under a new event id), 30 in one batch.
    let mut offsets = std::collections::HashMap::new();
    for i in 0..40 {
        let (status, body) =
            api.call("POST", &path, Some(ADMIN), ce, Some(one(&format!("s-{i}"), &format!("order-{i}")).to_string())).await;
        assert_eq!(status, 202, "{body}");
        let a = &body["accepted"][0];
        offsets.insert(format!("s-{i}"), (a["partition"].as_i64().unwrap(), a["offset"].as_i64().unwrap()));
    }
    for i in 0..30 {
        let order = if i < 10 { format!("order-{i}") } else { format!("order-{}", 30 + i) };
        let resp = api
            .http
            .post(format!("{}{path}", api.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-source", "/it/api/binary")
            .header("ce-type", "com.example.order.created")
            .header("idempotency-key", format!("b-{i}"))
            .body(json!({"order_id": order}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let body: Value = resp.json().await.unwrap();
        let a = &body["accepted"][0];
        assert_eq!(a["id"], format!("b-{i}").as_str(), "the Idempotency-Key is the event id");
        offsets.insert(format!("b-{i}"), (a["partition"].as_i64().unwrap(), a["offset"].as_i64().unwrap()));
    }
    let batch: Vec<Value> = (0..30).map(|i| one(&format!("batch-{i}"), &format!("order-{}", 60 + i))).collect();
    let (status, body) =
        api.call("POST", &path, Some(ADMIN), Some("application/cloudevents-batch+json"), Some(Value::Array(batch).to_string())).await;
    assert_eq!((status, body["accepted"].as_array().map(Vec::len)), (202, Some(30)), "{body}");

    let count = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM activity_runs WHERE definition_id = $1 AND status = 'completed'")
            .bind(&def_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };
    eventually("90 completed runs", Duration::from_secs(180), || async { (count().await >= 90).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count().await, 90, "exactly one run per order");

    // The API lists them, 40 a page, newest first, each with a Temporal UI link.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = api.call("GET", &format!("/runs?definition={def_id}&limit=40{q}"), Some(READER), None, None).await;
        assert_eq!(status, 200, "{page}");
        for r in page["runs"].as_array().unwrap() {
            assert!(r["temporal_ui"].as_str().unwrap().contains("/workflows/run%2F"), "{r}");
            seen.push(r["run_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let distinct: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), distinct.len()), (90, 90));
    let metric = |name: &str| tf_testkit::scrape_metric(&api.metrics, name);
    assert_eq!(metric("tf_api_events_accepted_total"), Some(100.0), "the 100 events, and none of the refused ones");
    assert!(metric("tf_api_responses_total{class=\"403\"}").unwrap_or(0.0) >= 1.0);
    // Request times by route template, method and class; a path a client makes up is `unmatched`.
    let made_up = unique("no-such-route");
    assert_eq!(api.call("GET", &format!("/{made_up}/x"), Some(READER), None, None).await.0, 404);
    let scraped = api.http.get(format!("http://{}/metrics", api.metrics)).send().await.unwrap().text().await.unwrap();
    let series = |route: &str, method: &str, class: &str| {
        scraped.lines().any(|l| {
            l.starts_with("tf_api_request_duration_seconds_count{")
                && [format!("route=\"{route}\""), format!("method=\"{method}\""), format!("class=\"{class}\"")]
                    .iter()
                    .all(|p| l.contains(p.as_str()))
        })
    };
    assert!(series("/events/{topic}", "POST", "2xx") && series("/events/{topic}", "POST", "403"), "{scraped}");
    assert!(series("unmatched", "GET", "4xx") && !scraped.contains(&made_up), "{scraped}");
    assert!(scraped.contains("tf_api_request_duration_seconds_bucket{"), "a histogram with buckets");
    let (status, body) = api.call("GET", "/runs?limit=0", Some(READER), None, None).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("limit")));
    let (status, body) = api.call("GET", "/runs?since=yesterday", Some(READER), None, None).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("since")));

    // Lineage of order-7's run: from the offset its event's 202 named (s-7 or its repeat b-7,
    // whichever the router met first) to its result's offset.
    let run_id = tf_definitions::DedupeKey::parse("order-7").unwrap().run_id(&def_id, 1).to_string();
    let lineage = eventually("order-7's result to be placed", Duration::from_secs(60), || async {
        let (status, l) = api.call("GET", &format!("/runs/{run_id}"), Some(READER), None, None).await;
        assert_eq!(status, 200, "{l}");
        l["results"][0]["offset"].is_i64().then_some(l)
    })
    .await;
    let event_id = lineage["source"]["event_id"].as_str().unwrap();
    assert!(["s-7", "b-7"].contains(&event_id), "{lineage}");
    let (partition, offset) = offsets[event_id];
    assert_eq!(lineage["source"]["topic"], topic.as_str());
    assert_eq!(
        (lineage["source"]["partition"].as_i64(), lineage["source"]["offset"].as_i64()),
        (Some(partition), Some(offset)),
        "{lineage}"
    );
    assert_eq!(lineage["definition"]["id"], def_id.as_str());
    assert_eq!(lineage["tasks"][0]["status"], "succeeded");
    assert_eq!(lineage["tasks"][0]["output"]["topic"], sink.as_str());
    assert_eq!(lineage["results"][0]["topic"], "taskfactory.results");
    assert_eq!(lineage["results"][0]["status"], "SUCCEEDED");
    assert!(lineage["temporal_ui"].as_str().unwrap().ends_with(&format!("/workflows/{}", run_id.replace('/', "%2F"))), "{lineage}");
    let (status, _) = api.call("GET", "/runs/run/none/x/1", Some(READER), None, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn human_tasks_are_claimed_completed_once_and_rejected_over_http() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let api = Api::spawn(&db.url, &queue);
    api.ready().await;
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &unique("it-relay")), ("TF_NO_SCHEDULER", "true")]);
    let id = unique("it-api-human").to_lowercase();
    let def = format!(
        "id: {id}\nname: Approvals\ntrigger: {{event: {{topics: [events.demo]}}}}\ndedupe: {{key: event.data.order_id}}\ntasks:\n  - {{name: approve, type: human, for_each: event.data.items, params: {{title: \"'Approve ' + item\"}}}}\n"
    );
    let (status, body) = api.call("POST", "/definitions", Some(ADMIN), None, Some(def)).await;
    assert_eq!(status, 200, "{body}");
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let input = tf_testkit::run_input(
        &id,
        1,
        "h-1",
        json!({"id": "e-h-1", "type": "approval.requested", "data": {"order_id": "h-1", "items": ["a", "b"]}}),
    );
    tf_temporal::start_run(&client, &queue, input).await.unwrap();

    let inbox = eventually("two tasks in the inbox", Duration::from_secs(60), || async {
        let (status, body) = api.call("GET", &format!("/tasks?definition={id}"), Some(ADMIN), None, None).await;
        assert_eq!(status, 200, "{body}");
        (body["tasks"].as_array().unwrap().len() == 2).then_some(body)
    })
    .await;
    assert_eq!(inbox["tasks"][0]["params"]["title"], "Approve a");
    assert_eq!(api.call("GET", "/tasks", Some(READER), None, None).await.0, 403, "the inbox needs the tasks scope");
    let (t0, t1) = (inbox["tasks"][0]["task_id"].as_str().unwrap().to_string(), inbox["tasks"][1]["task_id"].as_str().unwrap().to_string());

    // Claim: the holder may act, another token may not.
    let (status, body) = api.call("POST", &format!("/tasks/{t0}/claim"), Some(ADMIN), None, None).await;
    assert_eq!((status, body["claimed_by"].as_str()), (200, Some("admin")), "{body}");
    let (status, body) =
        api.call("POST", &format!("/tasks/{t0}/complete"), Some(CLERK), None, Some(json!({"output": {}}).to_string())).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("claimed by admin"), "{body}");

    // Complete: 200 once the workflow accepted it, 409 the second time.
    let (status, body) = api.call("POST", &format!("/tasks/{t0}/complete"), Some(ADMIN), None, Some(json!({}).to_string())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("output")));
    let done = json!({"output": {"approved": true}}).to_string();
    let (status, body) = api.call("POST", &format!("/tasks/{t0}/complete"), Some(ADMIN), None, Some(done.clone())).await;
    assert_eq!((status, body["decision"].as_str()), (200, Some("complete")), "{body}");
    let (status, body) = api.call("POST", &format!("/tasks/{t0}/complete"), Some(ADMIN), None, Some(done)).await;
    assert_eq!(status, 409, "{body}");

    // Reject: the reason is required; the task fails with it, and so does the run.
    let (status, body) = api.call("POST", &format!("/tasks/{t1}/reject"), Some(CLERK), None, Some("{}".into())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("reason")));
    let (status, body) =
        api.call("POST", &format!("/tasks/{t1}/reject"), Some(CLERK), None, Some(json!({"reason": "not in stock"}).to_string())).await;
    assert_eq!(status, 200, "{body}");
    let rows = eventually("both tasks to finish", Duration::from_secs(60), || async {
        let rows: Vec<(String, String, Option<Value>, Option<String>)> =
            sqlx::query_as("SELECT task_id, status, output, error FROM tasks WHERE finished_at IS NOT NULL ORDER BY task_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!((rows[0].1.as_str(), rows[0].2.clone()), ("succeeded", Some(json!({"approved": true}))));
    assert_eq!((rows[1].1.as_str(), rows[1].3.as_deref()), ("failed", Some("rejected by clerk: not in stock")));
    eventually("the run to fail", Duration::from_secs(30), || async {
        let status: String = sqlx::query_scalar("SELECT status FROM activity_runs").fetch_one(&pool).await.unwrap();
        (status == "failed").then_some(())
    })
    .await;
    let (status, _) = api.call("POST", &format!("/tasks/{t1}/complete"), Some(CLERK), None, Some(json!({"output": 1}).to_string())).await;
    assert_eq!(status, 409, "a decided task takes no second decision");
    let (status, _) = api.call("POST", "/tasks/no/such/task/complete", Some(CLERK), None, Some(json!({"output": 1}).to_string())).await;
    assert_eq!(status, 404);

    // Retry and cancel (write scope). The failed run's next attempt asks again only for the
    // rejected task, under its own id; cancelling ends that task and the run `cancelled`, with
    // a CANCELLED result; the cancelled run is retried once more and completed.
    let run_id: String = sqlx::query_scalar("SELECT run_id FROM activity_runs").fetch_one(&pool).await.unwrap();
    assert_eq!(api.call("POST", &format!("/runs/{run_id}/retry"), Some(CLERK), None, None).await.0, 403);
    let (status, body) = api.call("POST", &format!("/runs/{run_id}/cancel"), Some(ADMIN), None, None).await;
    assert_eq!(status, 409, "a failed run is not cancelled: {body}");
    assert_eq!(api.call("POST", &format!("/runs/{run_id}/rerun"), Some(ADMIN), None, None).await.0, 404);
    let (status, body) = api.call("POST", &format!("/runs/{run_id}/retry"), Some(ADMIN), None, None).await;
    assert_eq!((status, body["outcome"].as_str()), (202, Some("retry started")), "{body}");
    let waiting = |attempt: u32| {
        let (api, id) = (&api, &id);
        async move {
            eventually(&format!("attempt {attempt}'s task in the inbox"), Duration::from_secs(60), || async {
                let (_, body) = api.call("GET", &format!("/tasks?definition={id}"), Some(ADMIN), None, None).await;
                let tasks = body["tasks"].as_array().unwrap().clone();
                (tasks.len() == 1 && tasks[0]["task_id"].as_str().unwrap().contains(&format!("/attempt-{attempt}/")))
                    .then(|| tasks[0]["task_id"].as_str().unwrap().to_string())
            })
            .await
        }
    };
    let t2 = waiting(2).await;
    assert!(t2.ends_with(&t1[run_id.len()..]), "the rejected task ({t1}) is asked again: {t2}");
    let (status, body) = api.call("POST", &format!("/runs/{run_id}/retry"), Some(ADMIN), None, None).await;
    assert_eq!(status, 409, "a running run is not retried: {body}");
    let why = json!({"reason": "order withdrawn"}).to_string();
    let (status, body) = api.call("POST", &format!("/runs/{run_id}/cancel"), Some(ADMIN), None, Some(why)).await;
    assert_eq!((status, body["outcome"].as_str()), (202, Some("cancel requested")), "{body}");
    let (task_status, error, result) = eventually("the task and the run to be cancelled", Duration::from_secs(60), || async {
        let run: String = sqlx::query_scalar("SELECT status FROM activity_runs").fetch_one(&pool).await.unwrap();
        let task: (String, Option<String>, Option<Value>) =
            sqlx::query_as("SELECT t.status, t.error, r.record FROM tasks t LEFT JOIN task_results r USING (task_id) WHERE t.task_id = $1")
                .bind(&t2)
                .fetch_one(&pool)
                .await
                .unwrap();
        (run == "cancelled").then_some(task)
    })
    .await;
    assert_eq!(task_status, "cancelled");
    assert_eq!(error.as_deref(), Some("cancelled: order withdrawn (by admin)"));
    assert_eq!(
        result.expect("a result is queued for the cancelled task")["status"],
        "cancelled",
        "the outbox holds the contract's word; the Avro record says CANCELLED"
    );
    let (status, body) =
        api.call("POST", &format!("/tasks/{t2}/complete"), Some(ADMIN), None, Some(json!({"output": 1}).to_string())).await;
    assert_eq!(status, 409, "a cancelled task takes no decision: {body}");
    let (status, body) = api.call("POST", &format!("/runs/{run_id}/retry"), Some(ADMIN), None, None).await;
    assert_eq!(status, 202, "a cancelled run is retried: {body}");
    let t3 = waiting(3).await;
    let (status, body) =
        api.call("POST", &format!("/tasks/{t3}/complete"), Some(ADMIN), None, Some(json!({"output": 3}).to_string())).await;
    assert_eq!(status, 200, "{body}");
    eventually("the third attempt to complete the run", Duration::from_secs(60), || async {
        let status: String = sqlx::query_scalar("SELECT status FROM activity_runs").fetch_one(&pool).await.unwrap();
        (status == "completed").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_dead_letter_is_browsed_and_redriven_once_after_its_definition_is_fixed() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let topic = unique("events.it-dlq");
    let dlq = unique("it-api-dlq");
    for t in [&topic, &dlq] {
        create_topic(&s, t, 1).await;
    }
    let codec = tf_envelope::Codec::new(std::sync::Arc::new(tf_envelope::Registry::new(&s.schema_registry_url)));
    let probe = tf_envelope::Event::new("probe", "/it", "probe", json!({})).unwrap();
    codec.encode_event(&format!("{topic}-value"), &probe).await.unwrap();

    let api = Api::with_dlq(&db.url, &queue, &dlq);
    api.ready().await;
    let id = unique("it-api-dlq-def").to_lowercase();
    let strict = format!(
        "id: {id}\nname: Big orders\ntrigger: {{event: {{topics: [{topic}], filter: 'event.data.amount > 100'}}}}\ndedupe: {{key: event.data.order_id}}\ntasks: [{{name: t, type: human}}]\n"
    );
    assert_eq!(api.call("POST", "/definitions", Some(ADMIN), None, Some(strict.clone())).await.0, 200);
    let _router = router_of(&db.url, &queue, &topic, &dlq);
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_NO_SCHEDULER", "true")]);
    let ce = Some("application/cloudevents+json");
    let event =
        |id: &str, data: Value| json!({"specversion": "1.0", "id": id, "source": "/it", "type": "order.created", "data": data}).to_string();
    // No amount: the filter fails on it, so the router dead-letters it; a good one is routed.
    let (status, body) =
        api.call("POST", &format!("/events/{topic}"), Some(ADMIN), ce, Some(event("e-bad", json!({"order_id": "o-bad"})))).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = api
        .call("POST", &format!("/events/{topic}"), Some(ADMIN), ce, Some(event("e-ok", json!({"order_id": "o-ok", "amount": 500}))))
        .await;
    assert_eq!(status, 202);

    let runs = || async {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT dedupe_key FROM activity_runs ORDER BY dedupe_key").fetch_all(&pool).await.unwrap();
        keys
    };
    let listed = eventually("the dead letter to be browsable", Duration::from_secs(60), || async {
        let (status, body) = api.call("GET", "/dead-letters?stage=filter", Some(ADMIN), None, None).await;
        assert_eq!(status, 200, "{body}");
        (body["dead_letters"].as_array().unwrap().len() == 1).then_some(body)
    })
    .await;
    let d = &listed["dead_letters"][0];
    assert_eq!((d["source"]["topic"].as_str(), d["event"]["id"].as_str()), (Some(topic.as_str()), Some("e-bad")), "{d}");
    assert!(d["reason"].as_str().unwrap().contains("event.data.amount"), "{d}");
    assert!(d["redrive"].is_null());
    eventually("the good event's run", Duration::from_secs(60), || async { (runs().await == ["o-ok"]).then_some(()) }).await;

    // Fix the definition, then redrive: the event runs; a second redrive does nothing.
    let lenient = strict.replace("'event.data.amount > 100'", "'!has(event.data.amount) || event.data.amount > 100'");
    let (_, body) = api.call("POST", "/definitions", Some(ADMIN), None, Some(lenient)).await;
    assert_eq!(body["applied"][0]["outcome"], "new_version", "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await; // the router picks new versions up within its refresh interval
    let coordinates = json!({"records": [{"partition": d["partition"], "offset": d["offset"]}]}).to_string();
    let (status, body) = api.call("POST", "/dead-letters/redrive", Some(ADMIN), None, Some(coordinates.clone())).await;
    assert_eq!((status, body["redriven"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
    assert_eq!(body["redriven"][0]["topic"], topic.as_str());
    eventually("the redriven event's run", Duration::from_secs(60), || async { (runs().await == ["o-bad", "o-ok"]).then_some(()) }).await;
    let (_, again) = api.call("POST", "/dead-letters/redrive", Some(ADMIN), None, Some(coordinates)).await;
    assert_eq!(
        (again["redriven"].as_array().map(Vec::len), again["skipped"][0]["reason"].as_str()),
        (Some(0), Some("already redriven")),
        "{again}"
    );
    let (_, listed) = api.call("GET", "/dead-letters", Some(ADMIN), None, None).await;
    assert_eq!(listed["dead_letters"][0]["redrive"]["by"], "admin", "{listed}");
    let (status, body) = api.call("POST", "/dead-letters/redrive", Some(ADMIN), None, Some("{}".into())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("records")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs().await, ["o-bad", "o-ok"], "one run per order, however often it was redriven");
}

/// A router of `topic` writing dead letters to `dlq`, for the DLQ tests.
fn router_of(db_url: &str, queue: &str, topic: &str, dlq: &str) -> Service {
    Service::spawn(
        &workspace_binary("tf-router"),
        &unique("tf-router"),
        &[
            ("TF_DATABASE_URL", db_url),
            ("TF_TASK_QUEUE", queue),
            ("TF_ROUTER_TOPICS", topic),
            ("TF_ROUTER_GROUP", &unique("it-api-group")),
            ("TF_DLQ_TOPIC", dlq),
            ("TF_ROUTER_METRICS_ADDR", "127.0.0.1:0"),
        ],
    )
}

#[tokio::test]
async fn hostile_dead_letters_neither_crash_the_browser_nor_choose_where_a_redrive_writes() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let s = settings();
    let (db, _pool) = FreshDatabase::migrated(&s).await;
    let source = unique("events.it-hostile");
    let (dlq, sink) = (unique("it-api-dlq"), unique("it-api-sink"));
    for t in [&source, &dlq, &sink] {
        create_topic(&s, t, 1).await;
    }
    // Writer schemas a hostile producer registers: a count prefix of half a billion records
    // (the 94-byte record that aborted tf-api), and zero-width items (40 blocks of 10^6 nulls).
    let registry = std::sync::Arc::new(tf_envelope::Registry::new(&s.schema_registry_url));
    let records = r#"{"type": "array", "items": {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}}"#;
    let records_id = registry.register(&format!("{source}-records-value"), records).await.unwrap();
    let nulls_id = registry.register(&format!("{source}-nulls-value"), r#"{"type": "array", "items": "null"}"#).await.unwrap();
    let count_prefix = tf_envelope::wire::frame(records_id, &[tf_testkit::avro_long(500_000_000), vec![0]].concat());
    let zero_width =
        tf_envelope::wire::frame(nulls_id, &(0..40).flat_map(|_| tf_testkit::avro_long(1_000_000)).chain([0]).collect::<Vec<u8>>());

    let producer: FutureProducer = tf_kafka::client_config(&s.kafka_brokers).create().unwrap();
    let put = |key: &'static str, value: Vec<u8>, topics: Vec<String>| {
        let (producer, dlq) = (producer.clone(), dlq.clone());
        async move {
            let mut hs = OwnedHeaders::new().insert(Header { key: "__connect.errors.stage", value: Some("decode") });
            // A dead letter written before the router dropped producers' reserved headers: the
            // producer's copy first, the router's after it.
            for t in &topics {
                hs = hs.insert(Header { key: "__connect.errors.topic", value: Some(t.as_str()) });
            }
            let record = FutureRecord::to(&dlq).key(key).payload(&value).headers(hs);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
    };
    put("count-prefix", count_prefix, vec![source.clone()]).await;
    put("zero-width", zero_width, vec![source.clone()]).await;
    put("forged-first", b"x".to_vec(), vec![sink.clone(), source.clone()]).await;
    put("outside", b"y".to_vec(), vec![sink.clone()]).await;

    let api = Api::with_dlq(&db.url, "it-api-unused-queue", &dlq);
    api.ready().await;
    for _ in 0..2 {
        let (status, body) = api.call("GET", "/dead-letters", Some(ADMIN), None, None).await;
        assert_eq!(status, 200, "{body}\n{}", api.service.log());
        let letters = body["dead_letters"].as_array().unwrap();
        assert_eq!(letters.len(), 4, "{body}");
        for d in &letters[..2] {
            assert!(d["decode_error"].as_str().unwrap().contains("decode limit"), "{d}");
        }
        assert_eq!(letters[2]["source"]["topic"], source.as_str(), "the router's header, written last, is the one read");
    }
    let peak = tf_testkit::peak_rss_bytes(api.service.pid());
    println!("HOSTILE FIGURES: tf-api peak RSS {} MiB after browsing hostile dead letters twice", peak >> 20);
    assert!(peak < 256 << 20, "tf-api peak RSS {peak} bytes");

    let all = json!({"records": [{"partition": 0, "offset": 2}, {"partition": 0, "offset": 3}]}).to_string();
    let (status, body) = api.call("POST", "/dead-letters/redrive", Some(ADMIN), None, Some(all)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redriven"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["redriven"][0]["topic"], source.as_str(), "{body}");
    assert!(body["skipped"][0]["reason"].as_str().unwrap().contains("not one the router reads"), "{body}");
    assert_eq!(tf_testkit::high_watermark(&s, &sink, 0), 0, "nothing was written where the dead letter pointed");
    assert_eq!(tf_testkit::high_watermark(&s, &source, 0), 1);

    // 300 dead letters of 900 kB (270 MB): a page of 5 holds 5 of them, not the whole DLQ.
    let big = vec![b'x'; 900_000];
    let sends: Vec<_> = (0..300)
        .map(|_| {
            let record = FutureRecord::to(&dlq).key("big").payload(&big).headers(
                OwnedHeaders::new()
                    .insert(Header { key: "__connect.errors.stage", value: Some("size") })
                    .insert(Header { key: "__connect.errors.topic", value: Some(source.as_str()) }),
            );
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    for d in sends {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let (status, body) = api.call("GET", "/dead-letters?stage=size&limit=5", Some(ADMIN), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["dead_letters"].as_array().map(Vec::len), Some(5));
    let peak = tf_testkit::peak_rss_bytes(api.service.pid());
    println!("HOSTILE FIGURES: tf-api peak RSS {} MiB after a page of 5 over 270 MB of dead letters", peak >> 20);
    assert!(peak < 256 << 20, "tf-api peak RSS {peak} bytes");
    tf_testkit::delete_topics(&s, &[&source, &dlq, &sink]).await;
}

/// A redriven plain (non-envelope) record keeps the identity of the original: its id is the
/// original's coordinates and its event time the original's timestamp, so a definition that
/// already ran for it deduplicates it, and only the definition that dead-lettered it runs.
#[tokio::test]
async fn a_redriven_plain_record_keeps_its_identity_so_what_ran_for_it_does_not_run_again() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let topic = unique("events.it-plain");
    let dlq = unique("it-api-dlq");
    for t in [&topic, &dlq] {
        create_topic(&s, t, 1).await;
    }
    let api = Api::with_dlq(&db.url, &queue, &dlq);
    api.ready().await;
    let (all, strict) = (unique("it-plain-all").to_lowercase(), unique("it-plain-strict").to_lowercase());
    let def = |id: &str, filter: &str| {
        format!(
            "id: {id}\nname: P\ntrigger: {{event: {{topics: [{topic}], type: '*'{filter}}}}}\ndedupe: {{key: event.id}}\ntasks: [{{name: t, type: human}}]\n"
        )
    };
    assert_eq!(api.call("POST", "/definitions", Some(ADMIN), None, Some(def(&all, ""))).await.0, 200);
    assert_eq!(api.call("POST", "/definitions", Some(ADMIN), None, Some(def(&strict, ", filter: 'event.data.missing > 1'"))).await.0, 200);
    let _router = router_of(&db.url, &queue, &topic, &dlq);
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_NO_SCHEDULER", "true")]);
    // A plain Avro record, produced an hour ago by its timestamp.
    let codec = tf_envelope::Codec::new(std::sync::Arc::new(tf_envelope::Registry::new(&s.schema_registry_url)));
    let schema = r#"{"type": "record", "name": "Plain", "namespace": "io.test", "fields": [{"name": "n", "type": "long"}]}"#;
    let value = apache_avro::types::Value::Record(vec![("n".into(), apache_avro::types::Value::Long(7))]);
    let bytes = codec.encode(&format!("{topic}-value"), schema, value).await.unwrap();
    let hour_ago = tf_envelope::Timestamp::now().0 - 3_600_000;
    let producer: rdkafka::producer::FutureProducer = tf_kafka::client_config(&s.kafka_brokers).create().unwrap();
    producer
        .send(rdkafka::producer::FutureRecord::to(&topic).key("p").payload(&bytes).timestamp(hour_ago), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let original_id = format!("{topic}-0-0");
    let runs = || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT definition_id, dedupe_key FROM activity_runs ORDER BY definition_id").fetch_all(&pool).await.unwrap();
        rows
    };
    eventually("the lenient definition's run", Duration::from_secs(60), || async { (runs().await.len() == 1).then_some(()) }).await;
    let listed = eventually("the dead letter of the strict one", Duration::from_secs(60), || async {
        let (_, body) = api.call("GET", "/dead-letters?stage=filter", Some(ADMIN), None, None).await;
        (body["dead_letters"].as_array().is_some_and(|d| d.len() == 1)).then_some(body)
    })
    .await;
    let d = &listed["dead_letters"][0];
    assert_eq!(d["timestamp_ms"], hour_ago, "the dead letter keeps the original's timestamp: {d}");
    // Fix the strict definition, then redrive.
    let (_, body) = api
        .call(
            "POST",
            "/definitions",
            Some(ADMIN),
            None,
            Some(def(&strict, ", filter: '!has(event.data.missing) || event.data.missing > 1'")),
        )
        .await;
    assert_eq!(body["applied"][0]["outcome"], "new_version", "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await; // the router's refresh interval
    let coordinates = json!({"records": [{"partition": d["partition"], "offset": d["offset"]}]}).to_string();
    let (status, body) = api.call("POST", "/dead-letters/redrive", Some(ADMIN), None, Some(coordinates)).await;
    assert_eq!((status, body["redriven"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
    let after = eventually("the strict definition's run", Duration::from_secs(60), || async {
        let r = runs().await;
        r.iter().any(|(def, _)| def == &strict).then_some(r)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a second run of the lenient one would show by now
    let after_settled = runs().await;
    assert_eq!(after, after_settled);
    let mut expected = vec![(all.clone(), original_id.clone()), (strict.clone(), original_id.clone())];
    expected.sort();
    assert_eq!(after_settled, expected, "one run each, both under the original's identity");

    // A producer copying the redrive marker gains nothing: only the record the redrive placed
    // takes the original's identity; this one keeps its own and runs as a new event.
    let marker = format!("{dlq}@{}:{}", d["partition"], d["offset"]);
    let forged = rdkafka::producer::FutureRecord::to(&topic).key("p").payload(&bytes).headers(
        rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header { key: "taskfactory.redrive", value: Some(marker.as_str()) }),
    );
    producer.send(forged, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    let own_id = format!("{topic}-0-2");
    eventually("the forged copy's own runs", Duration::from_secs(60), || async {
        let r = runs().await;
        (r.iter().filter(|(_, key)| key == &own_id).count() == 2).then_some(())
    })
    .await;
    tf_testkit::delete_topics(&s, &[&topic, &dlq]).await;
}

/// Every operation of the OpenAPI document, sent every body, header and query shape a client
/// can send: each answer is a clear 4xx (never a 5xx, a dropped connection or a crash), and
/// tf-api's memory stays bounded.
#[tokio::test]
async fn every_operation_answers_hostile_bodies_headers_and_queries_with_a_clear_4xx() {
    let s = settings();
    let (db, _pool) = FreshDatabase::migrated(&s).await;
    let topic = unique("events.it-hostile-api");
    create_topic(&s, &topic, 1).await;
    let api = Api::spawn(&db.url, &unique("it-api-queue"));
    api.ready().await;
    let doc: Value = api.http.get(format!("{}/openapi.json", api.base)).send().await.unwrap().json().await.unwrap();
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let laughs = {
        // Billion laughs: nine levels of ten aliases each.
        let mut y = String::from("a0: &a0 [\"lol\"]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            y.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        y
    };
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated JSON", b"{".to_vec()),
        ("null", b"null".to_vec()),
        ("array", b"[]".to_vec()),
        ("string", b"\"x\"".to_vec()),
        ("invalid UTF-8", vec![0xff, 0xfe, 0x00, 0x80]),
        ("NUL in a string", b"{\"id\": \"a\\u0000b\", \"reason\": \"\\u0000\"}".to_vec()),
        ("deeply nested JSON", deep_json.into_bytes()),
        ("billion laughs YAML", laughs.into_bytes()),
        ("3 MB of garbage", vec![b'x'; 3 << 20]),
        ("huge number", b"{\"limit\": 1e999999, \"records\": [{\"partition\": 99999999999, \"offset\": -1}]}".to_vec()),
    ];
    let content_types = [
        "application/json",
        "application/yaml",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "\u{1}",
    ];
    let paths = |template: &str| -> Vec<String> {
        let fill = |v: &str| template.replace("{topic}", &topic).replace("{id}", v).replace("{run_id}", v).replace("{path}", v);
        if template.contains('{') {
            vec![
                fill("x"),
                fill("%00"),
                fill(&"a".repeat(5000)),
                fill("..%2F..%2Fetc"),
                fill("%ff%fe"),
                fill("x/complete"),
                fill("x/retry"),
            ]
        } else {
            vec![template.to_string()]
        }
    };
    let queries = [
        "",
        "?limit=-1",
        "?limit=99999999999999999999",
        "?partition=abc&offset=-5",
        "?unknown=1",
        "?cursor=%00garbage",
        // Cursors with the right shape and hostile numbers: the end of i64, negatives.
        "?cursor=0%3A9223372036854775807",
        "?cursor=-1%3A-1",
        "?cursor=9223372036854775807%3Ax",
        "?version=0",
        "?status=exploded",
    ];
    let mut answered = 0usize;
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            for (variant, url) in paths(path).into_iter().enumerate() {
                // Every body in every content type on the plain path; the hostile path
                // variants get the first content type only (their refusal comes first).
                let shapes: Vec<(String, reqwest::RequestBuilder)> = if method == "post" {
                    let mut v = Vec::new();
                    for (name, body) in &bodies {
                        for ct in content_types.iter().take(if variant == 0 { content_types.len() } else { 1 }) {
                            let req = api.http.post(format!("{}{url}", api.base)).bearer_auth(ADMIN).body(body.clone());
                            let req = if ct.is_ascii() && !ct.contains('\u{1}') { req.header("content-type", *ct) } else { req };
                            v.push((format!("{name} as {ct}"), req));
                        }
                    }
                    // Binary-mode CloudEvents headers, hostile.
                    v.push((
                        "ce-* headers".into(),
                        api.http
                            .post(format!("{}{url}", api.base))
                            .bearer_auth(ADMIN)
                            .header("ce-specversion", "9.9")
                            .header("ce-id", "x".repeat(60_000))
                            .header("ce-time", "not a time")
                            .header("ce-type", "")
                            .body("{}"),
                    ));
                    v
                } else {
                    queries
                        .iter()
                        .map(|q| {
                            (
                                format!("query {q}"),
                                api.http
                                    .request(method.to_uppercase().parse().unwrap(), format!("{}{url}{q}", api.base))
                                    .bearer_auth(ADMIN),
                            )
                        })
                        .collect()
                };
                for (shape, req) in shapes {
                    let t0 = std::time::Instant::now();
                    let sent = req.send().await;
                    if t0.elapsed() > Duration::from_secs(1) {
                        println!("SLOW {method} {} {shape}: {:?}", &url[..url.len().min(60)], t0.elapsed());
                    }
                    match sent {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            answered += 1;
                            if status >= 500 {
                                let body = resp.text().await.unwrap_or_default();
                                problems.push(format!(
                                    "{method} {} with {shape}: {status} {}",
                                    &url[..url.len().min(80)],
                                    &body[..body.len().min(200)]
                                ));
                            }
                        }
                        // A body refused (413) before it was all sent can break the pipe; the
                        // server must still be there. A request without a body has no such
                        // excuse: a connection dropped on it is a handler that panicked.
                        Err(e) if method == "post" && (e.is_request() || e.is_body()) => {}
                        Err(e) => problems.push(format!("{method} {} with {shape}: {e}", &url[..url.len().min(80)])),
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {answered} answers were server errors or failures:\n{}\nlog:\n{}",
        problems.len(),
        problems.join("\n"),
        api.service.log()
    );
    assert!(answered > 500, "{answered} answers");
    assert_eq!(api.http.get(format!("{}/healthz", api.base)).send().await.unwrap().status(), 200, "tf-api is still up");
    let peak = tf_testkit::peak_rss_bytes(api.service.pid());
    println!("HOSTILE FIGURES: tf-api answered {answered} hostile requests, peak RSS {} MiB", peak >> 20);
    assert!(peak < 256 << 20, "tf-api peak RSS {peak} bytes");
    tf_testkit::delete_topics(&s, &[&topic]).await;
}

/// The console's cookie carries a session id, not the token; signing out revokes it on the
/// server; a form posted from another origin is refused whatever cookie it carries.
#[tokio::test]
async fn console_sessions_live_on_the_server_and_cross_origin_posts_are_refused() {
    let s = settings();
    let (db, _pool) = FreshDatabase::migrated(&s).await;
    let api = Api::spawn(&db.url, &unique("it-api-queue"));
    api.ready().await;
    let origin = api.base.clone();
    let (http, status, set_cookie) = api.console_sign_in().await;
    assert_eq!(status, 303);
    assert!(!set_cookie.contains(ADMIN), "the cookie must not hold the token: {set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let page = |cookie: String| {
        let http = http.clone();
        let url = format!("{}/ui/runs", api.base);
        async move { http.get(url).header("cookie", cookie).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(page(cookie.clone()).await, 200, "the session signs the console in");
    // The old cookie format (the raw token) is no session.
    assert_eq!(page(format!("tf_session={ADMIN}")).await, 303);
    // A form posted from another site, with the session cookie, is refused.
    for forged in [Some("http://evil.example"), Some("null"), None] {
        let mut req = http
            .post(format!("{}/ui/runs/run%2Fx%2Fy%2F1/cancel", api.base))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("reason=csrf");
        if let Some(o) = forged {
            req = req.header("origin", o);
        }
        assert_eq!(req.send().await.unwrap().status(), 403, "origin {forged:?}");
    }
    let out = http.post(format!("{}/ui/logout", api.base)).header("origin", &origin).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(page(cookie).await, 303, "signed out on the server: the old cookie no longer works");
}

#[tokio::test]
async fn a_human_task_that_nobody_decides_times_out_into_its_default_or_a_failure() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let api = Api::spawn(&db.url, &queue);
    api.ready().await;
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_NO_SCHEDULER", "true")]);
    let id = unique("it-api-timeout").to_lowercase();
    let def = format!(
        "id: {id}\nname: Timeouts\ntrigger: {{event: {{topics: [events.demo]}}}}\ntasks:\n  - {{name: lenient, type: human, timeout: 2s, on_timeout: complete, timeout_output: \"{{'approved': false, 'order': event.data.order_id}}\"}}\n  - {{name: strict, type: human, timeout: 2s}}\n"
    );
    let (status, body) = api.call("POST", "/definitions", Some(ADMIN), None, Some(def)).await;
    assert_eq!(status, 200, "{body}");
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let input = tf_testkit::run_input(&id, 1, "t-1", json!({"id": "e-t-1", "type": "t", "data": {"order_id": "t-1"}}));
    tf_temporal::start_run(&client, &queue, input).await.unwrap();
    let rows = eventually("both human tasks to time out", Duration::from_secs(60), || async {
        let rows: Vec<(String, String, Option<Value>, Option<String>)> =
            sqlx::query_as("SELECT template, status, output, error FROM tasks WHERE finished_at IS NOT NULL ORDER BY template")
                .fetch_all(&pool)
                .await
                .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.clone()),
        ("lenient", "succeeded", Some(json!({"approved": false, "order": "t-1"})))
    );
    assert_eq!((rows[1].0.as_str(), rows[1].1.as_str()), ("strict", "failed"));
    assert_eq!(rows[1].3.as_deref(), Some("nobody decided within 2 s (on_timeout: fail)"));
    let task = tf_temporal::DedupeKey::parse("t-1").unwrap().run_id(&id, 1).task("strict", 0).to_string();
    let (status, body) =
        api.call("POST", &format!("/tasks/{task}/complete"), Some(ADMIN), None, Some(json!({"output": 1}).to_string())).await;
    assert_eq!(status, 409, "a decision after the timeout is refused: {body}");
}

/// Text a producer, a definition's author or a dead letter brings along is shown as text on
/// every console page: `<script>` in event data (the dedupe key, a human task's params), in a
/// definition's name and in a dead letter's stage and reason never becomes markup.
#[tokio::test]
async fn the_console_shows_script_in_event_data_definition_names_and_dead_letter_reasons_as_text() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let dlq = unique("it-api-dlq");
    create_topic(&s, &dlq, 1).await;
    let def_id = unique("it-xss").to_lowercase();
    let yaml = format!(
        r#"
id: {def_id}
name: "<script>alert('name')</script>"
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.note}}
tasks:
  - {{name: review, type: human, params: {{title: event.data.note}}}}
"#
    );
    let (def_id, version) = tf_testkit::apply_definition(&pool, &yaml).await;
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_NO_SCHEDULER", "true")]);
    let note = "<script>alert('event')</script>";
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let event = json!({"id": "e-xss", "type": "order.created", "data": {"note": note}});
    tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&def_id, version, note, event)).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse(note).unwrap().run_id(&def_id, 1).to_string();
    let task_id = format!("{run_id}/review/0");
    eventually("the human task to wait", Duration::from_secs(60), || async {
        let st: Option<String> =
            sqlx::query_scalar("SELECT status FROM tasks WHERE task_id = $1").bind(&task_id).fetch_optional(&pool).await.unwrap();
        (st.as_deref() == Some("awaiting_human")).then_some(())
    })
    .await;
    // A flow-control key comes from event data too: the run holds a slot under a hostile key.
    let hostile_key = tf_definitions::flow::Admission {
        rate_limit: None,
        concurrency: Some(tf_definitions::flow::SlotRequest { key: "<script>alert('key')</script>".into(), limit: 1 }),
        throttle: None,
        priority: 0,
        singleton: None,
        debounce: None,
        batch: None,
    };
    let run = tf_definitions::RunId::from_workflow_id(run_id.clone());
    assert_eq!(
        tf_store::flow::admit(&pool, &run, &def_id, &hostile_key, &serde_json::Value::Null).await.unwrap().verdict,
        tf_store::flow::Verdict::Go
    );
    let producer: FutureProducer = tf_kafka::client_config(&s.kafka_brokers).create().unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "__connect.errors.stage", value: Some("<script>alert('stage')</script>") })
        .insert(Header { key: "__connect.errors.topic", value: Some("events.<script>") })
        .insert(Header { key: "__connect.errors.exception.message", value: Some("<script>alert('reason')</script>") });
    producer.send(FutureRecord::to(&dlq).key("k").payload("<script>x</script>").headers(headers), Duration::from_secs(10)).await.unwrap();

    let api = Api::with_dlq(&db.url, &queue, &dlq);
    api.ready().await;
    let (http, status, set_cookie) = api.console_sign_in().await;
    assert_eq!(status, 303);
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let path =
        |p: &str| p.split('/').map(|seg| seg.replace('<', "%3C").replace('>', "%3E").replace('\'', "%27")).collect::<Vec<_>>().join("/");
    let pages = [
        ("/ui/runs".to_string(), "event"),
        (format!("/ui/runs/{}", path(&run_id)), "event"),
        ("/ui/tasks".to_string(), "event"),
        (format!("/ui/tasks/{}", path(&task_id)), "event"),
        ("/ui/definitions".to_string(), "name"),
        (format!("/ui/definitions/{def_id}"), "name"),
        ("/ui/dead-letters".to_string(), "reason"),
        ("/ui/dead-letters".to_string(), "stage"),
        ("/ui/limits".to_string(), "key"),
    ];
    for (url, what) in pages {
        let resp = http.get(format!("{}{url}", api.base)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = resp.text().await.unwrap();
        assert!(!body.contains("<script>alert"), "{url} renders {what} as markup:\n{body}");
        assert!(body.contains(&format!("&lt;script&gt;alert('{what}')&lt;/script&gt;")), "{url} shows the {what} as text:\n{body}");
    }
    tf_testkit::delete_topics(&s, &[&dlq]).await;
}

/// Two operators who read the same version cannot both write it: `GET /definitions/{id}` gives
/// an `ETag`, an apply with `If-Match` succeeds only while it is current (412 after, with the
/// current tag), `If-None-Match: *` creates only; of two concurrent applies from one read,
/// exactly one lands. Errors are problem documents.
#[tokio::test]
async fn conditional_applies_refuse_a_stale_write_with_412() {
    let s = settings();
    let (db, _pool) = FreshDatabase::migrated(&s).await;
    let api = Api::spawn(&db.url, &unique("it-api-queue"));
    api.ready().await;
    let id = unique("it-etag").to_lowercase();
    let doc = |name: &str| {
        format!("id: {id}\nname: {name}\ntrigger: {{event: {{topics: [events.demo]}}}}\ntasks:\n  - {{name: t, type: human}}\n")
    };
    let apply = |body: String, header: Option<(&'static str, String)>| {
        let (http, base) = (api.http.clone(), api.base.clone());
        async move {
            let mut req = http.post(format!("{base}/definitions")).bearer_auth(ADMIN).header("content-type", "application/yaml").body(body);
            if let Some((k, v)) = header {
                req = req.header(k, v);
            }
            let resp = req.send().await.unwrap();
            let (status, ct) = (resp.status().as_u16(), resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()));
            (status, ct, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, _, body) = apply(doc("v1"), Some(("if-none-match", "*".into()))).await;
    assert_eq!((status, body["applied"][0]["outcome"].as_str()), (200, Some("created")), "{body}");
    let (status, ct, body) = apply(doc("v1 again"), Some(("if-none-match", "*".into()))).await;
    assert_eq!((status, ct.as_deref()), (412, Some("application/problem+json")), "{body}");
    assert_eq!((body["status"].as_u64(), body["code"].as_str()), (Some(412), Some("precondition_failed")), "{body}");

    let read = api.http.get(format!("{}/definitions/{id}", api.base)).bearer_auth(ADMIN).send().await.unwrap();
    let etag = read.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, "\"v1-enabled\"");
    // Two operators edit what they both read; one write lands, the other is told it is stale.
    let (a, b) =
        tokio::join!(apply(doc("edit A"), Some(("if-match", etag.clone()))), apply(doc("edit B"), Some(("if-match", etag.clone()))));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{a:?} {b:?}");
    let stale = if a.0 == 412 { a.2 } else { b.2 };
    assert_eq!(stale["details"]["current_etag"], "\"v2-enabled\"", "{stale}");
    let (status, _, body) = apply(doc("edit C"), Some(("if-match", "\"v2-enabled\"".into()))).await;
    assert_eq!((status, body["applied"][0]["version"].as_i64()), (200, Some(3)), "{body}");
    assert_eq!(body["applied"][0]["etag"], "\"v3-enabled\"");
    // Without a precondition an apply works as before; malformed or ambiguous ones are 400s.
    assert_eq!(apply(doc("edit D"), None).await.0, 200);
    assert_eq!(apply(doc("x"), Some(("if-match", "v4-enabled".into()))).await.0, 400, "an unquoted tag");
    let two = format!("{}---\n{}", doc("one"), doc("two").replace(&id, &format!("{id}-2")));
    let (status, _, body) = apply(two, Some(("if-match", "*".into()))).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("if-match")), "{body}");
}

/// The API's OpenAPI document passes an external validator (`openapi-spec-validator`), and a
/// Python client generated from it (`openapi-python-client`) lists runs with filters, pages
/// through them with the cursor, and reads one run's lineage by an id that holds slashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_openapi_document_filters_and_pages_runs() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let base = support::in_process(&db.url, &unique("it-api-queue")).await;
    let http = reqwest::Client::new();
    let (a, b) = (unique("it-oa-a").to_lowercase(), unique("it-oa-b").to_lowercase());
    for id in [&a, &b] {
        let doc = format!("id: {id}\nname: {id}\ntrigger: {{event: {{topics: [events.demo]}}}}\ntasks:\n  - {{name: t, type: human}}\n");
        let resp = http
            .post(format!("{base}/definitions"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/yaml")
            .body(doc)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    // Seven runs as the worker records them: five of `a` (two completed), two of `b`.
    for (i, def) in [&a, &a, &a, &a, &a, &b, &b].into_iter().enumerate() {
        let run_id = tf_store::runs::RunId::from_workflow_id(format!("run/{def}/key-{i}/1"));
        let source = tf_store::runs::RunSource::event("events.demo", 0, i as i64, Some(format!("evt-{i}")));
        let begin = tf_store::runs::BeginRun {
            run_id: &run_id,
            execution_id: "x1",
            definition_id: def,
            definition_version: 1,
            dedupe_key: &format!("key-{i}"),
            generation: None,
            event_time_ms: 1_000_000 + i as i64,
            dedupe_window: Duration::from_secs(60),
            fired_at_ms: 1_000_000 + i as i64,
            traceparent: None,
            source: &source,
            input: None,
            operator_retry: false,
        };
        tf_store::runs::begin_run(&pool, &begin).await.unwrap();
        if i < 2 {
            tf_store::runs::finish_run(&pool, &run_id, tf_store::runs::RunStatus::Completed).await.unwrap();
        }
    }

    let dir = std::env::temp_dir().join(unique("it-openapi"));
    std::fs::create_dir_all(&dir).unwrap();
    let doc = http.get(format!("{base}/openapi.json")).send().await.unwrap().text().await.unwrap();
    let doc_path = dir.join("openapi.json");
    std::fs::write(&doc_path, &doc).unwrap();
    let bin = tf_testkit::python().parent().unwrap().to_path_buf();
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(bin.join(cmd)).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{cmd} failed:\n{text}");
        text
    };
    let validated = run("openapi-spec-validator", &[doc_path.as_os_str()]);
    assert!(validated.contains("OK"), "{validated}");
    let client = dir.join("tf_client");
    run(
        "openapi-python-client",
        &[
            "generate".as_ref(),
            "--path".as_ref(),
            doc_path.as_os_str(),
            "--output-path".as_ref(),
            client.as_os_str(),
            "--meta".as_ref(),
            "none".as_ref(),
        ],
    );
    for operation in
        ["list_runs", "get_run", "retry_run", "cancel_run", "list_tasks", "claim_task", "list_dead_letters", "redrive_dead_letters"]
    {
        assert!(client.join(format!("api/default/{operation}.py")).exists(), "the generated client has no {operation}");
    }

    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from tf_client import AuthenticatedClient
from tf_client.api.default import list_runs, get_run
from tf_client.models.list_runs_status import ListRunsStatus
from tf_client.models.run_page import RunPage
from tf_client.types import UNSET, Unset

base, token, a = sys.argv[2], sys.argv[3], sys.argv[4]
client = AuthenticatedClient(base_url=base, token=token)
seen, pages, cursor = [], 0, UNSET
while True:
    page = list_runs.sync(client=client, definition=a, limit=2, cursor=cursor)
    assert isinstance(page, RunPage), page
    pages += 1
    seen += [(r.run_id, r.definition_id) for r in page.runs]
    if isinstance(page.next_cursor, Unset) or page.next_cursor is None:
        break
    cursor = page.next_cursor
completed = list_runs.sync(client=client, definition=a, status=ListRunsStatus.COMPLETED)
lineage = get_run.sync(run_id=seen[0][0], client=client)
print(json.dumps({
    "pages": pages,
    "runs": [r for r, _ in seen],
    "definitions": sorted({d for _, d in seen}),
    "completed": sorted(r.run_id for r in completed.runs),
    "lineage": {"run_id": lineage.run_id, "topic": lineage.source.topic, "offset": lineage.source.offset},
}))
"#;
    let script_path = dir.join("list_runs.py");
    std::fs::write(&script_path, script).unwrap();
    let out = std::process::Command::new(tf_testkit::python())
        .arg(&script_path)
        .args([dir.as_os_str(), base.as_ref(), ADMIN.as_ref(), a.as_ref()])
        .output()
        .unwrap();
    assert!(out.status.success(), "the generated client failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs: Vec<String> = (0..5).rev().map(|i| format!("run/{a}/key-{i}/1")).collect();
    assert_eq!(got["runs"], json!(runs), "five runs of {a}, newest first, each once: {got}");
    assert_eq!(got["pages"], 3, "pages of 2, 2 and 1: {got}");
    assert_eq!(got["definitions"], json!([a]), "the definition filter holds: {got}");
    assert_eq!(got["completed"], json!([format!("run/{a}/key-0/1"), format!("run/{a}/key-1/1")]), "{got}");
    assert_eq!(got["lineage"], json!({"run_id": runs[0], "topic": "events.demo", "offset": 4}), "{got}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every list pages to its end with one cursor, each item once and in the list's order:
/// definitions by id, human tasks oldest first, dead letters in (partition, offset) order across
/// partitions, also under a filter that skips records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_pages_to_its_end_with_its_cursor() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let dlq = unique("it-pages-dlq");
    create_topic(&s, &dlq, 3).await;
    let api = Api::with_dlq(&db.url, &unique("it-api-queue"), &dlq);
    api.ready().await;
    // Pages of `limit` from `path` until `next_cursor` is null: the items under `field`.
    let pages = |path: String, field: &'static str, limit: usize| {
        let api = &api;
        async move {
            let (mut items, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
            loop {
                let sep = if path.contains('?') { '&' } else { '?' };
                let mut url = format!("{path}{sep}limit={limit}");
                if let Some(c) = &cursor {
                    url.push_str(&format!("&cursor={}", c.replace(':', "%3A").replace('/', "%2F")));
                }
                let (status, body) = api.call("GET", &url, Some(ADMIN), None, None).await;
                assert_eq!(status, 200, "{url}: {body}");
                let page = body[field].as_array().unwrap().clone();
                assert!(page.len() <= limit, "{url}: {body}");
                items.extend(page);
                pages += 1;
                assert!(pages < 50, "{path} never ends");
                match body["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_string()),
                    None => return (items, pages),
                }
            }
        }
    };

    // Definitions: five, pages of two.
    let ids: Vec<String> = (0..5).map(|i| format!("{}-{i}", unique("it-page").to_lowercase())).collect();
    for id in &ids {
        let doc = format!("id: {id}\nname: p\ntrigger: {{event: {{topics: [events.demo]}}}}\ntasks:\n  - {{name: t, type: human}}\n");
        let (status, body) = api.call("POST", "/definitions", Some(ADMIN), Some("application/yaml"), Some(doc)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (defs, n) = pages("/definitions".into(), "definitions", 2).await;
    let listed: Vec<&str> = defs.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let mut sorted = ids.iter().map(String::as_str).collect::<Vec<_>>();
    sorted.sort_unstable();
    assert_eq!((listed, n), (sorted, 3), "by id, each once, in 3 pages");

    // Human tasks: five waiting on one run, pages of two, oldest first.
    let run_id = tf_store::runs::RunId::from_workflow_id(format!("run/{}/k/1", ids[0]));
    let source = tf_store::runs::RunSource::event("events.demo", 0, 1, Some("e".into()));
    let begin = tf_store::runs::BeginRun {
        run_id: &run_id,
        execution_id: "x1",
        definition_id: &ids[0],
        definition_version: 1,
        dedupe_key: "k",
        generation: None,
        event_time_ms: 1_000,
        dedupe_window: Duration::from_secs(60),
        fired_at_ms: 1_000,
        traceparent: None,
        source: &source,
        input: None,
        operator_retry: false,
    };
    tf_store::runs::begin_run(&pool, &begin).await.unwrap();
    let params = json!({});
    for i in 0..5 {
        let task = run_id.task("t", i);
        let new = tf_store::tasks::NewTask {
            task_id: &task,
            template: "t",
            index: i as i32,
            task_type: tf_definitions::TaskType::Human,
            params: &params,
            run_attempt: 1,
        };
        tf_store::tasks::record_tasks(&pool, &run_id, &[new]).await.unwrap();
        tf_store::tasks::set_task_status(&pool, &task, tf_definitions::TaskStatus::AwaitingHuman).await.unwrap();
    }
    let (tasks, n) = pages("/tasks".into(), "tasks", 2).await;
    let listed: Vec<String> = tasks.iter().map(|t| t["task_id"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = (0..5).map(|i| run_id.task("t", i).as_str().to_string()).collect();
    assert_eq!((listed, n), (expected, 3), "oldest first, each once, in 3 pages");

    // Dead letters: nine over three partitions, every third of another stage.
    let producer: FutureProducer = tf_kafka::client_config(&s.kafka_brokers).create().unwrap();
    for i in 0..9 {
        let stage = if i % 3 == 2 { "filter" } else { "decode" };
        let headers = OwnedHeaders::new()
            .insert(Header { key: tf_kafka::dlq::STAGE, value: Some(stage) })
            .insert(Header { key: tf_kafka::dlq::MESSAGE, value: Some("it") })
            .insert(Header { key: tf_kafka::dlq::TOPIC, value: Some("events.demo") });
        let record = FutureRecord::to(&dlq).partition(i % 3).key("k").payload("not avro").headers(headers);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    let at = |d: &Value| (d["partition"].as_i64().unwrap(), d["offset"].as_i64().unwrap());
    let (letters, n) = pages("/dead-letters".into(), "dead_letters", 2).await;
    let listed: Vec<(i64, i64)> = letters.iter().map(at).collect();
    let expected: Vec<(i64, i64)> = (0..3).flat_map(|p| (0..3).map(move |o| (p, o))).collect();
    assert_eq!(listed, expected, "(partition, offset) order, each once");
    assert!(n >= 5, "pages of two: {n}");
    let (decoded, _) = pages("/dead-letters?stage=decode".into(), "dead_letters", 2).await;
    let listed: Vec<(i64, i64)> = decoded.iter().map(at).collect();
    assert_eq!(listed, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)], "the filter holds across pages");
    let (status, body) = api.call("GET", "/dead-letters?cursor=nonsense", Some(ADMIN), None, None).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("cursor")), "{body}");
}

/// A run that waits for another event shows it (docs/steps.md): `GET /runs/{id}` lists its steps
/// with what each runs after and its state, and once the event came, where it was read (the
/// offset its 202 named); the console's run page shows the step waiting for the event until its
/// deadline, then the event it received.
#[tokio::test]
async fn a_waiting_run_shows_its_steps_and_the_offset_of_the_event_it_received() {
    let s = settings();
    let (db, _pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let topic = unique("events.it-api-wait");
    let dlq = unique("it-api-dlq");
    for t in [&topic, &dlq] {
        create_topic(&s, t, 1).await;
    }
    let api = Api::spawn(&db.url, &queue);
    api.ready().await;
    let codec = tf_envelope::Codec::new(std::sync::Arc::new(tf_envelope::Registry::new(&s.schema_registry_url)));
    codec.encode_event(&format!("{topic}-value"), &tf_envelope::Event::new("probe", "/it", "probe", json!({})).unwrap()).await.unwrap();
    let id = unique("it-api-wait").to_lowercase();
    let def = format!(
        r#"id: {id}
name: Waits
trigger: {{event: {{topics: [{topic}], type: com.example.order.created}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - name: pay
    type: wait_for_event
    event: {{type: com.example.payment.received, match: {{incoming: event.data.order_id, run: event.data.order_id}}}}
    timeout: 10m
  - {{name: nap, type: sleep, after: [pay], params: {{for: "'1s'"}}}}
"#
    );
    let (status, body) = api.call("POST", "/definitions", Some(ADMIN), None, Some(def)).await;
    assert_eq!(status, 200, "{body}");
    let _router = Service::spawn(
        &workspace_binary("tf-router"),
        &unique("tf-router"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_ROUTER_TOPICS", &topic),
            ("TF_ROUTER_GROUP", &unique("it-api-group")),
            ("TF_DLQ_TOPIC", &dlq),
            ("TF_ROUTER_METRICS_ADDR", "127.0.0.1:0"),
        ],
    );
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_NO_SCHEDULER", "true")]);
    let path = format!("/events/{topic}");
    let ce = Some("application/cloudevents+json");
    let event = |id: &str, kind: &str| {
        json!({"specversion": "1.0", "id": id, "source": "/it", "type": format!("com.example.{kind}"), "data": {"order_id": "o-1"}})
            .to_string()
    };
    let (status, body) = api.call("POST", &path, Some(ADMIN), ce, Some(event("e-1", "order.created"))).await;
    assert_eq!(status, 202, "{body}");
    let run_id = tf_definitions::DedupeKey::parse("o-1").unwrap().run_id(&id, 1).to_string();
    let waiting = eventually("the pay step to wait", Duration::from_secs(60), || async {
        let (status, l) = api.call("GET", &format!("/runs/{run_id}"), Some(READER), None, None).await;
        (status == 200 && l["steps"][0]["state"] == "waiting").then_some(l)
    })
    .await;
    assert_eq!(
        waiting["steps"][1],
        json!({"template": "nap", "type": "sleep", "after": ["pay"], "always": false, "state": "not planned yet"})
    );
    assert_eq!(waiting["tasks"][0]["waiting_for"], "com.example.payment.received key o-1", "{waiting}");
    let (http, _, set_cookie) = api.console_sign_in().await;
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let page = |http: reqwest::Client| {
        let (url, cookie) = (format!("{}/ui/runs/{}", api.base, run_id.replace('/', "%2F")), cookie.clone());
        async move { http.get(url).header("cookie", cookie).send().await.unwrap().text().await.unwrap() }
    };
    let html = page(http.clone()).await;
    assert!(html.contains("waiting for com.example.payment.received key o-1 until"), "{html}");

    let (status, body) = api.call("POST", &path, Some(ADMIN), ce, Some(event("p-1", "payment.received"))).await;
    assert_eq!(status, 202, "{body}");
    let offset = body["accepted"][0]["offset"].as_i64().unwrap();
    let done = eventually("the run to complete", Duration::from_secs(60), || async {
        let (_, l) = api.call("GET", &format!("/runs/{run_id}"), Some(READER), None, None).await;
        (l["status"] == "completed").then_some(l)
    })
    .await;
    let wait = &done["waits"][0];
    assert_eq!(
        (wait["kind"].as_str(), wait["status"].as_str(), wait["event_id"].as_str()),
        (Some("step"), Some("received"), Some("p-1")),
        "{done}"
    );
    assert_eq!((wait["source_topic"].as_str(), wait["source_offset"].as_i64()), (Some(topic.as_str()), Some(offset)), "{done}");
    assert_eq!(done["steps"][1]["state"], "succeeded");
    let html = page(http).await;
    assert!(html.contains(&format!("com.example.payment.received p-1 ({topic} partition 0 offset {offset})")), "{html}");
    tf_testkit::delete_topics(&s, &[&topic, &dlq]).await;
}

/// A time trigger's schedule over HTTP and in the console: read (state, runs started, next
/// fires), pause with a note (write scope; the note names the caller), resume, trigger (a run
/// starts), backfill (202, one run per fire in the range, progress from `actions_before`), and
/// the console's pause button; refusals are 403, 400 naming the field, or 404.
#[tokio::test]
async fn a_schedule_is_read_paused_resumed_triggered_and_backfilled_over_http_and_the_console() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-api-queue");
    let api = Api::spawn(&db.url, &queue);
    api.ready().await;
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_SCHEDULER_REFRESH_MS", "300")]);
    let id = unique("it-api-sched").to_lowercase();
    let def = format!("id: {id}\nname: Hourly\ntrigger: {{cron: {{every: 1h}}}}\ntasks: [{{name: t, type: human, when: 'false'}}]\n");
    let (status, body) = api.call("POST", "/definitions", Some(ADMIN), None, Some(def)).await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/definitions/{id}/schedule");
    let view = eventually("the schedule", Duration::from_secs(30), || async {
        let (status, v) = api.call("GET", &path, Some(READER), None, None).await;
        (status == 200).then_some(v)
    })
    .await;
    assert_eq!((view["paused"].as_bool(), view["next"].as_array().map(Vec::len)), (Some(false), Some(5)), "{view}");

    let (status, _) = api.call("POST", &format!("{path}/pause"), Some(READER), None, Some("{}".into())).await;
    assert_eq!(status, 403, "pausing needs the write scope");
    let (status, body) = api.call("POST", &format!("{path}/pause"), Some(ADMIN), None, Some(r#"{"note": "a\u0007b"}"#.into())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("note")), "{body}");
    let (status, body) = api.call("POST", &format!("{path}/pause"), Some(ADMIN), None, Some(r#"{"why": "x"}"#.into())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("body")), "{body}");
    let (status, body) = api.call("POST", &format!("{path}/pause"), Some(ADMIN), None, Some(r#"{"note": "maintenance"}"#.into())).await;
    assert_eq!(status, 200, "{body}");
    let (_, v) = api.call("GET", &path, Some(READER), None, None).await;
    assert_eq!((v["paused"].as_bool(), v["note"].as_str()), (Some(true), Some("maintenance (by admin)")), "{v}");
    let (status, _) = api.call("POST", &format!("{path}/resume"), Some(ADMIN), None, None).await;
    assert_eq!(status, 200);
    let (_, v) = api.call("GET", &path, Some(READER), None, None).await;
    assert_eq!(v["paused"].as_bool(), Some(false), "{v}");

    let runs = |pool: sqlx::PgPool, id: String| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM activity_runs WHERE definition_id = $1 AND status <> 'deduplicated'")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let (status, body) = api.call("POST", &format!("{path}/trigger"), Some(ADMIN), None, None).await;
    assert_eq!((status, body["action"].as_str()), (200, Some("trigger")), "{body}");
    eventually("the triggered run", Duration::from_secs(30), || async { (runs(pool.clone(), id.clone()).await == 1).then_some(()) }).await;

    let backfill = r#"{"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T02:00:00Z"}"#;
    let (status, body) = api.call("POST", &format!("{path}/backfill"), Some(ADMIN), None, Some(backfill.into())).await;
    assert_eq!((status, body["batches"].as_array().map(Vec::len)), (202, Some(1)), "{body}");
    let before = body["actions_before"].as_i64().unwrap();
    eventually("three backfilled runs", Duration::from_secs(60), || async { (runs(pool.clone(), id.clone()).await == 4).then_some(()) })
        .await;
    let (_, v) = api.call("GET", &path, Some(READER), None, None).await;
    assert_eq!(v["actions"].as_i64(), Some(before + 3), "progress: three more runs started: {v}");
    let nominal: Vec<String> = sqlx::query_scalar(
        "SELECT to_char(scheduled_for AT TIME ZONE 'UTC', 'HH24:MI') FROM activity_runs
         WHERE definition_id = $1 AND scheduled_for < '2026-01-02' ORDER BY scheduled_for",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(nominal, ["00:00", "01:00", "02:00"]);
    for (body, field) in [
        (r#"{"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}"#, "to"),
        (r#"{"from": "yesterday", "to": "2026-01-01T00:00:00Z"}"#, "from"),
        (r#"{"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}"#, "to"),
        (r#"{"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "overlap": "sometimes"}"#, "overlap"),
    ] {
        let (status, answer) = api.call("POST", &format!("{path}/backfill"), Some(ADMIN), None, Some(body.into())).await;
        assert_eq!((status, answer["error"]["field"].as_str()), (400, Some(field)), "{body}: {answer}");
    }
    let (status, _) = api.call("GET", "/definitions/no-such-definition/schedule", Some(READER), None, None).await;
    assert_eq!(status, 404);

    // The console shows the schedule and pauses it with a note.
    let (http, _, set_cookie) = api.console_sign_in().await;
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let page = format!("{}/ui/definitions/{id}", api.base);
    let html = http.get(&page).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    assert!(
        html.contains("Pause schedule") && html.contains("Trigger a run now") && html.contains("nominal 2026-01-01T02:00:00Z"),
        "{html}"
    );
    let resp = http
        .post(format!("{page}/schedule/pause"))
        .header("cookie", &cookie)
        .header("origin", &api.base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("note=night+freeze")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let (_, v) = api.call("GET", &path, Some(READER), None, None).await;
    assert_eq!(v["note"].as_str(), Some("night freeze (by admin)"), "{v}");
    let html = http.get(&page).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("night freeze (by admin)") && html.contains("Resume schedule"), "{html}");
}
