//! Odoo (`kind = "odoo"`, `connectors.md` §2), reached through its external API with nothing
//! installed in Odoo:
//!
//! - `client.rs`: JSON-2 and JSON-RPC, retries, Odoo's errors, and values between Odoo's
//!   shapes and recsync's;
//! - `pull.rs`: pulls by the (`write_date`, `id`) cursor with an overlap, related fields read
//!   once per page, archived records, ids named by webhooks, and hard deletes found by listing
//!   ids on a full run;
//! - this file: the connector (sends, listing ids, discovery, the webhook token).

mod client;
pub mod config;
mod pull;
pub mod spec;

pub use client::{OdooClient, OdooEndpoint, OdooError, Protocol, Repeat, from_odoo, to_odoo};

use super::{
    Connector, Failure, Memory, Notice, PullError, PullStart, Pulled, Puller, SendAction, Sent,
    Target, Webhook,
};
use crate::connectors::transport::Limits;
use crate::domain::plan::{DeleteMode, Plan, Sync, WebService};
use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use spec::{OdooModel, OdooService};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a related record found by its field (a country by code) is remembered.
const RELATED_TTL: Duration = Duration::from_secs(300);
/// Related lookups remembered at most.
const RELATED_CAP: usize = 10_000;
/// Record ids named by webhooks, kept at most (the oldest go first; the cursor pull still
/// reads what they named).
const HINTS_CAP: usize = 10_000;
/// Candidates read at most by one search before a create.
const SEARCH_LIMIT: usize = 20;
/// Fields Odoo computes itself: read, never written.
const READ_ONLY: [&str; 5] = ["id", "write_date", "create_date", "write_uid", "create_uid"];

/// Record ids named by webhooks: each sync takes the ones after what it took last.
#[derive(Default)]
struct Hints {
    next: u64,
    /// (sequence, Odoo model, record id)
    items: VecDeque<(u64, String, i64)>,
    /// The last sequence each sync took.
    taken: HashMap<String, u64>,
}

impl Hints {
    fn add(&mut self, model: String, id: i64) {
        self.next += 1;
        self.items.push_back((self.next, model, id));
        while self.items.len() > HINTS_CAP {
            self.items.pop_front();
        }
    }

    /// The ids named for `model` since `code` last took, and the sequence to mark taken.
    fn since(&self, code: &str, model: &str) -> (Vec<i64>, u64) {
        let from = self.taken.get(code).copied().unwrap_or(0);
        let mut ids: Vec<i64> = self
            .items
            .iter()
            .filter(|(seq, m, _)| *seq > from && m == model)
            .map(|(_, _, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        (ids, self.next)
    }
}

/// A related record by field value: (related model, field, value).
type RelatedKey = (String, String, String);

/// The connector of an Odoo web service.
pub struct OdooConnector {
    service: OdooService,
    client: Arc<OdooClient>,
    /// `max_concurrency`: calls in flight for sends, all syncs together.
    limits: Arc<Limits>,
    hints: Arc<Mutex<Hints>>,
    /// (related model, field, value) → id, with when it was found.
    related: Mutex<HashMap<RelatedKey, (i64, Instant)>>,
}

impl OdooConnector {
    pub fn new(name: &str, service: &OdooService, http: reqwest::Client) -> OdooConnector {
        let endpoint = OdooEndpoint {
            name: name.to_string(),
            url: service.url.expose().to_string(),
            database: service.database.clone(),
            login: service.login.clone(),
            api_key: service.api_key.clone(),
            protocol: service.protocol,
            timeout: service.timeout,
        };
        OdooConnector {
            service: service.clone(),
            client: Arc::new(OdooClient::new(endpoint, http)),
            limits: Arc::new(Limits::new(service.max_concurrency, None)),
            hints: Arc::new(Mutex::new(Hints::default())),
            related: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &OdooClient {
        &self.client
    }

    fn name(&self) -> &str {
        &self.client.endpoint().name
    }

    /// The id of the `relation` record whose `field` is `value`, remembered for a while.
    async fn related_id(&self, relation: &str, field: &str, value: &Value) -> Result<i64, Failure> {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let key = (relation.to_string(), field.to_string(), text.clone());
        if let Some((id, at)) = self.related.lock().expect("related lock").get(&key)
            && at.elapsed() < RELATED_TTL
        {
            return Ok(*id);
        }
        let found = self
            .client
            .call(
                relation,
                "search",
                None,
                kwargs(json!({
                    "domain": [[field, "=", value]],
                    "limit": 2,
                    "context": {"active_test": false},
                })),
            )
            .await
            .map_err(send_error)?;
        let ids: Vec<i64> = found
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        match ids.as_slice() {
            [id] => {
                let mut cache = self.related.lock().expect("related lock");
                if cache.len() >= RELATED_CAP {
                    cache.clear();
                }
                cache.insert(key, (*id, Instant::now()));
                Ok(*id)
            }
            [] => Err(Failure::Permanent {
                message: format!(
                    "no {relation} record has {field} = {value} in web service `{}`",
                    self.name()
                ),
            }),
            _ => Err(Failure::Permanent {
                message: format!(
                    "several {relation} records have {field} = {value} in web service `{}`; the related record is ambiguous",
                    self.name()
                ),
            }),
        }
    }

    /// The mapped values as Odoo takes them: Odoo's shapes, related fields resolved to ids,
    /// fields Odoo computes left out, and on an update only what changed.
    async fn vals(
        &self,
        odoo: &OdooModel,
        values: &Map<String, Value>,
        changed: Option<&[String]>,
    ) -> Result<Map<String, Value>, Failure> {
        let mut out = Map::new();
        for (name, v) in values {
            if READ_ONLY.contains(&name.as_str())
                || changed.is_some_and(|c| !c.iter().any(|f| f == name))
            {
                continue;
            }
            if let Some((base, sub)) = OdooModel::related(name) {
                let Some(f) = odoo.fields.get(base) else {
                    continue;
                };
                let relation = f.relation.as_deref().unwrap_or_default();
                let value = if f.ttype == "many2one" {
                    match v {
                        Value::Null => Value::Bool(false),
                        v => json!(self.related_id(relation, sub, v).await?),
                    }
                } else {
                    let items = match v {
                        Value::Null => Vec::new(),
                        Value::Array(a) => a.clone(),
                        one => vec![one.clone()],
                    };
                    let mut ids = Vec::new();
                    for item in &items {
                        ids.push(self.related_id(relation, sub, item).await?);
                    }
                    to_odoo("many2many", &json!(ids))
                };
                out.insert(base.to_string(), value);
                continue;
            }
            let ttype = odoo
                .fields
                .get(name)
                .map(|f| f.ttype.as_str())
                .unwrap_or("char");
            out.insert(name.clone(), to_odoo(ttype, v));
        }
        Ok(out)
    }
}

/// A JSON object as named arguments.
fn kwargs(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The Odoo side of a sync's external model.
fn model_of<'p>(sync: &Sync, plan: &'p Plan) -> Result<&'p OdooModel, PullError> {
    plan.external_models
        .get(&sync.external_model)
        .and_then(|m| m.settings::<OdooModel>())
        .ok_or_else(|| {
            PullError::Service(format!(
                "external model `{}` is not an Odoo model",
                sync.external_model
            ))
        })
}

/// An Odoo failure as the outbox's retry logic needs it.
fn send_error(e: OdooError) -> Failure {
    match e {
        ref e @ OdooError::Record(ref m) if is_missing(e) => {
            Failure::NotFound { message: m.clone() }
        }
        OdooError::Record(m) => Failure::Permanent { message: m },
        OdooError::Transient { reason, after } => Failure::Transient {
            message: reason,
            retry_after: after,
        },
        // Nothing works until the configuration or the server is fixed; the entry waits.
        OdooError::Auth(m) | OdooError::Protocol(m) => Failure::Transient {
            message: m,
            retry_after: None,
        },
    }
}

/// Odoo's message for a record that is gone.
fn is_missing(e: &OdooError) -> bool {
    matches!(e, OdooError::Record(m) if m.starts_with("Record does not exist or has been deleted"))
}

/// The record id of a linked Odoo record.
fn record_id(target: &Target<'_>) -> Result<i64, Failure> {
    let ext = target.external_id.ok_or_else(|| Failure::Permanent {
        message: "the record has no Odoo id yet".into(),
    })?;
    ext.parse::<i64>().map_err(|_| Failure::Permanent {
        message: format!("`{ext}` is not an Odoo record id"),
    })
}

impl super::ConnectorKind for config::Odoo {
    fn connector(&self, service: &WebService, http: &reqwest::Client) -> Arc<dyn Connector> {
        let settings = service
            .settings::<OdooService>()
            .expect("an odoo web service has Odoo settings");
        Arc::new(OdooConnector::new(&service.name, settings, http.clone()))
    }
}

#[async_trait]
impl Connector for OdooConnector {
    fn kind(&self) -> &'static str {
        "odoo"
    }

    async fn open_pull(
        &self,
        sync: &Sync,
        plan: &Plan,
        start: PullStart,
        memory: &dyn Memory,
    ) -> Result<Box<dyn Puller>, PullError> {
        let odoo = model_of(sync, plan)?;
        let reading = pull::Reading::prepare(&self.client, sync, odoo).await?;
        let cursor = memory.cursor().await?;
        let (hinted, seq) = self
            .hints
            .lock()
            .expect("hints lock")
            .since(sync.code.as_str(), &odoo.model);
        Ok(Box::new(pull::OdooPull::new(
            self.client.clone(),
            reading,
            pull::Start {
                code: sync.code.to_string(),
                limit: sync.limit,
                overlap: self.service.overlap,
                full: start.full,
                preview: start.preview,
                cursor,
                hinted,
                hint_seq: seq,
                hints: self.hints.clone(),
            },
        )))
    }

    async fn send(
        &self,
        sync: &Sync,
        plan: &Plan,
        _memory: &dyn Memory,
        action: SendAction,
        target: Target<'_>,
        values: &Map<String, Value>,
    ) -> Result<Sent, Failure> {
        let odoo = model_of(sync, plan).map_err(|e| Failure::Permanent {
            message: e.to_string(),
        })?;
        let _admitted = self.limits.admit().await;
        let model = odoo.model.as_str();
        match action {
            SendAction::Create => {
                let vals = self.vals(odoo, values, None).await?;
                let answer = self
                    .client
                    .call(
                        model,
                        "create",
                        None,
                        kwargs(json!({ "vals_list": [Value::Object(vals.clone())] })),
                    )
                    .await
                    .map_err(send_error)?;
                let id = answer
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(Value::as_i64)
                    .or_else(|| answer.as_i64())
                    .ok_or_else(|| Failure::Transient {
                        message: format!("{model}.create answered no id"),
                        retry_after: None,
                    })?;
                Ok(Sent {
                    external_id: Some(id.to_string()),
                    request: Value::Object(vals),
                    label: None,
                })
            }
            SendAction::Update => {
                let id = record_id(&target)?;
                let vals = self.vals(odoo, values, target.changed).await?;
                if !vals.is_empty() {
                    let repeat = if target.repeat {
                        Repeat::Always
                    } else {
                        Repeat::Never
                    };
                    self.client
                        .call_as(
                            model,
                            "write",
                            Some(&[id]),
                            kwargs(json!({ "vals": Value::Object(vals.clone()) })),
                            repeat,
                        )
                        .await
                        .map_err(send_error)?;
                }
                Ok(Sent {
                    external_id: Some(id.to_string()),
                    request: Value::Object(vals),
                    label: None,
                })
            }
            SendAction::Delete => {
                let id = record_id(&target)?;
                let (method, kw, request) = match sync.delete_mode {
                    DeleteMode::Delete => ("unlink", Map::new(), json!({"unlink": [id]})),
                    DeleteMode::Archive => (
                        "write",
                        kwargs(json!({"vals": {"active": false}})),
                        json!({"active": false}),
                    ),
                };
                match self.client.call(model, method, Some(&[id]), kw).await {
                    Ok(_) => {}
                    // Already gone: what the delete wanted.
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(send_error(e)),
                }
                Ok(Sent {
                    external_id: Some(id.to_string()),
                    request,
                    label: None,
                })
            }
        }
    }

    fn full_pull_lists(&self) -> bool {
        true
    }

    /// The ids join the webhook hints: the next pull reads them by id first.
    fn reread(&self, sync: &Sync, plan: &Plan, external_ids: &[String]) -> bool {
        let Ok(odoo) = model_of(sync, plan) else {
            return false;
        };
        let mut hints = self.hints.lock().expect("hints lock");
        for id in external_ids.iter().filter_map(|e| e.parse::<i64>().ok()) {
            hints.add(odoo.model.clone(), id);
        }
        true
    }

    /// One `search_read` by ids for the whole batch (related values read once for it).
    async fn read_records(
        &self,
        sync: &Sync,
        plan: &Plan,
        _memory: &dyn Memory,
        external_ids: &[String],
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        let odoo = model_of(sync, plan)?;
        let ids: Vec<i64> = external_ids
            .iter()
            .filter_map(|e| e.parse::<i64>().ok())
            .collect();
        if ids.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let _admitted = self.limits.admit().await;
        let reading = pull::Reading::prepare(&self.client, sync, odoo).await?;
        let rows = reading
            .read(&self.client, vec![json!(["id", "in", ids])], None)
            .await?;
        Ok(Some(reading.convert(&self.client, rows).await?))
    }

    /// Text compared with `ilike` (broader than `match_on`'s trimmed, case-blind equality;
    /// the engine narrows the candidates), anything else with `=`.
    async fn search(
        &self,
        sync: &Sync,
        plan: &Plan,
        _memory: &dyn Memory,
        criteria: &Map<String, Value>,
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        let odoo = model_of(sync, plan)?;
        let mut extra = Vec::new();
        for (local, v) in criteria {
            let Some(field) = super::plain_field(sync, local) else {
                return Ok(None);
            };
            if OdooModel::related(field).is_some() {
                // A related field (`country_id.code`) is not searched here.
                return Ok(None);
            }
            extra.push(match v {
                Value::String(s) => json!([field, "ilike", s.trim()]),
                other => json!([field, "=", other]),
            });
        }
        let _admitted = self.limits.admit().await;
        let reading = pull::Reading::prepare(&self.client, sync, odoo).await?;
        let rows = reading
            .read(&self.client, extra, Some(SEARCH_LIMIT))
            .await?;
        Ok(Some(reading.convert(&self.client, rows).await?))
    }

    fn can_list(&self, _sync: &Sync) -> bool {
        true
    }

    async fn list_ids(
        &self,
        sync: &Sync,
        plan: &Plan,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), PullError> {
        let odoo = model_of(sync, plan)?;
        let after = after.and_then(|a| a.parse::<i64>().ok()).unwrap_or(0);
        let page = pull::LIST_PAGE;
        let ids = pull::list_page(&self.client, odoo, after, page).await?;
        let next = (ids.len() >= page)
            .then(|| ids.last().map(i64::to_string))
            .flatten();
        Ok((ids.iter().map(i64::to_string).collect(), next))
    }

    async fn describe(&self, _plan: &Plan, resource: Option<&str>) -> Result<String, PullError> {
        let Some(model) = resource else {
            return Err(PullError::Service(
                "name the Odoo model to describe, such as `res.partner`".into(),
            ));
        };
        let fields = self
            .client
            .call(
                model,
                "fields_get",
                None,
                kwargs(
                    json!({"attributes": ["type", "string", "relation", "required", "readonly"]}),
                ),
            )
            .await
            .map_err(|e| pull::service_error(self.name(), model, e))?;
        Ok(describe_block(model, &fields))
    }

    /// Odoo is asked for real: the protocol, the login and one harmless call.
    async fn check(&self, _plan: &Plan) -> Result<String, String> {
        let started = Instant::now();
        match self.client().check().await {
            Ok(protocol) => Ok(format!(
                "{} answered ({}, logged in) in {} ms",
                crate::connectors::rest::origin(self.service.url.expose()),
                protocol.as_str(),
                started.elapsed().as_millis()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    fn notification(&self, call: Webhook<'_>) -> Notice {
        let Some(expected) = &self.service.webhook_token else {
            return Notice::Refused {
                outcome: "bad_token",
                message: "this web service takes no webhooks (it has no `webhook_token`)".into(),
            };
        };
        let given = url::form_urlencoded::parse(call.query.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        use subtle::ConstantTimeEq;
        let ok: bool = given
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes())
            .into();
        if !ok {
            return Notice::Refused {
                outcome: "bad_token",
                message: "missing or wrong token".into(),
            };
        }
        // The payload is only a hint: the record is read again through the API.
        if let Ok(body) = serde_json::from_slice::<Value>(call.body) {
            let model = body.get("_model").and_then(Value::as_str);
            let id = body.get("_id").and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            });
            if let (Some(model), Some(id)) = (model, id) {
                self.hints
                    .lock()
                    .expect("hints lock")
                    .add(model.to_string(), id);
            }
        }
        Notice::Changed
    }
}

/// An `external_models` block for `model`, from its `fields_get`.
fn describe_block(model: &str, fields: &Value) -> String {
    let name: String = model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut out = format!(
        "[external_models.{name}]\nkind = \"odoo\"\nodoo_model = \"{model}\"\n\n[external_models.{name}.fields]\n"
    );
    let Some(map) = fields.as_object() else {
        return out;
    };
    let mut names: Vec<&String> = map.keys().collect();
    names.sort_by_key(|n| (n.as_str() != "id", n.as_str()));
    for n in names {
        let f = &map[n];
        let ttype = f.get("type").and_then(Value::as_str).unwrap_or("char");
        let mut attrs = vec![format!("type = \"{ttype}\"")];
        if let Some(r) = f.get("relation").and_then(Value::as_str) {
            attrs.push(format!("relation = \"{r}\""));
        }
        if f.get("required") == Some(&Value::Bool(true)) {
            attrs.push("required = true".into());
        }
        if f.get("readonly") == Some(&Value::Bool(true)) {
            attrs.push("readonly = true".into());
        }
        let label = f
            .get("string")
            .and_then(Value::as_str)
            .map(|s| format!("  # {}", s.replace('\n', " ")))
            .unwrap_or_default();
        let key = if n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            n.clone()
        } else {
            format!("\"{n}\"")
        };
        if attrs.len() == 1 {
            out.push_str(&format!("{key} = \"{ttype}\"{label}\n"));
        } else {
            out.push_str(&format!("{key} = {{ {} }}{label}\n", attrs.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_taken_once_per_sync() {
        let mut h = Hints::default();
        h.add("res.partner".into(), 7);
        h.add("res.partner".into(), 3);
        h.add("res.country".into(), 1);
        h.add("res.partner".into(), 7);
        let (ids, seq) = h.since("A", "res.partner");
        assert_eq!(ids, [3, 7]);
        h.taken.insert("A".into(), seq);
        assert!(h.since("A", "res.partner").0.is_empty());
        assert_eq!(
            h.since("B", "res.partner").0,
            [3, 7],
            "another sync still sees them"
        );
    }

    #[test]
    fn a_described_model_is_a_block_ready_to_paste() {
        let fields = json!({
            "name": {"type": "char", "string": "Name", "required": true, "readonly": false},
            "id": {"type": "integer", "string": "ID", "readonly": true},
            "country_id": {"type": "many2one", "string": "Country", "relation": "res.country"},
        });
        let block = describe_block("res.partner", &fields);
        assert!(
            block.starts_with(
                "[external_models.res_partner]\nkind = \"odoo\"\nodoo_model = \"res.partner\"\n"
            ),
            "{block}"
        );
        let lines: Vec<&str> = block.lines().skip(5).collect();
        assert_eq!(
            lines,
            [
                "id = { type = \"integer\", readonly = true }  # ID",
                "country_id = { type = \"many2one\", relation = \"res.country\" }  # Country",
                "name = { type = \"char\", required = true }  # Name",
            ]
        );
        let parsed: toml::Value = toml::from_str(&block).expect("valid TOML");
        assert_eq!(
            parsed["external_models"]["res_partner"]["fields"]["country_id"]["relation"].as_str(),
            Some("res.country")
        );
    }
}
