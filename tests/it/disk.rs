//! Redis' disk as a limit: with Redis' directory on this host, writes are refused (503
//! `buffer_full`, `stored: false`, `Retry-After`) while its filesystem's free space is
//! short of the AOF's size plus `buffer.min_disk_free_bytes`, and acknowledged again once
//! there is room; every acknowledged write is in the AOF.
//!
//! The filesystem is a 64 MiB tmpfs mounted by the test (the tests run as root), holding a
//! `redis-server` of the test's own; a filler file takes its room away.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    assert_buffer_full, eventually, file_body, start_obs_unit, uuid, TestApp, TestRedis,
};

const TMPFS_BYTES: u64 = 64 << 20;
const MIN_DISK_FREE: u64 = 32 << 20;
const FILLER_BYTES: usize = 40 << 20;

/// A tmpfs mounted for the test, unmounted (and its mount point removed) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount() -> Self {
        let dir = std::env::temp_dir().join(format!("opsdb-disk-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (`mount -t tmpfs`): it needs root (or CAP_SYS_ADMIN) \
             and the mount command; mount said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

async fn storage_health(app: &TestApp) -> Value {
    let h = app.get("/health").await;
    assert_eq!(h.status, 200, "{}", h.text);
    h.body["redis_storage"].clone()
}

async fn write_file(app: &TestApp, eou: Uuid, name: &str) -> crate::helpers::Reply {
    let mut f = file_body(&eou.to_string());
    f["name"] = json!(name);
    app.post("/raw_data_files/", &f).await
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_stop_short_of_a_full_disk_and_resume_when_it_has_room() {
    // Declared first, dropped last: Redis is stopped before the unmount.
    let tmpfs = Tmpfs::mount();
    let redis = TestRedis::start_local_in(tmpfs.path().to_owned()).await;
    let app = TestApp::spawn_on(redis, |c| c.buffer.min_disk_free_bytes = MIN_DISK_FREE).await;
    let roomy = eventually("the disk is sampled", Duration::from_secs(5), || async {
        let s = storage_health(&app).await;
        s["free_bytes"].as_u64().map(|_| s)
    })
    .await;
    assert_eq!(roomy["aof_last_write_status"], "ok", "{roomy}");
    assert_eq!(roomy["refusing_writes"], false, "{roomy}");
    assert_eq!(roomy["min_free_bytes"], MIN_DISK_FREE, "{roomy}");

    let (eou, first) = start_obs_unit(&app, 7).await;
    let mut acked = vec![first];
    for i in 0..5 {
        let r = write_file(&app, eou, &format!("before_{i}.fits")).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(uuid(&r.body["transaction_id"]));
    }

    let filler = tmpfs.path().join("filler");
    std::fs::write(&filler, vec![1u8; FILLER_BYTES]).expect("filler written");
    let full = eventually(
        "writes are refused for disk",
        Duration::from_secs(5),
        || async {
            let s = storage_health(&app).await;
            (s["refusing_writes"] == true).then_some(s)
        },
    )
    .await;
    let health = app.get("/health").await.body;
    assert_eq!(health["status"], "degraded", "writes refused: {health}");
    let free = full["free_bytes"].as_u64().expect("free bytes");
    let aof = full["aof_bytes"].as_u64().expect("aof bytes");
    assert!(free < aof + MIN_DISK_FREE, "{full}");
    let scrape = app.get("/metrics").await;
    for line in [
        format!("opsdb_redis_disk_free_bytes {free}"),
        "opsdb_redis_aof_write_ok 1".to_owned(),
    ] {
        assert!(
            scrape.text.lines().any(|l| l == line),
            "{line} in\n{}",
            scrape.text
        );
    }
    let mut refused = Vec::new();
    for i in 0..3 {
        let name = format!("refused_{i}.fits");
        let r = write_file(&app, eou, &name).await;
        assert_buffer_full(&r, "disk");
        refused.push(name);
    }

    std::fs::remove_file(&filler).expect("filler removed");
    let again = eventually(
        "writes are acknowledged again",
        Duration::from_secs(5),
        || async {
            let r = write_file(&app, eou, "after_0.fits").await;
            (r.status == 201).then(|| uuid(&r.body["transaction_id"]))
        },
    )
    .await;
    acked.push(again);
    assert_eq!(storage_health(&app).await["refusing_writes"], false);

    // The AOF holds every acknowledged write and none refused: Redis killed and restarted
    // on the same directory loads them back from it.
    app.redis.kill().await;
    app.redis.restart().await;
    let stored = app.buffered_json().await;
    for tx in &acked {
        let tx = tx.to_string();
        let n = stored.iter().filter(|json| json.contains(&tx)).count();
        assert_eq!(n, 1, "acknowledged {tx} in the AOF exactly once");
    }
    for name in &refused {
        assert!(
            !stored.iter().any(|json| json.contains(name.as_str())),
            "refused {name} not stored"
        );
    }
    assert_eq!(stored.len(), acked.len(), "nothing else in the stream");
    app.stop().await.expect("stopped");
    drop(tmpfs);
}
