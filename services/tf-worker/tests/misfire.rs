//! `misfire` against the real Temporal server: three time triggers firing every 3 s (misfire
//! `skip`, `once`, `all`), then Temporal down for 15 s (`scripts/stack restart temporal 15`), and
//! the runs of the fires it missed counted. This is the only test in its binary, and cargo runs
//! test binaries one after another, so the outage disturbs no other test.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::collections::BTreeMap;
use std::time::Duration;

use tf_testkit::{FreshDatabase, apply_definition, eventually, settings, unique};

async fn nominal_times(pool: &sqlx::PgPool, def: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM scheduled_for) * 1000)::bigint FROM activity_runs
         WHERE definition_id = $1 AND status <> 'deduplicated' ORDER BY scheduled_for",
    )
    .bind(def)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn missed_fires_are_skipped_run_once_or_all_run_as_misfire_says() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let worker = tf_testkit::worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_SCHEDULER_REFRESH_MS", "300")]);
    let mut defs = BTreeMap::new();
    for misfire in ["skip", "once", "all"] {
        let id = unique(&format!("it-misfire-{misfire}")).to_lowercase();
        let yaml = format!(
            "id: {id}\nname: Misfire {misfire}\ntrigger: {{cron: {{every: 3s, misfire: {misfire}}}}}\ntasks: [{{name: t, type: human, when: 'false'}}]\n"
        );
        apply_definition(&pool, &yaml).await;
        defs.insert(misfire, id);
    }
    for id in defs.values() {
        eventually(&format!("two runs of {id}; worker:\n{}", worker.log()), Duration::from_secs(60), || async {
            (nominal_times(&pool, id).await.len() >= 2).then_some(())
        })
        .await;
    }
    let before: BTreeMap<&str, i64> = {
        let mut m = BTreeMap::new();
        for (k, id) in &defs {
            m.insert(*k, *nominal_times(&pool, id).await.last().unwrap());
        }
        m
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let down = std::process::Command::new("scripts/stack").current_dir(&root).args(["restart", "temporal", "15"]).output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let back_ms = tf_envelope::Timestamp::now().0;
    // Catch-up happens when the schedules wake; then two regular fires more.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut missed = BTreeMap::new();
    for (k, id) in &defs {
        let times = nominal_times(&pool, id).await;
        let during: Vec<i64> = times.iter().copied().filter(|t| *t > before[k] && *t < back_ms).collect();
        let after = times.iter().filter(|t| **t >= back_ms).count();
        println!(
            "misfire {k}: last fire before the outage {}, {} runs for fires due while Temporal was down ({during:?}), {after} after it came back ({back_ms})",
            before[k],
            during.len()
        );
        assert!(after >= 2, "misfire {k}: the schedule fires again after the outage ({after})");
        missed.insert(*k, (during, before[k]));
    }
    // Fires due in the outage: every 3 s from the last one before it until Temporal was back.
    let (all, last_all) = &missed["all"];
    let due = ((back_ms - last_all) / 3000) as usize;
    assert!(all.len() + 1 >= due && !all.is_empty(), "misfire all: every missed fire ran ({} of about {due})", all.len());
    assert_eq!(missed["once"].0.len(), 1, "misfire once: one run for all the missed fires");
    let (skip, _) = &missed["skip"];
    assert!(
        skip.iter().all(|t| back_ms - t <= 10_000 + 3_000),
        "misfire skip: no run for a fire more than the 10 s window late: {skip:?} (back at {back_ms})"
    );
}
