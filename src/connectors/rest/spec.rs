//! The compiled settings of a web service speaking the seed protocol (`kind = "rest"`).

use crate::connectors::transport::location;
use crate::domain::plan::{Auth, ConfigStr, ModelSettings, ServiceSettings};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// A REST web service.
#[derive(Debug, Clone)]
pub struct RestService {
    pub url: Option<ConfigStr>,
    pub confirmation_url: Option<ConfigStr>,
    pub shipping_url: Option<ConfigStr>,
    /// Lists every record that exists (reconciliation, delete detection), when set.
    pub list_url: Option<ConfigStr>,
    pub auth: Auth,
    pub timeout: Duration,
    pub max_concurrency: usize,
    /// `signing_secret`: every call is signed per Standard Webhooks.
    pub signing: Option<crate::domain::auth::Signing>,
}

/// A `rest` external model has no keys of its own: the protocol fixes the shape.
#[derive(Debug, Clone, Copy)]
pub struct RestModel;

impl ModelSettings for RestModel {}

impl ServiceSettings for RestService {
    fn secrets(&self) -> Vec<String> {
        let mut values = self.auth.secrets();
        values.extend(self.signing.as_ref().map(|s| s.secret_text()));
        for u in [
            &self.url,
            &self.confirmation_url,
            &self.shipping_url,
            &self.list_url,
        ]
        .into_iter()
        .flatten()
        .filter(|u| u.is_secret())
        {
            values.push(u.expose().to_string());
        }
        values
    }

    fn shown(&self) -> Map<String, Value> {
        let shown = json!({
            "url": self.url.as_ref().map(location),
            "confirmation_url": self.confirmation_url.as_ref().map(location),
            "shipping_url": self.shipping_url.as_ref().map(location),
            "list_url": self.list_url.as_ref().map(location),
            "timeout_ms": self.timeout.as_millis() as u64,
            "signed": self.signing.is_some(),
        });
        shown.as_object().cloned().unwrap_or_default()
    }
}
