-- API tokens kept in the database: created at the main site (`ops-db-api token create`),
-- replicated to every site's read source, read by the service through a short-lived cache
-- (`auth.cache_ttl`). Only the SHA-256 of a token is stored, never the token.
CREATE TABLE api_token (
    sha256     text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    name       text NOT NULL CHECK (name <> ''),
    scopes     text[] NOT NULL CHECK (scopes <@ ARRAY['write', 'read', 'admin']::text[]
                                      AND cardinality(scopes) > 0),
    expires_at timestamptz,
    active     boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
