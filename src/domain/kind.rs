//! All the domain knows of a connector kind: its name (a `&'static str` from the registry of
//! kinds) and its compiled settings, opaque here. Each kind's folder under `src/connectors/`
//! defines their types and reads them back with `WebService::settings` and
//! `ExternalModel::settings`.

use std::any::Any;
use std::fmt::Debug;

/// A web service's settings, as its kind compiled them.
pub trait ServiceSettings: Debug + Send + Sync + Any {
    /// The values that must never be shown: credentials, and URLs and headers written as
    /// secrets. The change log, the API and the CLI mask them wherever they appear.
    fn secrets(&self) -> Vec<String>;
    /// What the UI and the API show of the settings: locations without credentials, modes,
    /// timeouts. Never a secret.
    fn shown(&self) -> serde_json::Map<String, serde_json::Value>;
}

/// An external model's settings, as its kind compiled them (the Odoo model and domain, the
/// Dropbox folder, the HTTP resource's operations, ...).
pub trait ModelSettings: Debug + Send + Sync + Any {}
