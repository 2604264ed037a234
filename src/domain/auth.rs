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
