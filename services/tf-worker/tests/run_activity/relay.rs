//! The results relay: one record per result, exactly once, across failover, a missing marker, a
//! refusing registry, a zombie transaction, and results too large to publish.

use super::*;

#[tokio::test]
async fn recording_a_result_twice_queues_it_once() {
    let s = settings();
    let (_db, pool) = FreshDatabase::migrated(&s).await;
    let (def_id, version) =
        apply_definition(&pool, "id: once\nname: Once\ntrigger: {event: {topics: [t]}}\ntasks: [{name: t, type: human}]\n").await;
    let source = tf_store::runs::RunSource::of(tf_store::runs::TriggerKind::Manual);
    let (run_id, task_id) = (tf_definitions::RunId::from_workflow_id("r1"), tf_definitions::RunId::from_workflow_id("r1").task("t", 0));
    let begin = tf_store::runs::BeginRun {
        run_id: &run_id,
        execution_id: "x1",
        definition_id: &def_id,
        definition_version: version,
        dedupe_key: "k",
        generation: None,
        event_time_ms: 1_000,
        dedupe_window: Duration::from_secs(60),
        fired_at_ms: 0,
        traceparent: None,
        source: &source,
        input: None,
        operator_retry: false,
    };
    let claimed = tf_store::runs::Claim::Claimed { generation: 1, attempt: 1, succeeded: vec![] };
    assert_eq!(tf_store::runs::begin_run(&pool, &begin).await.unwrap(), claimed);
    assert_eq!(tf_store::runs::begin_run(&pool, &begin).await.unwrap(), claimed, "a retried activity keeps its claim");
    let other = tf_store::runs::BeginRun { execution_id: "x2", ..begin };
    assert!(matches!(tf_store::runs::begin_run(&pool, &other).await.unwrap(), tf_store::runs::Claim::HeldBy { .. }));
    let params = json!({});
    tf_store::tasks::record_tasks(
        &pool,
        &run_id,
        &[tf_store::tasks::NewTask {
            task_id: &task_id,
            run_attempt: 1,
            template: "t",
            index: 0,
            task_type: tf_definitions::TaskType::Human,
            params: &params,
        }],
    )
    .await
    .unwrap();
    let record = json!({"any": "record"});
    let outcome = tf_store::outbox::FinishedTask {
        task_id: &task_id,
        run_id: &run_id,
        status: tf_definitions::TaskStatus::Succeeded,
        output: None,
        error: None,
        attempts: 1,
        record: &record,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    };
    // The first attempt recorded the result, then died before reporting success; Temporal
    // runs the activity again.
    assert!(tf_store::outbox::record_result(&pool, &outcome).await.unwrap());
    assert!(!tf_store::outbox::record_result(&pool, &outcome).await.unwrap());
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results").fetch_one(&pool).await.unwrap();
    assert_eq!(queued, 1);
}

#[tokio::test]
async fn the_results_relay_fails_over_to_another_worker() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let (sink, def_id, version) = kafka_task_definition(&pool, "it-failover").await;
    let relay_id = unique("it-relay");
    let metrics = [tf_testkit::free_local_addr(), tf_testkit::free_local_addr()];
    let mut workers =
        [0, 1].map(|i| worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &relay_id), ("TF_WORKER_METRICS_ADDR", &metrics[i])]));
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();

    let published = |key: &'static str| {
        let (pool, run_id) = (pool.clone(), tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string());
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE run_id = $1 AND published_at IS NOT NULL")
                .bind(&run_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            (n == 1).then_some(())
        }
    };
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "f-1", json!({"data": {"order_id": "f-1"}}))).await.unwrap();
    eventually("the first result published", Duration::from_secs(60), || published("f-1")).await;

    let leader = workers.iter().position(|w| w.log().contains("this worker runs the results relay")).expect("one worker leads the relay");
    assert!(!workers[1 - leader].log().contains("this worker runs the results relay"), "exactly one relay");
    let gauge = |i: usize| tf_testkit::scrape_metric(&metrics[i], "tf_worker_relay_leader");
    assert_eq!((gauge(leader), gauge(1 - leader)), (Some(1.0), Some(0.0)));
    assert_eq!(tf_testkit::scrape_metric(&metrics[leader], "tf_worker_results_published_total"), Some(1.0));
    workers[leader].kill();

    tf_temporal::start_run(&client, &queue, input(&def_id, version, "f-2", json!({"data": {"order_id": "f-2"}}))).await.unwrap();
    eventually("the second result published by the other worker", Duration::from_secs(90), || published("f-2")).await;
    assert!(workers[1 - leader].log().contains("this worker runs the results relay"));
    assert_eq!(gauge(1 - leader), Some(1.0));
    for key in ["f-1", "f-2"] {
        let results = tf_testkit::published_results(
            "the result on the topic",
            &tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string(),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(results.len(), 1, "exactly one result for {key}");
    }
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

/// A sink topic and a definition of one `kafka` task writing each order event to it, the shape
/// the relay tests publish results of: (sink, definition id, version).
async fn kafka_task_definition(pool: &sqlx::PgPool, prefix: &str) -> (String, String, i32) {
    let sink = unique(&format!("{prefix}-sink"));
    create_topic(&settings(), &sink, 1).await;
    let yaml = format!(
        "id: {}\nname: Relayed\ntrigger: {{event: {{topics: [events.demo]}}}}\ndedupe: {{key: event.data.order_id}}\ntasks:\n  - {{name: t, type: kafka, params: {{topic: \"'{sink}'\", value: 'event.data'}}}}\n",
        unique(prefix).to_lowercase()
    );
    let (def_id, version) = apply_definition(pool, &yaml).await;
    (sink, def_id, version)
}

/// A relay that finds no marker of its own (TF_RELAY_TRANSACTIONAL_ID changed, or the marker
/// topic lost its records) resumes after what the outbox records as published: it does not
/// publish the whole outbox again.
#[tokio::test]
async fn a_relay_without_a_marker_does_not_publish_the_outbox_again() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let (sink, def_id, version) = kafka_task_definition(&pool, "it-nomarker").await;
    let worker = |relay_id: String| tf_testkit::worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &relay_id)]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run = |key: &str| tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string();
    let published = |key: &'static str| {
        let (pool, run_id) = (pool.clone(), run(key));
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE run_id = $1 AND published_at IS NOT NULL")
                .bind(&run_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            (n == 1).then_some(())
        }
    };
    let mut first = worker(unique("it-relay"));
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "m-1", json!({"data": {"order_id": "m-1"}}))).await.unwrap();
    eventually("the first result published", Duration::from_secs(60), || published("m-1")).await;
    first.terminate();
    // A new transactional id: its marker does not exist.
    let second = worker(unique("it-relay"));
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "m-2", json!({"data": {"order_id": "m-2"}}))).await.unwrap();
    eventually(&format!("the second result published; log:\n{}", second.log()), Duration::from_secs(60), || published("m-2")).await;
    for key in ["m-1", "m-2"] {
        let results = tf_testkit::published_results("the result on the topic", &run(key), Duration::from_secs(30)).await;
        // Read again after the second's result is there, so a republished first would be seen.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(results_for(&run(key)).await.len(), 1, "exactly one result for {key}: {results:?}");
    }
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

/// The schema registry refusing the result schema (409 from a subject's compatibility rule)
/// says nothing about any one result: the relay pauses and says so, quarantines nothing, and
/// publishes once the registry takes the schema again.
#[tokio::test]
async fn a_registry_refusing_the_result_schema_pauses_the_relay_and_quarantines_nothing() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let (sink, def_id, version) = kafka_task_definition(&pool, "it-refused").await;
    let registry = reqwest::Url::parse(&s.schema_registry_url).unwrap();
    let upstream = format!("{}:{}", registry.host_str().unwrap(), registry.port_or_known_default().unwrap());
    let proxy = tf_testkit::fault_proxy::start(
        &upstream,
        "POST /apis/ccompat/v7/subjects/taskfactory.results-value/versions",
        409,
        r#"{"error_code": 409, "message": "Schema being registered is incompatible with an earlier schema"}"#,
    )
    .await;
    let proxied = format!("{}{}", proxy.base, registry.path());
    let relay_id = unique("it-relay");
    let metrics = tf_testkit::free_local_addr();
    let mut worker = worker(
        &db.url,
        &queue,
        &[("TF_RELAY_TRANSACTIONAL_ID", &relay_id), ("TF_SCHEMA_REGISTRY_URL", &proxied), ("TF_WORKER_METRICS_ADDR", &metrics)],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "r-1", json!({"data": {"order_id": "r-1"}}))).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse("r-1").unwrap().run_id(&def_id, 1).to_string();
    eventually(&format!("the relay to pause on the refusal; log:\n{}", worker.log()), Duration::from_secs(60), || async {
        (tf_testkit::scrape_metric(&metrics, "tf_worker_relay_blocked") == Some(1.0)).then_some(())
    })
    .await;
    assert!(proxy.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let row: (bool, bool) =
        sqlx::query_as("SELECT published_at IS NOT NULL, quarantined_at IS NOT NULL FROM task_results WHERE run_id = $1")
            .bind(&run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row, (false, false), "neither published nor quarantined while the registry refuses");
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_worker_results_quarantined_total"), Some(0.0));
    worker.terminate();

    // The registry takes the schema again (here: the worker reaches it directly).
    let _worker = tf_testkit::worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &relay_id)]);
    let results = tf_testkit::published_results("the result published", &run_id, Duration::from_secs(60)).await;
    assert_eq!(results.len(), 1, "{results:?}");
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

/// A relay that takes over while another relay's transaction is open on the shared marker
/// topic (a relay killed mid-batch leaves one open until transaction.timeout.ms) must wait for
/// it, not resume from the last marker before it: that marker is stale when the old leader
/// committed more after the open transaction began, and every result since would be published
/// twice (seen once in CI's chaos run).
#[tokio::test]
async fn a_relay_taking_over_behind_another_relays_open_transaction_publishes_nothing_twice() {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let (sink, def_id, version) = kafka_task_definition(&pool, "it-zombie").await;
    let relay_id = unique("it-relay");
    let spawn_worker = || worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &relay_id)]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run_id = |key: &str| tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string();
    let run = |key: &'static str| {
        let (client, queue, pool, run_id) = (client.clone(), queue.clone(), pool.clone(), run_id(key));
        let input = input(&def_id, version, key, json!({"data": {"order_id": key}}));
        async move {
            tf_temporal::start_run(&client, &queue, input).await.unwrap();
            eventually(&format!("{key}'s result published"), Duration::from_secs(120), || async {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE run_id = $1 AND published_at IS NOT NULL")
                    .bind(&run_id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                (n == 1).then_some(())
            })
            .await;
        }
    };

    let mut first = spawn_worker();
    run("z-1").await;
    // Another deployment's relay opens a transaction on the marker topic and stays in it.
    let zombie: FutureProducer = tf_kafka::client_config(&s.kafka_brokers)
        .set("transactional.id", unique("it-zombie-relay"))
        .set("transaction.timeout.ms", "30000")
        .create()
        .unwrap();
    let z = zombie.clone();
    tokio::task::spawn_blocking(move || z.init_transactions(Duration::from_secs(30))).await.unwrap().unwrap();
    zombie.begin_transaction().unwrap();
    zombie.send(FutureRecord::to("taskfactory.results-relay").key("it-zombie").payload("{}"), Duration::from_secs(10)).await.unwrap();
    // The first relay commits z-2 behind it, then dies; the second takes over.
    run("z-2").await;
    first.kill();
    // As if the first relay died between its Kafka commit and recording it: z-2 is on the
    // topic but the database does not know. The next relay must mark it, not republish it.
    sqlx::query("UPDATE task_results SET published_at = NULL, published_partition = NULL, published_offset = NULL WHERE run_id = $1")
        .bind(run_id("z-2"))
        .execute(&pool)
        .await
        .unwrap();
    let second = spawn_worker();
    eventually("the second worker to lead the relay", Duration::from_secs(60), || async {
        second.log().contains("this worker runs the results relay").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!second.log().contains("results relay started"), "the relay must not start behind an open transaction:\n{}", second.log());
    let z = zombie.clone();
    tokio::task::spawn_blocking(move || z.abort_transaction(Duration::from_secs(30))).await.unwrap().unwrap();
    run("z-3").await;
    let unmarked: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE published_at IS NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(unmarked, 0, "z-2, committed by the first relay, is marked published by the second");
    assert!(second.log().contains("results committed by an earlier relay marked as published"), "{}", second.log());
    for key in ["z-1", "z-2", "z-3"] {
        let results = tf_testkit::published_results("the result on the topic", &run_id(key), Duration::from_secs(30)).await;
        assert_eq!(results.len(), 1, "exactly one result for {key}; second worker's log:\n{}", second.log());
    }
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

#[tokio::test]
async fn an_oversize_result_is_published_truncated_and_an_unpublishable_one_is_quarantined() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let id = unique("it-big").to_lowercase();
    let (def_id, version) = apply_definition(
        &pool,
        &format!("id: {id}\nname: Big\ntrigger: {{event: {{topics: [t]}}}}\ntasks: [{{name: review, type: human}}]\n"),
    )
    .await;
    let relay_id = unique("it-relay");
    let metrics = tf_testkit::free_local_addr();
    let worker = worker(
        &db.url,
        &queue,
        &[("TF_RELAY_TRANSACTIONAL_ID", &relay_id), ("TF_RESULT_MAX_BYTES", "20000"), ("TF_WORKER_METRICS_ADDR", &metrics)],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "big-1", json!({"id": "e"}))).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse("big-1").unwrap().run_id(&def_id, 1).to_string();
    let review = format!("{run_id}/review/0");
    eventually(&format!("the review to await a human; log:\n{}", worker.log()), Duration::from_secs(60), || async {
        let st: Option<String> =
            sqlx::query_scalar("SELECT status FROM tasks WHERE task_id = $1").bind(&review).fetch_optional(&pool).await.unwrap();
        (st.as_deref() == Some("awaiting_human")).then_some(())
    })
    .await;
    // A row whose stored record is not a result at all: it must not hold up the others.
    sqlx::query("INSERT INTO tasks (task_id, run_id, template, item_index, task_type, params) VALUES ($1, $2, 'bogus', 0, 'human', '{}')")
        .bind(format!("{run_id}/bogus/0"))
        .bind(&run_id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO task_results (task_id, run_id, record) VALUES ($1, $2, '{\"not\": \"a result\"}')")
        .bind(format!("{run_id}/bogus/0"))
        .bind(&run_id)
        .execute(&pool)
        .await
        .unwrap();
    let big = json!({"blob": "y".repeat(50_000)}).to_string();
    let done = std::process::Command::new(workspace_binary("tf"))
        .args(["tasks", "complete", &review, "--result", &big])
        .env("TF_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let results = tf_testkit::published_results("the review's result", &run_id, Duration::from_secs(60)).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["task_id"], review.as_str());
    assert_eq!(results[0]["truncated"], true);
    let note: Json = serde_json::from_str(results[0]["output"].as_str().unwrap()).unwrap();
    assert_eq!(note["task_id"], review.as_str());
    assert!(note["original_bytes"].as_u64().unwrap() > 50_000, "{note}");
    let stored: Json = sqlx::query_scalar("SELECT output FROM tasks WHERE task_id = $1").bind(&review).fetch_one(&pool).await.unwrap();
    assert_eq!(stored["blob"].as_str().unwrap().len(), 50_000, "the full output stays in the tasks table");
    let reason: Option<String> = sqlx::query_scalar("SELECT quarantine_reason FROM task_results WHERE task_id = $1")
        .bind(format!("{run_id}/bogus/0"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(reason.is_some_and(|r| r.contains("missing field")), "the bogus row is quarantined with its reason");
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_worker_results_quarantined_total"), Some(1.0));
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_worker_results_truncated_total"), Some(1.0));

    // Operators see what was set aside, and queue it again once its cause is fixed; the relay,
    // whose marker moved past it, reads it next (this row is still not a result, so it is
    // quarantined again: the second count shows the relay took it up).
    let tf = |args: &[&str]| {
        let out = std::process::Command::new(workspace_binary("tf")).args(args).env("TF_DATABASE_URL", &db.url).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, listed) = tf(&["results", "quarantined", "-o", "json"]);
    assert!(ok, "{listed}");
    let listed: Json = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["task_id"], format!("{run_id}/bogus/0"), "{listed}");
    assert!(listed[0]["reason"].as_str().unwrap().contains("missing field"), "{listed}");
    let (ok, out) = tf(&["results", "requeue", &format!("{run_id}/bogus/0")]);
    assert!(ok && out.contains("queued again"), "{out}");
    eventually("the relay to take the re-queued result up", Duration::from_secs(60), || async {
        (tf_testkit::scrape_metric(&metrics, "tf_worker_results_quarantined_total") == Some(2.0)).then_some(())
    })
    .await;
    let (ok, out) = tf(&["results", "requeue", "no/such/task"]);
    assert!(!ok && out.contains("not quarantined"), "{out}");
}
