-- The heartbeat: one row per site, upserted through the forwarder while it has committed
-- nothing for `forwarder.heartbeat_interval`, so that the site's replica tracker, reading
-- the row as replayed, can tell how old the newest news from this primary is with no
-- client writing (replica.freshness in /health). `migrate` replaces `opsdb_api` by
-- `schema.name`.
--
-- Written only through `opsdb_api.heartbeat(site)`: the forwarder's role has no table
-- privilege, as for the batch function. Its time is the primary's `now()`, not the
-- caller's: the replica compares it with its own clock, which NTP keeps close.

CREATE TABLE opsdb_api.heartbeat (
    site    text PRIMARY KEY CHECK (site <> ''),
    beat_at timestamptz NOT NULL
);

-- Runs as its owner (SECURITY DEFINER) with the search path pinned, like apply_batch; it
-- writes this one table and nothing else. EXECUTE is granted to opsdb_forwarder by
-- packaging/postgres/roles.sql; PUBLIC's default EXECUTE is revoked below.
CREATE FUNCTION opsdb_api.heartbeat(site text) RETURNS timestamptz
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO opsdb_api.heartbeat AS h (site, beat_at) VALUES ($1, now())
    ON CONFLICT ON CONSTRAINT heartbeat_pkey DO UPDATE SET beat_at = excluded.beat_at
    RETURNING h.beat_at
$$;

REVOKE EXECUTE ON FUNCTION opsdb_api.heartbeat(text) FROM PUBLIC;
