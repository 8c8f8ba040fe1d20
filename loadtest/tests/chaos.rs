//! The short chaos run of CI: `tf-loadtest chaos` against the real stack (the router and the
//! worker SIGKILLed; Temporal, Kafka, PostgreSQL and the registry restarted) must end with
//! exactly one run per key, one result per task, every waiting run with exactly one of its
//! second events, and an empty DLQ. This test binary is the only
//! one in its package, and cargo runs test binaries one after another, so the restarts do not
//! disturb other tests. If a dependency never comes back, the run gives up draining after 600 s
//! and fails; it does not hang CI.

#[test]
fn the_pipeline_loses_and_duplicates_nothing_under_every_kind_of_fault() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join(format!("tf-chaos-{}", std::process::id()));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_tf-loadtest"))
        .current_dir(&root)
        .args(["chaos", "--events", "360", "--rate", "4", "--duplicates", "0.3", "--kill-router-every", "30", "--kill-worker", "1"])
        // A third of the keys' runs wait for a second event (docs/steps.md).
        .args(["--waiting-share", "0.3"])
        .args(["--restart", "temporal,kafka,postgres,registry", "--fault-gap", "5", "--timeout-secs", "600"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running tf-loadtest chaos");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(run.status.success(), "chaos run failed (logs in {}):\n{stdout}\n{}", out.display(), String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("runs per key           min 1 max 1; keys without a run 0"), "{stdout}");
    assert!(stdout.contains("results per task       min 1 max 1"), "{stdout}");
    assert!(stdout.contains("dead letters           0"), "{stdout}");
    assert!(stdout.contains("76 of 76 runs waited, 76 received their second event, wrong or missing deliveries 0"), "{stdout}");
    assert!(stdout.contains("OK: no loss, no duplicate"), "{stdout}");

    // A successful run leaves nothing on the stack: its three topics are gone.
    let removed = stdout.lines().find_map(|l| l.strip_prefix("removed topics ")).expect("a `removed topics` line");
    let names: Vec<&str> = removed.split(", ").collect();
    assert_eq!(names.len(), 3, "{removed}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for name in names {
        assert!(name.starts_with("chaos-"), "{name}");
        assert!(rt.block_on(tf_testkit::topic_gone(&tf_testkit::settings(), name)), "topic {name} still exists after the run removed it");
    }
}
