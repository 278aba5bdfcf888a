//! The primary's schema: migrations (embedded from `migrations/`) and the dev seed.

use anyhow::Context as _;
use sqlx::postgres::PgConnection;
use sqlx::Connection;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Brings the schema at `url` up to date. Safe to run again.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connecting to the primary")?;
    MIGRATOR
        .run(&mut conn)
        .await
        .context("running migrations")?;
    conn.close().await?;
    Ok(())
}

/// Planning rows (obs_unit 1 to 10) that dev and tests write against. Idempotent.
pub async fn seed(url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connecting to the primary")?;
    sqlx::query("INSERT INTO obs_unit (id, name) SELECT i, 'obs unit ' || i FROM generate_series(1, 10) AS i ON CONFLICT DO NOTHING")
        .execute(&mut conn)
        .await
        .context("seeding obs_unit")?;
    conn.close().await?;
    Ok(())
}
