//! Runs that unfold over time (docs/steps.md) on the real stack: a chain whose tasks read the
//! outputs of those before them, a durable sleep between them, and a failed first step that
//! skips its dependents (except one marked `always`).

use std::collections::HashMap;

use super::*;

#[tokio::test]
async fn a_chain_reads_earlier_outputs_sleeps_and_a_failure_skips_its_dependents() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let stub = tf_testkit::http_stub::HttpStub::start().await;
    let queue = unique("it-queue");
    let sink = unique("it-chain");
    create_topic(&s, &sink, 1).await;
    let def_id = unique("it-chain").to_lowercase();
    let base = &stub.base;
    let yaml = format!(
        r#"
id: {def_id}
name: Chain
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.key}}
tasks:
  - name: one
    type: http
    retry: {{max_attempts: 1}}
    params: {{url: "'{base}/one/' + event.data.key", expect: event.data.expect}}
  - name: two
    type: http
    after: [one]
    params: {{url: "'{base}/two/' + string(tasks.one.output.status)"}}
  - name: nap
    type: sleep
    after: [one]
    params: {{for: "'2s'"}}
  - name: three
    type: kafka
    after: [two, nap]
    params:
      topic: "'{sink}'"
      value: "{{'one': tasks.one.output.body.request, 'two': tasks.two.output.body.request, 'nap': tasks.nap.status}}"
  - name: cleanup
    type: kafka
    after: [one]
    always: true
    params: {{topic: "'{sink}'", value: "{{'cleanup': tasks.one.status}}"}}
"#
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let w = worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    for (key, expect) in [("ok", json!([200])), ("bad", json!([201]))] {
        let event = json!({"id": format!("e-{key}"), "type": "t", "data": {"key": key, "expect": expect}});
        tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&def_id, version, key, event)).await.unwrap();
    }
    let run = |key: &str| tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string();
    let ended = |run_id: String| {
        let pool = pool.clone();
        async move {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT status FROM activity_runs WHERE run_id = $1 AND status NOT IN ('running', 'waiting')")
                    .bind(run_id)
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            row.map(|r| r.0)
        }
    };
    let ok = eventually(&format!("the chain to end; worker:\n{}", w.log()), Duration::from_secs(90), || ended(run("ok"))).await;
    let bad = eventually("the failed chain to end", Duration::from_secs(90), || ended(run("bad"))).await;
    assert_eq!((ok.as_str(), bad.as_str()), ("completed", "failed"), "worker:\n{}", w.log());

    let tasks = |run_id: String| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, String, Option<String>, Option<Json>)> =
                sqlx::query_as("SELECT template, status, error, output FROM tasks WHERE run_id = $1 ORDER BY created_at, template")
                    .bind(run_id)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            rows
        }
    };
    let done = tasks(run("ok")).await;
    let status: Vec<(&str, &str)> = done.iter().map(|t| (t.0.as_str(), t.1.as_str())).collect();
    for t in ["one", "two", "nap", "three", "cleanup"] {
        assert!(status.contains(&(t, "succeeded")), "{t} succeeded: {status:?}");
    }
    // The plan follows `after`: one first, three last (after the two-second sleep).
    assert_eq!(status.first(), Some(&("one", "succeeded")), "{status:?}");
    assert_eq!(status.last().map(|t| t.0), Some("three"), "{status:?}");
    let (slept_from, slept_to): (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM n.created_at)::float8, extract(epoch FROM t.created_at)::float8
         FROM tasks n JOIN tasks t ON t.run_id = n.run_id AND t.template = 'three' WHERE n.run_id = $1 AND n.template = 'nap'",
    )
    .bind(run("ok"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(slept_to - slept_from >= 2.0, "three was planned {:.2} s after the nap began", slept_to - slept_from);

    let values: Vec<Json> = tf_testkit::read_json_values(&sink, 3).await;
    let three = values.iter().find(|v| v.get("one").is_some()).unwrap_or_else(|| panic!("three's record: {values:?}"));
    assert_eq!(three, &json!({"one": "GET /one/ok HTTP/1.1", "two": "GET /two/200 HTTP/1.1", "nap": "succeeded"}));
    assert!(values.contains(&json!({"cleanup": "succeeded"})) && values.contains(&json!({"cleanup": "failed"})), "{values:?}");

    let failed = tasks(run("bad")).await;
    let by: HashMap<&str, (&str, Option<&str>)> = failed.iter().map(|t| (t.0.as_str(), (t.1.as_str(), t.2.as_deref()))).collect();
    assert_eq!(by["one"].0, "failed", "{failed:?}");
    assert_eq!(by["two"], ("skipped", Some("skipped: one failed")));
    assert_eq!(by["nap"], ("skipped", Some("skipped: one failed")));
    assert_eq!(by["three"], ("skipped", Some("skipped: two skipped")));
    assert_eq!(by["cleanup"].0, "succeeded", "always runs after a failure");
    assert_eq!(stub.requests().iter().filter(|r| r.contains("/two/")).count(), 1, "two ran for the good chain only");
    let results: i64 =
        sqlx::query_scalar("SELECT count(*) FROM task_results WHERE run_id = $1").bind(run("bad")).fetch_one(&pool).await.unwrap();
    assert_eq!(results, 2, "one result each for one and cleanup; a skipped task has none");
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

/// More inline tasks than `futures::join_all` polls by itself (30; past it, it polls through a
/// FuturesOrdered whose wakers the SDK refuses as nondeterministic): a plain run and a run that
/// unfolds, each with 40 kafka tasks of one template, complete with 40 results.
#[tokio::test]
async fn forty_inline_tasks_of_one_template_complete() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let sink = unique("it-forty");
    create_topic(&s, &sink, 1).await;
    let task = format!("{{name: ship, type: kafka, for_each: event.data.items, params: {{topic: \"'{sink}'\", value: item}}}}");
    let plain = unique("it-forty").to_lowercase();
    let unfolding = unique("it-forty-steps").to_lowercase();
    let head = |id: &str| {
        format!("id: {id}\nname: Forty\ntrigger: {{event: {{topics: [events.demo]}}}}\ndedupe: {{key: event.data.key}}\ntasks:\n")
    };
    let (plain, v1) = apply_definition(&pool, &format!("{}  - {task}\n", head(&plain))).await;
    let steps = format!(
        "{}  - {{name: nap, type: sleep, params: {{for: \"'10ms'\"}}}}\n  - {}, after: [nap]}}\n",
        head(&unfolding),
        task.strip_suffix('}').unwrap()
    );
    let (unfolding, v2) = apply_definition(&pool, &steps).await;
    let w = worker(&db.url, &queue, &[("TF_NO_RELAY", "true")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let items: Vec<i32> = (0..40).collect();
    for (def, version) in [(&plain, v1), (&unfolding, v2)] {
        let event = json!({"id": "e-40", "type": "t", "data": {"key": "k", "items": items}});
        tf_temporal::start_run(&client, &queue, tf_testkit::run_input(def, version, "k", event)).await.unwrap();
    }
    for def in [&plain, &unfolding] {
        let run_id = tf_temporal::DedupeKey::parse("k").unwrap().run_id(def, 1).to_string();
        let status = tf_testkit::run_ended(&pool, &run_id, &w.log()).await;
        let results: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE run_id = $1 AND task_id LIKE '%/ship/%'")
            .bind(&run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!((status.as_str(), results), ("completed", 40), "{def}; worker:\n{}", w.log());
    }
    tf_testkit::delete_topics(&s, &[&sink]).await;
}
