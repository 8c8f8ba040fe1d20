//! `tf db migrate`: applies the sqlx migrations to the bookkeeping database.

use serde_json::json;
use tf_config::Settings;

use crate::output::{Answer, say};

pub async fn migrate(settings: &Settings) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let mut text = String::new();
    say!(text, "migrating {}", tf_store::redact(&settings.database_url));
    let mut rows = Vec::new();
    for m in tf_store::migrate(&pool).await? {
        let state = if m.newly_applied { "applied   " } else { "up to date" };
        say!(text, "  {state} {} {}", m.version, m.description);
        rows.push(json!({"version": m.version, "description": m.description, "newly_applied": m.newly_applied}));
    }
    Ok(Answer::new(json!({"database": tf_store::redact(&settings.database_url), "migrations": rows}))?.text(text))
}
