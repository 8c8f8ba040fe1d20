//! The web console in a real headless browser: Debian's Chromium driven through ChromeDriver's
//! W3C WebDriver protocol (plain JSON over HTTP, spoken here with reqwest), against tf-api,
//! the router and the worker on the real stack. Sign in, find a run by key, open its lineage,
//! complete a human task and see the run finish, redrive a dead letter, pause a schedule and
//! trigger a run from its definition's page, and watch lag rise while the router is stopped and
//! fall after it restarts. Screenshots go to
//! `target/ui-screenshots/`.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tf_testkit::{FreshDatabase, Service, create_topic, eventually, settings, unique, workspace_binary};

const TOKEN: &str = "it-ui-admin-token";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    http: reqwest::Client,
    driver: String,
    session: String,
    _chromedriver: Service,
    _profile: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver = std::env::var("TF_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("TF_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&chromedriver).exists() && std::path::Path::new(&chromium).exists(),
            "{chromedriver} or {chromium} is missing: scripts/test installs Debian's chromium and chromium-driver"
        );
        let addr = tf_testkit::free_local_addr();
        let port = addr.rsplit(':').next().unwrap().to_string();
        let chromedriver_service = Service::spawn_tool(&chromedriver, &[&format!("--port={port}")], &unique("chromedriver"));
        let driver = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        eventually("chromedriver to answer", Duration::from_secs(30), || async {
            http.get(format!("{driver}/status")).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        let profile = std::env::temp_dir().join(unique("tf-ui-chromium"));
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ];
        let mut args: Vec<String> = args.iter().map(std::string::ToString::to_string).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}}}});
        let r: Value = http.post(format!("{driver}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {r}")).to_string();
        Browser { http, driver, session, _chromedriver: chromedriver_service, _profile: profile }
    }

    /// A WebDriver command's value, or its error object.
    async fn try_cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.driver, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if r["value"]["error"].is_string() { Err(r["value"].clone()) } else { Ok(r["value"].clone()) }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body).await.unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// The WebDriver id of the element `css` finds, or the error.
    async fn try_find(&self, css: &str) -> Result<String, Value> {
        let v = self.try_cmd(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await?;
        Ok(v[ELEMENT].as_str().unwrap().to_string())
    }

    async fn find(&self, css: &str) -> String {
        self.try_find(css).await.unwrap_or_else(|e| panic!("WebDriver /element {css}: {e}"))
    }

    async fn count(&self, css: &str) -> usize {
        let v = self.cmd(reqwest::Method::POST, "/elements", Some(json!({"using": "css selector", "value": css}))).await;
        v.as_array().map_or(0, Vec::len)
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/click"), Some(json!({}))).await;
    }

    async fn clear_and_type(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/clear"), Some(json!({}))).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/value"), Some(json!({ "text": text }))).await;
    }

    /// The text of the element `css` finds. A page being replaced (a form's submit navigates)
    /// can drop the element between finding and reading it, or not have it yet: then it is
    /// looked up again.
    async fn text(&self, css: &str) -> String {
        let mut last = Value::Null;
        for _ in 0..50 {
            let read = match self.try_find(css).await {
                Ok(e) => self.try_cmd(reqwest::Method::GET, &format!("/element/{e}/text"), None).await,
                Err(e) => Err(e),
            };
            match read {
                Ok(v) => return v.as_str().unwrap_or("").to_string(),
                Err(e) if matches!(e["error"].as_str(), Some("stale element reference" | "no such element")) => last = e,
                Err(e) => panic!("WebDriver text of {css}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("WebDriver text of {css}: still failing after 5 s: {last}")
    }

    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or("").to_string()
    }

    /// Waits for the navigation a click started: until the URL satisfies `ok`.
    async fn wait_url(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        eventually(&format!("the browser to reach {what}"), Duration::from_secs(20), || async {
            let u = self.url().await;
            ok(&u).then_some(u)
        })
        .await
    }

    async fn resize(&self, width: u32, height: u32) {
        self.cmd(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    /// Keeps reloading `url` until the page's main text contains `needle`.
    async fn wait_for_text(&self, url: &str, needle: &str, within: Duration) -> String {
        eventually(&format!("{url} to show {needle:?}"), within, || async {
            self.goto(url).await;
            let t = self.text("main").await;
            t.contains(needle).then_some(t)
        })
        .await
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        self.screenshot_in(&tf_testkit::repo_root().join("target/ui-screenshots"), name).await
    }

    async fn screenshot_in(&self, dir: &std::path::Path, name: &str) -> PathBuf {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).expect("WebDriver screenshots are base64");
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let (http, url) = (self.http.clone(), format!("{}/session/{}", self.driver, self.session));
        // Best effort: closing the session ends Chromium before ChromeDriver is killed.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async { http.delete(url).send().await })
        })
        .join();
    }
}

#[tokio::test]
async fn the_console_signs_in_traces_a_run_decides_a_task_redrives_and_shows_lag() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-ui-queue");
    let topic = unique("events.it-ui");
    let dlq = unique("it-ui-dlq");
    for t in [&topic, &dlq] {
        create_topic(&s, t, 2).await;
    }
    let codec = tf_envelope::Codec::new(std::sync::Arc::new(tf_envelope::Registry::new(&s.schema_registry_url)));
    codec.encode_event(&format!("{topic}-value"), &tf_envelope::Event::new("probe", "/it", "probe", json!({})).unwrap()).await.unwrap();
    let group = unique("it-ui-group");
    let addr = tf_testkit::free_local_addr();
    let hash = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tf-api")).args(["hash-token", TOKEN]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let api = Service::spawn(
        env!("CARGO_BIN_EXE_tf-api"),
        &unique("tf-api"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_API_ADDR", &addr),
            ("TF_API_METRICS_ADDR", ""),
            ("TF_API_TOKEN__OPERATOR", &format!("read,write,ingest,tasks:{hash}")),
            ("TF_DLQ_TOPIC", &dlq),
            ("TF_ROUTER_GROUP", &group),
            ("TF_ROUTER_TOPICS", &topic),
            ("TF_API_LAG_SAMPLE_MS", "500"),
        ],
    );
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    eventually(&format!("tf-api to answer; log:\n{}", api.log()), Duration::from_secs(30), || async {
        http.get(format!("{base}/healthz")).send().await.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
    let post = |path: String, content_type: &'static str, body: String| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.post(url).bearer_auth(TOKEN).header("content-type", content_type).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let def_id = unique("it-ui-orders").to_lowercase();
    let definition = |key: &str| {
        format!(
            "id: {def_id}\nname: Approvals\ntrigger: {{event: {{topics: [{topic}]}}}}\ndedupe: {{key: '{key}'}}\ntasks:\n  - {{name: approve, type: human, params: {{title: \"'Approve ' + event.id\"}}}}\n"
        )
    };
    let (status, body) = post("/definitions".into(), "application/yaml", definition("event.data.order_id")).await;
    assert_eq!(status, 200, "{body}");
    let router_env = [
        ("TF_DATABASE_URL", db.url.as_str()),
        ("TF_TASK_QUEUE", queue.as_str()),
        ("TF_ROUTER_TOPICS", topic.as_str()),
        ("TF_ROUTER_GROUP", group.as_str()),
        ("TF_DLQ_TOPIC", dlq.as_str()),
        ("TF_ROUTER_METRICS_ADDR", ""),
    ];
    let mut router = Service::spawn(&workspace_binary("tf-router"), &unique("tf-router"), &router_env);
    let _worker =
        tf_testkit::worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &unique("it-ui-relay")), ("TF_NO_SCHEDULER", "true")]);
    let event = |id: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "/it/ui", "type": "com.example.order.created", "data": data}).to_string()
    };
    let (status, body) =
        post(format!("/events/{topic}"), "application/cloudevents+json", event("ui-e-1", json!({"order_id": "ui-1"}))).await;
    assert_eq!(status, 202, "{body}");

    let b = Browser::start().await;
    // Sign in: every page sends an anonymous visitor to the login form.
    b.goto(&format!("{base}/ui/runs")).await;
    b.wait_url("the login page", |u| u.ends_with("/ui/login")).await;
    b.clear_and_type("#token", "not-a-token").await;
    b.click("button[type=submit]").await;
    eventually("the login to be refused", Duration::from_secs(20), || async {
        b.text("main").await.contains("Unknown token").then_some(())
    })
    .await;
    b.goto(&format!("{base}/ui/login")).await;
    b.clear_and_type("#token", TOKEN).await;
    b.click("button[type=submit]").await;
    b.wait_url("the runs page", |u| u.ends_with("/ui/runs")).await;
    assert!(b.text("header").await.contains("operator"), "the page names who is signed in");

    // Find the run by its key and open its lineage.
    let run_id = tf_temporal::DedupeKey::parse("ui-1").unwrap().run_id(&def_id, 1).to_string();
    b.wait_for_text(&format!("{base}/ui/runs"), &run_id, Duration::from_secs(60)).await;
    b.clear_and_type("input[name=key]", "ui-1").await;
    b.click("form.filters button").await;
    b.wait_url("the filtered runs", |u| u.contains("key=ui-1")).await;
    assert_eq!(b.count("#runs tbody tr").await, 1, "one run for the key");
    b.screenshot("runs").await;
    b.click(&format!("#runs a[href='/ui/runs/{run_id}']")).await;
    b.wait_url("the run page", |u| u.ends_with(&run_id)).await;
    let lineage = b.text(".lineage").await;
    assert!(
        lineage.contains(&topic) && lineage.contains("offset") && lineage.contains("ui-e-1") && lineage.contains("awaiting_human"),
        "{lineage}"
    );

    // The human task: JSON is checked in the browser, then the decision finishes the run.
    let task_id = format!("{run_id}/approve/0");
    b.goto(&format!("{base}/ui/tasks")).await;
    b.click(&format!("a[href='/ui/tasks/{task_id}']")).await;
    b.wait_url("the task page", |u| u.ends_with(&task_id)).await;
    b.clear_and_type("#output", "{not json").await;
    b.click("form[data-json-field] button").await;
    assert!(b.text("#output-error").await.starts_with("Not JSON"), "the browser refuses it");
    assert!(b.url().await.ends_with(&format!("/ui/tasks/{task_id}")), "nothing was sent");
    b.clear_and_type("#output", r#"{"approved": true}"#).await;
    b.click("form[data-json-field] button").await;
    b.wait_url("the run page after the decision", |u| u.contains("flash=")).await;
    assert!(b.text("main").await.contains("completed"), "{}", b.text("main").await);
    eventually("the run page to show the run completed and its result's offset", Duration::from_secs(60), || async {
        b.goto(&format!("{base}/ui/runs/{run_id}")).await;
        (b.text(".step-run .status").await == "completed" && b.text(".step-results").await.contains("SUCCEEDED → partition")).then_some(())
    })
    .await;
    assert!(b.text("main").await.contains("approved"), "the task's output is on the run page");
    b.screenshot("lineage").await;

    // A dead letter (no order_id: no dedupe key), redriven after the definition is fixed.
    let (status, _) = post(format!("/events/{topic}"), "application/cloudevents+json", event("ui-e-bad", json!({"sku": "x"}))).await;
    assert_eq!(status, 202);
    b.wait_for_text(&format!("{base}/ui/dead-letters"), "dedupe-key", Duration::from_secs(60)).await;
    let (status, body) =
        post("/definitions".into(), "application/yaml", definition("has(event.data.order_id) ? event.data.order_id : event.id")).await;
    assert_eq!((status, body["applied"][0]["outcome"].as_str()), (200, Some("new_version")), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await; // the router picks new versions up within its refresh interval
    b.goto(&format!("{base}/ui/dead-letters")).await;
    b.click("button[aria-label^='Redrive']").await;
    b.wait_url("the dead letters after the redrive", |u| u.contains("flash=")).await;
    assert!(b.text("[role=status]").await.contains("redriven to"), "{}", b.text("main").await);
    b.screenshot("dead-letters").await;
    // The definition's history: v2 shown against v1, the changed dedupe key as a diff.
    b.goto(&format!("{base}/ui/definitions")).await;
    b.click(&format!("a[href='/ui/definitions/{def_id}']")).await;
    b.wait_url("the definition page", |u| u.ends_with(&def_id)).await;
    assert_eq!(b.count("nav[aria-label=Versions] li").await, 2);
    let diff = b.text(".diff").await;
    assert!(diff.contains("-   key: event.data.order_id\n+   key: 'has(event.data.order_id)"), "{diff}");
    let redriven_run = tf_temporal::DedupeKey::parse("ui-e-bad").unwrap().run_id(&def_id, 1).to_string();
    b.wait_for_text(&format!("{base}/ui/runs?definition={def_id}"), &redriven_run, Duration::from_secs(60)).await;

    // A time trigger's schedule on its definition page: paused with a note, then a run
    // triggered, both with the page's buttons.
    let hourly = unique("it-ui-hourly").to_lowercase();
    let yaml = format!("id: {hourly}\nname: Hourly\ntrigger: {{cron: {{every: 1h}}}}\ntasks: [{{name: t, type: human, when: 'false'}}]\n");
    let (status, body) = post("/definitions".into(), "application/yaml", yaml).await;
    assert_eq!(status, 200, "{body}");
    let reconciled = std::process::Command::new(workspace_binary("tf"))
        .args(["schedules", "reconcile"])
        .env("TF_DATABASE_URL", &db.url)
        .env("TF_TASK_QUEUE", &queue)
        .output()
        .unwrap();
    assert!(reconciled.status.success(), "{}", String::from_utf8_lossy(&reconciled.stderr));
    b.goto(&format!("{base}/ui/definitions/{hourly}")).await;
    assert!(b.text("#schedule-state").await.contains("active"), "{}", b.text("main").await);
    b.clear_and_type("form[action$='/schedule/pause'] input[name=note]", "night freeze").await;
    b.click("form[action$='/schedule/pause'] button").await;
    b.wait_url("the definition page after pausing", |u| u.contains("flash=")).await;
    assert!(b.text("#schedule-state").await.contains("night freeze (by operator)"), "{}", b.text("main").await);
    b.click("form[action$='/schedule/trigger'] button").await;
    b.wait_url("the definition page after triggering", |u| u.contains("flash=trigger")).await;
    assert!(b.text("[role=status]").await.contains("one run starts now"), "{}", b.text("main").await);
    b.screenshot("schedule").await;
    eventually("the triggered run", Duration::from_secs(60), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM activity_runs WHERE definition_id = $1").bind(&hourly).fetch_one(&pool).await.unwrap();
        (n == 1).then_some(())
    })
    .await;

    // Lag: with the router stopped, new events wait; after it restarts they are routed.
    router.kill();
    for i in 0..5 {
        let (status, _) = post(
            format!("/events/{topic}"),
            "application/cloudevents+json",
            event(&format!("ui-lag-{i}"), json!({"order_id": format!("lag-{i}")})),
        )
        .await;
        assert_eq!(status, 202);
    }
    let lag = || async {
        b.goto(&format!("{base}/ui/lag")).await;
        if b.count("#total-lag").await == 0 {
            return None;
        }
        b.text("#total-lag").await.parse::<i64>().ok()
    };
    eventually("the lag to show the five waiting events", Duration::from_secs(60), || async { lag().await.filter(|n| *n >= 5) }).await;
    b.screenshot("lag").await;
    router = Service::spawn(&workspace_binary("tf-router"), &unique("tf-router"), &router_env);
    eventually("the lag to fall to zero", Duration::from_secs(90), || async { lag().await.filter(|n| *n == 0) }).await;
    let spark = b.find(".spark svg").await;
    assert!(!spark.is_empty());

    // A phone's width: the run page still reads (screenshot for the eye).
    b.resize(390, 844).await;
    b.goto(&format!("{base}/ui/runs/{run_id}")).await;
    b.screenshot("run-phone").await;
    b.click("form.logout button").await;
    b.wait_url("the login page after signing out", |u| u.ends_with("/ui/login")).await;
    b.goto(&format!("{base}/ui/runs")).await;
    assert!(b.url().await.ends_with("/ui/login"), "signed out");
    eventually("ui-1, the redriven event and the five lag events to have their runs", Duration::from_secs(60), || async {
        let runs: i64 =
            sqlx::query_scalar("SELECT count(*) FROM activity_runs WHERE definition_id = $1").bind(&def_id).fetch_one(&pool).await.unwrap();
        (runs == 7).then_some(())
    })
    .await;
    drop(router);
}

/// The README's screenshots, of the demo (`scripts/run`) as it runs: a completed order's
/// lineage, the runs, the definitions and the lag page. Run by `scripts/screenshots`; ignored
/// otherwise (it needs the demo's API on `TF_API_URL`, default `http://127.0.0.1:18088`, with
/// the demo token).
#[tokio::test]
#[ignore = "takes the README's screenshots of a running demo: scripts/screenshots"]
async fn take_the_readme_screenshots_of_the_demo() {
    let base = std::env::var("TF_API_URL").unwrap_or_else(|_| "http://127.0.0.1:18088".into());
    let token = std::env::var("TF_API_TOKEN").unwrap_or_else(|_| "demo-token".into());
    let http = reqwest::Client::new();
    let runs: Value = http
        .get(format!("{base}/runs?definition=order-fulfilment&status=completed&limit=50"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A run with a human review decided, when the demo has one: its lineage shows every step.
    let runs = runs["runs"].as_array().cloned().unwrap_or_default();
    let run = runs
        .iter()
        .find(|r| r["tasks_spawned"].as_i64() == Some(3))
        .or_else(|| runs.first())
        .expect("a completed order-fulfilment run: run scripts/run first");
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let dir = tf_testkit::repo_root().join("docs/screenshots");
    let b = Browser::start().await;
    b.goto(&format!("{base}/ui/login")).await;
    b.clear_and_type("#token", &token).await;
    b.click("button[type=submit]").await;
    b.wait_url("the runs page", |u| u.ends_with("/ui/runs")).await;
    b.screenshot_in(&dir, "console-runs").await;
    b.goto(&format!("{base}/ui/runs/{run_id}")).await;
    assert!(b.text(".lineage").await.contains("taskfactory.results"), "the lineage reaches the results topic");
    b.screenshot_in(&dir, "console-run").await;
    b.goto(&format!("{base}/ui/definitions/order-fulfilment")).await;
    b.screenshot_in(&dir, "console-definition").await;
    b.goto(&format!("{base}/ui/lag")).await;
    b.screenshot_in(&dir, "console-lag").await;
}
