//! Definition versions against the real PostgreSQL.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use serde_json::json;
use tf_store::definitions::{self, ApplyOutcome, NewDefinition};
use tf_testkit::{FreshDatabase, settings};

fn doc<'a>(spec: &'a serde_json::Value, sha: &'a str, enabled: bool) -> NewDefinition<'a> {
    NewDefinition { id: "orders", name: "Orders", enabled, trigger_kind: "event", spec, spec_sha256: sha }
}

#[tokio::test]
async fn versions_are_created_only_when_content_changes() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let (v1, v2) = (json!({"v": 1}), json!({"v": 2}));

    let fp0 = definitions::fingerprint(&pool).await.unwrap();
    assert_eq!(definitions::apply(&pool, &doc(&v1, "sha1", true)).await.unwrap(), ApplyOutcome::Created { version: 1 });
    assert_eq!(definitions::apply(&pool, &doc(&v1, "sha1", true)).await.unwrap(), ApplyOutcome::Unchanged { version: 1 });
    let fp1 = definitions::fingerprint(&pool).await.unwrap();
    assert_ne!(fp0, fp1);

    assert_eq!(
        definitions::apply(&pool, &doc(&v1, "sha1", false)).await.unwrap(),
        ApplyOutcome::EnabledChanged { version: 1, enabled: false }
    );
    assert_ne!(definitions::fingerprint(&pool).await.unwrap(), fp1, "toggling enabled is a change for pollers");

    assert_eq!(definitions::apply(&pool, &doc(&v2, "sha2", true)).await.unwrap(), ApplyOutcome::NewVersion { version: 2, previous: 1 });
    let latest = definitions::latest(&pool).await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!((latest[0].version, latest[0].enabled, &latest[0].spec), (2, true, &v2));
    let old = definitions::get(&pool, "orders", Some(1)).await.unwrap().expect("v1 is kept for pinned runs");
    assert_eq!((old.spec, old.enabled), (v1, false));
    assert!(old.created_at.ends_with('Z'));
    assert_eq!(definitions::get(&pool, "orders", Some(9)).await.unwrap(), None);
    pool.close().await;
}

#[tokio::test]
async fn concurrent_applies_of_one_document_store_one_version() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let spec = json!({"same": true});
    let results = futures_join(&pool, &spec).await;
    let created = results.iter().filter(|o| matches!(o, ApplyOutcome::Created { .. })).count();
    assert_eq!(created, 1, "{results:?}");
    assert!(results.iter().all(|o| matches!(o, ApplyOutcome::Created { version: 1 } | ApplyOutcome::Unchanged { version: 1 })));
    pool.close().await;
}

async fn futures_join(pool: &sqlx::PgPool, spec: &serde_json::Value) -> Vec<ApplyOutcome> {
    let mut handles = Vec::new();
    for _ in 0..6 {
        let (pool, spec) = (pool.clone(), spec.clone());
        handles.push(tokio::spawn(async move { definitions::apply(&pool, &doc(&spec, "same", true)).await.unwrap() }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
