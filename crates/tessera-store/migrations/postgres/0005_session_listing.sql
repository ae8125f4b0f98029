-- tessera schema, version 5, PostgreSQL: sessions people and admins can see and end.
-- Where a session started (the code exchange's address and user agent) and where each refresh
-- token was first used, so the account page shows first and last use without another write per
-- refresh; rows from before this version show none.
ALTER TABLE sessions ADD COLUMN created_ip TEXT;
ALTER TABLE sessions ADD COLUMN created_user_agent TEXT;
ALTER TABLE refresh_tokens ADD COLUMN used_user_agent TEXT;
-- One person's sessions, one client's sessions, in the stable order listings page through:
-- byte order (COLLATE "C", as SQLite's), whatever the database's collation, so that a page is
-- read in index order and not sorted from every session of the client.
CREATE INDEX sessions_by_subject ON sessions (subject, id COLLATE "C");
CREATE INDEX sessions_by_client ON sessions (client_id, id COLLATE "C");
-- The provider session a proxy session holds tokens of, so ending that session (account page,
-- admin, a disabled person) ends the browser's proxy session at once.
ALTER TABLE proxy_sessions ADD COLUMN session_id TEXT;
CREATE INDEX proxy_sessions_by_session ON proxy_sessions (session_id);
-- People an admin disabled: no login, no refresh, until enabled again.
CREATE TABLE disabled_users (
    subject     TEXT PRIMARY KEY,
    disabled_at BIGINT NOT NULL,
    disabled_by TEXT NOT NULL
);
CREATE INDEX sso_sessions_by_subject ON sso_sessions (subject);
