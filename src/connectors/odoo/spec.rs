//! The compiled settings of an Odoo web service and of an Odoo external model.

use crate::connectors::transport::location;
use crate::domain::plan::{ConfigStr, ModelSettings, ServiceSettings};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// What an archived Odoo record means to a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    /// The link ends; the local record stays.
    Unlink,
    /// A delete, carried across as `propagate_deletes` says.
    Delete,
    /// An ordinary update (map `active` to see it).
    Keep,
}

impl Archived {
    pub fn parse(s: &str) -> Option<Archived> {
        match s {
            "unlink" => Some(Archived::Unlink),
            "delete" => Some(Archived::Delete),
            "keep" => Some(Archived::Keep),
            _ => None,
        }
    }
}

/// One declared field of an Odoo model: its Odoo type and, for relational fields, the Odoo
/// model it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OdooField {
    pub ttype: String,
    pub relation: Option<String>,
}

/// The Odoo side of an external model.
#[derive(Debug, Clone)]
pub struct OdooModel {
    /// The Odoo model's technical name (`res.partner`).
    pub model: String,
    /// An Odoo domain, sent with every search, as JSON.
    pub domain: Vec<Value>,
    pub archived: Archived,
    /// The declared fields, by name, in Odoo's types.
    pub fields: BTreeMap<String, OdooField>,
}

impl OdooModel {
    /// Splits a pair's external name into the relational field and the related field
    /// (`country_id.code`), when it has a dot.
    pub fn related(name: &str) -> Option<(&str, &str)> {
        name.split_once('.')
    }
}

/// Which of Odoo's external protocols to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OdooProtocol {
    /// Ask `GET /web/version` once: JSON-2 from Odoo 19 on, JSON-RPC before.
    Auto,
    Json2,
    JsonRpc,
}

impl OdooProtocol {
    pub fn parse(s: &str) -> Option<OdooProtocol> {
        match s {
            "auto" => Some(OdooProtocol::Auto),
            "json2" => Some(OdooProtocol::Json2),
            "jsonrpc" => Some(OdooProtocol::JsonRpc),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OdooProtocol::Auto => "auto",
            OdooProtocol::Json2 => "json2",
            OdooProtocol::JsonRpc => "jsonrpc",
        }
    }
}

/// An Odoo database, reached through its external API.
#[derive(Debug, Clone)]
pub struct OdooService {
    pub url: ConfigStr,
    pub database: Option<String>,
    pub login: Option<String>,
    pub api_key: SecretString,
    pub protocol: OdooProtocol,
    /// Accepts automation-rule webhooks carrying this token, when set.
    pub webhook_token: Option<SecretString>,
    pub timeout: Duration,
    pub max_concurrency: usize,
    /// How far before the cursor each pull reads again (Odoo stamps `write_date` when a
    /// transaction starts, and it may commit later).
    pub overlap: Duration,
}

impl ModelSettings for OdooModel {}

impl ServiceSettings for OdooService {
    fn secrets(&self) -> Vec<String> {
        let mut values = vec![self.api_key.expose_secret().to_string()];
        if let Some(t) = &self.webhook_token {
            values.push(t.expose_secret().to_string());
        }
        if self.url.is_secret() {
            values.push(self.url.expose().to_string());
        }
        values
    }

    fn shown(&self) -> Map<String, Value> {
        let shown = json!({
            "url": location(&self.url),
            "database": self.database,
            "protocol": self.protocol.as_str(),
            "timeout_ms": self.timeout.as_millis() as u64,
        });
        shown.as_object().cloned().unwrap_or_default()
    }
}
