//! Context from the user's own systems, on the real stack: the stack's PostgreSQL `orders`
//! database and MariaDB `shop` database (each with its own read-only role) and a loopback "CRM"
//! that wants a bearer token. The token is a secret:
//! after runs that used it, it is nowhere in Temporal history, the database, the results topic
//! or the worker's log.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use temporalio_client::{UntypedWorkflow, WorkflowFetchHistoryOptions};
use tf_testkit::{FreshDatabase, Service, apply_definition, eventually, orders_db_url, results_for, settings, shop_db_url, unique};
use tokio::io::AsyncWriteExt;

/// One request as the CRM saw it.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    authorization: Option<String>,
    body: String,
    at: Instant,
}

/// A CRM on loopback that answers only a bearer token, and (as careless APIs do) echoes the
/// header back, in answers and in errors alike.
async fn crm(token: String) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let (log, token) = (log.clone(), token.clone());
            tokio::spawn(async move {
                let Some(request) = tf_testkit::http_stub::read_request(&mut stream).await else { return };
                let line = request.lines().next().unwrap_or("").to_string();
                let authorization = request.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("authorization").then(|| v.trim().to_string())
                });
                let body = request.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
                let busy_before = log.lock().unwrap().iter().filter(|s: &&Seen| s.line.starts_with("GET /api/busy ")).count();
                log.lock().unwrap().push(Seen {
                    line: line.clone(),
                    authorization: authorization.clone(),
                    body: body.clone(),
                    at: Instant::now(),
                });
                let echoed = authorization.clone().unwrap_or_default();
                let path = line.split(' ').nth(1).unwrap_or("");
                let (status, extra, answer) = if authorization.as_deref() != Some(&format!("Bearer {token}")) {
                    ("401 Unauthorized", "", json!({"error": "unauthorized"}).to_string())
                } else if path == "/api/customers/c-1001" {
                    ("200 OK", "", json!({"id": "c-1001", "name": "Acme Corp", "segment": "enterprise", "you_sent": echoed}).to_string())
                } else if let Some(id) = path.strip_prefix("/api/customers/") {
                    ("404 Not Found", "", format!("no customer {id}; you sent {echoed}"))
                } else if path == "/api/notes" {
                    (
                        "201 Created",
                        "",
                        json!({"noted": serde_json::from_str::<Json>(&body).unwrap_or(Json::Null), "you_sent": echoed}).to_string(),
                    )
                } else if path == "/api/busy" && busy_before == 0 {
                    ("429 Too Many Requests", "retry-after: 3\r\n", "slow down".to_string())
                } else if path == "/api/busy" {
                    ("200 OK", "", "fine, thanks".to_string())
                } else {
                    ("404 Not Found", "", "no such path".to_string())
                };
                let resp = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{answer}", answer.len());
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    });
    (base, seen)
}

/// Every byte of a workflow's history, payloads included (they are JSON inside the protobuf).
async fn history_bytes(client: &temporalio_client::Client, workflow_id: &str) -> (Vec<u8>, String) {
    let events = client
        .get_workflow_handle::<UntypedWorkflow>(workflow_id)
        .fetch_history(WorkflowFetchHistoryOptions::default())
        .into_events()
        .await
        .unwrap_or_else(|e| panic!("history of {workflow_id}: {e}"));
    assert!(!events.is_empty(), "{workflow_id} has a history");
    let bytes = events.iter().flat_map(prost::Message::encode_to_vec).collect();
    (bytes, format!("{events:?}"))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_joins_the_users_database_and_crm_and_the_token_leaks_nowhere() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let token = format!("crm-{}", unique("token"));
    let (base, seen) = crm(token.clone()).await;
    let queue = unique("it-queue");

    // The operator's configuration: a datasources file (names of its own: `scripts/stack env`
    // may have set TF_DATASOURCE__ORDERS__*, and a variable wins over the file), one secret as a variable and one as a
    // file in a secrets directory (as a Kubernetes mount gives it).
    let dir = std::env::temp_dir().join(unique("tf-ds"));
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/orders_password"), "orders-reader-demo\n").unwrap();
    let orders_url = orders_db_url(&s).replace(":orders-reader-demo@", ":${secret:orders_password}@");
    std::fs::write(
        dir.join("datasources.yaml"),
        format!(
            "it_orders:\n  postgres:\n    url: \"{orders_url}\"\n    statement_timeout: 1s\nit_crm:\n  http:\n    base_url: {base}/api/\n    headers: {{Authorization: \"Bearer ${{secret:crm_token}}\"}}\n    timeout: 5s\n"
        ),
    )
    .unwrap();

    let def_id = unique("it-joins").to_lowercase();
    let yaml = format!(
        r#"
id: {def_id}
name: Joins the orders DB and the CRM
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
context:
  customer:
    http: {{datasource: it_crm, url: "'/customers/' + event.data.customer", cache: 5m}}
  orders:
    sql:
      datasource: it_orders
      query: "SELECT id, amount::text AS amount FROM orders WHERE customer_id = $1 ORDER BY id"
      params: [event.data.customer]
      cache: 5m
  loyalty:
    sql:
      datasource: it_shop
      query: "SELECT points, CAST(member_since AS CHAR) AS member_since, balance, vip FROM loyalty WHERE customer_id = ?"
      params: [event.data.customer]
tasks:
  - name: note
    type: http
    params:
      datasource: "'it_crm'"
      url: "'/notes'"
      headers: "{{'Authorization': 'Bearer ' + secret('crm_token')}}"
      body: "{{'customer': context.customer.name, 'orders': size(context.orders), 'first': context.orders[0].amount}}"
      expect: "[201]"
  - name: ping
    type: http
    execution: child
    when: "event.data.order_id == 'o-1'"
    retry: {{max_attempts: 3, initial_interval: 100ms}}
    params:
      datasource: "'it_crm'"
      url: "'/busy'"
"#
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let slow_id = unique("it-slow").to_lowercase();
    let slow = format!(
        "id: {slow_id}\nname: Slow\ntrigger: {{event: {{topics: [events.demo]}}}}\ncontext:\n  slow: {{sql: {{datasource: it_orders, query: \"SELECT pg_sleep(5) AS slept\"}}}}\ntasks:\n  - {{name: t, type: human}}\n"
    );
    let (slow_id, slow_version) = apply_definition(&pool, &slow).await;
    let slow_my_id = unique("it-slow-my").to_lowercase();
    let slow_my =
        slow.replace(&slow_id, &slow_my_id).replace("datasource: it_orders", "datasource: it_shop").replace("pg_sleep(5)", "SLEEP(5)");
    let (slow_my_id, slow_my_version) = apply_definition(&pool, &slow_my).await;
    // The MySQL datasource by variables alone, its password a secret too.
    let shop_url = shop_db_url().replace(":shop-reader-demo@", ":${secret:shop_pw}@");
    std::fs::write(dir.join("secrets/shop_pw"), "shop-reader-demo").unwrap();

    let datasources = dir.join("datasources.yaml").display().to_string();
    let secrets_dir = dir.join("secrets").display().to_string();
    let relay_id = unique("it-relay");
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_RELAY_TRANSACTIONAL_ID", &relay_id),
            ("TF_DATASOURCES", &datasources),
            ("TF_SECRETS_DIR", &secrets_dir),
            ("TF_SECRET_CRM_TOKEN", &token),
            ("TF_DATASOURCE__IT_SHOP__URL", &shop_url),
            ("TF_DATASOURCE__IT_SHOP__STATEMENT_TIMEOUT", "1s"),
            ("TF_LOG", "debug,h2=info,hyper=info,tonic=info,tower=info,rdkafka=info,sqlx=info"),
        ],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run_of = |key: &str, def: &str| tf_temporal::DedupeKey::parse(key).unwrap().run_id(def, 1).to_string();
    let run_status = |run_id: String| {
        let pool = pool.clone();
        async move {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM activity_runs WHERE run_id = $1").bind(run_id).fetch_optional(&pool).await.unwrap();
            status.filter(|s| s != "running")
        }
    };

    let order = |id: &str, customer: &str| json!({"id": format!("e-{id}"), "type": "order.created", "data": {"order_id": id, "customer": customer}});
    tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&def_id, version, "o-1", order("o-1", "c-1001"))).await.unwrap();
    tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&slow_id, slow_version, "s-1", json!({"id": "s-1"}))).await.unwrap();
    tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&slow_my_id, slow_my_version, "s-1", json!({"id": "s-1"})))
        .await
        .unwrap();
    let run1 = run_of("o-1", &def_id);
    let status = eventually("run o-1 to end", Duration::from_secs(90), || run_status(run1.clone())).await;
    assert_eq!(status, "completed", "worker log:\n{}", worker.log());

    // The second run for the same customer is answered from the cache: no second call.
    tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&def_id, version, "o-2", order("o-2", "c-1001"))).await.unwrap();
    let run2 = run_of("o-2", &def_id);
    assert_eq!(eventually("run o-2 to end", Duration::from_secs(60), || run_status(run2.clone())).await, "completed");
    // An unknown customer: the CRM's 404 (which quotes the token) fails the run for good.
    tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&def_id, version, "o-3", order("o-3", "c-404"))).await.unwrap();
    let run3 = run_of("o-3", &def_id);
    assert_eq!(eventually("run o-3 to end", Duration::from_secs(60), || run_status(run3.clone())).await, "failed");

    let (context, sources): (Json, Json) =
        sqlx::query_as("SELECT context, context_sources FROM activity_runs WHERE run_id = $1").bind(&run1).fetch_one(&pool).await.unwrap();
    assert_eq!(context["orders"], json!([{"id": "o-1", "amount": "120.50"}, {"id": "o-2", "amount": "80.00"}]));
    assert_eq!(context["customer"]["name"], "Acme Corp");
    assert_eq!(context["customer"]["you_sent"], "Bearer ***", "what the CRM echoed is masked");
    assert_eq!(context["loyalty"], json!([{"points": 420, "member_since": "2021-03-04", "balance": "12.50", "vip": true}]));
    assert_eq!((sources["customer"]["cache"].as_str(), sources["orders"]["cache"].as_str()), (Some("miss"), Some("miss")));
    let sources2: Json =
        sqlx::query_scalar("SELECT context_sources FROM activity_runs WHERE run_id = $1").bind(&run2).fetch_one(&pool).await.unwrap();
    assert_eq!((sources2["customer"]["cache"].as_str(), sources2["orders"]["cache"].as_str()), (Some("hit"), Some("hit")), "{sources2}");
    assert!(sources2["orders"]["age_ms"].is_u64(), "{sources2}");

    let requests = seen.lock().unwrap().clone();
    let customer_calls = requests.iter().filter(|r| r.line.starts_with("GET /api/customers/c-1001 ")).count();
    assert_eq!(customer_calls, 1, "{requests:#?}");
    let notes: Vec<&Seen> = requests.iter().filter(|r| r.line.starts_with("POST /api/notes ")).collect();
    assert_eq!(notes.len(), 2, "{requests:#?}");
    assert!(notes.iter().all(|n| n.authorization.as_deref() == Some(&format!("Bearer {token}"))), "the task sent the token");
    assert_eq!(serde_json::from_str::<Json>(&notes[0].body).unwrap(), json!({"customer": "Acme Corp", "orders": 2, "first": "120.50"}));
    // 429 with Retry-After: 3 was honoured (the task's own retry interval is 100 ms).
    let busy: Vec<&Seen> = requests.iter().filter(|r| r.line.starts_with("GET /api/busy ")).collect();
    assert_eq!(busy.len(), 2, "{requests:#?}");
    assert!(busy[1].at - busy[0].at >= Duration::from_millis(2500), "retried after {:?}", busy[1].at - busy[0].at);

    // A slow query is cut by the datasource's statement_timeout; the error is retryable, so the
    // run fails only after its context attempts are spent, and says why.
    let slow_run = run_of("s-1", &slow_id);
    assert_eq!(eventually("the slow run to fail", Duration::from_secs(120), || run_status(slow_run.clone())).await, "failed");
    let (_, slow_history) = history_bytes(&client, &slow_run).await;
    assert!(slow_history.contains("cut by the datasource's statement_timeout of 1s"), "{slow_history}");
    assert!(slow_history.contains("canceling statement due to statement timeout"), "{slow_history}");
    assert!(slow_history.contains("attempt: 5"), "retried to the context's attempt limit: {slow_history}");
    let slow_my_run = run_of("s-1", &slow_my_id);
    assert_eq!(eventually("the slow MySQL run to fail", Duration::from_secs(120), || run_status(slow_my_run.clone())).await, "failed");
    let (_, slow_my_history) = history_bytes(&client, &slow_my_run).await;
    assert!(slow_my_history.contains("max_statement_time exceeded"), "{slow_my_history}");
    assert!(slow_my_history.contains("cut by the datasource's statement_timeout of 1s"), "{slow_my_history}");

    // The token is nowhere it must not be: ...
    let results = eventually("3 results of the completed runs", Duration::from_secs(60), || async {
        let mut all = results_for(&run1).await;
        all.extend(results_for(&run2).await);
        (all.len() >= 3).then_some(all)
    })
    .await;
    assert_eq!(results.len(), 3, "{results:#?}");
    for r in &results {
        assert!(!r.to_string().contains(&token), "results topic: {r}");
    }
    assert!(results.iter().any(|r| r["output"].as_str().is_some_and(|o| o.contains("Bearer ***"))), "the echo is published masked");
    // ... not in Temporal history (runs with their activity tasks, a child task, the failed
    // run's error) ...
    for wf in [run1.clone(), format!("{run1}/ping/0"), run2.clone(), run3.clone()] {
        let (bytes, text) = history_bytes(&client, &wf).await;
        assert!(!contains(&bytes, &token), "history of {wf}:\n{text}");
        if wf == run3 {
            assert!(text.contains("no customer c-404; you sent Bearer ***"), "the error stays useful: {text}");
        }
    }
    // ... not in the database (runs, tasks, outbox) ...
    for table in ["activity_runs", "tasks", "task_results"] {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t")).fetch_all(&pool).await.unwrap();
        assert!(!rows.is_empty(), "{table} has rows");
        assert!(rows.iter().all(|r| !r.contains(&token)), "{table}: {rows:#?}");
    }
    let params: Json =
        sqlx::query_scalar("SELECT params FROM tasks WHERE task_id = $1").bind(format!("{run1}/note/0")).fetch_one(&pool).await.unwrap();
    assert_eq!(params["headers"], json!({"Authorization": "Bearer ${secret:crm_token}"}), "the reference is stored, not the value");
    // ... and not in the worker's log.
    let log = worker.log();
    assert!(log.contains("datasources configured"), "{log}");
    for secret in [token.as_str(), "orders-reader-demo", "shop-reader-demo"] {
        assert!(!log.contains(secret), "worker log:\n{log}");
    }
}
