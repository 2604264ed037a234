//! The compiled configuration: an immutable, validated `Plan` of models, external models,
//! web services and syncs. Everything in it has been checked; the engine trusts it.

pub use super::auth::{Auth, ConfigStr};
use super::filter::Domain;
pub use super::kind::{ModelSettings, ServiceSettings};
use super::mapping::{Direction, FieldPair, JsonPath};
use super::merge::Priority;
use super::names::SyncCode;
use super::value::{CoerceError, FieldType, coerce};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A local model.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// The field shown as the record's title.
    pub display: Option<String>,
    pub fields: BTreeMap<String, Field>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub required: bool,
    /// Masked in the change-control log, API output and the CLI.
    pub secret: bool,
}

/// Field names every record has, besides its declared fields.
pub const RECORD_META_FIELDS: [&str; 4] = ["id", "created_at", "updated_at", "version"];

impl Model {
    /// The type of a declared field, or of the built-in `id` (an integer).
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        match name {
            "id" | "version" => Some(FieldType::Integer),
            "created_at" | "updated_at" => Some(FieldType::Datetime),
            _ => self.fields.get(name).map(|f| f.ty.clone()),
        }
    }

    /// Coerces incoming values to this model's fields. On `create`, required fields must be
    /// present. Every problem is reported, each naming its field.
    pub fn coerce_values(
        &self,
        input: &Map<String, Value>,
        create: bool,
    ) -> Result<Map<String, Value>, Vec<(String, String)>> {
        let mut out = Map::new();
        let mut errors = Vec::new();
        for (k, v) in input {
            match self.fields.get(k) {
                None => errors.push((k.clone(), format!("unknown field of model `{}`", self.name))),
                Some(f) => match coerce(&f.ty, v) {
                    Ok(Value::Null) if f.required => {
                        errors.push((k.clone(), "is required".to_string()))
                    }
                    Ok(c) => {
                        out.insert(k.clone(), c);
                    }
                    Err(e) => errors.push((k.clone(), describe(e))),
                },
            }
        }
        if create {
            for f in self.fields.values().filter(|f| f.required) {
                if !input.contains_key(&f.name) {
                    errors.push((f.name.clone(), "is required".to_string()));
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// The record's title: its display field, else its id.
    pub fn title(&self, id: i64, values: &Map<String, Value>) -> String {
        self.display
            .as_ref()
            .and_then(|d| values.get(d))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            })
            .unwrap_or_else(|| format!("{} #{id}", self.name))
    }
}

fn describe(e: CoerceError) -> String {
    e.to_string()
}

/// An external model: the external system's schema for one kind of record.
#[derive(Debug, Clone)]
pub struct ExternalModel {
    pub name: String,
    pub label: Option<String>,
    /// The connector kind (`kind = "..."`), as the registry of kinds names it.
    pub kind: &'static str,
    pub fields: BTreeMap<String, FieldType>,
    /// What the kind compiled from the model's own keys.
    pub settings: Arc<dyn ModelSettings>,
}

impl ExternalModel {
    /// The kind's settings, when they are of type `T`.
    pub fn settings<T: ModelSettings>(&self) -> Option<&T> {
        let any: &dyn std::any::Any = &*self.settings;
        any.downcast_ref()
    }
}

/// A web service: one external endpoint set.
#[derive(Debug, Clone)]
pub struct WebService {
    pub name: String,
    /// The connector kind (`kind = "..."`), as the registry of kinds names it.
    pub kind: &'static str,
    /// What the kind compiled from the web service's keys.
    pub settings: Arc<dyn ServiceSettings>,
    pub active: bool,
}

impl WebService {
    /// The kind's settings, when they are of type `T`.
    pub fn settings<T: ServiceSettings>(&self) -> Option<&T> {
        let any: &dyn std::any::Any = &*self.settings;
        any.downcast_ref()
    }
}

/// The top-level external names a sync's pairs read: a JSONPath's first member, a name, or
/// a name a transform reads.
fn pair_roots(sync: &Sync) -> impl Iterator<Item = &str> {
    sync.fields.iter().flat_map(|p| p.receives_from())
}

/// When local changes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Cron,
    Realtime,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "cron" => Some(Mode::Cron),
            "realtime" => Some(Mode::Realtime),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cron => "cron",
            Mode::Realtime => "realtime",
        }
    }
}

/// A cron expression with seconds, checked by croner.
#[derive(Debug, Clone)]
pub struct CronSpec {
    text: String,
    cron: croner::Cron,
}

impl CronSpec {
    pub fn parse(text: &str) -> Result<CronSpec, String> {
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .year(croner::parser::Year::Disallowed)
            .build();
        let cron = parser.parse(text).map_err(|e| e.to_string())?;
        Ok(CronSpec {
            text: text.to_string(),
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn cron(&self) -> &croner::Cron {
        &self.cron
    }
}

/// When a cron-mode sync runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<CronSpec>),
    Every(Duration),
}

impl Schedule {
    pub fn describe(&self) -> String {
        match self {
            Schedule::Cron(c) => c.as_str().to_string(),
            Schedule::Every(d) => format!("every {}", humantime_like(*d)),
        }
    }
}

/// Formats a duration the way `every` and `timeout` take it.
pub fn humantime_like(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `1d` (several may be chained: `1h30m`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(d)?;
    }
    Some(total)
}

/// What an outbound endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAction {
    Create,
    Write,
    Unlink,
}

impl EndpointAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(Self::Create),
            "write" => Some(Self::Write),
            "unlink" => Some(Self::Unlink),
            _ => None,
        }
    }
}

/// A real-time outbound call.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub action: EndpointAction,
    pub method: String,
    /// URL template; `{external_id}` is filled in, percent-encoded.
    pub url: ConfigStr,
    pub response_id: Option<JsonPath>,
    pub active: bool,
}

/// A sync object: one local model bound to one external model over one web service.
#[derive(Debug, Clone)]
pub struct Sync {
    pub code: SyncCode,
    pub name: String,
    pub model: String,
    pub external_model: String,
    pub web_service: String,
    pub direction: Direction,
    pub mode: Mode,
    pub schedule: Option<Schedule>,
    pub timezone: chrono_tz::Tz,
    pub priority: Priority,
    pub propagate_deletes: bool,
    pub domain: Domain,
    pub limit: usize,
    pub external_ref: String,
    pub active: bool,
    pub fields: Vec<FieldPair>,
    pub endpoints: Vec<Endpoint>,
    pub delete_mode: DeleteMode,
    /// How often the sync compares both sides in full (`reconcile`).
    pub reconcile: Option<std::time::Duration>,
    /// The limit on deletes per run before they are held (`delete_guard`); `None` where no
    /// delete is guarded.
    pub delete_guard: Option<DeleteGuard>,
    /// Groups of local fields that identify a record on both sides (`match_on`), tried in
    /// order; empty when unlinked records are never matched.
    pub match_on: Vec<Vec<String>>,
    /// `inbound_signing_secret`: `/sync/<CODE>/...` calls must be signed per Standard
    /// Webhooks with it.
    pub inbound_signing: Option<crate::domain::auth::Signing>,
}

/// How many deletes a run may apply before they are held for a person (`delete_guard`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeleteGuard {
    /// More deletes than this are held.
    pub max: Option<u64>,
    /// More deletes than this share of the sync's linked records are held...
    pub max_ratio: Option<f64>,
    /// ... when there are more than this many (deleting 2 of 5 records is not a mass delete).
    pub min: u64,
}

impl Default for DeleteGuard {
    fn default() -> Self {
        DeleteGuard {
            max: None,
            max_ratio: Some(0.2),
            min: 10,
        }
    }
}

impl DeleteGuard {
    /// Whether `deletes` of one run out of `linked` linked records must be held, and why.
    pub fn holds(&self, deletes: u64, linked: u64) -> Option<String> {
        self.holds_within(deletes, linked, "in one run")
    }

    /// The same for `deletes` made `within` some span ("within an hour" of real-time
    /// traffic).
    pub fn holds_within(&self, deletes: u64, linked: u64, within: &str) -> Option<String> {
        if let Some(max) = self.max
            && deletes > max
        {
            return Some(format!(
                "{deletes} deletes {within}, more than delete_guard.max = {max}"
            ));
        }
        if let Some(r) = self.max_ratio
            && deletes > self.min
            && deletes as f64 > r * linked as f64
        {
            return Some(format!(
                "{deletes} deletes {within} out of {linked} linked records, more than delete_guard.max_ratio = {r}"
            ));
        }
        None
    }
}

/// How a sync deletes on the external side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    Delete,
    /// Archive instead (Odoo: `active = false`).
    Archive,
}

impl Sync {
    /// The key of the sync's binding (local model, external model, web service): the links
    /// between local records and external ids belong to it, shared by every sync of the same
    /// binding. `|` never occurs in names, so the key cannot be mistaken for a sync code.
    pub fn binding(&self) -> String {
        format!(
            "{}|{}|{}",
            self.model, self.external_model, self.web_service
        )
    }

    /// Whether `other` shares this sync's binding.
    pub fn same_binding(&self, other: &Sync) -> bool {
        self.model == other.model
            && self.external_model == other.external_model
            && self.web_service == other.web_service
    }

    pub fn endpoint(&self, action: EndpointAction) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.action == action && e.active)
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub models: BTreeMap<String, Model>,
    pub external_models: BTreeMap<String, ExternalModel>,
    pub web_services: BTreeMap<String, WebService>,
    pub syncs: BTreeMap<String, Sync>,
}

impl Plan {
    /// The type of a field path of `model`: a field name, or a dotted path through many2one
    /// fields (`company.country`), as Odoo domains allow.
    pub fn path_type(&self, model: &Model, path: &str) -> Option<FieldType> {
        let mut current = model;
        let mut segments = path.split('.').peekable();
        while let Some(seg) = segments.next() {
            let ty = current.field_type(seg)?;
            if segments.peek().is_none() {
                return Some(ty);
            }
            match ty {
                FieldType::Many2one(related) => current = self.models.get(&related)?,
                _ => return None,
            }
        }
        None
    }

    pub fn sync(&self, code: &str) -> Option<&Sync> {
        self.syncs.get(code)
    }

    /// The binding of sync `code`; a code no longer configured stands for itself (as links
    /// kept per sync by an earlier release do).
    pub fn binding_of(&self, code: &str) -> String {
        self.sync(code)
            .map(Sync::binding)
            .unwrap_or_else(|| code.to_string())
    }

    /// What must never be shown: fields declared `secret` (under their local names and the
    /// external names they are mapped to) and the credentials and other secret strings of the
    /// web services.
    pub fn masker(&self) -> crate::domain::mask::Masker {
        let mut fields = Vec::new();
        for m in self.models.values() {
            for f in m.fields.values().filter(|f| f.secret) {
                fields.push(f.name.clone());
                for s in self.syncs_of_model(&m.name) {
                    for pair in s.fields.iter().filter(|p| p.local == f.name) {
                        if let crate::domain::mapping::ExternalField::Name(n) = &pair.external {
                            fields.push(n.clone());
                        }
                    }
                }
            }
        }
        let mut values: Vec<String> = Vec::new();
        for w in self.web_services.values() {
            values.extend(w.settings.secrets());
        }
        for s in self.syncs.values() {
            values.extend(s.inbound_signing.as_ref().map(|s| s.secret_text()));
        }
        crate::domain::mask::Masker::new(fields, values)
    }

    /// Whether a sync takes this top-level external field: a field of its external model, the
    /// root of a JSONPath pair (`properties` for `$.properties.email`), or a name a pair gives
    /// that the model does not declare (an Odoo related field, `country_id.code`).
    pub fn takes_external_field(&self, sync: &Sync, key: &str) -> bool {
        self.external_models
            .get(&sync.external_model)
            .is_some_and(|ext| ext.fields.contains_key(key))
            || pair_roots(sync).any(|r| r == key)
    }

    /// Every top-level external field a sync takes ([`Plan::takes_external_field`]).
    pub fn external_fields_taken(&self, sync: &Sync) -> std::collections::HashSet<String> {
        let mut out: std::collections::HashSet<String> =
            pair_roots(sync).map(str::to_string).collect();
        if let Some(ext) = self.external_models.get(&sync.external_model) {
            out.extend(ext.fields.keys().cloned());
        }
        out
    }

    /// The syncs bound to a local model.
    pub fn syncs_of_model<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Sync> + 'a {
        self.syncs.values().filter(move |s| s.model == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("15x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(humantime_like(Duration::from_secs(900)), "15m");
    }

    #[test]
    fn cron_needs_seconds() {
        assert!(CronSpec::parse("0 */15 * * * *").is_ok());
        assert!(CronSpec::parse("*/15 * * * *").is_err());
        assert!(CronSpec::parse("0 61 * * * *").is_err());
    }

    #[test]
    fn model_coercion_names_fields() {
        let mut fields = BTreeMap::new();
        fields.insert(
            "name".into(),
            Field {
                name: "name".into(),
                ty: FieldType::Char,
                required: true,
                secret: false,
            },
        );
        fields.insert(
            "visits".into(),
            Field {
                name: "visits".into(),
                ty: FieldType::Integer,
                required: false,
                secret: false,
            },
        );
        let m = Model {
            name: "contact".into(),
            display: Some("name".into()),
            fields,
        };
        let input = serde_json::json!({"visits": "x", "nope": 1});
        let errs = m
            .coerce_values(input.as_object().unwrap(), true)
            .unwrap_err();
        assert_eq!(
            errs,
            vec![
                (
                    "nope".to_string(),
                    "unknown field of model `contact`".to_string()
                ),
                ("visits".to_string(), "not a valid integer".to_string()),
                ("name".to_string(), "is required".to_string()),
            ]
        );
        assert_eq!(m.title(3, &serde_json::Map::new()), "contact #3");
    }
}
