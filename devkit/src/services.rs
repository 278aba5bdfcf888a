//! The local services `dev` and the benchmarks run on.

use std::path::Path;

use ops_db_actors::pg::PgTarget;
use ops_db_service::config::Schema;
use ops_db_service::db;

use crate::local_pg::LocalPostgres;
use crate::local_redis::LocalRedis;
use crate::ports::free_port;

/// A durable Redis and a primary with its streaming replica, from this machine's binaries,
/// under `dir`: the stand-in ops-db tables loaded, then migrated with the default schema.
pub async fn local_services(dir: &Path) -> anyhow::Result<(LocalRedis, LocalPostgres)> {
    let redis = LocalRedis::start(&dir.join("redis"), free_port()?).await?;
    let pg = LocalPostgres::start(&dir.join("pg")).await?;
    let target = PgTarget::plain(pg.primary_url());
    crate::standin::load(&target).await?;
    db::migrate(&target, &Schema::default()).await?;
    Ok((redis, pg))
}
