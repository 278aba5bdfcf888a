//! The primary's schema: migrations (embedded from `migrations/`) and the dev seed.

use anyhow::Context as _;
use ops_db_actors::pg::PgTarget;
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions as _, Connection as _};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Brings the schema at `target` up to date. Safe to run again.
pub async fn migrate(target: &PgTarget) -> anyhow::Result<()> {
    let mut conn = connect(target).await?;
    MIGRATOR
        .run(&mut conn)
        .await
        .context("running migrations")?;
    conn.close().await?;
    Ok(())
}

/// Planning rows (obs_unit 1 to 10) that dev and tests write against. Idempotent.
pub async fn seed(target: &PgTarget) -> anyhow::Result<()> {
    let mut conn = connect(target).await?;
    sqlx::query("INSERT INTO obs_unit (id, name) SELECT i, 'obs unit ' || i FROM generate_series(1, 10) AS i ON CONFLICT DO NOTHING")
        .execute(&mut conn)
        .await
        .context("seeding obs_unit")?;
    conn.close().await?;
    Ok(())
}

/// A connection to the primary; the error names it without its password.
pub async fn connect(target: &PgTarget) -> anyhow::Result<PgConnection> {
    let what = || format!("connecting to {}", target.redacted());
    target
        .options()
        .with_context(what)?
        .connect()
        .await
        .with_context(what)
}
