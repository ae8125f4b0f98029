-- tessera schema, version 3: what a directory connector (LDAP, upstream OpenID Connect) last
-- said about a person. `claims` is the JSON the provider signs into tokens; `checked_at` the last
-- good check upstream; `check_lease_until` the one re-validation in flight; `upstream` the
-- upstream refresh token, sealed by the provider (opaque here); `disabled_at` when the directory
-- said the person is gone. Local users (users.file) have no row: the file is their directory.
CREATE TABLE identities (
    subject           TEXT PRIMARY KEY,
    connector_id      TEXT NOT NULL,
    claims            TEXT NOT NULL,
    checked_at        INTEGER NOT NULL,
    check_lease_until INTEGER,
    upstream          BLOB,
    disabled_at       INTEGER
);
