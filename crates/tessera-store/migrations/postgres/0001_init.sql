-- tessera schema, version 1, PostgreSQL. The same tables as the SQLite schema: times are
-- milliseconds since the Unix epoch (BIGINT); tokens and handles are stored only as their
-- SHA-256 (BYTEA, 32 bytes). Runs in one transaction under the migration lock.
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    value       BYTEA NOT NULL
);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    pkcs8       BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE sso_sessions (
    handle_hash BYTEA PRIMARY KEY CHECK (octet_length(handle_hash) = 32),
    id          TEXT NOT NULL UNIQUE,
    subject     TEXT NOT NULL,
    auth_time   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX sso_sessions_by_end ON sso_sessions (expires_at);

-- sso_id has no foreign key: a session outlives the SSO session it came from (the sweep deletes
-- SSO sessions at their end, sessions at theirs), as in the SQLite schema.
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    subject        TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    sso_id         TEXT,
    scope          TEXT NOT NULL,
    auth_time      BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    absolute_end   BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_by_sso ON sessions (sso_id);
CREATE INDEX sessions_by_end ON sessions (absolute_end);

CREATE TABLE refresh_tokens (
    hash           BYTEA PRIMARY KEY CHECK (octet_length(hash) = 32),
    session_id     TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    client_id      TEXT NOT NULL,
    issued_at      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT,
    used_ip        TEXT,
    successor_hash BYTEA
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

-- session_id has no foreign key: it names the session the code will start, which does not
-- exist yet when the code is stored.
CREATE TABLE auth_codes (
    hash           BYTEA PRIMARY KEY CHECK (octet_length(hash) = 32),
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT,
    nonce          TEXT,
    scope          TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    sso_id         TEXT,
    subject        TEXT NOT NULL,
    auth_time      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);
CREATE INDEX auth_codes_by_end ON auth_codes (expires_at);
