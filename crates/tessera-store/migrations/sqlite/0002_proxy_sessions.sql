-- tessera schema, version 2: the authenticating proxy's sessions. The cookie handle is stored
-- only as SHA-256 (hex); the tokens only sealed by the proxy (`sealed`, opaque here).
CREATE TABLE proxy_sessions (
    handle_hash         TEXT PRIMARY KEY,
    created_at          INTEGER NOT NULL,
    last_seen_at        INTEGER NOT NULL,
    absolute_end        INTEGER NOT NULL,
    refreshed_at        INTEGER NOT NULL,
    refresh_lease_until INTEGER,
    sealed              BLOB NOT NULL
);
CREATE INDEX proxy_sessions_by_end ON proxy_sessions (absolute_end);
