//! The stack itself: what scripts/stack promises, checked on the running services, and the
//! docker-compose file kept valid and in step with the pinned versions.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::process::Command;

use tf_testkit::{python, repo_root, settings};

fn dotenv(key: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(".env")).unwrap();
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("{key} not in .env")).to_string()
}

#[test]
fn docker_compose_file_is_valid_and_uses_the_pinned_versions() {
    let run = |args: &[&str]| {
        Command::new("docker-compose")
            .args(["-f", "docker-compose.yml"])
            .args(args)
            .current_dir(repo_root())
            .output()
            .expect("docker-compose (Debian package, installed by scripts/test) runs")
    };
    let check = run(&["config", "-q"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let resolved = String::from_utf8(run(&["config"]).stdout).unwrap();
    for image in [
        format!("apache/kafka:{}", dotenv("KAFKA_VERSION")),
        format!("apicurio/apicurio-registry:{}", dotenv("APICURIO_VERSION")),
        format!("temporalio/temporal:{}", dotenv("TEMPORAL_CLI_VERSION")),
        format!("postgres:{}", dotenv("POSTGRES_MAJOR")),
        format!("mariadb:{}", dotenv("MARIADB_VERSION")),
    ] {
        assert!(resolved.contains(&image), "docker-compose.yml does not use {image}");
    }
    for port in ["TF_KAFKA_PORT", "TF_REGISTRY_PORT", "TF_TEMPORAL_PORT", "TF_POSTGRES_PORT", "TF_MARIADB_PORT"] {
        assert!(
            resolved.contains(&format!("published: {}", dotenv(port))) || resolved.contains(&format!(":{}:", dotenv(port))),
            "docker-compose.yml does not publish {port}"
        );
    }
}

#[test]
fn temporal_has_the_custom_search_attributes() {
    let temporal = std::env::var("TF_TEMPORAL_CLI").map(std::path::PathBuf::from).unwrap_or_else(|_| python().with_file_name("temporal"));
    let address = settings().temporal_url.trim_start_matches("http://").to_string();
    let out = Command::new(&temporal)
        .args(["operator", "search-attribute", "list", "--address", &address])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", temporal.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout);
    for name in ["ActivityId", "DedupeKey", "TriggerKind"] {
        let line = listing.lines().find(|l| l.split_whitespace().next() == Some(name));
        assert!(line.is_some_and(|l| l.contains("Keyword")), "{name} is not a Keyword search attribute:\n{listing}");
    }
}

/// A fresh machine gets every component only if `install_all` calls every installer
/// (it once skipped PostgreSQL, and `initdb` failed on machines without it).
#[test]
fn install_all_calls_every_installer() {
    let script = std::fs::read_to_string(repo_root().join("scripts/stack")).unwrap();
    let installers: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("install_").and_then(|rest| rest.split_once("()")).map(|(name, _)| name))
        .filter(|name| *name != "all")
        .collect();
    assert!(installers.len() >= 6, "found the installers: {installers:?}");
    let body = script.split("install_all() {").nth(1).and_then(|rest| rest.split('}').next()).expect("install_all is defined");
    let called: Vec<&str> = body.split([';', '\n', ' ']).filter_map(|w| w.trim().strip_prefix("install_")).collect();
    for name in &installers {
        assert!(called.contains(name), "install_all does not call install_{name}: {body}");
    }
}
