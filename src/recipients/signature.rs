//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `<webhook-id>.<webhook-timestamp>.<body>`, keyed with the base64 part of a `whsec_…` secret.
//! `verify` is what a receiver does (tests use it), including the timestamp tolerance that,
//! together with remembering the ids it has seen, makes a replay useless.
use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Receivers reject timestamps further than this from their clock (the convention's default).
pub const TOLERANCE_SECS: i64 = 5 * 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the secret is not whsec_<base64>")]
    BadSecret,
    #[error("no v1 signature matches")]
    Mismatch,
    #[error("the timestamp is outside the tolerance")]
    Stale,
}

/// The key bytes of a `whsec_…` secret (a bare base64 secret is accepted too).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD.decode(b64).ok().filter(|k| !k.is_empty()).ok_or(SignatureError::BadSecret)
}

/// The `webhook-signature` header value for one message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks a message as a receiver does: one of the space-separated `v1,` signatures matches
/// (compared in constant time), and the timestamp is within `TOLERANCE_SECS` of `now`.
pub fn verify(
    key: &[u8],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp.parse().map_err(|_| SignatureError::Stale)?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let ok = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| STANDARD.decode(sig).is_ok_and(|bytes| mac.clone().verify_slice(&bytes).is_ok()));
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            verify(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", &sig, body, 1614265330),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_id_or_old_timestamp_is_refused() {
        let key = secret_key("whsec_c2VjcmV0LWtleS0xMjM0NTY3ODkw").unwrap();
        let sig = sign(&key, "id-1", 1000, b"body");
        assert_eq!(verify(&key, "id-1", "1000", &sig, b"bodY", 1000), Err(SignatureError::Mismatch));
        assert_eq!(verify(&key, "id-2", "1000", &sig, b"body", 1000), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(&key, "id-1", "1000", &sig, b"body", 1000 + TOLERANCE_SECS + 1),
            Err(SignatureError::Stale)
        );
        assert_eq!(verify(&key, "id-1", "1000", &format!("v1,AAAA {sig}"), b"body", 1000), Ok(()));
        assert_eq!(secret_key("whsec_!!"), Err(SignatureError::BadSecret));
    }
}
