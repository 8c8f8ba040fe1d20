//! `tf-loadtest clean` on the real stack: what load tests leave (topics, a definition, a chaos
//! database) goes, and nothing else. Its own test binary: cargo runs test binaries one after
//! another, so it never removes the topics of the chaos test while that one runs.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use tf_testkit::{apply_definition, create_topic, delete_topics, kafka_admin, settings, topic_gone, unique};

async fn exists(topic: &str) -> bool {
    tf_kafka::topics::describe(&kafka_admin(&settings()), topic).await.unwrap().is_some()
}

fn clean(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tf-loadtest")).arg("clean").args(args).output().expect("running tf-loadtest clean");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test]
async fn clean_removes_what_load_tests_left_and_nothing_else() {
    let s = settings();
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() % 1_000_000_000;
    let (events, sink, other) = (format!("events.loadtest-{nonce}"), format!("chaos-{nonce}-sink"), unique("it-not-a-load-test"));
    for t in [&events, &sink, &other] {
        create_topic(&s, t, 1).await;
    }
    let pool = tf_store::connect(&s.database_url).await.unwrap();
    let def_id = format!("loadtest-{nonce}");
    apply_definition(
        &pool,
        &format!("id: {def_id}\nname: Left over\ntrigger: {{event: {{topics: [{events}]}}}}\ntasks: [{{name: noop, type: human, when: 'false'}}]\n"),
    )
    .await;
    let database = format!("tf_chaos_{nonce}");
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&pool).await.unwrap();
    let retired = || sqlx::query_scalar::<_, bool>("SELECT bool_and(retired) FROM activity_definitions WHERE id = $1").bind(&def_id);
    let has_database = || sqlx::query_scalar::<_, bool>("SELECT count(*) = 1 FROM pg_database WHERE datname = $1").bind(&database);

    let listed = clean(&["--dry-run"]);
    for name in [&events, &sink, &def_id, &database] {
        assert!(listed.contains(name.as_str()), "{name} not listed:\n{listed}");
    }
    assert!(!listed.contains(&other), "{listed}");
    assert!(exists(&events).await && exists(&sink).await, "a dry run removes nothing");
    assert!(!retired().fetch_one(&pool).await.unwrap());
    assert!(has_database().fetch_one(&pool).await.unwrap());

    let out = clean(&[]);
    assert!(out.contains("removed topics") && out.contains(&format!("dropped database {database}")), "{out}");
    assert!(retired().fetch_one(&pool).await.unwrap(), "the definition is retired:\n{out}");
    assert!(!has_database().fetch_one(&pool).await.unwrap(), "{out}");
    for t in [&events, &sink] {
        assert!(topic_gone(&s, t).await, "{t} still exists:\n{out}");
    }
    assert!(exists(&other).await, "a topic no load test made stays");
    delete_topics(&s, &[&other]).await;
}
