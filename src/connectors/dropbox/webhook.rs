//! Dropbox's webhook notifications: the `X-Dropbox-Signature` check.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Is `signature` (lowercase hex) the HMAC-SHA256 of `body` keyed with `secret`? Compared in
/// constant time.
pub fn signature_ok(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(given) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_signature_vector_verifies() {
        let body = br#"{"delta": {"users": [12345]}}"#;
        let sig = "0a8c16b085420b960dc78664279fe09e936a2a01b1f91064869d9e77dfd64529";
        assert!(signature_ok(b"the_secret", body, sig));
        assert!(!signature_ok(b"other_secret", body, sig));
        assert!(!signature_ok(b"the_secret", b"{}", sig));
        assert!(!signature_ok(b"the_secret", body, "not hex"));
        assert!(!signature_ok(b"the_secret", body, ""));
    }
}
