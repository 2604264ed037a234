//! What a web service is reached with: its credentials ([`Auth`]) and configuration strings
//! that may be secrets ([`ConfigStr`]). Shared by every kind's compiled settings.

use secrecy::SecretString;

/// Credentials for a REST web service. Secrets never print.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    ApiKey {
        header: String,
        key: SecretString,
    },
    Basic {
        user: String,
        password: SecretString,
    },
    Bearer {
        token: SecretString,
    },
    /// OAuth 2.0 client credentials (RFC 6749 §4.4): a token asked of `token_url`, kept until
    /// it expires (`http` web services only).
    OAuth2 {
        token_url: ConfigStr,
        client_id: SecretString,
        client_secret: SecretString,
        scopes: Vec<String>,
        /// Send the client's credentials in the form body instead of HTTP Basic.
        in_body: bool,
    },
}

impl Auth {
    pub fn mode(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::ApiKey { .. } => "api_key",
            Auth::Basic { .. } => "basic",
            Auth::Bearer { .. } => "bearer",
            Auth::OAuth2 { .. } => "oauth2",
        }
    }

    /// The secret values, for masking.
    pub fn secrets(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        match self {
            Auth::None => vec![],
            Auth::ApiKey { key, .. } => vec![key.expose_secret().to_string()],
            Auth::Basic { password, .. } => vec![password.expose_secret().to_string()],
            Auth::Bearer { token } => vec![token.expose_secret().to_string()],
            Auth::OAuth2 {
                client_id,
                client_secret,
                ..
            } => vec![
                client_id.expose_secret().to_string(),
                client_secret.expose_secret().to_string(),
            ],
        }
    }
}

/// A configuration string that may have come from the environment. When it did, it is a
/// secret: `Display` masks it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigStr {
    value: String,
    secret: bool,
}

impl ConfigStr {
    pub fn new(value: String, secret: bool) -> Self {
        ConfigStr { value, secret }
    }

    /// The real value, for use (never for logs).
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn is_secret(&self) -> bool {
        self.secret
    }
}

impl std::fmt::Display for ConfigStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secret {
            f.write_str("[from environment]")
        } else {
            f.write_str(&self.value)
        }
    }
}

impl std::fmt::Debug for ConfigStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secret {
            f.write_str("ConfigStr([secret])")
        } else {
            write!(f, "ConfigStr({:?})", self.value)
        }
    }
}

/// A Standard Webhooks secret (`whsec_` and the key in base64): signs outbound calls
/// (`signing_secret`) and checks inbound ones (`inbound_signing_secret`). The signature is
/// `v1,` and the base64 HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>`.
#[derive(Clone)]
pub struct Signing {
    key: secrecy::SecretSlice<u8>,
    /// The secret as written, for masking.
    text: SecretString,
}

/// How far a signed call's timestamp may be from now (the specification's five minutes).
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

/// Why an inbound signature was refused, in a sentence for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    Missing(&'static str),
    BadTimestamp,
    Stale { skew_s: i64 },
    Mismatch,
}

impl SignatureError {
    /// A word for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Missing(_) => "missing",
            SignatureError::BadTimestamp => "bad_timestamp",
            SignatureError::Stale { .. } => "stale",
            SignatureError::Mismatch => "mismatch",
        }
    }
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Missing(h) => write!(
                f,
                "the sync requires signed calls (Standard Webhooks): the `{h}` header is missing"
            ),
            SignatureError::BadTimestamp => f.write_str(
                "the `webhook-timestamp` header is not a number of seconds since 1970",
            ),
            SignatureError::Stale { skew_s } => write!(
                f,
                "the `webhook-timestamp` is {skew_s} s from now, outside the {SIGNATURE_TOLERANCE_S} s allowed (a replay, or a clock to set)"
            ),
            SignatureError::Mismatch => f.write_str(
                "no signature in `webhook-signature` matches the body with the sync's `inbound_signing_secret`",
            ),
        }
    }
}

impl Signing {
    /// From `whsec_<base64>` (the prefix is optional, as the specification's libraries allow).
    pub fn parse(secret: &str) -> Result<Signing, String> {
        use base64::Engine as _;
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "a Standard Webhooks secret is `whsec_` followed by base64".to_string())?;
        if key.len() < 16 {
            return Err(format!(
                "the secret's key is {} bytes; use at least 16 (24 to 64 is usual)",
                key.len()
            ));
        }
        Ok(Signing {
            key: key.into(),
            text: SecretString::from(secret.to_string()),
        })
    }

    /// The secret as written, for the masker (never for a message).
    pub fn secret_text(&self) -> String {
        use secrecy::ExposeSecret;
        self.text.expose_secret().to_string()
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        use secrecy::ExposeSecret;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.expose_secret())
            .expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for a call.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        use base64::Engine as _;
        use hmac::Mac;
        let sig = self.mac(id, timestamp, body).finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(sig)
        )
    }

    /// Checks a call's headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`,
    /// which may hold several space-separated signatures) against its body, at `now`.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        use base64::Engine as _;
        use hmac::Mac;
        let id = id.ok_or(SignatureError::Missing("webhook-id"))?;
        let ts = timestamp.ok_or(SignatureError::Missing("webhook-timestamp"))?;
        let signatures = signatures.ok_or(SignatureError::Missing("webhook-signature"))?;
        let ts: i64 = ts
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        if (now - ts).abs() > SIGNATURE_TOLERANCE_S {
            return Err(SignatureError::Stale { skew_s: now - ts });
        }
        for s in signatures.split_whitespace() {
            let Some(b64) = s.strip_prefix("v1,") else {
                continue;
            };
            let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                continue;
            };
            // Constant time (`Mac::verify_slice`).
            if self.mac(id, ts, body).verify_slice(&sig).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signing([secret])")
    }
}

#[cfg(test)]
mod signing_tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_and_verifies_as_the_specification_does() {
        let s = Signing::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let ok = s.verify(
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
            Some("1614265330"),
            Some(&format!("v1,bm9wZQ== {sig}")),
            body,
            1614265330 + 10,
        );
        assert_eq!(ok, Ok(()));
        let stale = s.verify(
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
            Some("1614265330"),
            Some(&sig),
            body,
            1614265330 + 301,
        );
        assert_eq!(stale, Err(SignatureError::Stale { skew_s: 301 }));
        let tampered = s.verify(
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
            Some("1614265330"),
            Some(&sig),
            br#"{"test": 2432232315}"#,
            1614265330,
        );
        assert_eq!(tampered, Err(SignatureError::Mismatch));
        assert!(Signing::parse("whsec_not base64!").is_err());
        assert!(Signing::parse("whsec_c2hvcnQ=").is_err());
    }
}
