//! The service's own namespace on the primary: `migrate` puts everything of the service in
//! `schema.name` (nothing in `public`), changes nothing when run again, never touches a
//! table of ops-db, keeps the allowlist equal to `schema.tables`; tokens come from ops-db's
//! `api_token` where it has one.

use std::sync::Arc;
use std::time::Duration;

use ops_db_actors::pg::PgTarget;
use ops_db_service::config::{Config, Schema, Scope};
use ops_db_service::{db, token};
use sqlx::PgConnection;

use crate::helpers::eventually;
use crate::pg::TestPg;
use crate::site::{wire, Site};

/// Everything the catalog says of `schema`'s objects, and a digest of every table's rows:
/// two equal snapshots mean nothing in it was created, altered, dropped or written.
pub async fn snapshot(conn: &mut PgConnection, schema: &str) -> Vec<String> {
    let mut lines: Vec<String> = sqlx::query_scalar(
        "WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = $1)
         SELECT 'rel ' || c.relkind::text || ' ' || c.relname || ' ' || coalesce(c.relacl::text, '')
           FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)
         UNION ALL
         SELECT 'col ' || c.relname || '.' || a.attname || ' ' ||
                format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' ' ||
                coalesce(pg_get_expr(d.adbin, d.adrelid), '')
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE c.relnamespace = (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped
         UNION ALL
         SELECT 'con ' || conname || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE connamespace = (SELECT oid FROM ns)
         UNION ALL
         SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) || ' ' ||
                coalesce(p.proconfig::text, '') || ' ' || coalesce(p.proacl::text, '')
           FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns)
         UNION ALL
         SELECT 'trigger ' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
          WHERE c.relnamespace = (SELECT oid FROM ns)",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .expect("catalog snapshot");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .expect("tables");
    for table in tables {
        let digest: Option<String> = sqlx::query_scalar(&format!(
            "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM \"{schema}\".\"{table}\" t"
        ))
        .fetch_one(&mut *conn)
        .await
        .expect("rows digest");
        lines.push(format!("rows {table} {digest:?}"));
    }
    lines.sort();
    lines
}

/// The allowlist as `migrate` left it: (table, schema, key column), by table.
async fn allowlist(conn: &mut PgConnection, schema: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(&format!(
        "SELECT table_name, table_schema, key_column FROM \"{schema}\".writable_table ORDER BY 1"
    ))
    .fetch_all(conn)
    .await
    .expect("allowlist")
}

fn schema(name: &str, tables: &[&str]) -> Schema {
    Schema {
        name: name.into(),
        tables: tables.iter().map(|t| (*t).to_owned()).collect(),
        ..Schema::default()
    }
}

#[tokio::test]
async fn migrate_twice_changes_nothing_and_nothing_of_the_service_lands_in_public() {
    let pg = TestPg::start().await;
    let target = PgTarget::plain(pg.primary_url());
    ops_db_devkit::standin::load(&target)
        .await
        .expect("stand-in");
    let mut conn = pg.primary().await;
    let public_before = snapshot(&mut conn, "public").await;

    db::migrate(&target, &Schema::default())
        .await
        .expect("migrate");
    let public_after = snapshot(&mut conn, "public").await;
    assert_eq!(
        public_before, public_after,
        "migrate wrote nothing in public"
    );
    let own = snapshot(&mut conn, "opsdb_api").await;
    for object in [
        "rel r applied_transaction",
        "rel r api_token",
        "rel r writable_table",
        "rel r _sqlx_migrations",
        "fn opsdb_api.apply_batch(jsonb,text[])",
        "rel r heartbeat",
        "fn opsdb_api.heartbeat(text)",
    ] {
        assert!(
            own.iter().any(|l| l.starts_with(object)),
            "{object} in opsdb_api: {own:#?}"
        );
    }
    assert_eq!(
        allowlist(&mut conn, "opsdb_api").await,
        [
            ("executed_obs_unit", "public", "id"),
            ("raw_data_file", "public", "id"),
            ("raw_data_package", "public", "id"),
        ]
        .map(|(t, s, k)| (t.to_owned(), s.to_owned(), k.to_owned()))
    );

    db::migrate(&target, &Schema::default())
        .await
        .expect("migrate again");
    assert_eq!(snapshot(&mut conn, "opsdb_api").await, own, "a no-op");
    assert_eq!(snapshot(&mut conn, "public").await, public_before);
}

#[tokio::test]
async fn migrate_follows_the_configured_schema_and_tables_and_names_a_table_it_cannot_allow() {
    let pg = TestPg::start().await;
    let target = PgTarget::plain(pg.primary_url());
    ops_db_devkit::standin::load(&target)
        .await
        .expect("stand-in");
    let mut conn = pg.primary().await;
    sqlx::raw_sql("CREATE TABLE public.two_keys (a int, b int, PRIMARY KEY (a, b))")
        .execute(&mut conn)
        .await
        .expect("two_keys");

    // Another name, another list; obs_unit has an integer key.
    let alt = schema("ops_api_alt", &["obs_unit", "raw_data_file"]);
    db::migrate(&target, &alt).await.expect("migrate");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'ops_api_alt' AND c.relkind = 'r' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("tables");
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "api_token",
            "applied_transaction",
            "heartbeat",
            "writable_table"
        ]
    );
    let opsdb_api: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'opsdb_api'")
            .fetch_optional(&mut conn)
            .await
            .expect("namespace");
    assert_eq!(opsdb_api, None, "the built-in name is not used");

    // Taken off the list: gone from the allowlist.
    db::migrate(&target, &schema("ops_api_alt", &["obs_unit"]))
        .await
        .expect("migrate");
    assert_eq!(
        allowlist(&mut conn, "ops_api_alt").await,
        [("obs_unit".into(), "public".into(), "id".into())]
    );

    // A table that is not there, or whose key is two columns: an error naming it, and the
    // allowlist as it was.
    for (table, says) in [
        ("no_such_table", "does not exist"),
        ("two_keys", "2 columns"),
    ] {
        let err = db::migrate(&target, &schema("ops_api_alt", &["obs_unit", table]))
            .await
            .expect_err("refused");
        let err = format!("{err:#}");
        assert!(err.contains(table) && err.contains(says), "{err}");
        assert_eq!(allowlist(&mut conn, "ops_api_alt").await.len(), 1);
    }
}

/// ops-db's `api_token`: integer id, a user, a naive `expires_at`, JSON scopes.
const OPS_DB_TOKENS: &str = "
    CREATE TABLE public.\"user\" (id serial PRIMARY KEY, username text NOT NULL);
    INSERT INTO public.\"user\" (username) VALUES ('observer');
    CREATE TABLE public.api_token (
        id          serial PRIMARY KEY,
        user_id     int NOT NULL REFERENCES public.\"user\" (id),
        name        varchar(100) NOT NULL,
        token_hash  varchar(64) NOT NULL UNIQUE,
        scopes      json NOT NULL DEFAULT '[]',
        is_active   boolean NOT NULL DEFAULT true,
        expires_at  timestamp,
        last_used_at timestamp,
        created_at  timestamp NOT NULL DEFAULT now()
    );
    ALTER TABLE public.raw_data_file
        ADD COLUMN instrument_module_id int NOT NULL DEFAULT 0,
        ADD COLUMN state text NOT NULL DEFAULT 'WAITING';
";

#[tokio::test]
async fn migrate_leaves_ops_db_shaped_tables_alone_and_ops_db_tokens_authenticate() {
    let pg = TestPg::start().await;
    let target = PgTarget::plain(pg.primary_url());
    ops_db_devkit::standin::load(&target)
        .await
        .expect("stand-in");
    let mut conn = pg.primary().await;
    sqlx::raw_sql(OPS_DB_TOKENS)
        .execute(&mut conn)
        .await
        .expect("ops-db's tables");
    let before = snapshot(&mut conn, "public").await;
    db::migrate(&target, &Schema::default())
        .await
        .expect("migrate");
    db::migrate(&target, &Schema::default())
        .await
        .expect("migrate again");
    assert_eq!(snapshot(&mut conn, "public").await, before, "untouched");

    let (good, inactive, expired, foreign) = (
        token::generate(),
        token::generate(),
        token::generate(),
        token::generate(),
    );
    for (secret, scopes, active, expires) in [
        (&good, r#"["write", "read", "superuser"]"#, true, "NULL"),
        (&inactive, r#"["write"]"#, false, "NULL"),
        (
            &expired,
            r#"["write"]"#,
            true,
            "now() AT TIME ZONE 'UTC' - interval '1 minute'",
        ),
        (&foreign, r#"["superuser"]"#, true, "NULL"),
    ] {
        sqlx::raw_sql(&format!(
            "INSERT INTO public.api_token (user_id, name, token_hash, scopes, is_active, expires_at) \
             VALUES (1, 'ops-db client', '{}', '{scopes}', {active}, {expires})",
            token::hash(secret)
        ))
        .execute(&mut conn)
        .await
        .expect("ops-db token");
    }
    pg.wait_for_replay(&pg.current_lsn().await).await;

    // Tokens are ops-db's to issue there.
    let err = token::create(&target, &Schema::default(), "mine", &[Scope::Write], None)
        .await
        .expect_err("refused");
    assert!(format!("{err:#}").contains("ops-db"), "{err:#}");

    let site = Site::start_with(Arc::clone(&pg), None, settings(&pg)).await;
    let app = &site.app;
    let start = |secret: &str| {
        let request = app
            .client
            .post(app.url("/executed_obs_units/start"))
            .bearer_auth(secret)
            .json(&serde_json::json!({"obs_unit_id": 2}));
        async move { request.send().await.expect("request").status().as_u16() }
    };
    eventually(
        "ops-db's token is accepted",
        Duration::from_secs(10),
        || async { (start(&good).await == 201).then_some(()) },
    )
    .await;
    assert_eq!(start(&inactive).await, 401, "inactive");
    assert_eq!(start(&expired).await, 401, "expired");
    assert_eq!(start(&foreign).await, 403, "no scope it knows");
    let read = app
        .client
        .get(app.url("/executed_obs_units?obs_unit_id=2"))
        .bearer_auth(&good)
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), 200);
    site.app.stop().await.expect("clean stop");
}

/// The forwarder on the primary, reads and tokens on the replica.
fn settings(pg: &TestPg) -> impl Fn(&mut Config) + Send + Sync + 'static {
    let (primary, replica) = (pg.primary_url(), pg.replica_url());
    move |c| {
        wire(c, &primary, &replica);
        c.auth.cache_ttl = Duration::from_millis(300);
    }
}
