-- tessera schema, version 4: when an SSO session last answered an authorization request, so
-- that one unused for `session.sso_idle_timeout` asks for the password again. Existing rows
-- count from their sign-in.
ALTER TABLE sso_sessions ADD COLUMN last_used_at INTEGER NOT NULL DEFAULT 0;
UPDATE sso_sessions SET last_used_at = auth_time;
