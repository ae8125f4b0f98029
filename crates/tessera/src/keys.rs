//! Signing keys: created at first start, kept in the store so every replica signs alike,
//! rotated by age or by `tessera keys rotate`. For each algorithm the newest key signs and JWKS
//! publishes the newest two, so tokens signed just before a rotation still verify.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::audit::{Event, Subjects};
use tessera_core::clock::UnixMillis;
use tessera_core::jwt::{Algorithm, JwtError, SigningKey, Verifier};
use tessera_store::{Store, StoreError, StoredKey};

use crate::audit::Audit;
use crate::config::Config;

/// How many keys per algorithm JWKS publishes: the current one and its predecessor.
const PUBLISHED_PER_ALG: usize = 2;

/// Failures of key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key failed to generate or parse.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The store holds a key of an algorithm this build does not know.
    #[error("signing key {kid} has unknown algorithm {alg}")]
    UnknownAlgorithm {
        /// The key id.
        kid: String,
        /// Its algorithm name.
        alg: String,
    },
}

/// The keys in use: who signs, what verifies, and the JWKS document.
pub struct KeySet {
    /// Signs id_tokens.
    pub id_signer: Arc<SigningKey>,
    /// Signs access tokens.
    pub access_signer: Arc<SigningKey>,
    /// Verifies tokens signed by any published key.
    pub verifier: Verifier,
    /// The JWKS document (RFC 7517 §5), rendered once.
    pub jwks: String,
}

/// What a server does at start and on every reload: rotates the keys that are due by age,
/// then loads the result.
pub async fn rotate_and_load(
    store: &dyn Store,
    config: &Config,
    audit: &Audit,
    now: UnixMillis,
) -> Result<KeySet, KeyError> {
    let algs = [config.signing_alg, config.access_token_alg];
    rotate_if_due(store, &algs, now, Some(config.key_rotation_interval), audit).await?;
    load(store, config.signing_alg, config.access_token_alg).await
}

/// Adds a new key for each of `algs` whose newest key is missing or older than `max_age`
/// (`None`: always), and audits each as `KeyRotated`. Returns the new keys' (kid, alg).
pub async fn rotate_if_due(
    store: &dyn Store,
    algs: &[Algorithm],
    now: UnixMillis,
    max_age: Option<Duration>,
    audit: &Audit,
) -> Result<Vec<(String, Algorithm)>, KeyError> {
    let existing = store.signing_keys().await?;
    let mut added = Vec::new();
    let mut algs = algs.to_vec();
    algs.dedup();
    // One rule, read here and applied again by the store atomically: a key created after
    // `fresh_after` is fresh; without a maximum age every key is due.
    let fresh_after = max_age.map(|age| earlier(now, age));
    for alg in algs {
        if is_due(newest_created(&existing, alg), fresh_after) {
            added.extend(add_key(store, alg, now, fresh_after, audit).await?);
        }
    }
    Ok(added)
}

/// When the newest stored key of `alg` was created, if there is one.
fn newest_created(existing: &[StoredKey], alg: Algorithm) -> Option<UnixMillis> {
    existing
        .iter()
        .filter(|k| k.alg == alg.as_str())
        .map(|k| k.created_at)
        .max()
}

/// Whether a key created at `newest` is due for a successor: always without a key or without
/// a maximum age (`fresh_after`), else when it is not newer than `fresh_after`.
fn is_due(newest: Option<UnixMillis>, fresh_after: Option<UnixMillis>) -> bool {
    match (newest, fresh_after) {
        (None, _) | (_, None) => true,
        (Some(created), Some(fresh_after)) => created <= fresh_after,
    }
}

/// `age` before `now`.
fn earlier(now: UnixMillis, age: Duration) -> UnixMillis {
    let millis = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    UnixMillis(now.0.saturating_sub(millis))
}

/// Generates a key of `alg`, stores it and audits it as `KeyRotated`; its (kid, alg). With
/// `fresh_after`, only if no replica has stored a key of `alg` newer than that meanwhile (the
/// store decides, atomically, so replicas that find the key due together add one between them);
/// `None` when the key was lost to another replica.
async fn add_key(
    store: &dyn Store,
    alg: Algorithm,
    now: UnixMillis,
    fresh_after: Option<UnixMillis>,
    audit: &Audit,
) -> Result<Option<(String, Algorithm)>, KeyError> {
    let key = generate(alg, now).await?;
    let kid = key.kid.clone();
    let added = match fresh_after {
        Some(fresh_after) => store.add_signing_key_unless_fresh(key, fresh_after).await?,
        None => store.add_signing_key(key).await.map(|()| true)?,
    };
    if !added {
        return Ok(None);
    }
    let event = Event::KeyRotated {
        kid: kid.clone(),
        alg: alg.as_str().into(),
    };
    audit.record(now, &event, &Subjects::default());
    Ok(Some((kid, alg)))
}

/// A new key of `alg` with a random kid, as the store keeps it.
async fn generate(alg: Algorithm, now: UnixMillis) -> Result<StoredKey, KeyError> {
    let random: [u8; 6] = rand::random();
    let kid = format!(
        "{}-{}",
        alg.as_str().to_ascii_lowercase(),
        hex::encode(random)
    );
    // RSA key generation takes tens of milliseconds: keep it off the async workers.
    let (key, pkcs8) = tokio::task::spawn_blocking(move || SigningKey::generate(alg, kid))
        .await
        .map_err(|_| JwtError::KeyGeneration { alg })??;
    Ok(StoredKey {
        kid: key.kid().to_owned(),
        alg: alg.as_str().to_owned(),
        pkcs8,
        created_at: now,
    })
}

/// Loads the keys from the store into a [`KeySet`]: the newest key of each algorithm signs,
/// the newest two of each verify and are published.
pub async fn load(
    store: &dyn Store,
    id_alg: Algorithm,
    access_alg: Algorithm,
) -> Result<KeySet, KeyError> {
    let keys = newest_first(store.signing_keys().await?)?;
    let newest = |alg: Algorithm| {
        keys.iter()
            .find(|k| k.alg() == alg)
            .map(Arc::clone)
            .ok_or(JwtError::KeyRejected {
                alg,
                kid: "(none stored)".into(),
            })
    };
    let id_signer = newest(id_alg)?;
    let access_signer = newest(access_alg)?;
    let (verifier, jwks) = publish(&keys)?;
    Ok(KeySet {
        id_signer,
        access_signer,
        verifier,
        jwks,
    })
}

/// The stored keys parsed, newest first (the later kid first among keys of the same time).
fn newest_first(stored: Vec<StoredKey>) -> Result<Vec<Arc<SigningKey>>, KeyError> {
    let mut keys = Vec::with_capacity(stored.len());
    for k in stored {
        let alg = Algorithm::parse(&k.alg).ok_or_else(|| KeyError::UnknownAlgorithm {
            kid: k.kid.clone(),
            alg: k.alg.clone(),
        })?;
        keys.push((
            k.created_at,
            Arc::new(SigningKey::from_pkcs8(alg, k.kid, &k.pkcs8)?),
        ));
    }
    keys.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.kid().cmp(a.1.kid())));
    Ok(keys.into_iter().map(|(_, key)| key).collect())
}

/// The verifier of the published keys and the JWKS document listing them: for each algorithm,
/// the newest [`PUBLISHED_PER_ALG`] of `keys` (newest first).
fn publish(keys: &[Arc<SigningKey>]) -> Result<(Verifier, String), KeyError> {
    let mut verifier = Verifier::default();
    let mut published = Vec::new();
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        for key in keys
            .iter()
            .filter(|k| k.alg() == alg)
            .take(PUBLISHED_PER_ALG)
        {
            verifier.add(key)?;
            published.push(key.public_jwk());
        }
    }
    let jwks = serde_json::json!({ "keys": published }).to_string();
    Ok((verifier, jwks))
}
