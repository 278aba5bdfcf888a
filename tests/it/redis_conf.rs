//! The tests' Redis is the summit host's: it runs with every directive of the packaged
//! snippet (`packaging/redis/ops-db-api.conf`), whichever backend started it.

use ops_db_devkit::redis_conf;

use crate::helpers::{backend_is_local, TestRedis};

#[tokio::test(flavor = "multi_thread")]
async fn the_test_redis_runs_with_every_directive_of_the_packaged_snippet() {
    let redis = TestRedis::start().await;
    let mut conn = redis.conn().await;
    let wrong = redis_conf::mismatches(&mut conn).await.expect("CONFIG GET");
    let hint = if backend_is_local() {
        "the dev kit's LocalRedis does not start redis-server with the snippet"
    } else {
        "the opsdb-redis:test image is older than the snippet: run scripts/build-images.sh"
    };
    assert!(wrong.is_empty(), "{hint}: {wrong:?}");
}
