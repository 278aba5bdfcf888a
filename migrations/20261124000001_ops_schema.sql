-- The compatible subset of the ops-db schema that the summit writes, and the ledger of
-- applied transactions. UUID ids are generated at the summit; obs_unit (planning) keeps
-- integer ids and is maintained in Cologne.

CREATE TABLE obs_unit (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE executed_obs_unit (
    id                uuid PRIMARY KEY,
    obs_unit_id       bigint NOT NULL REFERENCES obs_unit (id),
    status            text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'aborted')),
    start_time        timestamptz NOT NULL,
    end_time          timestamptz,
    instrument_module text,
    meta              jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX executed_obs_unit_obs_unit_id ON executed_obs_unit (obs_unit_id);

CREATE TABLE raw_data_package (
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
CREATE INDEX raw_data_package_executed_obs_unit_id ON raw_data_package (executed_obs_unit_id);

CREATE TABLE raw_data_file (
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
CREATE INDEX raw_data_file_executed_obs_unit_id ON raw_data_file (executed_obs_unit_id);
CREATE INDEX raw_data_file_raw_data_package_id ON raw_data_file (raw_data_package_id);

-- Every transaction applied on this primary, written in the same database transaction as
-- its rows: a replay after a crash between commit and acknowledgement finds it here and
-- is skipped. commit_lsn stays NULL: a transaction cannot know its own commit LSN; the
-- forwarder records the LSN it read after the commit in Redis.
CREATE TABLE applied_transaction (
    transaction_id uuid PRIMARY KEY,
    site           text NOT NULL,
    stream_id      text NOT NULL,
    op             text NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now(),
    commit_lsn     pg_lsn
);
