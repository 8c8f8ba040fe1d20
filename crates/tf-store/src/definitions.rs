//! Activity definition versions in `activity_definitions`. The store knows rows, not CEL: the
//! caller hands it a document's JSON and content hash.

use serde_json::Value as Json;
use sqlx::PgPool;

use crate::StoreError;

/// One stored version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct StoredDefinition {
    pub id: String,
    pub version: i32,
    pub name: String,
    pub enabled: bool,
    /// Removed with `tf definitions delete`: kept for pinned runs, never scheduled or routed.
    pub retired: bool,
    pub trigger_kind: String,
    pub spec: Json,
    pub spec_sha256: String,
    /// RFC 3339, UTC (text, which keeps a date-time crate out of the tree).
    pub created_at: String,
}

/// A definition version as every surface lists it (API, console, both modes of the CLI).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DefinitionSummary {
    pub id: String,
    pub version: i32,
    pub name: String,
    pub enabled: bool,
    pub retired: bool,
    /// `event` or `cron`.
    pub trigger: String,
    pub created_at: String,
}

impl From<&StoredDefinition> for DefinitionSummary {
    fn from(r: &StoredDefinition) -> DefinitionSummary {
        DefinitionSummary {
            id: r.id.clone(),
            version: r.version,
            name: r.name.clone(),
            enabled: r.enabled,
            retired: r.retired,
            trigger: r.trigger_kind.clone(),
            created_at: r.created_at.clone(),
        }
    }
}

/// One definition version with its document.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DefinitionVersion {
    #[serde(flatten)]
    pub summary: DefinitionSummary,
    /// The definition document as JSON.
    #[schema(value_type = Object)]
    pub spec: Json,
    pub spec_sha256: String,
    /// The latest version's entity tag, for `If-Match` (absent when a `version` was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_times: Option<Vec<String>>,
}

/// What applying a document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created {
        version: i32,
    },
    NewVersion {
        version: i32,
        previous: i32,
    },
    Unchanged {
        version: i32,
    },
    /// Same content, `enabled` switched on the current version.
    EnabledChanged {
        version: i32,
        enabled: bool,
    },
    /// A retired definition applied again with the same content.
    Restored {
        version: i32,
    },
}

/// A definition as `validate` checked it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DefinitionCheck {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    /// `event` or `cron`.
    pub trigger: String,
    /// How many task templates it has.
    pub tasks: usize,
    /// A cron definition's next five fire times (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_times: Option<Vec<String>>,
}

impl DefinitionCheck {
    pub fn of(d: &tf_definitions::Definition) -> DefinitionCheck {
        DefinitionCheck {
            id: d.id.clone(),
            name: d.name.clone(),
            enabled: d.enabled,
            trigger: d.trigger.kind().to_string(),
            tasks: d.tasks.len(),
            next_fire_times: next_fire_times(d),
        }
    }
}

/// A cron definition's next five fire times.
pub fn next_fire_times(d: &tf_definitions::Definition) -> Option<Vec<String>> {
    d.next_fire_times(5)
}

/// The answer of a successful validation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Validation {
    /// Always `true` (an invalid document is an error).
    pub valid: bool,
    pub definitions: Vec<DefinitionCheck>,
}

/// What applying one definition did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Applied {
    pub id: String,
    /// created, new_version, unchanged, enabled, disabled or restored.
    pub outcome: String,
    pub version: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<i32>,
    /// The definition's entity tag now, for the next `If-Match`.
    pub etag: String,
}

impl Applied {
    /// What `outcome` did to definition `id` (whose document says `enabled`).
    pub fn of(id: &str, outcome: &ApplyOutcome, enabled: bool) -> Applied {
        let (what, version, previous, enabled) = match *outcome {
            ApplyOutcome::Created { version } => ("created", version, None, enabled),
            ApplyOutcome::NewVersion { version, previous } => ("new_version", version, Some(previous), enabled),
            ApplyOutcome::Unchanged { version } => ("unchanged", version, None, enabled),
            ApplyOutcome::Restored { version } => ("restored", version, None, enabled),
            ApplyOutcome::EnabledChanged { version, enabled } => (if enabled { "enabled" } else { "disabled" }, version, None, enabled),
        };
        Applied { id: id.to_string(), outcome: what.to_string(), version, previous_version: previous, etag: etag(version, enabled, false) }
    }
}

/// The answer of an apply, one entry per definition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ApplyResult {
    pub applied: Vec<Applied>,
}

/// The answer of a retire.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Retired {
    /// The definition id.
    pub retired: String,
    /// How many versions were retired.
    pub versions: u64,
}

/// The document to store.
pub struct NewDefinition<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub enabled: bool,
    pub trigger_kind: &'a str,
    pub spec: &'a Json,
    pub spec_sha256: &'a str,
}

const COLUMNS: &str = "id, version, name, enabled, retired, trigger_kind, spec, spec_sha256, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at";

/// Stores a new version when the content changed, flips `enabled` when only that changed,
/// and does nothing otherwise. Concurrent applies of one id are serialised by an advisory lock.
/// The entity tag of a definition's current state (its latest version, and whether that is
/// enabled or retired): what an apply with `If-Match` must have read.
pub fn etag(version: i32, enabled: bool, retired: bool) -> String {
    let state = if retired {
        "retired"
    } else if enabled {
        "enabled"
    } else {
        "disabled"
    };
    format!("\"v{version}-{state}\"")
}

/// What the caller of [`apply_if`] read before it wrote (HTTP `If-Match`/`If-None-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Apply whatever the current state.
    None,
    /// Only if the definition's current [`etag`] is one of these (`If-Match`).
    Matches(Vec<String>),
    /// Only if the definition exists (`If-Match: *`).
    Exists,
    /// Only if the definition does not exist yet (`If-None-Match: *`).
    Absent,
}

pub async fn apply(pool: &PgPool, d: &NewDefinition<'_>) -> Result<ApplyOutcome, StoreError> {
    apply_if(pool, d, &Precondition::None).await
}

/// [`apply`], checking `pre` against the current state under the same lock as the write, so two
/// operators who read the same version cannot both write: the second gets
/// [`StoreError::Stale`] with the current tag.
pub async fn apply_if(pool: &PgPool, d: &NewDefinition<'_>, pre: &Precondition) -> Result<ApplyOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('activity_definitions:' || $1))").bind(d.id).execute(&mut *tx).await?;
    let latest: Option<(i32, bool, String, bool)> = sqlx::query_as(
        "SELECT version, enabled, spec_sha256, retired FROM activity_definitions WHERE id = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(d.id)
    .fetch_optional(&mut *tx)
    .await?;
    let current = latest.as_ref().map(|(v, enabled, _, retired)| etag(*v, *enabled, *retired));
    let holds = match (pre, &current) {
        (Precondition::None, _) => true,
        (Precondition::Matches(tags), Some(now)) => tags.iter().any(|t| t == now),
        (Precondition::Matches(_), None) => false,
        (Precondition::Exists, now) => now.is_some(),
        (Precondition::Absent, now) => now.is_none(),
    };
    if !holds {
        return Err(StoreError::Stale { what: format!("definition {}", d.id), current });
    }
    let outcome = match latest {
        Some((version, _, sha, true)) if sha == d.spec_sha256 => {
            sqlx::query("UPDATE activity_definitions SET retired = false, enabled = $3 WHERE id = $1 AND version = $2")
                .bind(d.id)
                .bind(version)
                .bind(d.enabled)
                .execute(&mut *tx)
                .await?;
            ApplyOutcome::Restored { version }
        }
        Some((version, enabled, sha, false)) if sha == d.spec_sha256 => {
            if enabled == d.enabled {
                ApplyOutcome::Unchanged { version }
            } else {
                sqlx::query("UPDATE activity_definitions SET enabled = $3 WHERE id = $1 AND version = $2")
                    .bind(d.id)
                    .bind(version)
                    .bind(d.enabled)
                    .execute(&mut *tx)
                    .await?;
                ApplyOutcome::EnabledChanged { version, enabled: d.enabled }
            }
        }
        latest => {
            let version = latest.as_ref().map_or(1, |(v, _, _, _)| v + 1);
            sqlx::query(
                "INSERT INTO activity_definitions (id, version, name, enabled, trigger_kind, spec, spec_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(d.id)
            .bind(version)
            .bind(d.name)
            .bind(d.enabled)
            .bind(d.trigger_kind)
            .bind(d.spec)
            .bind(d.spec_sha256)
            .execute(&mut *tx)
            .await?;
            // Older versions stay (runs are pinned to them) but only the newest may be enabled.
            sqlx::query("UPDATE activity_definitions SET enabled = false WHERE id = $1 AND version < $2 AND enabled")
                .bind(d.id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            match latest {
                None => ApplyOutcome::Created { version },
                Some((previous, _, _, _)) => ApplyOutcome::NewVersion { version, previous },
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// The newest version of every definition.
pub async fn latest(pool: &PgPool) -> Result<Vec<StoredDefinition>, StoreError> {
    let sql = format!("SELECT DISTINCT ON (id) {COLUMNS} FROM activity_definitions ORDER BY id, version DESC");
    Ok(sqlx::query_as(&sql).fetch_all(pool).await?)
}

/// One version, or the newest when `version` is `None`.
pub async fn get(pool: &PgPool, id: &str, version: Option<i32>) -> Result<Option<StoredDefinition>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM activity_definitions WHERE id = $1 AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1"
    );
    Ok(sqlx::query_as(&sql).bind(id).bind(version).fetch_optional(pool).await?)
}

/// A fingerprint of every (id, version, enabled), so services can poll for changes cheaply
/// and reload only when something changed.
pub async fn fingerprint(pool: &PgPool) -> Result<String, StoreError> {
    let fp: Option<String> = sqlx::query_scalar(
        "SELECT md5(string_agg(id || ':' || version || ':' || enabled || ':' || retired, ',' ORDER BY id, version)) FROM activity_definitions",
    )
    .fetch_one(pool)
    .await?;
    Ok(fp.unwrap_or_default())
}

/// Retires every version of `id` (disabled, never scheduled or routed again); returns how many
/// versions it touched, 0 when there is no such definition.
pub async fn retire(pool: &PgPool, id: &str) -> Result<u64, StoreError> {
    Ok(sqlx::query("UPDATE activity_definitions SET retired = true, enabled = false WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected())
}
