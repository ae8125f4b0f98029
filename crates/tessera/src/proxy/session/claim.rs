//! Who refreshes a stale session and how that refresh ended: the words both stores and their
//! dispatch use, kept apart so that neither store imports the dispatch that chooses it.

use super::SessionState;

/// Who refreshes a stale session, as the store sees it once the request holds this process's
/// gate for the session.
#[derive(Debug)]
pub(super) enum Claim {
    /// This request: it presents the refresh token.
    Ours,
    /// Another request refreshed it meanwhile: its state serves.
    Refreshed(SessionState),
    /// Another replica holds the claim, and the current id_token still serves meanwhile.
    Elsewhere,
    /// The session is gone (signed out or timed out elsewhere).
    Ended,
}

/// How a claimed refresh ended, for the store to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefreshEnd {
    /// New tokens: the state given is the refreshed one.
    Refreshed,
    /// The provider refused the grant: the session is over.
    Refused,
    /// The provider could not be asked; the session stays as it was.
    Abandoned,
}
