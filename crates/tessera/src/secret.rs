//! Password and client-secret hashing. Passwords use argon2id (they are guessable, so the hash
//! must be slow); client secrets may also be stored as `sha256:<hex>`, which is safe for
//! tessera's random 256-bit secrets and costs microseconds instead of 16 ms per token request.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};
use tessera_core::token::constant_time_eq;

/// Hashes a password with argon2id and a random salt (PHC string format).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against an argon2 PHC hash. Slow by design: call off the async workers.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The `sha256:<hex>` form of a client secret.
pub fn sha256_secret_hash(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// Whether a stored secret hash is in a form tessera can verify.
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    if let Some(hex_digits) = hash.strip_prefix("sha256:") {
        let mut out = [0u8; 32];
        return hex::decode_to_slice(hex_digits, &mut out)
            .map_err(|_| "a `sha256:` hash needs 64 hex digits".to_owned());
    }
    PasswordHash::new(hash)
        .map(drop)
        .map_err(|_| "not `sha256:<hex>` nor an argon2id hash from `tessera users hash`".to_owned())
}

/// Whether the stored hash is the slow kind (argon2), which callers run off the async workers.
pub fn is_slow_hash(hash: &str) -> bool {
    !hash.starts_with("sha256:")
}

/// Checks a presented client secret against its stored hash, in constant time for `sha256:`.
pub fn verify_client_secret(hash: &str, presented: &str) -> bool {
    match hash.strip_prefix("sha256:") {
        Some(expected) => {
            let computed = hex::encode(Sha256::digest(presented.as_bytes()));
            constant_time_eq(
                computed.as_bytes(),
                expected.to_ascii_lowercase().as_bytes(),
            )
        }
        None => verify_password(hash, presented),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_only_their_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "wrong"));
        assert!(!verify_password("garbage", "correct horse"));
    }

    #[test]
    fn sha256_client_secrets_verify() {
        let hash = sha256_secret_hash("s3cret");
        assert!(check_hash_format(&hash).is_ok());
        assert!(verify_client_secret(&hash, "s3cret"));
        assert!(!verify_client_secret(&hash, "s3cret "));
        assert!(check_hash_format("sha256:zz").is_err());
        assert!(check_hash_format("plain").is_err());
    }
}
