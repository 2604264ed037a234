//! The compiled configuration: an immutable, validated `Plan` of models, external models,
//! web services and syncs. Everything in it has been checked; the engine trusts it.

pub use super::auth::{Auth, ConfigStr};
use super::filter::Domain;
use super::mapping::{Direction, FieldPair, JsonPath};
use super::merge::Priority;
use super::names::SyncCode;
use super::value::{CoerceError, FieldType, coerce};
use secrecy::SecretString;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
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

/// The kind of an external model or web service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Rest,
    Dropbox,
    Odoo,
    Http,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Rest => "rest",
            ServiceKind::Dropbox => "dropbox",
            ServiceKind::Odoo => "odoo",
            ServiceKind::Http => "http",
        }
    }
}

/// An external model: the external system's schema for one kind of record.
#[derive(Debug, Clone)]
pub struct ExternalModel {
    pub name: String,
    pub label: Option<String>,
    pub kind: ServiceKind,
    pub fields: BTreeMap<String, FieldType>,
    pub dropbox: Option<DropboxFolder>,
    pub odoo: Option<OdooModel>,
    /// The operations of an `http` resource.
    pub http: Option<super::http::HttpResource>,
}

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

/// Fields every Dropbox entry has.
pub const DROPBOX_ENTRY_FIELDS: [(&str, FieldType); 10] = [
    ("id", FieldType::Char),
    ("tag", FieldType::Char),
    ("name", FieldType::Char),
    ("path", FieldType::Char),
    ("path_lower", FieldType::Char),
    ("parent", FieldType::Char),
    ("size", FieldType::Integer),
    ("rev", FieldType::Char),
    ("content_hash", FieldType::Char),
    ("server_modified", FieldType::Datetime),
];

/// A Dropbox folder mirrored as an external model.
#[derive(Debug, Clone)]
pub struct DropboxFolder {
    /// The mirrored folder, lower-case comparisons apply; `""` is the whole account.
    pub root: String,
    pub recursive: bool,
    pub pattern: Option<PathPattern>,
}

/// One piece of a path pattern segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    Literal(String),
    Capture(String),
}

/// A path pattern such as `/{project}/{po_number}_{vendor}/{doc}.pdf`, relative to a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub text: String,
    pub segments: Vec<Vec<PatternPart>>,
}

/// Why a path pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a pattern must start with `/`")]
    NoLeadingSlash,
    #[error("segment {0} is empty")]
    EmptySegment(usize),
    #[error("unclosed `{{` in segment {0}")]
    Unclosed(usize),
    #[error("stray `}}` in segment {0}")]
    Stray(usize),
    #[error("captures `{0}` and `{1}` touch; put a literal between them")]
    Adjacent(String, String),
    #[error("capture name `{0}` is not an identifier")]
    BadName(String),
    #[error("capture `{0}` appears twice")]
    Duplicate(String),
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, PatternError> {
        let rest = text.strip_prefix('/').ok_or(PatternError::NoLeadingSlash)?;
        let mut segments = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for (i, seg) in rest.split('/').enumerate() {
            let n = i + 1;
            if seg.is_empty() {
                return Err(PatternError::EmptySegment(n));
            }
            let mut parts = Vec::new();
            let mut lit = String::new();
            let mut chars = seg.chars();
            while let Some(c) = chars.next() {
                match c {
                    '{' => {
                        let mut name = String::new();
                        loop {
                            match chars.next() {
                                Some('}') => break,
                                Some(c) => name.push(c),
                                None => return Err(PatternError::Unclosed(n)),
                            }
                        }
                        if super::names::Ident::parse(&name).is_err() {
                            return Err(PatternError::BadName(name));
                        }
                        if seen.contains(&name) {
                            return Err(PatternError::Duplicate(name));
                        }
                        if !lit.is_empty() {
                            parts.push(PatternPart::Literal(std::mem::take(&mut lit)));
                        } else if let Some(PatternPart::Capture(prev)) = parts.last() {
                            return Err(PatternError::Adjacent(prev.clone(), name));
                        }
                        seen.push(name.clone());
                        parts.push(PatternPart::Capture(name));
                    }
                    '}' => return Err(PatternError::Stray(n)),
                    c => lit.push(c),
                }
            }
            if !lit.is_empty() {
                parts.push(PatternPart::Literal(lit));
            }
            segments.push(parts);
        }
        Ok(PathPattern {
            text: text.to_string(),
            segments,
        })
    }

    /// The capture names, in order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().flatten().filter_map(|p| match p {
            PatternPart::Capture(c) => Some(c.as_str()),
            PatternPart::Literal(_) => None,
        })
    }

    /// Matches a path relative to the root (`/a/b`), returning the captures.
    pub fn matches(&self, rel_path: &str) -> Option<BTreeMap<String, String>> {
        let rest = rel_path.strip_prefix('/')?;
        let segs: Vec<&str> = rest.split('/').collect();
        if segs.len() != self.segments.len() {
            return None;
        }
        let mut out = BTreeMap::new();
        for (seg, parts) in segs.iter().zip(&self.segments) {
            match_segment(seg, parts, &mut out)?;
        }
        Some(out)
    }

    /// Builds a relative path from field values; `None` if a capture has no value or a value
    /// would break the path.
    pub fn build(&self, values: &BTreeMap<String, String>) -> Option<String> {
        let mut path = String::new();
        for parts in &self.segments {
            path.push('/');
            for p in parts {
                match p {
                    PatternPart::Literal(l) => path.push_str(l),
                    PatternPart::Capture(c) => {
                        let v = values.get(c)?;
                        if v.is_empty() || v.contains('/') {
                            return None;
                        }
                        path.push_str(v);
                    }
                }
            }
        }
        Some(path)
    }
}

/// Matches one segment; captures are non-empty, a capture followed by a literal takes the
/// shortest text that lets the rest match.
fn match_segment(
    seg: &str,
    parts: &[PatternPart],
    out: &mut BTreeMap<String, String>,
) -> Option<()> {
    match parts.split_first() {
        None => seg.is_empty().then_some(()),
        Some((PatternPart::Literal(l), rest)) => {
            match_segment(seg.strip_prefix(l.as_str())?, rest, out)
        }
        Some((PatternPart::Capture(name), rest)) => {
            if rest.is_empty() {
                if seg.is_empty() {
                    return None;
                }
                out.insert(name.clone(), seg.to_string());
                return Some(());
            }
            for (i, _) in seg.char_indices().skip(1) {
                let mut trial = out.clone();
                if match_segment(&seg[i..], rest, &mut trial).is_some() {
                    trial.insert(name.clone(), seg[..i].to_string());
                    *out = trial;
                    return Some(());
                }
            }
            None
        }
    }
}

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

/// A Dropbox account.
#[derive(Debug, Clone)]
pub struct DropboxService {
    pub app_key: SecretString,
    pub app_secret: SecretString,
    pub refresh_token: Option<SecretString>,
    pub access_token: Option<SecretString>,
    pub api_url: Option<ConfigStr>,
}

#[derive(Debug, Clone)]
pub enum ServiceSpec {
    Rest(RestService),
    Dropbox(DropboxService),
    Odoo(OdooService),
    Http(super::http::HttpService),
}

/// A web service: one external endpoint set.
#[derive(Debug, Clone)]
pub struct WebService {
    pub name: String,
    pub spec: ServiceSpec,
    pub active: bool,
}

impl WebService {
    pub fn kind(&self) -> ServiceKind {
        match self.spec {
            ServiceSpec::Rest(_) => ServiceKind::Rest,
            ServiceSpec::Dropbox(_) => ServiceKind::Dropbox,
            ServiceSpec::Odoo(_) => ServiceKind::Odoo,
            ServiceSpec::Http(_) => ServiceKind::Http,
        }
    }

    pub fn rest(&self) -> Option<&RestService> {
        match &self.spec {
            ServiceSpec::Rest(r) => Some(r),
            _ => None,
        }
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
        use secrecy::ExposeSecret;
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
            match &w.spec {
                ServiceSpec::Http(h) => {
                    values.extend(h.auth.secrets());
                    let mut strs = vec![&h.base_url];
                    strs.extend(h.headers.iter().map(|(_, v)| v));
                    if let Auth::OAuth2 { token_url, .. } = &h.auth {
                        strs.push(token_url);
                    }
                    for u in strs.into_iter().filter(|u| u.is_secret()) {
                        values.push(u.expose().to_string());
                    }
                }
                ServiceSpec::Rest(r) => {
                    values.extend(r.auth.secrets());
                    for u in [&r.url, &r.confirmation_url, &r.shipping_url, &r.list_url]
                        .into_iter()
                        .flatten()
                        .filter(|u| u.is_secret())
                    {
                        values.push(u.expose().to_string());
                    }
                }
                ServiceSpec::Dropbox(d) => {
                    values.push(d.app_key.expose_secret().to_string());
                    values.push(d.app_secret.expose_secret().to_string());
                    for t in [&d.refresh_token, &d.access_token].into_iter().flatten() {
                        values.push(t.expose_secret().to_string());
                    }
                }
                ServiceSpec::Odoo(o) => {
                    values.push(o.api_key.expose_secret().to_string());
                    if let Some(t) = &o.webhook_token {
                        values.push(t.expose_secret().to_string());
                    }
                    if o.url.is_secret() {
                        values.push(o.url.expose().to_string());
                    }
                }
            }
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
    fn patterns_capture_and_build() {
        let p = PathPattern::parse("/{project}/{po_number}_{vendor}/{doc}.pdf").unwrap();
        assert_eq!(
            p.captures().collect::<Vec<_>>(),
            vec!["project", "po_number", "vendor", "doc"]
        );
        let m = p.matches("/Apollo/PO-17_Acme_Ltd/invoice.v2.pdf").unwrap();
        assert_eq!(m["project"], "Apollo");
        assert_eq!(m["po_number"], "PO-17");
        assert_eq!(m["vendor"], "Acme_Ltd");
        assert_eq!(m["doc"], "invoice.v2");
        assert_eq!(
            p.build(&m).unwrap(),
            "/Apollo/PO-17_Acme_Ltd/invoice.v2.pdf"
        );
        assert!(p.matches("/Apollo/PO17/invoice.pdf").is_none());
        assert!(p.matches("/Apollo/PO_x/invoice.txt").is_none());
        assert!(p.matches("/Apollo/PO_x").is_none());
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(PathPattern::parse("{a}"), Err(PatternError::NoLeadingSlash));
        assert_eq!(
            PathPattern::parse("/{a}{b}"),
            Err(PatternError::Adjacent("a".into(), "b".into()))
        );
        assert_eq!(PathPattern::parse("/{a"), Err(PatternError::Unclosed(1)));
        assert_eq!(
            PathPattern::parse("/{a}//x"),
            Err(PatternError::EmptySegment(2))
        );
        assert_eq!(
            PathPattern::parse("/{a}/{a}"),
            Err(PatternError::Duplicate("a".into()))
        );
        assert_eq!(
            PathPattern::parse("/{a b}"),
            Err(PatternError::BadName("a b".into()))
        );
    }

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
