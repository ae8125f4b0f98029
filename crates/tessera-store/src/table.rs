//! The tables a [`Snapshot`](crate::Snapshot) copies, described once for both backends: each
//! table's name, what one of its rows is called, its columns in the order a row is read and
//! written, and its primary key, which orders the rows. A backend walks these descriptions with
//! one reader and one writer of its own dialect, instead of writing a SELECT and an INSERT per
//! table.
//!
//! Invariant: the columns of a description are in the order the backends' row readers read them
//! (`session_from_row`, `code_from_row`, `proxy_session_from_row`), so a SELECT made from the
//! description feeds them unchanged.

use crate::model::*;

/// What a column holds, as far as a copy needs to know: PostgreSQL imports each column as an
/// array of its type, and orders text keys byte by byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Text (nullable or not).
    Text,
    /// Raw bytes.
    Bytes,
    /// A SHA-256 ([`tessera_core::token::TokenHash`]): bytes in PostgreSQL, hex in SQLite.
    Hash,
    /// Milliseconds since the epoch ([`tessera_core::clock::UnixMillis`]).
    Millis,
}

/// One column of a [`Table`].
#[derive(Debug)]
pub(crate) struct Column {
    /// Its name.
    pub(crate) name: &'static str,
    /// What it holds.
    pub(crate) kind: Kind,
}

/// One table as a snapshot copies it.
#[derive(Debug)]
pub(crate) struct Table {
    /// The table's name, one of [`crate::TABLES`].
    pub(crate) name: &'static str,
    /// One row, as [`crate::StoreError::Corrupt`] names it.
    pub(crate) what: &'static str,
    /// The columns, in the order a row is read and written.
    pub(crate) columns: &'static [Column],
    /// The primary key: rows are read in its order.
    pub(crate) key: &'static str,
}

impl Table {
    /// The column names, comma-separated, in order.
    pub(crate) fn column_list(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        names.join(", ")
    }

    /// The kind of the primary key's column.
    pub(crate) fn key_kind(&self) -> Kind {
        self.columns
            .iter()
            .find(|c| c.name == self.key)
            .map_or(Kind::Text, |c| c.kind)
    }
}

/// A row type of a [`Snapshot`] and the table its rows come from.
pub(crate) trait SnapshotRow {
    /// The table.
    const TABLE: Table;
}

const fn column(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

impl SnapshotRow for SecretRow {
    const TABLE: Table = Table {
        name: "secrets",
        what: "secret",
        columns: &[column("name", Kind::Text), column("value", Kind::Bytes)],
        key: "name",
    };
}

impl SnapshotRow for StoredKey {
    const TABLE: Table = Table {
        name: "signing_keys",
        what: "signing key",
        columns: &[
            column("kid", Kind::Text),
            column("alg", Kind::Text),
            column("pkcs8", Kind::Bytes),
            column("created_at", Kind::Millis),
        ],
        key: "kid",
    };
}

impl SnapshotRow for SsoSession {
    const TABLE: Table = Table {
        name: "sso_sessions",
        what: "SSO session",
        columns: &[
            column("handle_hash", Kind::Hash),
            column("id", Kind::Text),
            column("subject", Kind::Text),
            column("auth_time", Kind::Millis),
            column("expires_at", Kind::Millis),
            column("revoked_at", Kind::Millis),
            column("last_used_at", Kind::Millis),
        ],
        key: "handle_hash",
    };
}

impl SnapshotRow for AuthCodeRow {
    /// The code's own columns first, as `code_from_row` reads them, then its hash and first use.
    const TABLE: Table = Table {
        name: "auth_codes",
        what: "authorization code",
        columns: &[
            column("client_id", Kind::Text),
            column("redirect_uri", Kind::Text),
            column("code_challenge", Kind::Text),
            column("nonce", Kind::Text),
            column("scope", Kind::Text),
            column("session_id", Kind::Text),
            column("sso_id", Kind::Text),
            column("subject", Kind::Text),
            column("auth_time", Kind::Millis),
            column("expires_at", Kind::Millis),
            column("hash", Kind::Hash),
            column("used_at", Kind::Millis),
        ],
        key: "hash",
    };
}

impl SnapshotRow for SessionRow {
    /// The session's columns as `session_from_row` reads them, then why it was revoked.
    const TABLE: Table = Table {
        name: "sessions",
        what: "session",
        columns: &[
            column("id", Kind::Text),
            column("subject", Kind::Text),
            column("client_id", Kind::Text),
            column("sso_id", Kind::Text),
            column("scope", Kind::Text),
            column("auth_time", Kind::Millis),
            column("created_at", Kind::Millis),
            column("absolute_end", Kind::Millis),
            column("revoked_at", Kind::Millis),
            column("revoked_reason", Kind::Text),
            column("created_ip", Kind::Text),
            column("created_user_agent", Kind::Text),
        ],
        key: "id",
    };
}

impl SnapshotRow for RefreshTokenRow {
    const TABLE: Table = Table {
        name: "refresh_tokens",
        what: "refresh token",
        columns: &[
            column("hash", Kind::Hash),
            column("session_id", Kind::Text),
            column("client_id", Kind::Text),
            column("issued_at", Kind::Millis),
            column("expires_at", Kind::Millis),
            column("used_at", Kind::Millis),
            column("used_ip", Kind::Text),
            column("successor_hash", Kind::Hash),
            column("used_user_agent", Kind::Text),
        ],
        key: "hash",
    };
}

impl SnapshotRow for ProxySession {
    /// As `proxy_session_from_row` reads them (the backends' `PROXY_SESSION_COLUMNS`).
    const TABLE: Table = Table {
        name: "proxy_sessions",
        what: "proxy session",
        columns: &[
            column("handle_hash", Kind::Hash),
            column("created_at", Kind::Millis),
            column("last_seen_at", Kind::Millis),
            column("absolute_end", Kind::Millis),
            column("refreshed_at", Kind::Millis),
            column("refresh_lease_until", Kind::Millis),
            column("sealed", Kind::Bytes),
            column("session_id", Kind::Text),
        ],
        key: "handle_hash",
    };
}

impl SnapshotRow for IdentityRecord {
    /// As `identity_from_row` reads them (the backends' `IDENTITY_COLUMNS`).
    const TABLE: Table = Table {
        name: "identities",
        what: "directory identity",
        columns: &[
            column("subject", Kind::Text),
            column("connector_id", Kind::Text),
            column("claims", Kind::Text),
            column("checked_at", Kind::Millis),
            column("check_lease_until", Kind::Millis),
            column("upstream", Kind::Bytes),
            column("disabled_at", Kind::Millis),
        ],
        key: "subject",
    };
}

impl SnapshotRow for DisabledUser {
    const TABLE: Table = Table {
        name: "disabled_users",
        what: "disabled user",
        columns: &[
            column("subject", Kind::Text),
            column("disabled_at", Kind::Millis),
            column("disabled_by", Kind::Text),
        ],
        key: "subject",
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TABLES;

    /// Every description, in the order a snapshot is written.
    const DESCRIBED: [Table; 9] = [
        SecretRow::TABLE,
        StoredKey::TABLE,
        SsoSession::TABLE,
        AuthCodeRow::TABLE,
        SessionRow::TABLE,
        RefreshTokenRow::TABLE,
        ProxySession::TABLE,
        IdentityRecord::TABLE,
        DisabledUser::TABLE,
    ];

    #[test]
    fn every_table_is_described_in_import_order() {
        let names: Vec<&str> = DESCRIBED.iter().map(|t| t.name).collect();
        assert_eq!(names, TABLES);
    }

    #[test]
    fn every_key_is_one_of_its_tables_columns() {
        for table in &DESCRIBED {
            assert!(
                table.columns.iter().any(|c| c.name == table.key),
                "{}",
                table.name
            );
        }
        assert_eq!(SessionRow::TABLE.key_kind(), Kind::Text);
        assert_eq!(RefreshTokenRow::TABLE.key_kind(), Kind::Hash);
    }
}
