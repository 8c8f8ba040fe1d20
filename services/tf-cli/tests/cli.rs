//! The `tf` binary itself, spawned as an operator would run it, against the real stack.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::path::Path;
use std::process::{Command, Output};

use tf_testkit::{FreshDatabase, create_topic, delete_topics, repo_root, settings, unique};

fn tf(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let out =
        Command::new(env!("CARGO_BIN_EXE_tf")).args(args).envs(envs.iter().copied()).current_dir(repo_root()).output().expect("spawn tf");
    eprintln!("tf {args:?}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write_spec(dir: &Path, name: &str, partitions: i32, schema: Option<&str>) {
    let schema = schema.map(|s| format!("value_schema: {s}\n")).unwrap_or_default();
    std::fs::write(
        dir.join(format!("{name}.yaml")),
        format!("name: {name}\npartitions: {partitions}\nreplication_factor: 1\n{schema}config:\n  retention.ms: \"86400000\"\n"),
    )
    .unwrap();
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["topics", "apply", "--help"],
        vec!["schemas", "register", "--help"],
        vec!["db", "migrate", "--help"],
        vec!["demo", "roundtrip", "--help"],
        vec!["definitions", "validate", "--help"],
        vec!["definitions", "apply", "--help"],
        vec!["definitions", "list", "--help"],
        vec!["definitions", "show", "--help"],
        vec!["definitions", "delete", "--help"],
        vec!["schedules", "backfill", "--help"],
        vec!["schedules", "describe", "--help"],
        vec!["runs", "list", "--help"],
        vec!["tasks", "complete", "--help"],
    ] {
        let out = tf(&args, &[]);
        assert!(out.status.success(), "{args:?}");
        assert!(stdout(&out).contains("Usage: tf"), "{args:?}");
    }
    let top = stdout(&tf(&["--help"], &[]));
    for word in ["topics", "schemas", "db", "demo", "TF_KAFKA_BROKERS", "TF_DATABASE_URL"] {
        assert!(top.contains(word), "--help lacks {word}");
    }
}

#[tokio::test]
async fn topics_apply_is_idempotent_and_reports_drift() {
    let s = settings();
    let name = unique("it-cli-topic");
    let dir = temp_dir(&name);
    write_spec(&dir, &name, 2, None);
    let d = dir.to_str().unwrap();

    let first = tf(&["topics", "apply", "--dir", d], &[]);
    assert!(first.status.success());
    assert!(stdout(&first).contains(&format!("created    {name}")));
    let second = tf(&["topics", "apply", "--dir", d], &[]);
    assert!(stdout(&second).contains(&format!("unchanged  {name}")));

    write_spec(&dir, &name, 3, None);
    let drift = tf(&["topics", "apply", "--dir", d], &[]);
    assert!(drift.status.success(), "drift alone is a report, not a failure");
    assert!(stdout(&drift).contains(&format!("DRIFT      {name}")));
    assert!(stdout(&drift).contains("partitions: spec 3, broker 2"));
    let strict = tf(&["topics", "apply", "--dir", d, "--fail-on-drift"], &[]);
    assert_eq!(strict.status.code(), Some(3));

    std::fs::write(dir.join("broken.yaml"), "name: x\npartitions: many\n").unwrap();
    let broken = tf(&["topics", "apply", "--dir", d], &[]);
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("broken.yaml"), "the error names the file");
    delete_topics(&s, &[&name]).await;
}

#[test]
fn schemas_register_is_idempotent() {
    let name = unique("it-cli-schema");
    let dir = temp_dir(&name);
    write_spec(&dir, &name, 1, Some("envelope"));
    let args = ["schemas", "register", "--topics", dir.to_str().unwrap()];
    let first = tf(&args, &[]);
    assert!(first.status.success());
    assert!(stdout(&first).contains(&format!("registered {name}-value <- schemas/avro/envelope.avsc")));
    let second = tf(&args, &[]);
    assert!(stdout(&second).contains(&format!("unchanged  {name}-value")));

    write_spec(&dir, &name, 1, Some("no_such_schema"));
    let missing = tf(&args, &[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no_such_schema.avsc"));
}

#[tokio::test]
async fn db_migrate_twice_is_clean() {
    let db = FreshDatabase::create(&settings()).await;
    let env = [("TF_DATABASE_URL", db.url.as_str())];
    let first = tf(&["db", "migrate"], &env);
    assert!(first.status.success());
    assert!(stdout(&first).contains("applied"));
    let second = tf(&["db", "migrate"], &env);
    assert!(second.status.success());
    assert!(stdout(&second).contains("up to date") && !stdout(&second).contains("applied"));
}

#[tokio::test]
async fn demo_roundtrip_goes_through_kafka_and_the_registry() {
    let s = settings();
    let topic = unique("it-cli-demo");
    create_topic(&s, &topic, 1).await;
    let out = tf(&["demo", "roundtrip", "--topic", &topic], &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&format!("to {topic}[0]@0")), "{text}");
    assert!(text.contains("round trip OK"), "{text}");
    delete_topics(&s, &[&topic]).await;
}

#[test]
fn an_unreachable_service_is_named_in_the_error() {
    let out = tf(&["db", "migrate"], &[("TF_DATABASE_URL", "postgres://u:pw@127.0.0.1:9/x")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to PostgreSQL at postgres://u:***@127.0.0.1:9/x"), "{err}");
}

#[tokio::test]
async fn definitions_validate_apply_list_show() {
    let db = FreshDatabase::create(&settings()).await;
    let env = [("TF_DATABASE_URL", db.url.as_str())];
    assert!(tf(&["db", "migrate"], &env).status.success());

    let ok = tf(&["definitions", "validate", "-f", "examples/definitions"], &[]);
    assert!(ok.status.success());
    assert!(stdout(&ok).contains("5 definition(s) valid"));
    // With the operator's datasources in sight, the names definitions use are checked too.
    let followup = "examples/definitions/order-followup.yaml";
    let known = tf(&["definitions", "validate", "-f", followup], &[("TF_DATASOURCE__ORDERS__URL", "postgres://r@db.internal/orders")]);
    assert!(known.status.success());
    let wrong = tf(&["definitions", "validate", "-f", followup], &[("TF_DATASOURCE__ORDERS__URL", "https://orders.example.com")]);
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        err.contains("context.customer.sql.datasource: datasource \"orders\" is a http datasource; this needs a postgres or mysql one"),
        "{err}"
    );

    let dir = temp_dir(&unique("it-cli-defs"));
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "id: Bad Id\nname: x\ntrigger:\n  event:\n    topics: [t]\n    filter: event.data.x >\ntasks:\n  - name: t\n    type: http\n    params: {}\n").unwrap();
    let invalid = tf(&["definitions", "validate", "-f", bad.to_str().unwrap()], &[]);
    assert!(!invalid.status.success());
    let err = String::from_utf8_lossy(&invalid.stderr);
    for needle in [
        "bad.yaml is not a valid activity definition",
        "id: \"Bad Id\"",
        "trigger.event.filter: line 1 column",
        "tasks[0].params.url: required for a http task",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }

    let first = tf(&["definitions", "apply", "-f", "examples/definitions"], &env);
    assert!(stdout(&first).contains("created    order-fulfilment v1"));
    let again = tf(&["definitions", "apply", "-f", "examples/definitions"], &env);
    assert!(stdout(&again).contains("unchanged  order-fulfilment v1"));

    let changed = dir.join("welcome.yaml");
    let text = std::fs::read_to_string(repo_root().join("examples/definitions/signup-welcome.yaml")).unwrap();
    std::fs::write(&changed, text.replace("window: 7d", "window: 3d")).unwrap();
    let v2 = tf(&["definitions", "apply", "-f", changed.to_str().unwrap()], &env);
    assert!(stdout(&v2).contains("new version signup-welcome v2 (was v1"), "{}", stdout(&v2));

    let list = stdout(&tf(&["definitions", "list"], &env));
    assert!(list.lines().any(|l| l.starts_with("signup-welcome") && l.contains(" 2 ")), "{list}");
    let show = stdout(&tf(&["definitions", "show", "signup-welcome", "1"], &env));
    assert!(show.starts_with("# signup-welcome v1 (disabled;") && show.contains("window: 7d"), "{show}");
}

#[test]
fn cron_definitions_are_validated_and_previewed() {
    let ok = tf(&["definitions", "validate", "-f", "examples/definitions/hourly-digest.yaml"], &[]);
    assert!(ok.status.success());
    let text = stdout(&ok);
    assert!(text.contains("cron \"0 * * * *\" in Europe/Berlin"), "{text}");
    let next = text.lines().find(|l| l.contains("next fire times:")).expect("a preview line");
    assert_eq!(next.matches(":00:00+").count(), 5, "five hourly fire times: {next}");

    let dir = temp_dir(&unique("it-cli-cron"));
    let bad = dir.join("bad-cron.yaml");
    std::fs::write(
        &bad,
        "id: bad\nname: b\ntrigger: {cron: {expression: '0 25 * * *', timezone: Mars/Base}}\ntasks: [{name: t, type: human}]\n",
    )
    .unwrap();
    let out = tf(&["definitions", "validate", "-f", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trigger.cron.expression:"), "{err}");
    std::fs::write(
        &bad,
        "id: bad\nname: b\ntrigger: {cron: {expression: '0 2 * * *', timezone: Mars/Base}}\ntasks: [{name: t, type: human}]\n",
    )
    .unwrap();
    let err = String::from_utf8_lossy(&tf(&["definitions", "validate", "-f", bad.to_str().unwrap()], &[]).stderr).into_owned();
    assert!(err.contains("trigger.cron.timezone: \"Mars/Base\" is not an IANA time zone name"), "{err}");
}

#[test]
fn definitions_test_shows_what_a_sample_event_would_run() {
    let dir = std::env::temp_dir().join(unique("it-deftest"));
    std::fs::create_dir_all(&dir).unwrap();
    let gold = dir.join("gold.json");
    std::fs::write(
        &gold,
        r#"{"id": "e1", "type": "com.example.order.created", "source": "/shop", "data": {"order_id": "o-7", "amount": 250, "customer_tier": "gold", "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}}"#,
    )
    .unwrap();
    let out = tf(&["definitions", "test", "-f", "examples/definitions/order-fulfilment.yaml", "--event", gold.to_str().unwrap()], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("order-fulfilment: one run per window: dedupe key \"o-7\""), "{text}");
    assert!(text.contains("workflow id (first window): run/order-fulfilment/o-7/1"), "{text}");
    assert!(text.contains("3 task(s):"), "{text}");
    assert!(text.contains("run/order-fulfilment/o-7/1/ship/1 (kafka)") && text.contains("\"dock\":7"), "static context is used: {text}");
    assert!(text.contains("run/order-fulfilment/o-7/1/review/0 (human)"), "{text}");

    let small = dir.join("small.json");
    std::fs::write(&small, r#"{"id": "e2", "type": "com.example.order.created", "data": {"order_id": "o-8", "amount": 5}}"#).unwrap();
    let text =
        stdout(&tf(&["definitions", "test", "-f", "examples/definitions/order-fulfilment.yaml", "--event", small.to_str().unwrap()], &[]));
    assert!(text.contains("no run: the filter `event.data.amount >= 100` is false"), "{text}");

    let nul = dir.join("nul.json");
    std::fs::write(&nul, r#"{"id": "e3", "type": "com.example.order.created", "data": {"order_id": "o\u0000", "amount": 500}}"#).unwrap();
    let out = tf(&["definitions", "test", "-f", "examples/definitions/order-fulfilment.yaml", "--event", nul.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("DLQ (stage dedupe-key)"), "{}", stdout(&out));
}

/// `tf … | head -1`: when the reader goes away, tf ends quietly (SIGPIPE), as Unix tools do,
/// instead of panicking with a backtrace on the broken pipe.
#[test]
fn a_closed_pipe_ends_tf_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let dir = temp_dir(&unique("tf-cli-many-defs"));
    // Enough output (~300 kB) to fill the pipe long before tf is done.
    for i in 0..3000 {
        std::fs::write(
            dir.join(format!("d{i}.yaml")),
            format!("id: d{i:04}\nname: Definition {i} with a name long enough to fill the pipe\ntrigger: {{event: {{topics: [events.demo]}}}}\ntasks: [{{name: t, type: human}}]\n"),
        )
        .unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_tf"))
        .args(["definitions", "validate", "-f", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("valid"), "{first}");
    // The reader (and so the pipe) is gone here.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every leaf command of the binary's tree, found by walking its `--help` pages (a command
/// added to the tree is found here without being listed).
fn leaf_commands(path: &[String]) -> Vec<Vec<String>> {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = stdout(&tf(&args, &[]));
    let subs: Vec<String> = help
        .split("Commands:\n")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .take_while(|l| !l.trim().is_empty())
                .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .filter(|name| name != "help")
                .collect()
        })
        .unwrap_or_default();
    if subs.is_empty() {
        return vec![path.to_vec()];
    }
    subs.iter()
        .flat_map(|s| {
            let mut p = path.to_vec();
            p.push(s.clone());
            leaf_commands(&p)
        })
        .collect()
}

/// `-o json` on every command prints one JSON document (and nothing else) on stdout; where a
/// command fails, stdout is empty and the reason is on stderr. Commands tf-api serves print the
/// same JSON in both modes. A command added to the tree without a case here fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_json_and_both_modes_answer_alike() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-cli-queue");
    let env = [("TF_DATABASE_URL", db.url.as_str()), ("TF_TASK_QUEUE", queue.as_str())];
    let topic = unique("it-cli-json");
    create_topic(&s, &topic, 1).await;
    let dir = temp_dir(&unique("it-cli-json"));
    let d = dir.to_str().unwrap();
    write_spec(&dir, &topic, 1, Some("envelope"));

    // A cron definition of its own (its schedule id is unique), the examples, and three runs:
    // one failed with its input (to retry), one running with a human task waiting.
    let cron = unique("it-cli-cron").to_lowercase();
    let cron_file = temp_dir(&unique("it-cli-cron")).join("cron.yaml");
    std::fs::write(
        &cron_file,
        format!("id: {cron}\nname: c\ntrigger: {{cron: {{expression: \"0 3 * * *\"}}}}\ntasks:\n  - {{name: t, type: human}}\n"),
    )
    .unwrap();
    assert!(tf(&["definitions", "apply", "-f", "examples/definitions", "-f", cron_file.to_str().unwrap()], &env).status.success());
    // The workflow id a retry starts is the input's (definition, key, generation): unique keys.
    let (failed_key, running_key) = (unique("k-failed"), unique("k-running"));
    let failed = tf_store::runs::RunId::from_workflow_id(format!("run/signup-welcome/{failed_key}/1"));
    let running = tf_store::runs::RunId::from_workflow_id(format!("run/signup-welcome/{running_key}/1"));
    for (run_id, key) in [(&failed, failed_key.as_str()), (&running, running_key.as_str())] {
        let source = tf_store::runs::RunSource::event("events.demo", 0, 1, Some(format!("evt-{key}")));
        let input = serde_json::to_value(tf_testkit::run_input("signup-welcome", 1, key, serde_json::json!({"data": {}}))).unwrap();
        let begin = tf_store::runs::BeginRun {
            run_id,
            execution_id: "x1",
            definition_id: "signup-welcome",
            definition_version: 1,
            dedupe_key: key,
            generation: None,
            event_time_ms: 1_000,
            dedupe_window: std::time::Duration::from_secs(60),
            fired_at_ms: 1_000,
            traceparent: None,
            source: &source,
            input: Some(&input),
            operator_retry: false,
        };
        tf_store::runs::begin_run(&pool, &begin).await.unwrap();
    }
    tf_store::runs::finish_run(&pool, &failed, tf_store::runs::RunStatus::Failed).await.unwrap();
    // The running run holds a concurrency slot, so `runs limits` has a row to show.
    let one_at_a_time = tf_definitions::flow::Admission {
        rate_limit: None,
        concurrency: Some(tf_definitions::flow::SlotRequest { key: String::new(), limit: 1 }),
        throttle: None,
        priority: 0,
        singleton: None,
        debounce: None,
        batch: None,
    };
    let admitted =
        tf_store::flow::admit(&pool, &running, "signup-welcome", &one_at_a_time, &serde_json::Value::Null).await.unwrap().verdict;
    assert_eq!(admitted, tf_store::flow::Verdict::Go);
    let task = running.task("review", 0);
    let params = serde_json::json!({"question": "ok?"});
    let new = tf_store::tasks::NewTask {
        task_id: &task,
        template: "review",
        index: 0,
        task_type: tf_definitions::TaskType::Human,
        params: &params,
        run_attempt: 1,
    };
    tf_store::tasks::record_tasks(&pool, &running, &[new]).await.unwrap();
    tf_store::tasks::set_task_status(&pool, &task, tf_definitions::TaskStatus::AwaitingHuman).await.unwrap();

    let group = unique("it-cli-group");
    let event = dir.join("event.json");
    std::fs::write(
        &event,
        r#"{"id": "e1", "type": "com.example.user.signed_up", "source": "/s", "data": {"email": "a@example.com", "name": "Ada"}}"#,
    )
    .unwrap();
    let (failed_id, running_id, task_id) = (failed.as_str().to_string(), running.as_str().to_string(), task.as_str().to_string());
    let schedule = cron.clone();
    let cases: Vec<(Vec<&str>, bool)> = vec![
        (vec!["topics", "apply", "--dir", d], true),
        (vec!["schemas", "register", "--topics", d], true),
        (vec!["db", "migrate"], true),
        (vec!["consumer", "lag", "--group", &group, "--topics", &topic], true),
        (vec!["consumer", "reset-offsets", "--group", &group, "--topics", &topic, "--to-earliest"], true),
        (vec!["definitions", "validate", "-f", "examples/definitions"], true),
        (vec!["definitions", "test", "-f", "examples/definitions/signup-welcome.yaml", "--event", event.to_str().unwrap()], true),
        (vec!["definitions", "apply", "-f", "examples/definitions"], true),
        (vec!["definitions", "list"], true),
        (vec!["definitions", "show", "signup-welcome"], true),
        (vec!["runs", "list"], true),
        (vec!["runs", "show", &failed_id], true),
        (vec!["runs", "limits"], true),
        (vec!["runs", "retry", &failed_id], true),
        (vec!["schedules", "reconcile"], true),
        (vec!["schedules", "list"], true),
        (vec!["schedules", "describe", &schedule], true),
        (vec!["schedules", "pause", &schedule, "--note", "test"], true),
        (vec!["schedules", "resume", &schedule], true),
        (vec!["schedules", "trigger", &schedule], true),
        (vec!["schedules", "backfill", &schedule, "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z"], true),
        (vec!["tasks", "list"], true),
        (vec!["tasks", "claim", &task_id, "--as", "ada"], true),
        (vec!["results", "quarantined"], true),
        (vec!["completions", "bash"], true),
        (vec!["demo", "roundtrip", "--topic", &topic], true),
        (vec!["demo", "events", "--topic", &topic, "--orders", "2"], true),
        // Refusals: a run that is not running, a task whose workflow does not exist, results
        // that are not quarantined (a partial answer with exit 1), the DLQ without tf-api.
        (vec!["runs", "cancel", &running_id], false),
        (vec!["tasks", "complete", &task_id, "--result", "{}"], false),
        (vec!["tasks", "reject", &task_id, "--reason", "no"], false),
        (vec!["results", "requeue", "nope"], false),
        (vec!["dead-letters", "list"], false),
        (vec!["dead-letters", "redrive", "0:1"], false),
        (vec!["definitions", "delete", &cron], true),
    ];
    let covered: Vec<String> = cases
        .iter()
        .map(|(args, _)| args.iter().take_while(|a| !a.starts_with('-')).take(2).copied().collect::<Vec<_>>().join(" "))
        .collect();
    for leaf in leaf_commands(&[]) {
        let leaf = leaf.join(" ");
        assert!(
            covered.iter().any(|c| c == &leaf || (leaf.split(' ').count() == 1 && c.starts_with(&leaf))),
            "`tf {leaf}` has no case here"
        );
    }
    for (args, succeeds) in &cases {
        let mut with = args.clone();
        with.extend(["-o", "json"]);
        let out = tf(&with, &env);
        let text = stdout(&out);
        assert_eq!(out.status.success(), *succeeds, "tf {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        if text.trim().is_empty() {
            assert!(!succeeds, "tf {args:?} succeeded without an answer");
            assert!(String::from_utf8_lossy(&out.stderr).contains("error:"), "tf {args:?} failed without saying why");
            continue;
        }
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&text);
        assert!(parsed.is_ok(), "tf {args:?} -o json printed what is not one JSON document:\n{text}");
        let yaml = tf(&[args.as_slice(), &["-o", "yaml"]].concat(), &env);
        if yaml.status.success() && !args.contains(&"retry") && !args.contains(&"claim") {
            assert!(!stdout(&yaml).trim_start().starts_with('{'), "tf {args:?} -o yaml printed JSON");
        }
    }

    // Both modes: the same objects.
    let api_addr = tf_testkit::free_local_addr();
    let hash = String::from_utf8(
        Command::new(tf_testkit::workspace_binary("tf-api")).args(["hash-token", "it-cli-token"]).output().unwrap().stdout,
    )
    .unwrap();
    let api = tf_testkit::Service::spawn(
        &tf_testkit::workspace_binary("tf-api"),
        &unique("tf-api"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_API_ADDR", &api_addr),
            ("TF_API_METRICS_ADDR", ""),
            ("TF_API_TOKEN__CLI", &format!("read,write,tasks:{}", hash.trim())),
        ],
    );
    let base = format!("http://{api_addr}");
    tf_testkit::eventually(&format!("tf-api to answer; log:\n{}", api.log()), std::time::Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/healthz")).await.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
    let remote = [("TF_API_URL", base.as_str()), ("TF_API_TOKEN", "it-cli-token")];
    for args in [
        vec!["definitions", "list"],
        vec!["definitions", "show", "signup-welcome"],
        vec!["runs", "list"],
        vec!["runs", "show", &running_id],
        vec!["runs", "limits"],
        vec!["tasks", "list", "--status", "awaiting_human"],
    ] {
        let with = [args.as_slice(), &["-o", "json"]].concat();
        let direct: serde_json::Value = serde_json::from_slice(&tf(&with, &env).stdout).unwrap();
        let through_api = tf(&with, &[env.as_slice(), &remote].concat());
        assert!(through_api.status.success(), "tf {args:?} through tf-api failed");
        let through_api: serde_json::Value = serde_json::from_slice(&through_api.stdout).unwrap();
        assert_eq!(direct, through_api, "tf {args:?} -o json differs between the modes");
        if args == ["runs", "limits"] {
            assert_eq!(
                (&direct["limits"][0]["limit"], &direct["limits"][0]["held"]),
                (&serde_json::json!("concurrency:signup-welcome"), &serde_json::json!(1))
            );
        }
    }
    for args in [vec!["dead-letters", "list", "--topic", &topic], vec!["dead-letters", "redrive", "--topic", &topic]] {
        let out = tf(&[args.as_slice(), &["-o", "json"]].concat(), &[env.as_slice(), &remote].concat());
        assert!(out.status.success(), "tf {args:?} through tf-api failed");
        let _: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    }
    delete_topics(&s, &[&topic]).await;
}
