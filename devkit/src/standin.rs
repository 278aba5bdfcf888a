//! The stand-in for ops-db's tables (`devkit/standin/ops_db.sql`) that `dev`, the
//! benchmarks and the tests write against: loaded before `migrate`, which needs the tables
//! for its allowlist. The service itself never creates a domain table.

use anyhow::Context as _;
use ops_db_actors::pg::PgTarget;
use sqlx::Connection as _;

/// The stand-in's SQL: `obs_unit`, `executed_obs_unit`, `raw_data_package`,
/// `raw_data_file` and the seed rows (obs_unit 1 to 10).
pub const SQL: &str = include_str!("../standin/ops_db.sql");

/// Loads the stand-in into the primary at `target` (its default schema). Idempotent.
pub async fn load(target: &PgTarget) -> anyhow::Result<()> {
    let mut conn = ops_db_service::db::connect(target).await?;
    sqlx::raw_sql(SQL)
        .execute(&mut conn)
        .await
        .context("loading the stand-in ops-db tables")?;
    conn.close().await?;
    Ok(())
}
