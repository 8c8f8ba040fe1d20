//! Expand/contract: every migration must leave the schema usable by the build before it, because
//! a rolling upgrade migrates first and then replaces routers, workers and tf-api one by one, and
//! a rollback keeps the migrated schema. A migration may add (tables, nullable or defaulted
//! columns, indexes, functions with the same signature); what removes or reshapes something an
//! older build reads or writes is a *contract* step, allowed only once no running build needs
//! the old shape, and listed in [`CONTRACTS`] with that reason (docs/upgrades.md).

use std::sync::LazyLock;

use regex::Regex;

/// The migration that created the schema: no older build can run against any schema, so it is
/// not checked.
pub const INITIAL_MIGRATION: i64 = 20261126000001;

/// Contract migrations, by file name, with the release after which nothing uses the old shape.
pub const CONTRACTS: &[(&str, &str)] = &[(
    "20261127000001_dedupe_generations.sql",
    "replaced dedupe_claims (one row per key) by claims with generations before the first release; no deployment ran the old shape",
)];

static CONTRACT_STEPS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r"\bDROP\s+(TABLE|COLUMN|FUNCTION|TYPE|VIEW|SCHEMA)\b", "drops something an older build may use"),
        (r"\bRENAME\b", "renames something an older build uses by its old name"),
        (r"\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b", "changes a column's type under an older build"),
        (r"\bALTER\s+COLUMN\s+\S+\s+SET\s+NOT\s+NULL\b", "makes a column required that an older build leaves empty"),
        (r"\bTRUNCATE\b", "deletes data"),
    ]
    .into_iter()
    .map(|(re, why)| (Regex::new(&format!("(?i){re}")).expect("a valid pattern"), why))
    .collect()
});

static ADD_COLUMN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bADD\s+COLUMN\s+(IF\s+NOT\s+EXISTS\s+)?(\S+)([^,;]*)").expect("a valid pattern"));

/// The contract steps in one migration's SQL: each with the statement's text and why an older
/// build would break.
pub fn contract_steps(sql: &str) -> Vec<(String, &'static str)> {
    let code: String = sql.lines().map(|l| l.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut found = Vec::new();
    for statement in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let flat = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        for (re, why) in CONTRACT_STEPS.iter() {
            if re.is_match(&flat) {
                found.push((flat.clone(), *why));
            }
        }
        for add in ADD_COLUMN.captures_iter(&flat) {
            let rest = add[3].to_ascii_uppercase();
            if rest.contains("NOT NULL") && !rest.contains("DEFAULT") {
                found.push((flat.clone(), "adds a required column without a default, which an older build's inserts lack"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expanding_steps_pass() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c text;",
            "ALTER TABLE t ADD COLUMN c integer NOT NULL DEFAULT 0, ADD COLUMN d jsonb;",
            "CREATE TABLE x (a int NOT NULL); CREATE INDEX i ON x (a);",
            "-- DROP TABLE tasks; a comment\nALTER TABLE t ALTER COLUMN c SET DEFAULT now();",
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
        ] {
            assert_eq!(contract_steps(sql), vec![], "{sql}");
        }
    }

    #[test]
    fn contracting_steps_are_found() {
        for sql in [
            "DROP TABLE tasks;",
            "ALTER TABLE tasks DROP COLUMN params;",
            "alter table tasks rename column params to parameters;",
            "ALTER TABLE tasks RENAME TO jobs;",
            "ALTER TABLE tasks ALTER COLUMN attempts TYPE bigint;",
            "ALTER TABLE tasks ALTER COLUMN error SET NOT NULL;",
            "ALTER TABLE tasks ADD COLUMN owner text NOT NULL;",
            "ALTER TABLE t ADD COLUMN a text, ADD COLUMN b int NOT NULL;",
            "TRUNCATE dedupe_claims;",
        ] {
            assert_eq!(contract_steps(sql).len(), 1, "{sql}: {:?}", contract_steps(sql));
        }
    }

    /// The rule, applied to every migration this build embeds.
    #[test]
    fn every_migration_expands_unless_listed_as_a_contract() {
        let mut violations = Vec::new();
        for m in crate::migrator().iter() {
            let file = format!("{}_{}.sql", m.version, m.description.replace(' ', "_"));
            if m.version == INITIAL_MIGRATION || CONTRACTS.iter().any(|(f, _)| *f == file) {
                continue;
            }
            for (statement, why) in contract_steps(&m.sql) {
                violations.push(format!("{file}: `{statement}` {why}"));
            }
        }
        assert!(violations.is_empty(), "contract steps outside CONTRACTS (docs/upgrades.md):\n{}", violations.join("\n"));
    }
}
