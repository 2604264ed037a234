//! Pulls from Odoo. The cursor is the pair (`write_date`, `id`) of the last record taken,
//! saved as `YYYY-MM-DD HH:MM:SS|id`, followed by `|retry:1,2,3` when records failed to apply
//! (a reference not there yet): those are read again by id at the next run, until they apply,
//! so the cursor can move past them without losing them. A run first reads again from the cursor's `write_date`
//! minus the overlap (Odoo stamps `write_date` when a transaction starts, and a long one
//! commits records older than what was already read), then pages by keyset: `write_date`
//! after the last one, or equal with a greater `id`, so records sharing one timestamp are
//! neither skipped nor read twice. Records re-read that did not change are no-ops in the
//! engine. Ids named by webhooks are read first, by id; a full run ends by listing every id
//! and reporting linked records that are gone.

use super::spec::{Archived, OdooModel};
use super::{Hints, OdooClient, OdooError, from_odoo, kwargs};
use crate::connectors::{Ahead, Confirmation, Memory, Page, PullAction, PullError, Pulled, Puller};
use crate::domain::mapping::ExternalField;
use crate::domain::plan::Sync;
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Ids per page when listing.
pub(super) const LIST_PAGE: usize = 10_000;

/// A failure reading a model, naming the web service and the model.
pub(super) fn service_error(service: &str, model: &str, e: OdooError) -> PullError {
    match e {
        OdooError::Auth(m) | OdooError::Protocol(m) => PullError::Service(m),
        OdooError::Transient { reason, .. } => PullError::Service(reason),
        OdooError::Record(m) if m.contains("doesn't exist") || m.contains("does not exist") => {
            PullError::Service(format!(
                "web service `{service}`: Odoo has no model `{model}` ({m})"
            ))
        }
        OdooError::Record(m) => {
            PullError::Service(format!("web service `{service}`, model `{model}`: {m}"))
        }
    }
}

/// A pair read through a relational field (`country_id.code`).
#[derive(Debug, Clone)]
struct Related {
    /// The external name, as the sync's pair says it.
    key: String,
    base: String,
    sub: String,
    relation: String,
    /// The related field's Odoo type.
    sub_type: String,
    /// Whether the relational field holds several records.
    many: bool,
}

/// What a sync reads from its Odoo model, checked against the server's `fields_get`.
pub(super) struct Reading {
    service: String,
    model: OdooModel,
    /// Fields asked for in every read.
    fields: Vec<String>,
    /// Odoo types by field, as the server says.
    types: BTreeMap<String, String>,
    related: Vec<Related>,
    /// Whether the model has `active` (archived records).
    has_active: bool,
    /// Whether `active` is one of the declared fields, so it stays in the values.
    keeps_active: bool,
}

impl Reading {
    /// Asks the server for the model's fields once, and checks every declared field and
    /// related field against them.
    pub(super) async fn prepare(
        client: &OdooClient,
        sync: &Sync,
        model: &OdooModel,
    ) -> Result<Reading, PullError> {
        let service = client.endpoint().name.clone();
        let server = fields_of(client, &model.model).await?;
        let mut types = BTreeMap::new();
        for (name, declared) in &model.fields {
            let Some(actual) = server.get(name) else {
                return Err(PullError::Service(format!(
                    "web service `{service}`: model `{}` has no field `{name}`, or the user recsync logs in as may not read it",
                    model.model
                )));
            };
            if actual.0 != declared.ttype {
                return Err(PullError::Service(format!(
                    "web service `{service}`: field `{name}` of `{}` is {} in Odoo but declared {}",
                    model.model, actual.0, declared.ttype
                )));
            }
            types.insert(name.clone(), actual.0.clone());
        }
        let mut related = Vec::new();
        let mut sub_fields: HashMap<String, BTreeMap<String, (String, Option<String>)>> =
            HashMap::new();
        for p in &sync.fields {
            let ExternalField::Name(key) = &p.external else {
                continue;
            };
            let Some((base, sub)) = OdooModel::related(key) else {
                continue;
            };
            let Some(base_field) = model.fields.get(base) else {
                continue;
            };
            let relation = base_field.relation.clone().unwrap_or_default();
            if !sub_fields.contains_key(&relation) {
                let f = fields_of(client, &relation).await?;
                sub_fields.insert(relation.clone(), f);
            }
            let Some((sub_type, _)) = sub_fields[&relation].get(sub) else {
                return Err(PullError::Service(format!(
                    "web service `{service}`: model `{relation}` has no field `{sub}` (named by `{key}`), or the user may not read it"
                )));
            };
            related.push(Related {
                key: key.clone(),
                base: base.to_string(),
                sub: sub.to_string(),
                relation,
                sub_type: sub_type.clone(),
                many: base_field.ttype != "many2one",
            });
        }
        let has_active = server.contains_key("active");
        let keeps_active = model.fields.contains_key("active");
        let mut fields: Vec<String> = model.fields.keys().cloned().collect();
        if has_active && !keeps_active {
            fields.push("active".into());
        }
        Ok(Reading {
            service,
            model: model.clone(),
            fields,
            types,
            related,
            has_active,
            keeps_active,
        })
    }

    fn error(&self, e: OdooError) -> PullError {
        service_error(&self.service, &self.model.model, e)
    }

    /// Reads the records matching `extra` (and the model's domain), archived ones included.
    pub(super) async fn read(
        &self,
        client: &OdooClient,
        extra: Vec<Value>,
        limit: Option<usize>,
    ) -> Result<Vec<Map<String, Value>>, PullError> {
        let mut domain = self.model.domain.clone();
        domain.extend(extra);
        let mut kw = kwargs(json!({
            "domain": domain,
            "fields": self.fields,
            "order": "write_date asc, id asc",
            "context": {"active_test": false},
        }));
        if let Some(l) = limit {
            kw.insert("limit".into(), json!(l));
        }
        let rows = client
            .call(&self.model.model, "search_read", None, kw)
            .await
            .map_err(|e| self.error(e))?;
        match rows {
            Value::Array(rows) => Ok(rows
                .into_iter()
                .filter_map(|r| match r {
                    Value::Object(m) => Some(m),
                    _ => None,
                })
                .collect()),
            _ => Err(PullError::Service(format!(
                "web service `{}`: {}.search_read did not answer a list",
                self.service, self.model.model
            ))),
        }
    }

    /// The rows as pulled records, related fields read once for the whole page.
    pub(super) async fn convert(
        &self,
        client: &OdooClient,
        rows: Vec<Map<String, Value>>,
    ) -> Result<Vec<Pulled>, PullError> {
        // Related values: one read per related model and field for the page.
        let mut lookups: HashMap<(String, String), HashMap<i64, Value>> = HashMap::new();
        for r in &self.related {
            let ids: BTreeSet<i64> = rows
                .iter()
                .flat_map(|row| ids_in(row.get(&r.base)))
                .collect();
            let slot = lookups
                .entry((r.relation.clone(), r.sub.clone()))
                .or_default();
            let wanted: Vec<i64> = ids.into_iter().filter(|i| !slot.contains_key(i)).collect();
            if wanted.is_empty() {
                continue;
            }
            let found = client
                .call(
                    &r.relation,
                    "search_read",
                    None,
                    kwargs(json!({
                        "domain": [["id", "in", wanted]],
                        "fields": [r.sub],
                        "context": {"active_test": false},
                    })),
                )
                .await
                .map_err(|e| service_error(&self.service, &r.relation, e))?;
            for row in found.as_array().into_iter().flatten() {
                if let Some(id) = row.get("id").and_then(Value::as_i64) {
                    let v = row.get(&r.sub).cloned().unwrap_or(Value::Null);
                    slot.insert(id, from_odoo(&r.sub_type, &v));
                }
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(id) = row.get("id").and_then(Value::as_i64) else {
                continue;
            };
            let archived = self.has_active && row.get("active") == Some(&Value::Bool(false));
            let mut values = Map::new();
            let modified_at = row
                .get("write_date")
                .and_then(Value::as_str)
                .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, DATETIME).ok())
                .map(|t| t.and_utc());
            let mut related = Vec::with_capacity(self.related.len());
            for r in &self.related {
                related.push(row.get(&r.base).cloned());
            }
            for (name, raw) in row {
                if name == "active" && !self.keeps_active {
                    continue;
                }
                let ttype = self.types.get(&name).map(String::as_str).unwrap_or("char");
                let v = from_odoo(ttype, &raw);
                values.insert(name, v);
            }
            for (r, base) in self.related.iter().zip(related) {
                let slot = &lookups[&(r.relation.clone(), r.sub.clone())];
                let v = if r.many {
                    Value::Array(
                        ids_in(base.as_ref())
                            .filter_map(|i| slot.get(&i).cloned())
                            .collect(),
                    )
                } else {
                    ids_in(base.as_ref())
                        .next()
                        .and_then(|i| slot.get(&i).cloned())
                        .unwrap_or(Value::Null)
                };
                values.insert(r.key.clone(), v);
            }
            let action = match (archived, self.model.archived) {
                (true, Archived::Unlink) => PullAction::Unlink,
                (true, Archived::Delete) => PullAction::Delete,
                _ => PullAction::Update,
            };
            out.push(Pulled {
                action,
                values,
                external_id: Some(id.to_string()),
                modified_at,
                label: None,
            });
        }
        Ok(out)
    }
}

/// Odoo's datetime format.
const DATETIME: &str = "%Y-%m-%d %H:%M:%S";

/// A many2one as Odoo reads it: `[id, "name"]`.
fn is_many2one(a: &[Value]) -> bool {
    a.len() == 2 && a[0].is_i64() && a[1].is_string()
}

/// The ids in a relational value: `[id, name]` or `[id, ...]`.
fn ids_in(v: Option<&Value>) -> impl Iterator<Item = i64> + '_ {
    let list: &[Value] = match v {
        Some(Value::Array(a)) if is_many2one(a) => &a[..1],
        Some(Value::Array(a)) => a,
        _ => &[],
    };
    list.iter().filter_map(Value::as_i64)
}

/// The fields of a model on the server: name → (type, relation).
async fn fields_of(
    client: &OdooClient,
    model: &str,
) -> Result<BTreeMap<String, (String, Option<String>)>, PullError> {
    let answer = client
        .call(
            model,
            "fields_get",
            None,
            kwargs(json!({"attributes": ["type", "relation"]})),
        )
        .await
        .map_err(|e| service_error(&client.endpoint().name, model, e))?;
    Ok(answer
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, f)| {
                    (
                        k.clone(),
                        (
                            f.get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("char")
                                .to_string(),
                            f.get("relation").and_then(Value::as_str).map(String::from),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Ids of the model's records after `after` in id order, archived ones included.
pub(super) async fn list_page(
    client: &OdooClient,
    model: &OdooModel,
    after: i64,
    limit: usize,
) -> Result<Vec<i64>, PullError> {
    let mut domain = model.domain.clone();
    domain.push(json!(["id", ">", after]));
    let answer = client
        .call(
            &model.model,
            "search",
            None,
            kwargs(json!({
                "domain": domain,
                "order": "id asc",
                "limit": limit,
                "context": {"active_test": false},
            })),
        )
        .await
        .map_err(|e| service_error(&client.endpoint().name, &model.model, e))?;
    Ok(answer
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default())
}

/// A position in `write_date, id` order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    write_date: String,
    id: i64,
}

impl Position {
    fn parse(text: &str) -> Option<Position> {
        let (wd, id) = text.rsplit_once('|')?;
        chrono::NaiveDateTime::parse_from_str(wd, DATETIME).ok()?;
        Some(Position {
            write_date: wd.to_string(),
            id: id.parse().ok()?,
        })
    }

    fn text(&self) -> String {
        format!("{}|{}", self.write_date, self.id)
    }

    fn of(row: &Map<String, Value>) -> Option<Position> {
        Some(Position {
            write_date: row.get("write_date")?.as_str()?.to_string(),
            id: row.get("id")?.as_i64()?,
        })
    }
}

/// Records re-read by id at most, per sync; beyond, the lowest ids wait for the next full run.
const RETRY_CAP: usize = 1_000;

/// What the sync's cursor holds: the position reached, and records to read again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cursor {
    position: Option<Position>,
    retry: BTreeSet<i64>,
}

impl Cursor {
    fn parse(text: &str) -> Cursor {
        let (head, retry) = match text.split_once("|retry:") {
            Some((h, r)) => (
                h,
                r.split(',').filter_map(|i| i.trim().parse().ok()).collect(),
            ),
            None => (text, BTreeSet::new()),
        };
        Cursor {
            position: Position::parse(head),
            retry,
        }
    }

    fn text(&self) -> String {
        let mut t = self
            .position
            .as_ref()
            .map(Position::text)
            .unwrap_or_else(|| "1970-01-01 00:00:00|0".into());
        if !self.retry.is_empty() {
            t.push_str("|retry:");
            t.push_str(
                &self
                    .retry
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        t
    }
}

/// A page of changes as read: its records, how many rows, and the last row's position.
struct Fetched {
    records: Vec<Pulled>,
    read: usize,
    last: Option<Position>,
}

async fn fetch(
    client: Arc<OdooClient>,
    reading: Arc<Reading>,
    domain: Vec<Value>,
    limit: usize,
) -> Result<Fetched, PullError> {
    let rows = reading.read(&client, domain, Some(limit)).await?;
    let read = rows.len();
    let last = rows.last().and_then(Position::of);
    let records = reading.convert(&client, rows).await?;
    Ok(Fetched {
        records,
        read,
        last,
    })
}

/// Where a run starts.
pub(super) struct Start {
    pub code: String,
    pub limit: usize,
    pub overlap: std::time::Duration,
    pub full: bool,
    /// A plan: the webhook hints are read but stay for the next run.
    pub preview: bool,
    pub cursor: Option<String>,
    pub hinted: Vec<i64>,
    pub hint_seq: u64,
    pub hints: Arc<Mutex<Hints>>,
}

enum Phase {
    /// Ids named by webhooks, and records that failed to apply before.
    Hinted,
    /// Changed records, by the cursor.
    Changes,
    /// Linked records that are gone (full runs).
    Deletes,
    Done,
}

/// One pull of an Odoo sync.
pub(super) struct OdooPull {
    client: Arc<OdooClient>,
    reading: Arc<Reading>,
    start: Start,
    /// The next page of changes, being read.
    ahead: Option<Ahead<Fetched>>,
    phase: Phase,
    /// The saved cursor, as the run found it and as it advanced.
    saved: Cursor,
    /// The keyset position within this run (after the last record read).
    after: Option<Position>,
    /// The greatest position of the page waiting for its confirmation.
    pending: Option<Position>,
    /// Whether the webhook hints were read and wait to be marked taken.
    hints_read: bool,
    /// Whether the records to retry changed since the cursor was saved.
    retry_changed: bool,
}

impl OdooPull {
    pub(super) fn new(client: Arc<OdooClient>, reading: Reading, start: Start) -> OdooPull {
        let reading = Arc::new(reading);
        let saved = start
            .cursor
            .as_deref()
            .map(Cursor::parse)
            .unwrap_or_default();
        OdooPull {
            client,
            reading,
            phase: if start.hinted.is_empty() && saved.retry.is_empty() {
                Phase::Changes
            } else {
                Phase::Hinted
            },
            saved,
            start,
            ahead: None,
            after: None,
            pending: None,
            hints_read: false,
            retry_changed: false,
        }
    }

    /// The condition of the next page of changes.
    fn changes_domain(&self) -> Vec<Value> {
        if let Some(a) = &self.after {
            return vec![
                json!("|"),
                json!(["write_date", ">", a.write_date]),
                json!("&"),
                json!(["write_date", "=", a.write_date]),
                json!(["id", ">", a.id]),
            ];
        }
        match (&self.saved.position, self.start.full) {
            (Some(s), false) => {
                let lower = chrono::NaiveDateTime::parse_from_str(&s.write_date, DATETIME)
                    .map(|t| {
                        (t - chrono::Duration::from_std(self.start.overlap).unwrap_or_default())
                            .format(DATETIME)
                            .to_string()
                    })
                    .unwrap_or_else(|_| s.write_date.clone());
                vec![json!(["write_date", ">=", lower])]
            }
            _ => Vec::new(),
        }
    }

    /// Linked records no longer in the model's view: gone ones are deletes, ones that still
    /// exist outside the domain end their link.
    async fn gone(&self, memory: &dyn Memory) -> Result<Vec<Pulled>, PullError> {
        let mut listed: BTreeSet<i64> = BTreeSet::new();
        let mut after = 0;
        loop {
            let ids = list_page(&self.client, &self.reading.model, after, LIST_PAGE).await?;
            let more = ids.len() >= LIST_PAGE;
            after = ids.last().copied().unwrap_or(after);
            listed.extend(ids);
            if !more {
                break;
            }
        }
        let missing: Vec<i64> = memory
            .linked_ids()
            .await?
            .iter()
            .filter_map(|e| e.parse::<i64>().ok())
            .filter(|id| !listed.contains(id))
            .collect();
        let mut still: BTreeSet<i64> = BTreeSet::new();
        for chunk in missing.chunks(LIST_PAGE) {
            let found = self
                .client
                .call(
                    &self.reading.model.model,
                    "search",
                    None,
                    kwargs(json!({
                        "domain": [["id", "in", chunk]],
                        "context": {"active_test": false},
                    })),
                )
                .await
                .map_err(|e| self.reading.error(e))?;
            still.extend(
                found
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64),
            );
        }
        Ok(missing
            .into_iter()
            .map(|id| Pulled {
                action: if still.contains(&id) {
                    PullAction::Unlink
                } else {
                    PullAction::Delete
                },
                values: Map::new(),
                external_id: Some(id.to_string()),
                modified_at: None,
                label: None,
            })
            .collect())
    }
}

#[async_trait]
impl Puller for OdooPull {
    async fn next_page(&mut self, memory: &dyn Memory) -> Result<Page, PullError> {
        match self.phase {
            Phase::Hinted => {
                let mut ids: BTreeSet<i64> =
                    std::mem::take(&mut self.start.hinted).into_iter().collect();
                ids.extend(self.saved.retry.iter().copied());
                let rows = self
                    .reading
                    .read(&self.client, vec![json!(["id", "in", ids])], None)
                    .await?;
                // A record to retry that is gone or left the domain is not retried again
                // (a full run settles it).
                let found: BTreeSet<i64> = rows
                    .iter()
                    .filter_map(|r| r.get("id").and_then(Value::as_i64))
                    .collect();
                let before = self.saved.retry.len();
                self.saved.retry.retain(|id| found.contains(id));
                self.retry_changed |= self.saved.retry.len() != before;
                let read = rows.len();
                let records = self.reading.convert(&self.client, rows).await?;
                self.hints_read = !self.start.preview;
                self.phase = Phase::Changes;
                Ok(Page {
                    records,
                    read,
                    skipped: 0,
                    more: true,
                })
            }
            Phase::Changes => {
                let fetched = match self.ahead.take() {
                    Some(ahead) => ahead.result().await,
                    None => {
                        fetch(
                            self.client.clone(),
                            self.reading.clone(),
                            self.changes_domain(),
                            self.start.limit,
                        )
                        .await
                    }
                }?;
                let read = fetched.read;
                if let Some(last) = fetched.last {
                    self.after = Some(last.clone());
                    self.pending = Some(last);
                }
                let last_page = read < self.start.limit;
                let records = fetched.records;
                // The next page is read while the engine applies this one: its keyset position
                // is known already, and reading ahead changes nothing in Odoo.
                if !last_page {
                    self.ahead = Some(Ahead::start(fetch(
                        self.client.clone(),
                        self.reading.clone(),
                        self.changes_domain(),
                        self.start.limit,
                    )));
                }
                self.phase = match (last_page, self.start.full) {
                    (false, _) => Phase::Changes,
                    (true, true) => Phase::Deletes,
                    (true, false) => Phase::Done,
                };
                Ok(Page {
                    records,
                    read,
                    skipped: 0,
                    more: !matches!(self.phase, Phase::Done),
                })
            }
            Phase::Deletes => {
                let records = self.gone(memory).await?;
                self.phase = Phase::Done;
                Ok(Page {
                    read: records.len(),
                    records,
                    skipped: 0,
                    more: false,
                })
            }
            Phase::Done => Ok(Page::default()),
        }
    }

    async fn confirm(
        &mut self,
        memory: &dyn Memory,
        outcomes: &[Confirmation],
    ) -> Result<(), PullError> {
        if std::mem::take(&mut self.hints_read) {
            self.start
                .hints
                .lock()
                .expect("hints lock")
                .taken
                .insert(self.start.code.clone(), self.start.hint_seq);
        }
        // Records that did not apply are read again at the next run; those that did, not.
        for o in outcomes {
            let Ok(id) = o.external_id.parse::<i64>() else {
                continue;
            };
            let changed = match &o.error {
                Some(_) => self.saved.retry.insert(id),
                None => self.saved.retry.remove(&id),
            };
            self.retry_changed |= changed;
        }
        while self.saved.retry.len() > RETRY_CAP {
            self.saved.retry.pop_first();
        }
        // The cursor only moves forward: pages re-read through the overlap end before it.
        let mut moved = false;
        if let Some(p) = self.pending.take()
            && self.saved.position.as_ref().is_none_or(|s| p > *s)
        {
            self.saved.position = Some(p);
            moved = true;
        }
        if moved || std::mem::take(&mut self.retry_changed) {
            memory.save(&[], &[], Some(&self.saved.text())).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_write_date_then_id_and_round_trip_as_text() {
        let a = Position::parse("2026-12-01 10:00:00|42").unwrap();
        let b = Position::parse("2026-12-01 10:00:00|100").unwrap();
        let c = Position::parse("2026-12-01 10:00:01|1").unwrap();
        assert!(a < b && b < c);
        assert_eq!(Position::parse(&a.text()), Some(a));
        assert_eq!(Position::parse("yesterday|4"), None);
        assert_eq!(Position::parse("2026-12-01 10:00:00"), None);
    }

    #[test]
    fn a_cursor_carries_the_records_to_read_again() {
        let c = Cursor::parse("2026-12-01 10:00:00|42|retry:7,3");
        assert_eq!(c.position, Position::parse("2026-12-01 10:00:00|42"));
        assert_eq!(c.retry.iter().copied().collect::<Vec<_>>(), [3, 7]);
        assert_eq!(Cursor::parse(&c.text()), c);
        let plain = Cursor::parse("2026-12-01 10:00:00|42");
        assert!(plain.retry.is_empty());
        assert_eq!(plain.text(), "2026-12-01 10:00:00|42");
    }

    #[test]
    fn relational_values_give_their_ids() {
        assert_eq!(
            ids_in(Some(&json!([7, "Belgium"]))).collect::<Vec<_>>(),
            [7]
        );
        assert_eq!(
            ids_in(Some(&json!([1, 2, 3]))).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(ids_in(Some(&json!(false))).count(), 0);
    }
}
