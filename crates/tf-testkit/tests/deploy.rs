//! The committed alert rules (`deploy/prometheus/alerts.yml`) and Grafana dashboard
//! (`deploy/grafana/taskfactory.json`) are well formed and name only metrics the services
//! export: each `tf_*` name in their expressions (less a histogram's `_bucket`/`_sum`/`_count`)
//! must be a metric name in a service's metrics code (or the runtime's `tf_build_info`).

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::collections::BTreeSet;

fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|t| t.starts_with("tf_")).map(str::to_string).collect()
}

fn exported() -> BTreeSet<String> {
    let root = tf_testkit::repo_root();
    let mut names = BTreeSet::new();
    for file in [
        "services/tf-router/src/metrics.rs",
        "services/tf-worker/src/metrics.rs",
        "services/tf-api/src/metrics.rs",
        "crates/tf-runtime/src/lib.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for part in text.split('"').skip(1).step_by(2) {
            if part.starts_with("tf_") && part.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                names.insert(part.to_string());
            }
        }
    }
    names
}

fn known(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name) || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(|n| exported.contains(n)))
}

#[test]
fn alert_rules_and_the_dashboard_use_exported_metrics() {
    let root = tf_testkit::repo_root();
    let exported = exported();
    assert!(exported.contains("tf_router_consumer_lag") && exported.contains("tf_build_info"), "{exported:?}");

    let rules: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            assert!(rule["alert"].as_str().is_some_and(|a| a.starts_with("TaskFactory")), "{rule:?}");
            assert!(rule["annotations"]["summary"].is_string(), "{rule:?}");
            exprs.push(rule["expr"].as_str().unwrap().to_string());
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/taskfactory.json")).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "taskfactory");
    let mut ids = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "panel ids are unique");
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let mut unknown: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).filter(|n| !known(n, &exported)).collect();
    unknown.dedup();
    assert!(unknown.is_empty(), "not exported by any service: {unknown:?}");
    assert_eq!(metric_names("sum(rate(tf_a_total[1m])) / tf_b"), ["tf_a_total", "tf_b"]);
}

/// Every setting the Kubernetes manifests pass a service is one the README documents, so a
/// renamed variable cannot leave the manifests silently configuring nothing.
#[test]
fn kubernetes_manifests_set_only_documented_variables() {
    let root = tf_testkit::repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            for token in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if token.starts_with("TF_") || token.starts_with("OTEL_") {
                    seen.insert(token.to_string());
                }
            }
        }
    }
    assert!(seen.contains("TF_ROUTER_INSTANCE_ID") && seen.contains("TF_DATABASE_URL"), "{seen:?}");
    // `TF_API_TOKEN__OPS` is an instance of the documented `TF_API_TOKEN__<NAME>`.
    let documented = |v: &str| readme.contains(&format!("`{v}`")) || v.strip_prefix("TF_API_TOKEN__").is_some();
    let undocumented: Vec<_> = seen.iter().filter(|v| !documented(v)).collect();
    assert!(undocumented.is_empty(), "set in deploy/kubernetes but not documented in the README: {undocumented:?}");
}
