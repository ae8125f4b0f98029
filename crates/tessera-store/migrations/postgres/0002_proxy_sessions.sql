-- tessera schema, version 2, PostgreSQL: the authenticating proxy's sessions, as in the SQLite
-- schema. The cookie handle is stored only as its SHA-256 (BYTEA, 32 bytes); the tokens only
-- sealed by the proxy (`sealed`, opaque here). Runs in one transaction under the migration lock.
CREATE TABLE proxy_sessions (
    handle_hash         BYTEA PRIMARY KEY CHECK (octet_length(handle_hash) = 32),
    created_at          BIGINT NOT NULL,
    last_seen_at        BIGINT NOT NULL,
    absolute_end        BIGINT NOT NULL,
    refreshed_at        BIGINT NOT NULL,
    refresh_lease_until BIGINT,
    sealed              BYTEA NOT NULL
);
CREATE INDEX proxy_sessions_by_end ON proxy_sessions (absolute_end);
