//! `tf db migrate`: applies the sqlx migrations to the bookkeeping database.

use std::process::ExitCode;

use tf_config::Settings;

pub async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    println!("migrating {}", tf_store::redact(&settings.database_url));
    for m in tf_store::migrate(&pool).await? {
        let state = if m.newly_applied { "applied   " } else { "up to date" };
        println!("  {state} {} {}", m.version, m.description);
    }
    Ok(ExitCode::SUCCESS)
}
