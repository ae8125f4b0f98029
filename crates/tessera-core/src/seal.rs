//! The stateless session cookie (`session.store: cookie`, issue 4): the session sealed with
//! AES-256-GCM under a configured key, and split into `NAME_0`, `NAME_1`, … cookies when it is
//! too long for one.
//!
//! Invariants kept here:
//! - A sealed value opens only under the cookie name it was sealed for: the name is the AEAD's
//!   additional data, so a value copied into another cookie fails to open.
//! - Rotating the key does not log everyone out: values sealed under a previous key still open;
//!   new values are always sealed under the current key.
//! - Nothing read from a request panics: malformed, tampered, truncated or foreign values are
//!   errors.
//! - Every `name=value` pair written stays within the caller's byte limit (see [`split`]).
//!
//! Sealed format, base64url without padding (RFC 4648 §5):
//! `version (1) || key id (4) || nonce (12) || ciphertext || tag (16)`.

use std::collections::HashSet;
use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Longest `name=value` pair [`split`] should be asked for by default. Browsers keep cookies of at
/// least 4096 bytes counting name, value and attributes (RFC 6265 §6.1); this leaves 256 bytes
/// for `Path`, `Domain`, `Max-Age`, `Secure`, `HttpOnly` and `SameSite`.
pub const MAX_PAIR_LEN: usize = 3840;

/// First byte of every sealed value, so the format can change without guessing.
const VERSION: u8 = 1;
/// Bytes of the key id that names the sealing key.
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// Seals and opens session cookies with a current key and any number of previous ones.
pub struct Sealer {
    /// Seals, and opens.
    current: SealKey,
    /// Only open: values sealed before a rotation.
    previous: Vec<SealKey>,
}

struct SealKey {
    id: [u8; KEY_ID_LEN],
    aead: RandomizedNonceKey,
}

/// Why a sealed value was refused (or, rarely, could not be produced).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Not base64url, or too short to hold a header, a nonce and a tag.
    #[error("the sealed value is malformed")]
    Malformed,
    /// Sealed in a format this version does not know.
    #[error("the sealed value has unknown format version {version}")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// Sealed under a key that is neither current nor previous: rotated out, or never ours.
    #[error("the sealed value names an unknown key")]
    UnknownKey,
    /// The key is known but the value does not authenticate: tampered with, truncated, or moved
    /// from another cookie.
    #[error("the sealed value does not authenticate")]
    Forged,
    /// Encryption failed inside the crypto library (no randomness for the nonce).
    #[error("sealing failed")]
    Sealing,
}

impl Sealer {
    /// A sealer that seals under `current` and also opens values sealed under `previous`.
    pub fn new(current: [u8; 32], previous: Vec<[u8; 32]>) -> Sealer {
        Sealer {
            current: SealKey::new(&current),
            previous: previous
                .into_iter()
                .map(|bytes| SealKey::new(&bytes))
                .collect(),
        }
    }

    /// Encrypts `plaintext` under the current key with a fresh random nonce, bound to `aad`
    /// (the cookie name).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, SealError> {
        let key = &self.current;
        let header = header(key.id);
        let mut body = plaintext.to_vec();
        let nonce = key
            .aead
            .seal_in_place_append_tag(Aad::from(bound_aad(&header, aad)), &mut body)
            .map_err(|_| SealError::Sealing)?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + body.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&body);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Decrypts a value from [`Sealer::seal`], under whichever known key its id names.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SealError::Malformed)?;
        if bytes.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let (header, rest) = bytes.split_at(HEADER_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        if header[0] != VERSION {
            return Err(SealError::UnknownVersion { version: header[0] });
        }
        // Ids are 32 bits, so two configured keys may share one; try each that matches.
        let mut candidates = self.keys().filter(|k| k.id == header[1..]).peekable();
        if candidates.peek().is_none() {
            return Err(SealError::UnknownKey);
        }
        let aad = bound_aad(header, aad);
        candidates
            .find_map(|key| key.open(nonce, &aad, body.to_vec()))
            .ok_or(SealError::Forged)
    }
}

impl Sealer {
    /// Every key that opens, the current one first.
    fn keys(&self) -> impl Iterator<Item = &SealKey> {
        std::iter::once(&self.current).chain(&self.previous)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.keys().map(|k| hex::encode(k.id)).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

/// The cookies to write for `value` under `name`: `name` alone when `name=value` fits in
/// `max_pair_len` bytes, else `name_0`, `name_1`, … each of whose `name_i=chunk` fits.
///
/// The bound holds whenever `max_pair_len` exceeds `name.len()` plus the index digits plus five
/// bytes (one character); below that each chunk still carries one character, to make progress.
/// Chunks split on character boundaries, so every chunk is valid UTF-8.
pub fn split(name: &str, value: &str, max_pair_len: usize) -> Vec<(String, String)> {
    if value.is_empty() || name.len() + 1 + value.len() <= max_pair_len {
        return vec![(name.to_owned(), value.to_owned())];
    }
    let mut chunks = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let chunk_name = chunk_name(name, chunks.len());
        let room = max_pair_len.saturating_sub(chunk_name.len() + 1);
        let end = chunk_end(rest, room);
        let (chunk, tail) = rest.split_at(end);
        chunks.push((chunk_name, chunk.to_owned()));
        rest = tail;
    }
    chunks
}

/// Most chunks a session cookie is read from by default. A sealed session of a user in a few
/// hundred groups takes three chunks, and servers refuse far smaller `Cookie` headers than
/// 32 × 3840 bytes (nginx and Apache: 8 kB a header line by default), so no real session comes
/// near it; a request carrying more is not one the proxy wrote.
pub const MAX_CHUNKS: usize = 32;

/// The value written by [`split`], read back from the request's cookies: `name` itself, or
/// `name_0`, `name_1`, … joined up to the first missing index. One pass over the cookies.
///
/// `None` when neither form is present, when a chunk beyond a gap exists (a missing middle
/// chunk means the value is incomplete, not shorter), or when a chunk at index `max_chunks` or
/// beyond exists: more chunks than a session can have. When a name repeats, the first wins.
/// When both forms are present (a clearing that did not happen) the single cookie wins.
pub fn join(name: &str, cookies: &[(&str, &str)], max_chunks: usize) -> Option<String> {
    let mut single = None;
    let mut chunks: Vec<Option<&str>> = vec![None; max_chunks];
    let mut over_cap = false;
    for &(cookie, value) in cookies {
        if cookie == name {
            single = single.or(Some(value));
        } else if let Some(i) = chunk_index(name, cookie) {
            match chunks.get_mut(i) {
                Some(slot) => *slot = slot.or(Some(value)),
                None => over_cap = true,
            }
        }
    }
    if let Some(value) = single {
        return Some(value.to_owned());
    }
    let count = chunks.iter().take_while(|c| c.is_some()).count();
    let beyond_gap = chunks[count..].iter().any(Option::is_some);
    if count == 0 || beyond_gap || over_cap {
        return None;
    }
    Some(chunks.iter().flatten().copied().collect())
}

/// The cookies present in the request under `name` (the single one or any chunk) that the
/// freshly `written` cookies do not overwrite, and so must be cleared: otherwise a later
/// [`join`] would read stale chunks. Each named once, in the request's order.
pub fn stale(name: &str, written: &[(String, String)], present: &[&str]) -> Vec<String> {
    let mut seen: HashSet<&str> = written.iter().map(|(n, _)| n.as_str()).collect();
    present
        .iter()
        .filter(|&&cookie| cookie == name || chunk_index(name, cookie).is_some())
        .filter(|&&cookie| seen.insert(cookie))
        .map(|&cookie| cookie.to_owned())
        .collect()
}

impl SealKey {
    fn new(bytes: &[u8; 32]) -> SealKey {
        // AES-256-GCM accepts any 32-byte key; the array type guarantees the length.
        let Ok(aead) = RandomizedNonceKey::new(&AES_256_GCM, bytes) else {
            unreachable!("AES-256-GCM takes every 32-byte key")
        };
        SealKey {
            id: key_id(bytes),
            aead,
        }
    }

    fn open(&self, nonce: &[u8], aad: &[u8], mut body: Vec<u8>) -> Option<Vec<u8>> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain_len = self
            .aead
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

/// Names a key without revealing it: a domain-separated SHA-256, cut short. The hash keeps the
/// id from leaking key bits; the label keeps it unrelated to any other use of the same bytes.
fn key_id(key: &[u8; 32]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new()
        .chain_update(b"tessera seal key id v1\0")
        .chain_update(key)
        .finalize();
    let mut id = [0; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

fn header(key_id: [u8; KEY_ID_LEN]) -> [u8; HEADER_LEN] {
    let mut header = [VERSION; HEADER_LEN];
    header[1..].copy_from_slice(&key_id);
    header
}

/// The header is authenticated along with the caller's AAD, so the version and key id cannot be
/// edited even where a future format would otherwise tolerate it.
fn bound_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
    [header, aad].concat()
}

fn chunk_name(name: &str, index: usize) -> String {
    format!("{name}_{index}")
}

/// The index of `cookie` if it is a chunk of `name`: `name_` then a decimal in canonical form,
/// so `name_01` or `name_id` are someone else's cookies.
fn chunk_index(name: &str, cookie: &str) -> Option<usize> {
    let digits = cookie.strip_prefix(name)?.strip_prefix('_')?;
    let canonical = digits == "0" || (!digits.starts_with('0') && !digits.is_empty());
    if !canonical || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The longest prefix of `rest` within `room` bytes that ends on a character boundary, but at
/// least one character.
fn chunk_end(rest: &str, room: usize) -> usize {
    let mut end = room.min(rest.len());
    while !rest.is_char_boundary(end) {
        end -= 1;
    }
    if end == 0 {
        end = rest.chars().next().map_or(rest.len(), char::len_utf8);
    }
    end
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CURRENT: [u8; 32] = [7; 32];
    const OLD: [u8; 32] = [9; 32];

    fn sealer() -> Sealer {
        Sealer::new(CURRENT, vec![])
    }

    fn flip(sealed: &str, at: usize) -> String {
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed).unwrap();
        bytes[at] ^= 1;
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn borrowed(cookies: &[(String, String)]) -> Vec<(&str, &str)> {
        cookies
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn sealed_value_opens_under_the_same_cookie_name() {
        let sealed = sealer().seal(b"session", b"_tessera").unwrap();
        assert_eq!(sealer().open(&sealed, b"_tessera").unwrap(), b"session");
    }

    #[test]
    fn sealing_twice_gives_different_values() {
        let a = sealer().seal(b"session", b"_tessera").unwrap();
        let b = sealer().seal(b"session", b"_tessera").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn tampered_ciphertext_is_forged() {
        let sealed = sealer().seal(b"session", b"_tessera").unwrap();
        let tampered = flip(&sealed, HEADER_LEN + NONCE_LEN);
        assert_eq!(
            sealer().open(&tampered, b"_tessera"),
            Err(SealError::Forged)
        );
    }

    #[test]
    fn tampered_tag_or_nonce_is_forged() {
        let sealed = sealer().seal(b"session", b"_tessera").unwrap();
        let len = URL_SAFE_NO_PAD.decode(&sealed).unwrap().len();
        for at in [HEADER_LEN, len - 1] {
            let tampered = flip(&sealed, at);
            assert_eq!(
                sealer().open(&tampered, b"_tessera"),
                Err(SealError::Forged)
            );
        }
    }

    #[test]
    fn value_moved_to_another_cookie_is_forged() {
        let sealed = sealer().seal(b"session", b"_tessera").unwrap();
        assert_eq!(sealer().open(&sealed, b"_other"), Err(SealError::Forged));
    }

    #[test]
    fn truncated_value_is_refused() {
        let sealed = sealer().seal(b"session", b"_tessera").unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let cut = URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 1]);
        assert_eq!(sealer().open(&cut, b"_tessera"), Err(SealError::Forged));
        let stub = URL_SAFE_NO_PAD.encode(&bytes[..HEADER_LEN + NONCE_LEN]);
        assert_eq!(sealer().open(&stub, b"_tessera"), Err(SealError::Malformed));
        assert_eq!(sealer().open("", b"_tessera"), Err(SealError::Malformed));
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(
            sealer().open("not base64!*", b"_tessera"),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn unknown_version_is_refused() {
        let sealed = sealer().seal(b"session", b"_tessera").unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        bytes[0] = 2;
        let other = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(
            sealer().open(&other, b"_tessera"),
            Err(SealError::UnknownVersion { version: 2 })
        );
    }

    #[test]
    fn value_sealed_under_a_foreign_key_names_an_unknown_key() {
        let sealed = Sealer::new(OLD, vec![]).seal(b"s", b"_tessera").unwrap();
        assert_eq!(
            sealer().open(&sealed, b"_tessera"),
            Err(SealError::UnknownKey)
        );
    }

    #[test]
    fn value_sealed_under_the_previous_key_still_opens_after_rotation() {
        let sealed = Sealer::new(OLD, vec![]).seal(b"s", b"_tessera").unwrap();
        let rotated = Sealer::new(CURRENT, vec![OLD]);
        assert_eq!(rotated.open(&sealed, b"_tessera").unwrap(), b"s");
        let resealed = rotated.seal(b"s", b"_tessera").unwrap();
        assert_eq!(sealer().open(&resealed, b"_tessera").unwrap(), b"s");
    }

    #[test]
    fn debug_shows_key_ids_not_keys() {
        let text = format!("{:?}", sealer());
        assert!(text.contains(&hex::encode(key_id(&CURRENT))));
        assert!(!text.contains("7, 7"));
    }

    #[test]
    fn short_value_is_one_cookie() {
        let cookies = split("_tessera", "abc", MAX_PAIR_LEN);
        assert_eq!(cookies, vec![("_tessera".to_owned(), "abc".to_owned())]);
        assert_eq!(
            join("_tessera", &borrowed(&cookies), MAX_CHUNKS).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn large_session_splits_into_chunks_under_the_bound_and_joins_back() {
        let groups: Vec<String> = (0..400).map(|i| format!("team-{i:04}-readers")).collect();
        let sealed = sealer()
            .seal(groups.join(",").as_bytes(), b"_tessera")
            .unwrap();
        let cookies = split("_tessera", &sealed, MAX_PAIR_LEN);
        assert!(cookies.len() >= 3, "{} chunks", cookies.len());
        for (i, (name, chunk)) in cookies.iter().enumerate() {
            assert_eq!(name, &format!("_tessera_{i}"));
            assert!(name.len() + 1 + chunk.len() <= MAX_PAIR_LEN);
        }
        let joined = join("_tessera", &borrowed(&cookies), MAX_CHUNKS).unwrap();
        assert_eq!(joined, sealed);
        let opened = sealer().open(&joined, b"_tessera").unwrap();
        assert_eq!(opened, groups.join(",").as_bytes());
    }

    #[test]
    fn missing_middle_chunk_fails_to_join() {
        let cookies = split("s", &"x".repeat(100), 20);
        let mut present = borrowed(&cookies);
        present.remove(1);
        assert_eq!(join("s", &present, MAX_CHUNKS), None);
    }

    #[test]
    fn unrelated_cookies_do_not_join() {
        let present = [("s_id", "1"), ("s_01", "2"), ("other", "3")];
        assert_eq!(join("s", &present, MAX_CHUNKS), None);
    }

    #[test]
    fn more_chunks_than_the_cap_do_not_join() {
        let value = "x".repeat(4 * MAX_CHUNKS);
        let cookies = split("s", &value, 8);
        assert!(cookies.len() > MAX_CHUNKS);
        assert_eq!(join("s", &borrowed(&cookies), MAX_CHUNKS), None);
        let within: Vec<(&str, &str)> = borrowed(&cookies[..MAX_CHUNKS]);
        assert!(join("s", &within, MAX_CHUNKS).is_some());
        let mut far = within.clone();
        far.push(("s_100000", "x"));
        assert_eq!(
            join("s", &far, MAX_CHUNKS),
            None,
            "a chunk far beyond the cap"
        );
    }

    #[test]
    fn sixteen_thousand_chunks_are_refused_in_one_pass() {
        let names: Vec<String> = (0..16_000).map(|i| format!("s_{i}")).collect();
        let present: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        assert_eq!(join("s", &present, MAX_CHUNKS), None);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(stale("s", &[], &names).len(), 16_000);
    }

    #[test]
    fn shrinking_from_three_chunks_to_one_cookie_clears_every_chunk() {
        let written = split("s", "short", MAX_PAIR_LEN);
        let present = ["s_0", "s_1", "s_2", "other"];
        assert_eq!(stale("s", &written, &present), ["s_0", "s_1", "s_2"]);
    }

    #[test]
    fn shrinking_from_three_chunks_to_one_chunk_clears_the_rest() {
        let written = vec![("s_0".to_owned(), "v".to_owned())];
        let present = ["s_0", "s_1", "s_2", "s_id"];
        assert_eq!(stale("s", &written, &present), ["s_1", "s_2"]);
    }

    #[test]
    fn growing_from_one_cookie_to_chunks_clears_the_single_cookie() {
        let written = split("s", &"x".repeat(100), 20);
        assert_eq!(stale("s", &written, &["s", "s_0"]), ["s"]);
    }

    #[test]
    fn multibyte_value_splits_on_character_boundaries() {
        let value = "é".repeat(50);
        let cookies = split("s", &value, 10);
        assert!(cookies.iter().all(|(n, c)| n.len() + 1 + c.len() <= 10));
        assert_eq!(join("s", &borrowed(&cookies), MAX_CHUNKS).unwrap(), value);
    }

    proptest! {
        #[test]
        fn seal_then_open_round_trips(plain in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let sealed = sealer().seal(&plain, b"_tessera").unwrap();
            prop_assert_eq!(sealer().open(&sealed, b"_tessera").unwrap(), plain);
        }

        #[test]
        fn split_then_join_round_trips(value in "[A-Za-z0-9_-]{0,3000}", max in 12usize..600) {
            let cookies = split("s", &value, max);
            for (name, chunk) in &cookies {
                prop_assert!(name.len() + 1 + chunk.len() <= max);
            }
            prop_assert_eq!(join("s", &borrowed(&cookies), cookies.len()), Some(value));
            if cookies.len() > 1 {
                prop_assert_eq!(join("s", &borrowed(&cookies), cookies.len() - 1), None);
            }
        }
    }
}
