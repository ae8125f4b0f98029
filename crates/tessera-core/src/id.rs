//! Identifiers of the domain. Each is a newtype so a session id can never be passed where a
//! client id belongs.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string.
            pub fn new(value: impl Into<String>) -> $name {
                $name(value.into())
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// An OAuth 2.0 client identifier (RFC 6749 §2.2).
    ClientId
);
string_id!(
    /// One login of one client: the family that all its refresh tokens belong to (the `sid`).
    SessionId
);
string_id!(
    /// A browser single-sign-on session, the one the SSO cookie names.
    SsoId
);
string_id!(
    /// The user a token speaks for: the `sub` claim (OpenID Connect Core §2).
    Subject
);
