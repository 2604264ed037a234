//! API keys: read from `api_key`, `X-Api-Key` or `Authorization: Bearer`, hashed with SHA-256
//! and compared in constant time against every configured hash.

use crate::config::{ApiKey, Scope, settings::hash_key};
use actix_web::HttpRequest;
use subtle::ConstantTimeEq;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    scopes: Vec<Scope>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Unknown,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "an API key is required (header `X-Api-Key`, `Authorization: Bearer` or `api_key`; proxies such as nginx drop `api_key` unless told not to)"
            }
            AuthError::Unknown => "the API key is not valid",
        }
    }
}

fn presented(req: &HttpRequest) -> Option<String> {
    let h = req.headers();
    for name in ["api_key", "x-api-key"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.trim().to_string());
        }
    }
    let auth = h.get("authorization")?.to_str().ok()?;
    let (scheme, key) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim().to_string())
}

/// Finds the caller. With no key configured (loopback-only mode) every caller is trusted.
pub fn authenticate(req: &HttpRequest, keys: &[ApiKey]) -> Result<Caller, AuthError> {
    if keys.is_empty() {
        return Ok(Caller {
            name: "local".into(),
            scopes: vec![Scope::Admin],
        });
    }
    let key = presented(req)
        .filter(|k| !k.is_empty())
        .ok_or(AuthError::Missing)?;
    let hash = hash_key(&key);
    // Compare against every key, without stopping early, so timing says nothing.
    let mut found: Option<&ApiKey> = None;
    for k in keys {
        if bool::from(hash.ct_eq(&k.sha256)) {
            found = Some(k);
        }
    }
    found
        .map(|k| Caller {
            name: k.name.clone(),
            scopes: k.scopes.clone(),
        })
        .ok_or(AuthError::Unknown)
}

impl Caller {
    pub fn can(&self, scope: &Scope) -> bool {
        self.scopes.iter().any(|s| s == scope || *s == Scope::Admin)
    }

    pub fn can_read(&self) -> bool {
        self.can(&Scope::Read) || self.can(&Scope::Write) || self.can(&Scope::Operate)
    }

    pub fn can_sync(&self, code: &str) -> bool {
        self.scopes.iter().any(|s| match s {
            Scope::Admin | Scope::AllSyncs => true,
            Scope::Sync(c) => c == code,
            _ => false,
        })
    }
}
