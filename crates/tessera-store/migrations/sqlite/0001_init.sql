-- tessera schema, version 1. Tokens and handles are stored only as SHA-256 (hex).
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    value       BLOB NOT NULL
);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    pkcs8       BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE sso_sessions (
    handle_hash TEXT PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    subject     TEXT NOT NULL,
    auth_time   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    subject        TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    sso_id         TEXT,
    scope          TEXT NOT NULL,
    auth_time      INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    absolute_end   INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
);
CREATE INDEX sessions_by_sso ON sessions (sso_id);
CREATE INDEX sessions_by_end ON sessions (absolute_end);

CREATE TABLE refresh_tokens (
    hash           TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    client_id      TEXT NOT NULL,
    issued_at      INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    used_ip        TEXT,
    successor_hash TEXT
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE auth_codes (
    hash           TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT,
    nonce          TEXT,
    scope          TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    sso_id         TEXT,
    subject        TEXT NOT NULL,
    auth_time      INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER
);
