//! What the configuration asks of a connector kind. Each kind implements [`Kind`] in its own
//! folder (`src/connectors/<kind>/config.rs`): its keys, their compile step with positioned
//! diagnostics, and the answers the generic checks of a sync need (how records are
//! identified, whether a sync can reconcile or archive, what a sync asks of the service).
//! The registry of kinds (`connectors::KINDS`) is handed to [`crate::config::load`]; nothing
//! here names a kind. A kind reads its keys with the helpers of `config::kit`.

use super::diag::{Diagnostics, Span};
use super::reader::Str;
use super::source::{Key, Table};
use crate::domain::mapping::Direction;
use crate::domain::plan::{
    Endpoint, ExternalModel, Mode, ModelSettings, ServiceSettings, WebService,
};
use crate::domain::value::FieldType;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The registry: every kind recsync knows, the default (`kind` left out) first.
pub type Kinds = [&'static dyn Kind];

/// A declaration for a kind to compile: a web service or an external model.
pub struct Declared<'t> {
    /// Its name key (`erp` in `[web_services.erp]`), for diagnostics about a missing key.
    pub key: &'t Key,
    pub table: &'t Table,
    /// How messages name it: "web service `erp`", "external model `partner`".
    pub what: String,
}

impl Declared<'_> {
    pub fn name(&self) -> &str {
        &self.key.name
    }
}

/// What an external model of a kind compiles to.
pub struct CompiledModel {
    /// Its fields in recsync's types.
    pub fields: BTreeMap<String, FieldType>,
    pub settings: Arc<dyn ModelSettings>,
}

/// Which external field holds a record's id (`external_ref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Always this field; naming another is an error.
    Fixed(String),
    /// This field unless the sync names another.
    Default(String),
    /// This field when the model declares it; otherwise the sync must name one.
    DefaultIfDeclared(String),
    /// The sync must name it.
    Required,
}

/// A sync, as a kind checks what it asks of the web service.
pub struct SyncCheck<'a> {
    /// How messages name the sync: "sync `CRM`".
    pub what: &'a str,
    pub direction: Direction,
    pub mode: Mode,
    pub propagate_deletes: bool,
    pub web_service: &'a WebService,
    /// The external model, when it compiled.
    pub external: Option<&'a ExternalModel>,
    pub endpoints: &'a [Endpoint],
    /// Where the sync's direction is written (or the sync's name).
    pub span: Span,
}

/// A connector kind, as the configuration sees it. Every method is answered by every kind:
/// a new kind cannot leave one out without the compiler noticing.
pub trait Kind: Send + Sync {
    /// The value of `kind = "..."`.
    fn name(&self) -> &'static str;
    /// How people call it in a sentence: "Odoo", "Dropbox", "REST", "HTTP".
    fn label(&self) -> &'static str;
    /// How messages name its external models: "Odoo external models".
    fn models_called(&self) -> &'static str;
    /// Every key of a web service of this kind (`kind`, `description` and `active` included).
    fn service_keys(&self) -> &'static [&'static str];
    /// Compiles a web service of this kind; `None` after reporting what is wrong.
    fn compile_service(
        &self,
        d: &Declared<'_>,
        diags: &mut Diagnostics,
    ) -> Option<Arc<dyn ServiceSettings>>;
    /// The keys an external model of this kind takes besides `name`, `kind`, `description`
    /// and `fields`.
    fn model_keys(&self) -> &'static [&'static str];
    /// Compiles an external model of this kind, its fields included.
    fn compile_model(&self, d: &Declared<'_>, diags: &mut Diagnostics) -> Option<CompiledModel>;
    /// Which field identifies the records of an external model of this kind.
    fn identity(&self, ext: &ExternalModel) -> Identity;
    /// Whether a sync may declare `endpoints` (per-action URLs).
    fn takes_endpoints(&self) -> bool;
    /// Whether `delete_mode = "archive"` is possible for an external model of this kind
    /// (`None`: whether it is for some).
    fn can_archive(&self, ext: Option<&ExternalModel>) -> bool;
    /// Why a sync of this web service and model cannot `reconcile` (the message and a help
    /// line), or `None` when it can list every id.
    fn cannot_reconcile(&self, ws: &WebService, ext: &ExternalModel) -> Option<(String, String)>;
    /// A pair's external name the model does not declare as it is (Odoo's related fields,
    /// `country_id.code`): `Some(true)` accepts it, `Some(false)` after reporting why not,
    /// `None` leaves it to the declared fields.
    fn undeclared_name(
        &self,
        ext: &ExternalModel,
        name: &Str<'_>,
        diags: &mut Diagnostics,
    ) -> Option<bool>;
    /// Whether a transform may read any member of the external record (JSON documents read
    /// by path), not only declared fields.
    fn reads_any_member(&self) -> bool;
    /// Checks what a sync asks of the web service (a direction it cannot serve, an operation
    /// the resource lacks).
    fn check_sync(&self, s: &SyncCheck<'_>, diags: &mut Diagnostics);
}

/// The kind named `name`.
pub fn find(kinds: &Kinds, name: &str) -> Option<&'static dyn Kind> {
    kinds.iter().copied().find(|k| k.name() == name)
}
