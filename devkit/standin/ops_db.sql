-- A stand-in for ops-db's own tables, for `ops-db-api dev`, the benchmarks and the tests
-- only: never loaded by `ops-db-api migrate`, never run against a real ops-db. ops-db
-- (the separate `ccat_ops_db` package) owns these tables; the service writes them only
-- through its batch function, for the tables its config allows.
--
-- Modelled on what the original ops-db-api documents of ops-db (see the reference notes'
-- "Data model"): the table names; UUID ids for the execution records and files created at
-- the telescope; integer ids for planning records (`obs_unit_id` is an int); files grouped
-- into a package per executed obs unit; `executed_obs_unit.status` going "running" →
-- "completed"; `end_time`. Guessed, because the full column lists are not documented:
-- every other column, the check constraints, the package states ('building', 'complete'
-- rather than ops-db's WAITING/TRANSFERRING/ARCHIVED/FAILED) and the absence of the
-- instrument-module link. The fixed endpoints' presets map onto these columns.
--
-- Idempotent: tables are created if missing, the seed (obs_unit 1 to 10) inserted if
-- missing; loading it again changes nothing.

CREATE TABLE IF NOT EXISTS obs_unit (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS executed_obs_unit (
    id                uuid PRIMARY KEY,
    obs_unit_id       bigint NOT NULL REFERENCES obs_unit (id),
    status            text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'aborted')),
    start_time        timestamptz NOT NULL,
    end_time          timestamptz,
    instrument_module text,
    meta              jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS executed_obs_unit_obs_unit_id ON executed_obs_unit (obs_unit_id);

CREATE TABLE IF NOT EXISTS raw_data_package (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL,
    executed_obs_unit_id uuid NOT NULL REFERENCES executed_obs_unit (id),
    relative_path        text,
    status               text NOT NULL CHECK (status IN ('building', 'complete')),
    size                 bigint CHECK (size >= 0),
    checksum             text,
    checksum_algorithm   text,
    file_count           bigint CHECK (file_count >= 0),
    created_at           timestamptz NOT NULL,
    finalized_at         timestamptz,
    meta                 jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS raw_data_package_executed_obs_unit_id
    ON raw_data_package (executed_obs_unit_id);

CREATE TABLE IF NOT EXISTS raw_data_file (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL,
    relative_path        text NOT NULL,
    executed_obs_unit_id uuid NOT NULL REFERENCES executed_obs_unit (id),
    raw_data_package_id  uuid REFERENCES raw_data_package (id),
    size                 bigint NOT NULL CHECK (size >= 0),
    checksum             text NOT NULL,
    checksum_algorithm   text NOT NULL,
    file_type            text,
    created_at           timestamptz NOT NULL,
    meta                 jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS raw_data_file_executed_obs_unit_id ON raw_data_file (executed_obs_unit_id);
CREATE INDEX IF NOT EXISTS raw_data_file_raw_data_package_id ON raw_data_file (raw_data_package_id);

-- Planning rows that dev and the tests write against (planning is maintained in Cologne).
INSERT INTO obs_unit (id, name)
SELECT i, 'obs unit ' || i FROM generate_series(1, 10) AS i
ON CONFLICT DO NOTHING;
