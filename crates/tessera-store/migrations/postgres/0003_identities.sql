-- tessera schema, version 3, PostgreSQL: what a directory connector last said about a person,
-- as in the SQLite schema. Runs in one transaction under the migration lock.
CREATE TABLE identities (
    subject           TEXT PRIMARY KEY,
    connector_id      TEXT NOT NULL,
    claims            TEXT NOT NULL,
    checked_at        BIGINT NOT NULL,
    check_lease_until BIGINT,
    upstream          BYTEA,
    disabled_at       BIGINT
);
