//! Any HTTP JSON API (`kind = "http"`, `connectors.md` §3): a resource described in the
//! configuration (list, create, update, delete), reached with the web service's credentials,
//! rate limit and retries ([`call`]), its pages followed in one of five styles ([`paging`]).
//!
//! **The incremental cursor.** With `cursor_field`, the cursor is the greatest value of that
//! field among the records applied, with the ids of the records that have exactly that value:
//! `{"at": <value>, "ids": [...]}`. The next run asks from that value again (inclusive), and
//! drops the records it already took at that value. It moves as pages are applied and is
//! saved every few pages, at the end and before the run stops on an error (never ahead of what
//! was applied), so the list must come in ascending order of `cursor_field`, as incremental
//! exports do. A
//! record that failed to apply holds the cursor at its value until it applies. Without
//! `cursor_field` every run reads the whole list, and the engine leaves alone what did not
//! change.

pub mod call;
pub mod config;
mod discover;
pub mod paging;
pub mod spec;

use super::{
    Ahead, Confirmation, Connector, Failure, Listed, Memory, Page, PullAction, PullError,
    PullStart, Pulled, Puller, SendAction, Sent, Target,
};
use crate::domain::Plan;
use crate::domain::mapping::id_text;
use crate::domain::plan::{Sync, WebService};
use async_trait::async_trait;
use call::{Answer, Caller};
use paging::{Fetched, Paging};
use serde_json::{Map, Value, json};
use spec::{HttpList, HttpOp, HttpResource, HttpService};
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use url::Url;

/// The connector of an `http` web service.
pub struct HttpConnector {
    caller: Arc<Caller>,
}

impl HttpConnector {
    pub fn new(name: &str, service: &HttpService, client: reqwest::Client) -> HttpConnector {
        HttpConnector {
            caller: Caller::new(name, service.clone(), client),
        }
    }
}

impl super::ConnectorKind for config::Http {
    fn connector(&self, service: &WebService, http: &reqwest::Client) -> Arc<dyn Connector> {
        let settings = service
            .settings::<HttpService>()
            .expect("an http web service has HTTP settings");
        Arc::new(HttpConnector::new(&service.name, settings, http.clone()))
    }
}

/// The resource of a sync's external model.
fn resource<'p>(plan: &'p Plan, sync: &Sync) -> Result<&'p HttpResource, String> {
    plan.external_models
        .get(&sync.external_model)
        .and_then(|e| e.settings::<HttpResource>())
        .ok_or_else(|| {
            format!(
                "external model `{}` is not an `http` resource",
                sync.external_model
            )
        })
}

/// "web service `desk`, resource `ticket`", for messages.
fn whose(caller: &Caller, resource: &str) -> String {
    format!("web service `{}`, resource `{resource}`", caller.name)
}

/// Reads one page: the call, then the body as JSON (an HTML or other non-JSON answer is an
/// error naming what came back).
async fn fetch(caller: &Caller, url: Url) -> Result<Fetched, String> {
    let answer = caller
        .call(&reqwest::Method::GET, &url, None, None, &[], true)
        .await
        .map_err(|e| e.to_string())?;
    let Answer {
        text, link, json, ..
    } = answer;
    let body: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return Err(if call::looks_like_html(&text) {
                "the service answered an HTML page, not JSON (a login page or a proxy's error?)"
                    .to_string()
            } else if !json {
                "the service's answer is not JSON".to_string()
            } else {
                format!("the service's answer is not valid JSON: {e}")
            });
        }
    };
    Ok(Fetched {
        url,
        hash: paging::hash_text(&text),
        body,
        link,
    })
}

/// Orders two cursor values: numbers as numbers, RFC 3339 times as instants, other text as
/// text.
pub fn cursor_cmp(a: &Value, b: &Value) -> Ordering {
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    let (sa, sb) = (paging::cursor_text(a), paging::cursor_text(b));
    if let (Ok(x), Ok(y)) = (
        chrono::DateTime::parse_from_rfc3339(&sa),
        chrono::DateTime::parse_from_rfc3339(&sb),
    ) {
        return x.cmp(&y);
    }
    sa.cmp(&sb)
}

/// The saved incremental cursor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Cursor {
    at: Value,
    /// The records already taken at exactly `at`.
    ids: BTreeSet<String>,
}

impl Cursor {
    /// Takes a record's cursor value in.
    fn take(&mut self, id: &str, v: &Value) {
        match cursor_cmp(v, &self.at) {
            Ordering::Greater => {
                self.at = v.clone();
                self.ids = BTreeSet::from([id.to_string()]);
            }
            Ordering::Equal => {
                self.ids.insert(id.to_string());
            }
            Ordering::Less => {}
        }
    }
}

/// What a page's records are, as the engine takes them.
struct Decoded {
    records: Vec<Pulled>,
    /// Each record's id and cursor value, for the cursor.
    cursors: Vec<(String, Value)>,
    /// Records dropped as already taken at the saved cursor.
    duplicates: usize,
}

/// Turns a page's records into pulled records: the id from `external_ref`, a deletion where
/// `deleted` says so. Any record without an id fails the whole page.
fn decode(
    list: &HttpList,
    external_ref: &str,
    takes: &dyn Fn(&str) -> bool,
    items: Vec<Value>,
    saved: Option<&Cursor>,
    page: usize,
) -> Result<Decoded, String> {
    let mut out = Decoded {
        records: Vec::with_capacity(items.len()),
        cursors: Vec::new(),
        duplicates: 0,
    };
    for (i, item) in items.into_iter().enumerate() {
        if !item.is_object() {
            return Err(format!(
                "record {} of page {page} is not a JSON object",
                i + 1
            ));
        }
        let Some(id) = item.get(external_ref).and_then(id_text) else {
            return Err(format!(
                "record {} of page {page} has no `{external_ref}` (the id field; set `external_ref` on the sync if the id is elsewhere)",
                i + 1
            ));
        };
        let cursor_value = list
            .cursor_field
            .as_ref()
            .and_then(|f| item.get(f))
            .filter(|v| !v.is_null())
            .cloned();
        if let (Some(v), Some(s)) = (&cursor_value, saved)
            && cursor_cmp(v, &s.at) == Ordering::Equal
            && s.ids.contains(&id)
        {
            out.duplicates += 1;
            continue;
        }
        let deleted = list.deleted.as_ref().is_some_and(|d| {
            d.field
                .select(&item)
                .first()
                .is_some_and(|v| **v == d.equals)
        });
        let Value::Object(mut values) = item else {
            unreachable!("checked above");
        };
        let modified_at = cursor_value.as_ref().and_then(|v| match v {
            Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc)),
            Value::Number(n) => n
                .as_i64()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0)),
            _ => None,
        });
        if let Some(v) = cursor_value {
            out.cursors.push((id.clone(), v));
        }
        // An API's records carry much more than a sync reads: only what it reads is kept.
        values.retain(|k, _| takes(k));
        out.records
            .push(Pulled::read(values, id, modified_at, deleted));
    }
    Ok(out)
}

/// One pull of an `http` resource.
struct HttpPull {
    caller: Arc<Caller>,
    /// The top-level fields the sync takes; the rest of each record is dropped.
    takes: std::collections::HashSet<String>,
    list: HttpList,
    external_ref: String,
    limit: usize,
    who: String,
    paging: Paging,
    /// The page to read next, if any.
    next: Option<Url>,
    /// That page, already being read.
    ahead: Option<Ahead<Fetched>>,
    saved: Option<Cursor>,
    /// The cursor of what was applied in this run.
    reached: Option<Cursor>,
    /// The last page's records with their cursor values, until confirmed.
    last: Vec<(String, Value)>,
    /// Records that failed to apply, with their cursor values: the cursor stays at or before
    /// the lowest.
    failed: HashMap<String, Value>,
    /// What is wrong with the page after the last one served (it repeats, passes
    /// `max_pages`, is on another host): the run stops there, once the page before is applied.
    broken: Option<PullError>,
    /// Pages applied since the cursor was last saved, and when that was.
    unsaved: usize,
    saved_at: std::time::Instant,
}

impl HttpPull {
    fn start_read(&mut self) -> Result<(), PullError> {
        if let Some(url) = self.next.take() {
            self.paging
                .ask(&self.list, &url)
                .map_err(|e| PullError::Service(format!("{}: {e}", self.who)))?;
            let caller = self.caller.clone();
            let who = self.who.clone();
            let page = self.paging.pages + 1;
            self.ahead = Some(Ahead::start(async move {
                let path = url.path().to_string();
                fetch(&caller, url)
                    .await
                    .map_err(|e| PullError::Service(format!("{who}: page {page} ({path}): {e}")))
            }));
        }
        Ok(())
    }

    /// The cursor to save now: how far the run got, held back by any record that failed.
    fn to_save(&self) -> Option<Cursor> {
        let reached = self.reached.clone()?;
        let lowest = self
            .failed
            .values()
            .min_by(|a, b| cursor_cmp(a, b))
            .cloned();
        match lowest {
            Some(v) if cursor_cmp(&v, &reached.at) != Ordering::Greater => Some(Cursor {
                at: v,
                ids: BTreeSet::new(),
            }),
            _ => Some(reached),
        }
    }
}

#[async_trait]
impl Puller for HttpPull {
    async fn next_page(&mut self, memory: &dyn Memory) -> Result<Page, PullError> {
        if let Some(e) = self.broken.take() {
            self.flush(memory).await?;
            return Err(e);
        }
        let Some(ahead) = self.ahead.take() else {
            return Ok(Page::default());
        };
        let fetched = match ahead.result().await {
            Ok(f) => f,
            Err(e) => {
                self.flush(memory).await?;
                return Err(e);
            }
        };
        match self.take(fetched) {
            Ok(page) => Ok(page),
            Err(e) => {
                self.flush(memory).await?;
                Err(e)
            }
        }
    }

    async fn confirm(
        &mut self,
        memory: &dyn Memory,
        outcomes: &[Confirmation],
    ) -> Result<(), PullError> {
        if self.list.cursor_field.is_none() {
            return Ok(());
        }
        let values: HashMap<&str, &Value> =
            self.last.iter().map(|(id, v)| (id.as_str(), v)).collect();
        for o in outcomes {
            match &o.error {
                Some(_) => {
                    if let Some(v) = values.get(o.external_id.as_str()) {
                        self.failed.insert(o.external_id.clone(), (*v).clone());
                    }
                }
                None => {
                    self.failed.remove(&o.external_id);
                }
            }
        }
        for (id, v) in std::mem::take(&mut self.last) {
            match &mut self.reached {
                Some(c) => c.take(&id, &v),
                None => {
                    self.reached = Some(Cursor {
                        at: v,
                        ids: BTreeSet::from([id]),
                    })
                }
            }
        }
        // Saved every few pages, at the end, and before the run stops on an error (see
        // `next_page`): a cursor saved later is only ever behind what was applied, so at worst
        // a crash makes the next run read a few pages again, whose records change nothing.
        self.unsaved += 1;
        let last_page = self.ahead.is_none() && self.broken.is_none();
        if last_page || self.unsaved >= SAVE_EVERY || self.saved_at.elapsed() >= SAVE_AFTER {
            self.flush(memory).await?;
        }
        Ok(())
    }
}

/// The cursor is saved after at most this many applied pages...
const SAVE_EVERY: usize = 10;
/// ...or this long.
const SAVE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl HttpPull {
    /// A page as it came back, made into the engine's page; the next page is started.
    fn take(&mut self, mut fetched: Fetched) -> Result<Page, PullError> {
        let page = self.paging.pages + 1;
        let path = fetched.url.path().to_string();
        let fail =
            |e: String| PullError::Service(format!("{}: page {page} ({path}): {e}", self.who));
        let mut body = std::mem::take(&mut fetched.body);
        let items = paging::records(&self.list, &mut body).map_err(&fail)?;
        let count = items.len();
        fetched.body = body;
        let next = self.paging.next(&self.list, self.limit, &fetched, count);
        let takes = |k: &str| self.takes.contains(k);
        let decoded = decode(
            &self.list,
            &self.external_ref,
            &takes,
            items,
            self.reached.as_ref(),
            page,
        )
        .map_err(&fail)?;
        self.last = decoded.cursors;
        // The next page is read while the engine applies this one; a next page that cannot
        // be read stops the run after this one.
        match next {
            Ok(n) => self.next = n,
            Err(e) => self.broken = Some(fail(e)),
        }
        if let Err(e) = self.start_read() {
            self.broken = Some(e);
        }
        let more = self.ahead.is_some() || self.broken.is_some();
        Ok(Page {
            records: decoded.records,
            read: count,
            skipped: decoded.duplicates,
            more,
        })
    }

    /// Saves the cursor of what was applied, if it moved.
    async fn flush(&mut self, memory: &dyn Memory) -> Result<(), PullError> {
        self.unsaved = 0;
        self.saved_at = std::time::Instant::now();
        let Some(save) = self.to_save() else {
            return Ok(());
        };
        if self.saved.as_ref() == Some(&save) {
            return Ok(());
        }
        let text = serde_json::to_string(&save).expect("a cursor serializes");
        memory.save(&[], &[], Some(&text)).await?;
        self.saved = Some(save);
        Ok(())
    }
}

/// A listing's position, for `list_ids`: the page number and the URL of the next page.
fn list_token(page: usize, url: &Url) -> String {
    format!("{page}|{url}")
}

#[async_trait]
impl Connector for HttpConnector {
    /// `validate --online`: whether the service answers and takes the credentials.
    async fn check(&self, _plan: &Plan) -> Result<String, String> {
        self.caller.check().await
    }

    fn kind(&self) -> &'static str {
        "http"
    }

    async fn open_pull(
        &self,
        sync: &Sync,
        plan: &Plan,
        start: PullStart,
        memory: &dyn Memory,
    ) -> Result<Box<dyn Puller>, PullError> {
        let who = whose(&self.caller, &sync.external_model);
        let r = resource(plan, sync).map_err(PullError::Service)?;
        let Some(list) = r.list.clone() else {
            return Err(PullError::Service(format!("{who} has no `list`")));
        };
        let saved = match (&list.cursor_field, memory.cursor().await?) {
            (Some(_), Some(text)) if !start.full => match serde_json::from_str::<Cursor>(&text) {
                Ok(c) => Some(c),
                Err(_) => {
                    memory
                        .note(
                            "Cursor reset",
                            "",
                            "the saved cursor was not one this resource wrote; reading from the start",
                        )
                        .await?;
                    None
                }
            },
            _ => None,
        };
        let cursor = saved
            .as_ref()
            .map(|c| paging::cursor_text(&c.at))
            .or_else(|| list.cursor_start.clone());
        let base = self.caller.service.base_url.expose();
        let first = paging::first_url(base, &list, sync.limit, cursor.as_deref())
            .map_err(|e| PullError::Service(format!("{who}: {e}")))?;
        let paging =
            Paging::new(base, &list).map_err(|e| PullError::Service(format!("{who}: {e}")))?;
        let mut pull = HttpPull {
            caller: self.caller.clone(),
            takes: plan.external_fields_taken(sync),
            external_ref: sync.external_ref.clone(),
            limit: sync.limit,
            who,
            paging,
            next: Some(first),
            ahead: None,
            saved: saved.clone(),
            reached: saved,
            last: Vec::new(),
            failed: HashMap::new(),
            broken: None,
            unsaved: 0,
            saved_at: std::time::Instant::now(),
            list,
        };
        pull.start_read()?;
        Ok(Box::new(pull))
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
        let r = resource(plan, sync).map_err(Failure::permanent)?;
        let op: Option<&HttpOp> = match action {
            SendAction::Create => r.create.as_ref(),
            SendAction::Update => r.update.as_ref(),
            SendAction::Delete => r.delete.as_ref(),
        };
        let Some(op) = op else {
            return Err(Failure::Permanent {
                message: format!(
                    "{} has no `{}` operation",
                    whose(&self.caller, &sync.external_model),
                    action.as_str()
                ),
            });
        };
        let path = if op.path.contains("{id}") {
            let Some(id) = target.external_id else {
                return Err(Failure::Permanent {
                    message: "the record has no external id yet".into(),
                });
            };
            op.path.replace("{id}", &super::rest::path_segment(id)?)
        } else {
            op.path.clone()
        };
        let url = paging::join(self.caller.service.base_url.expose(), &path)
            .map_err(Failure::permanent)?;
        let method =
            reqwest::Method::from_bytes(op.method.as_bytes()).map_err(|_| Failure::Permanent {
                message: format!("`{}` is not an HTTP method", op.method),
            })?;
        let body = match (action, &op.body) {
            (SendAction::Delete, _) => None,
            (_, Some(key)) => Some(json!({ key: values })),
            (_, None) => Some(Value::Object(values.clone())),
        };
        let exists = match action {
            SendAction::Create => op.exists.as_ref(),
            _ => None,
        };
        let answer = self
            .caller
            .call(
                &method,
                &url,
                body.as_ref(),
                Some(target.idempotency_key),
                exists
                    .map(|e| std::slice::from_ref(&e.status))
                    .unwrap_or(&[]),
                target.repeat,
            )
            .await
            .map_err(|e| match e {
                // The service's own words, kept as they are for the change-control row.
                e if !e.retryable() => e.reworded(|m| {
                    format!(
                        "{} refused the {}: {m}",
                        whose(&self.caller, &sync.external_model),
                        action.as_str()
                    )
                }),
                other => other,
            })?;
        if let Some(e) = exists
            && answer.status == e.status
        {
            let reply: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
            let said = call::service_message(&answer.text);
            return Err(match e.id_in(&reply) {
                Some(existing_id) => Failure::Conflict {
                    message: format!(
                        "{} already holds the record (HTTP {}: {said})",
                        whose(&self.caller, &sync.external_model),
                        answer.status
                    ),
                    existing_id: Some(existing_id),
                },
                None => Failure::Permanent {
                    message: format!(
                        "{} refused the create as a duplicate (HTTP {}: {said}), and its answer names no id where `exists.id` says",
                        whose(&self.caller, &sync.external_model),
                        answer.status
                    ),
                },
            });
        }
        let external_id = match (action, &op.response_id) {
            (SendAction::Create, path) => {
                let reply: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
                let path_text = path.as_ref().map(|p| p.as_str()).unwrap_or("$.id");
                let found = match path {
                    Some(p) => p.select(&reply).first().and_then(|v| id_text(v)),
                    None => reply.get("id").and_then(id_text),
                };
                match found {
                    Some(id) => Some(id),
                    None => {
                        return Err(Failure::Permanent {
                            message: format!(
                                "the answer to the create has no id at `{path_text}` (set `response_id`)"
                            ),
                        });
                    }
                }
            }
            _ => None,
        };
        Ok(Sent {
            external_id,
            request: body.unwrap_or(Value::Null),
            label: None,
        })
    }

    /// `read`, one call per record, all at once within the service's concurrency limit.
    async fn read_records(
        &self,
        sync: &Sync,
        plan: &Plan,
        _memory: &dyn Memory,
        external_ids: &[String],
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        let r = resource(plan, sync).map_err(PullError::Service)?;
        let Some(read) = &r.read else {
            return Ok(None);
        };
        let base = self.caller.service.base_url.expose();
        // Only what the sync takes, as a pulled page keeps it.
        let takes = plan.external_fields_taken(sync);
        let takes = &takes;
        let reads = external_ids.iter().map(|id| async move {
            let path = read.path.replace(
                "{id}",
                &super::rest::path_segment(id).map_err(|e| e.to_string())?,
            );
            let mut url = paging::join(base, &path)?;
            for (k, v) in &read.query {
                url.query_pairs_mut().append_pair(k, v);
            }
            let answer = self
                .caller
                .call(&reqwest::Method::GET, &url, None, None, &[404], true)
                .await
                .map_err(|e| e.to_string())?;
            if answer.status == 404 {
                return Ok(None);
            }
            let body: Value = serde_json::from_str(&answer.text)
                .map_err(|e| format!("the answer to reading `{id}` is not JSON: {e}"))?;
            match read.record.select(&body).first() {
                Some(Value::Object(values)) => Ok(Some(Pulled {
                    action: PullAction::Update,
                    values: values
                        .iter()
                        .filter(|(k, _)| takes.contains(k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    external_id: Some(id.clone()),
                    modified_at: None,
                    label: None,
                })),
                _ => Err(format!(
                    "the answer to reading `{id}` has no record at `{}`",
                    read.record.as_str()
                )),
            }
        });
        let mut out = Vec::with_capacity(external_ids.len());
        for r in futures_util::future::join_all(reads).await {
            match r {
                Ok(Some(p)) => out.push(p),
                Ok(None) => {}
                Err(e) => {
                    return Err(PullError::Service(format!(
                        "{}: {e}",
                        whose(&self.caller, &sync.external_model)
                    )));
                }
            }
        }
        Ok(Some(out))
    }

    /// `search`, with `{field}` filled in from the values (a 404 finds nothing).
    async fn search(
        &self,
        sync: &Sync,
        plan: &Plan,
        _memory: &dyn Memory,
        criteria: &Map<String, Value>,
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        let r = resource(plan, sync).map_err(PullError::Service)?;
        let Some(search) = &r.search else {
            return Ok(None);
        };
        let who = || whose(&self.caller, &sync.external_model);
        let text = |v: &Value| match v {
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        let fill = |template: &str, in_path: bool| -> Result<Option<String>, PullError> {
            let mut out = template.to_string();
            for name in spec::placeholders(template) {
                // `{field}`: the local field, or its plain external name.
                let v = criteria.get(&name).or_else(|| {
                    sync.fields
                        .iter()
                        .find(|p| {
                            p.external == crate::domain::mapping::ExternalField::Name(name.clone())
                        })
                        .and_then(|p| criteria.get(&p.local))
                });
                let Some(v) = v else {
                    return Ok(None);
                };
                let v = if in_path {
                    super::rest::path_segment(&text(v))
                        .map_err(|e| PullError::Service(format!("{}: {e}", who())))?
                } else {
                    text(v)
                };
                out = out.replace(&format!("{{{name}}}"), &v);
            }
            Ok(Some(out))
        };
        let Some(path) = fill(&search.path, true)? else {
            return Ok(None);
        };
        let mut url = paging::join(self.caller.service.base_url.expose(), &path)
            .map_err(|e| PullError::Service(format!("{}: {e}", who())))?;
        for (k, v) in &search.query {
            let Some(v) = fill(v, false)? else {
                return Ok(None);
            };
            url.query_pairs_mut().append_pair(k, &v);
        }
        let answer = self
            .caller
            .call(&reqwest::Method::GET, &url, None, None, &[404], true)
            .await
            .map_err(|e| PullError::Service(format!("{}: {e}", who())))?;
        if answer.status == 404 {
            return Ok(Some(Vec::new()));
        }
        let body: Value = serde_json::from_str(&answer.text).map_err(|e| {
            PullError::Service(format!("{}: the search's answer is not JSON: {e}", who()))
        })?;
        let takes = plan.external_fields_taken(sync);
        Ok(Some(
            search
                .records
                .select(&body)
                .into_iter()
                .filter_map(|v| {
                    let mut values = v.as_object()?.clone();
                    let id = values.get(&sync.external_ref).and_then(id_text)?;
                    values.retain(|k, _| takes.contains(k.as_str()));
                    Some(Pulled {
                        action: PullAction::Update,
                        values,
                        external_id: Some(id),
                        modified_at: None,
                        label: None,
                    })
                })
                .collect(),
        ))
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
        let (listed, next) = self.list_records(sync, plan, after).await?;
        Ok((listed.into_iter().map(|l| l.external_id).collect(), next))
    }

    /// The whole list, from its first page (no incremental cursor), a page per call; records
    /// that `deleted` marks are not listed.
    async fn list_records(
        &self,
        sync: &Sync,
        plan: &Plan,
        after: Option<String>,
    ) -> Result<(Vec<Listed>, Option<String>), PullError> {
        let who = whose(&self.caller, &sync.external_model);
        let r = resource(plan, sync).map_err(PullError::Service)?;
        let Some(list) = &r.list else {
            return Err(PullError::Service(format!("{who} has no `list`")));
        };
        let base = self.caller.service.base_url.expose();
        let fail = |e: String| PullError::Service(format!("{who}: {e}"));
        let (page, url) = match after {
            None => (
                1,
                paging::first_url(base, list, sync.limit, list.cursor_start.as_deref())
                    .map_err(fail)?,
            ),
            Some(t) => {
                let (n, u) = t
                    .split_once('|')
                    .and_then(|(n, u)| Some((n.parse::<usize>().ok()?, Url::parse(u).ok()?)))
                    .ok_or_else(|| fail(format!("`{t}` is not a listing position")))?;
                (n, u)
            }
        };
        if page > list.max_pages {
            return Err(fail(format!(
                "page {page} passes `max_pages` = {}; the listing stops",
                list.max_pages
            )));
        }
        let path = url.path().to_string();
        let fail_page = |e: String| PullError::Service(format!("{who}: page {page} ({path}): {e}"));
        let mut fetched = fetch(&self.caller, url.clone()).await.map_err(fail_page)?;
        let mut body = std::mem::take(&mut fetched.body);
        let items = paging::records(list, &mut body).map_err(fail_page)?;
        fetched.body = body;
        // Where the listing is, for the next call: the page count and the offsets carry over.
        let mut paging = Paging::new(base, list).map_err(fail_page)?;
        paging.resume(list, page, &url);
        let next = paging
            .next(list, sync.limit, &fetched, items.len())
            .map_err(fail_page)?;
        if next.as_ref() == Some(&url) {
            return Err(fail_page(
                "the service named this same page as the next one".into(),
            ));
        }
        let takes = |k: &str| plan.takes_external_field(sync, k);
        let decoded =
            decode(list, &sync.external_ref, &takes, items, None, page).map_err(fail_page)?;
        let listed = decoded
            .records
            .into_iter()
            .filter(|p| p.action != PullAction::Delete)
            .map(|p| Listed {
                external_id: p.external_id.expect("decoded records have ids"),
                values: Some(p.values),
            })
            .collect();
        Ok((listed, next.map(|u| list_token(page + 1, &u))))
    }

    async fn describe(&self, plan: &Plan, resource: Option<&str>) -> Result<String, PullError> {
        discover::describe(&self.caller, plan, resource).await
    }
}
