//! Outbox workers: claim due entries, deliver them through the sync's connector, record every
//! attempt, retry with backoff and jitter, and dead-letter after the retry budget.

use super::Ctx;
use super::Engine;
use super::memory::SyncMemory;
use super::on_send::{Adopted, Verdict};
use super::rows::{failure_row, run_of, success_row};
use crate::connectors::Failure;
use crate::connectors::{SendAction, Target};
use crate::domain::mapping::{FieldPair, RefResolver, Reference, to_external};
use crate::domain::plan::Sync;
use crate::store::{
    Link, LogAction, LogStatus, NewChange, NewOutbox, OutboxEntry, Record, StoreError,
};
use chrono::Utc;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// What one round of the worker found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This many entries were attempted.
    Done(usize),
    /// Nothing was due.
    Empty,
}

/// Entries claimed per round.
const BATCH: i64 = 256;

/// Related-record references resolved before mapping (mapping itself is pure).
struct Prefetched(HashMap<(String, i64), Value>);

impl RefResolver for Prefetched {
    fn local_to_external(&self, pair: &FieldPair, local_id: i64) -> Option<Value> {
        self.0.get(&(pair.local.clone(), local_id)).cloned()
    }
}

impl Engine {
    /// Queues a dead or discarded entry again (an operator's retry); false if there is none.
    pub async fn retry_delivery(&self, id: i64) -> Result<bool, StoreError> {
        let queued = self.store.outbox_requeue(id).await?;
        if queued {
            self.wake();
        }
        Ok(queued)
    }

    /// Gives up on a pending or dead entry (an operator's discard); false if there is none.
    pub async fn discard_delivery(&self, id: i64) -> Result<bool, StoreError> {
        self.store.outbox_discard(id).await
    }

    /// Claims and delivers one batch of due entries: records and links are read in a few
    /// queries, the sends run concurrently (bounded per web service), and the results are
    /// written back in one transaction.
    pub async fn try_execute(self: &Arc<Self>) -> Result<Outcome, StoreError> {
        let batch = self
            .store
            .claim_outbox(
                &self.opts.instance,
                Utc::now(),
                self.opts.claim_timeout,
                BATCH,
            )
            .await?;
        if batch.is_empty() {
            return Ok(Outcome::Empty);
        }
        // The claims are renewed while the batch is at work (sends that wait for a slow
        // service, a sync's turn or a retry), so their lease never runs out under a delivery
        // still going on: a second delivery of the same entries would copy records twice.
        let _renewal = {
            let store = self.store.clone();
            let instance = self.opts.instance.clone();
            let lease = self.opts.claim_timeout;
            let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let until = Utc::now()
                        + chrono::Duration::from_std(lease)
                            .unwrap_or(chrono::Duration::seconds(60));
                    if let Err(e) = store.extend_claims(&instance, &ids, until).await {
                        tracing::warn!(error = %e, "Could not renew the outbox claims of a batch at work");
                    }
                }
            }))
        };
        let n = batch.len();
        let plan = self.plan();
        // Read what the deliveries need, a query per model and per sync.
        let mut ids_by_model: HashMap<String, Vec<i64>> = HashMap::new();
        let mut ids_by_sync: HashMap<String, Vec<i64>> = HashMap::new();
        for e in &batch {
            if let Some(sync) = plan.sync(&e.sync) {
                ids_by_model
                    .entry(sync.model.clone())
                    .or_default()
                    .push(e.local_id);
                ids_by_sync
                    .entry(e.sync.clone())
                    .or_default()
                    .push(e.local_id);
            }
        }
        let mut records = HashMap::new();
        for (model, ids) in ids_by_model {
            for r in self.store.records_by_ids(&model, &ids).await? {
                records.insert((model.clone(), r.id), r);
            }
        }
        let mut links = HashMap::new();
        let mut paused: std::collections::HashSet<(String, i64)> = Default::default();
        for (sync, ids) in ids_by_sync {
            for id in self.store.paused_among(&sync, &ids).await? {
                paused.insert((sync.clone(), id));
            }
            for l in self
                .store
                .links_by_local(&plan.binding_of(&sync), &ids)
                .await?
            {
                links.insert((sync.clone(), l.local_id), l);
            }
        }
        // Conflicts on send: updates whose records changed there are applied here first.
        let mut verdicts = self
            .check_before_send(&plan, &batch, &records, &mut links, &paused)
            .await?;
        let mut tasks = Vec::with_capacity(n);
        for entry in batch {
            let verdict = verdicts.remove(&entry.id);
            let engine = self.clone();
            let plan = plan.clone();
            let record = plan
                .sync(&entry.sync)
                .and_then(|s| records.get(&(s.model.clone(), entry.local_id)).cloned());
            let link = links.get(&(entry.sync.clone(), entry.local_id)).cloned();
            let is_paused = paused.contains(&(entry.sync.clone(), entry.local_id));
            let span = tracing::info_span!(
                "delivery",
                sync = %entry.sync,
                outbox_id = entry.id,
                local_id = entry.local_id,
                action = %entry.action,
                attempt = entry.attempts,
                request_id = entry.payload.get("request_id").and_then(serde_json::Value::as_str),
                run_id = run_of(&entry),
            );
            // The delivery continues the trace of the change it carries.
            if let Some(tp) = entry.payload.get("traceparent").and_then(|v| v.as_str()) {
                crate::telemetry::continue_from(&span, tp, None);
            }
            tasks.push(self.spawn(
                async move {
                    let result = engine
                        .deliver(&plan, &entry, record, link, is_paused, verdict)
                        .await;
                    match &result {
                        Ok(Step::Delivered { row, .. }) => tracing::debug!(
                            external_id = row.as_ref().and_then(|r| r.external_id.as_deref()),
                            "Delivered"
                        ),
                        Ok(Step::Failed(row, Fate::Retry(_, at))) => {
                            tracing::debug!(error = %row.error_message, retry_at = %at, "Delivery failed; retried later")
                        }
                        Ok(Step::Failed(row, Fate::Dead(_))) => {
                            tracing::debug!(error = %row.error_message, "Delivery failed for good")
                        }
                        Ok(Step::Skip) => tracing::debug!("Nothing to deliver"),
                        Ok(Step::Skipped(row)) => {
                            tracing::debug!(reason = %row.error_message, "Not sent")
                        }
                        Ok(Step::Wait(_)) => {
                            tracing::debug!("A create waits for the sync's first run")
                        }
                        Err(_) => {}
                    }
                    (entry, result)
                }
                .instrument(span),
            ));
        }
        let mut done = Done::default();
        for t in tasks {
            match t.await {
                Ok((entry, Ok(step))) => {
                    let step = self.unless_taken(&entry, step, &done).await?;
                    done.add(entry, step)
                }
                Ok((entry, Err(e))) => {
                    tracing::error!(outbox_id = entry.id, error = %e, "Failed to prepare a delivery; it will be retried when its lease ends");
                }
                Err(e) => tracing::error!(error = %e, "A delivery task failed"),
            }
        }
        self.record(done).await?;
        Ok(Outcome::Done(n))
    }

    /// Drains every entry that is due now (tests and `demo` use this to wait deterministically).
    pub async fn drain(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut total = 0;
        while let Outcome::Done(n) = self.try_execute().await? {
            total += n;
        }
        Ok(total)
    }

    /// Runs the worker loop until `stop` fires: work while there is work, then sleep until
    /// woken by a new entry or until the next poll (retries come due, other instances).
    pub fn spawn_worker(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    break;
                }
                let notified = engine.wake.notified();
                match engine.try_execute().await {
                    Ok(Outcome::Done(_)) => continue,
                    Ok(Outcome::Empty) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "The outbox could not be read; retrying shortly")
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    // A dropped sender means stop too (never spin on it).
                    r = stop.changed() => if r.is_err() { break },
                }
            }
        })
    }

    fn backoff(&self, attempts: i64, hint: Option<Duration>) -> Duration {
        if let Some(h) = hint {
            return h.min(self.opts.max_backoff);
        }
        let exp = self
            .opts
            .backoff
            .saturating_mul(1u32 << (attempts.clamp(1, 20) - 1) as u32);
        let capped = exp.min(self.opts.max_backoff);
        capped.mul_f64(rand::random_range(0.8..1.2))
    }

    /// Works out and performs one delivery; the result is written later with the batch.
    async fn deliver(
        &self,
        plan: &crate::domain::Plan,
        entry: &OutboxEntry,
        record: Option<Record>,
        link: Option<Link>,
        paused: bool,
        verdict: Option<Verdict>,
    ) -> Result<Step, StoreError> {
        let Some(sync) = plan.sync(&entry.sync) else {
            return Ok(Step::Failed(
                failure_row(entry, None, "", None, &Map::new()),
                Fate::Dead("the sync is no longer configured".into()),
            ));
        };
        let model = &plan.models[&sync.model];
        let values = record
            .as_ref()
            .map(|r| r.values.clone())
            .unwrap_or_default();
        let title = model.title(entry.local_id, &values);
        // A create an earlier attempt may have delivered without its answer being recorded (a
        // crash between the two) is completed even while the record is paused: the other
        // system may hold the record already, and only the answer to the same create (its
        // idempotency key) says which; skipped, the resume would create a second one.
        let unsure_create = entry.attempts > 1
            && entry.action == "create"
            && link.as_ref().is_none_or(|l| l.external_id.is_none());
        if paused && !unsure_create {
            // Not sent: the link stays behind the record, so a resume (or a push) sends it.
            return Ok(skipped(
                entry,
                sync,
                if entry.action == "delete" {
                    LogAction::Delete
                } else {
                    LogAction::Update
                },
                link.as_ref().and_then(|l| l.external_id.clone()),
                &title,
                &values,
                super::rows::paused_reason(sync),
            ));
        }
        let Some(connector) = self.connector(&sync.web_service) else {
            let why = "the sync's web service is no longer configured";
            return Ok(Step::Failed(
                failure_row(entry, Some(sync), &title, None, &values),
                Fate::Dead(why.into()),
            ));
        };

        let (action, external_id) = if entry.action == "delete" {
            let Some(ext) = link.as_ref().and_then(|l| l.external_id.clone()) else {
                return Ok(Step::Skip);
            };
            if !sync.propagate_deletes {
                // Deletions only unlink the pair on this sync.
                let row = success_row(
                    entry,
                    sync,
                    LogAction::Unlink,
                    Some(ext),
                    &title,
                    json!({}),
                    json!({"unlinked": true}),
                );
                return Ok(Step::Delivered {
                    row: Some(row),
                    link: None,
                    binding: sync.binding(),
                });
            }
            (SendAction::Delete, Some(ext))
        } else {
            let rec = match record.as_ref() {
                Some(r) if !r.deleted => r,
                // Deleted since, but an earlier attempt of this entry may have reached the
                // service without being recorded (a crash between the two): it is sent again,
                // which the service recognises by its idempotency key, so the link learns the
                // external id and the delete entry that follows reaches the record.
                Some(r)
                    if entry.attempts > 1
                        && entry.action == "create"
                        && link.as_ref().is_none_or(|l| l.external_id.is_none()) =>
                {
                    r
                }
                // Deleted since, never sent: the delete entry that follows has nothing to do.
                _ => return Ok(Step::Skip),
            };
            let forced = entry.payload.get("force") == Some(&Value::Bool(true));
            if let Some(l) = &link
                && !forced
                && l.external_id.is_some()
                && l.synced_version >= rec.version
            {
                // Already delivered (for instance by an earlier entry of the same record); a
                // full run's entries are sent anyway.
                return Ok(Step::Skip);
            }
            match link.as_ref().and_then(|l| l.external_id.clone()) {
                Some(ext) => (SendAction::Update, Some(ext)),
                None => {
                    // Go-live: a sync that matches records on `match_on` sends no create until
                    // its first run has read the other side; the record waits and is then
                    // matched, not copied.
                    if self.awaits_first_run(sync).await? {
                        return Ok(Step::Wait(Utc::now() + chrono::Duration::seconds(5)));
                    }
                    (SendAction::Create, None)
                }
            }
        };

        match verdict {
            // The external change was applied first; what is left to send was queued anew.
            Some(Verdict::Superseded) => return Ok(Step::Skip),
            Some(Verdict::Ambiguous(reason) | Verdict::Gone(reason)) => {
                let action = if action == SendAction::Create {
                    LogAction::Create
                } else {
                    LogAction::Update
                };
                return Ok(skipped(entry, sync, action, None, &title, &values, reason));
            }
            Some(Verdict::Failed(reason)) => {
                return Ok(self.failed(
                    entry,
                    sync,
                    &title,
                    action,
                    &values,
                    Failure::Transient {
                        message: reason,
                        retry_after: None,
                    },
                ));
            }
            None => {}
        }
        let mapped = if action == SendAction::Delete {
            Map::new()
        } else {
            let refs = self.prefetch(sync, &values).await?;
            match to_external(&sync.fields, &values, &refs) {
                Ok(m) => m,
                Err(errs) => {
                    let reason = errs
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Ok(self.failed(
                        entry,
                        sync,
                        &title,
                        action,
                        &values,
                        Failure::Transient {
                            message: reason,
                            retry_after: None,
                        },
                    ));
                }
            }
        };
        // A create with nothing to say (every mapped value empty) is not sent as `{}`: the
        // record goes out once it has a value.
        if action == SendAction::Create && carries_nothing(&mapped) {
            let why = "every field this sync sends is empty, so nothing was created; it is sent once one has a value";
            return Ok(skipped(
                entry,
                sync,
                LogAction::Create,
                None,
                &title,
                &values,
                why.into(),
            ));
        }
        // What changed since the record was last synced, for connectors that write only that.
        let forced = entry.payload.get("force") == Some(&Value::Bool(true));
        let changed: Option<Vec<String>> = match (&link, action) {
            (Some(l), SendAction::Update) if !forced => Some(
                sync.fields
                    .iter()
                    .filter(|p| p.direction.to_external())
                    .filter(|p| p.sends_from().any(|f| values.get(f) != l.base.get(f)))
                    .map(|p| p.external.to_string())
                    .collect(),
            ),
            _ => None,
        };
        // Nothing this sync maps changed (an edit of a field it does not carry): nothing is
        // sent and no row is written for it; the link catches up with the record.
        if let (Some(c), Some(l), Some(r)) = (&changed, &link, &record)
            && c.is_empty()
        {
            let mut caught_up = l.clone();
            caught_up.synced_version = r.version;
            return Ok(Step::Delivered {
                row: None,
                link: Some(caught_up),
                binding: sync.binding(),
            });
        }
        // A create whose record was linked since its batch was read (a pull matched it on
        // `match_on` meanwhile) would be a second copy there: it waits, and its next attempt
        // goes out as an update over that link. Read as late as it can be, just before the
        // call.
        if action == SendAction::Create
            && !sync.match_on.is_empty()
            && self
                .store
                .link_by_local(&sync.binding(), entry.local_id)
                .await?
                .is_some_and(|l| l.external_id.is_some())
        {
            return Ok(Step::Wait(Utc::now()));
        }
        let memory = SyncMemory {
            engine: self,
            code: sync.code.as_str(),
            ctx: Ctx::actor("outbox"),
        };
        let result = connector
            .send(
                sync,
                plan,
                &memory,
                action,
                Target {
                    external_id: external_id.as_deref(),
                    local_id: entry.local_id,
                    // The same for every attempt of this entry that carries the same values:
                    // a redelivery after a crash between sending and recording is recognisable.
                    // An update names the version it carries, so a retry that carries newer
                    // values is applied, not answered with the first attempt's result.
                    idempotency_key: &match (action, record.as_ref()) {
                        (SendAction::Update, Some(r)) => {
                            format!("recsync-{}-{}-v{}", entry.sync, entry.id, r.version)
                        }
                        _ => format!("recsync-{}-{}", entry.sync, entry.id),
                    },
                    changed: changed.as_deref(),
                    base: link
                        .as_ref()
                        .filter(|_| action == SendAction::Update)
                        .map(|l| &l.base),
                    // An update of a sync that receives was read there before it was sent.
                    repeat: !(action == SendAction::Update && sync.direction.to_local()),
                },
                &mapped,
            )
            .instrument(tracing::info_span!(
                "connector.send",
                sync = %sync.code,
                local_id = entry.local_id,
                action = action.as_str(),
            ))
            .await;
        Ok(match result {
            Ok(sent) => {
                let log_action = sent.label.map(super::label_action).unwrap_or(match action {
                    SendAction::Create => LogAction::Create,
                    SendAction::Update => LogAction::Update,
                    SendAction::Delete => LogAction::Delete,
                });
                let ext = sent
                    .external_id
                    .or(external_id)
                    .unwrap_or_else(|| entry.local_id.to_string());
                // The base is the binding's: what this sync sent joins what the other syncs of
                // the binding last synced.
                // A create sent again may have been answered from its first attempt (same
                // key, older values): what is there is not known, so neither the base nor the
                // version claims it, and the update that follows sends every field.
                let resent_create = action == SendAction::Create && entry.attempts > 1;
                let link_after = (action != SendAction::Delete).then(|| {
                    let mut base = link.as_ref().map(|l| l.base.clone()).unwrap_or_default();
                    if !resent_create {
                        base.extend(
                            sync.fields
                                .iter()
                                .flat_map(|p| p.sends_from())
                                .filter_map(|f| values.get(f).map(|v| (f.to_string(), v.clone()))),
                        );
                    }
                    Link {
                        binding: sync.binding(),
                        local_id: entry.local_id,
                        external_id: Some(ext.clone()),
                        base,
                        synced_version: if resent_create {
                            0
                        } else {
                            record.as_ref().map(|r| r.version).unwrap_or(0)
                        },
                        external_hash: None,
                        left: link.as_ref().map(|l| l.left.clone()).unwrap_or_default(),
                    }
                });
                let mut row = success_row(
                    entry,
                    sync,
                    log_action,
                    Some(ext),
                    &title,
                    Value::Object(values.clone()),
                    sent.request,
                );
                // An update: the local values of what changed, as last synced out.
                if let (SendAction::Update, Some(l)) = (action, &link) {
                    row.before_values = Value::Object(
                        sync.fields
                            .iter()
                            .filter(|p| p.direction.to_external())
                            .flat_map(|p| p.sends_from())
                            .filter(|f| values.get(*f) != l.base.get(*f))
                            .map(|f| (f.to_string(), l.base.get(f).cloned().unwrap_or(Value::Null)))
                            .collect(),
                    );
                }
                Step::Delivered {
                    row: Some(row),
                    link: link_after,
                    binding: sync.binding(),
                }
            }
            // Refused as a duplicate of a record the service named: linked, not copied.
            Err(Failure::Conflict {
                existing_id: Some(existing_id),
                message: reason,
            }) if action == SendAction::Create
                && let Some(rec) = record.as_ref() =>
            {
                let left = link.as_ref().map(|l| l.left.clone()).unwrap_or_default();
                let why = format!("{reason}; linked to it instead of copying");
                match self
                    .adopt(
                        plan,
                        sync,
                        entry.local_id,
                        rec,
                        &existing_id,
                        None,
                        why,
                        left,
                    )
                    .await?
                {
                    Adopted::Merged => Step::Skip,
                    // The next attempt sends an update (or finds the link someone made).
                    Adopted::Linked(_) | Adopted::Raced => Step::Wait(Utc::now()),
                    Adopted::Failed(reason) => self.failed(
                        entry,
                        sync,
                        &title,
                        action,
                        &values,
                        Failure::Transient {
                            message: reason,
                            retry_after: None,
                        },
                    ),
                }
            }
            Err(e) => self.failed(entry, sync, &title, action, &values, e),
        })
    }

    /// Resolves relational values to the related records' external references.
    async fn prefetch(
        &self,
        sync: &Sync,
        values: &Map<String, Value>,
    ) -> Result<Prefetched, StoreError> {
        let plan = self.plan();
        let mut out = HashMap::new();
        for p in sync
            .fields
            .iter()
            .filter(|p| p.direction.to_external() && p.reference != Reference::None)
        {
            let ids: Vec<i64> = match values.get(&p.local) {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
                Some(v) => v.as_i64().into_iter().collect(),
                None => vec![],
            };
            for id in ids {
                let found = match &p.reference {
                    Reference::Sync(code) => self
                        .store
                        .link_by_local(&plan.binding_of(code.as_str()), id)
                        .await?
                        .and_then(|l| l.external_id)
                        .map(Value::String),
                    Reference::Field(f) => {
                        let related = p.local_type.related_model().unwrap_or_default();
                        self.store
                            .get_record(related, id)
                            .await?
                            .and_then(|r| r.values.get(f).cloned())
                    }
                    Reference::None => None,
                };
                if let Some(v) = found {
                    out.insert((p.local.clone(), id), v);
                }
            }
        }
        Ok(Prefetched(out))
    }

    /// A failed attempt: retry later, or dead-letter after the budget.
    fn failed(
        &self,
        entry: &OutboxEntry,
        sync: &Sync,
        title: &str,
        action: SendAction,
        values: &Map<String, Value>,
        err: Failure,
    ) -> Step {
        let max = self.opts.max_attempts as i64;
        let fate = if !err.retryable() {
            Fate::Dead(format!("Delivery failed and will not be retried: {err}"))
        } else if entry.attempts >= max {
            Fate::Dead(format!(
                "Delivery failed after {} attempts, the last because {err}; dead-lettered",
                entry.attempts
            ))
        } else {
            let wait = self.backoff(entry.attempts, err.retry_after());
            let at = Utc::now()
                + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
            Fate::Retry(
                format!("Attempt {} of {max} failed: {err}", entry.attempts),
                at,
            )
        };
        Step::Failed(
            failure_row(entry, Some(sync), title, Some(action), values),
            fate,
        )
    }

    /// Writes a batch's results: links, rows and entry states in one transaction, then the
    /// retries and dead letters.
    async fn record(&self, done: Done) -> Result<(), StoreError> {
        crate::crash::point("outbox.before_record");
        let mut tx = self.store.begin().await?;
        tx.upsert_links(&done.links).await?;
        for (binding, local_id) in &done.unlinks {
            tx.delete_link(binding, *local_id).await?;
        }
        let mut rows = done.rows;
        rows.iter_mut().for_each(|r| self.mask_row(r));
        if !self.opts.change_log {
            rows.retain(|r| r.status != LogStatus::Success);
        }
        tx.log_changes(&rows).await?;
        tx.outbox_done_many(&done.finished).await?;
        // A record that changed while its delivery was on its way, through a change that
        // queues nothing for this sync (one pulled from the same system, applied while the
        // delivery waited for the sync's turn), would otherwise keep the older values there:
        // the newer version goes out too.
        // The records are read in one query per model (a batch is up to 256 deliveries).
        let plan = self.plan();
        let mut by_model: HashMap<&str, Vec<(&String, i64, i64)>> = HashMap::new();
        for (code, local_id, version) in &done.sent {
            if let Some(sync) = plan.sync(code) {
                by_model
                    .entry(sync.model.as_str())
                    .or_default()
                    .push((code, *local_id, *version));
            }
        }
        let mut again = Vec::new();
        for (model, sent) in by_model {
            let mut ids: Vec<i64> = sent.iter().map(|s| s.1).collect();
            ids.sort_unstable();
            ids.dedup();
            let versions: HashMap<i64, i64> = tx
                .records_by_ids(model, &ids)
                .await?
                .into_iter()
                .filter(|r| !r.deleted)
                .map(|r| (r.id, r.version))
                .collect();
            for (code, local_id, version) in sent {
                let Some(&now) = versions.get(&local_id).filter(|v| **v > version) else {
                    continue;
                };
                if tx.has_undelivered(code, local_id).await? {
                    continue;
                }
                tracing::debug!(sync = %code, local_id, sent = version, now, "The record changed while its delivery was on its way; the newer version goes out too");
                again.push(NewOutbox {
                    sync: code.clone(),
                    local_id,
                    action: "update".into(),
                    payload: json!({"version": now}),
                });
            }
        }
        tx.enqueue_many(&again).await?;
        tx.commit().await?;
        if !again.is_empty() {
            self.wake();
        }
        for (id, fate) in done.fates {
            match fate {
                Fate::Dead(msg) => {
                    tracing::warn!(outbox_id = id, error = %msg, "Outbox entry dead-lettered");
                    self.store.outbox_dead(id, &msg).await?;
                }
                Fate::Retry(msg, at) => self.store.outbox_retry_at(id, at, &msg).await?,
            }
        }
        for (id, at) in done.waits {
            self.store.outbox_wait(id, at).await?;
        }
        Ok(())
    }

    /// A delivery whose answer names an external record that another local record is linked
    /// to (a create that found the record already there, adopted by id): recording the link
    /// would break the rule that one external record is one local record, and fail the whole
    /// batch's record. The entry is dead-lettered instead, with what to do.
    async fn unless_taken(
        &self,
        entry: &OutboxEntry,
        step: Step,
        done: &Done,
    ) -> Result<Step, StoreError> {
        let Step::Delivered {
            row: Some(mut row),
            link: Some(l),
            binding,
        } = step
        else {
            return Ok(step);
        };
        let Some(ext) = l.external_id.as_deref() else {
            return Ok(Step::Delivered {
                row: Some(row),
                link: Some(l),
                binding,
            });
        };
        let in_batch = done
            .links
            .iter()
            .find(|o| {
                o.binding == l.binding
                    && o.external_id.as_deref() == Some(ext)
                    && o.local_id != l.local_id
            })
            .map(|o| o.local_id);
        let other = match in_batch {
            Some(id) => Some(id),
            None => self
                .store
                .link_by_external(&l.binding, ext)
                .await?
                .filter(|o| o.local_id != l.local_id)
                .map(|o| o.local_id),
        };
        let Some(other) = other else {
            return Ok(Step::Delivered {
                row: Some(row),
                link: Some(l),
                binding,
            });
        };
        let msg = format!(
            "web service answered with external record `{ext}`, which is linked to local record {other} already: two local records are one record there, so nothing was linked. Merge or change one of them, then `recsync outbox retry {}`",
            entry.id
        );
        tracing::error!(sync = %entry.sync, outbox_id = entry.id, local_id = entry.local_id, other_local_id = other, external_id = ext, "A delivery answered with an external record linked to another local record");
        row.status = LogStatus::Failed;
        Ok(Step::Failed(row, Fate::Dead(msg)))
    }

    /// Whether creates through `sync` wait for its first run: a scheduled sync that receives
    /// and matches on `match_on`, which has not finished a run yet.
    pub(super) async fn awaits_first_run(&self, sync: &Sync) -> Result<bool, StoreError> {
        if sync.match_on.is_empty() || !sync.direction.to_local() || sync.schedule.is_none() {
            return Ok(false);
        }
        let code = sync.code.as_str();
        if self
            .first_runs
            .lock()
            .expect("first runs lock")
            .contains(code)
        {
            return Ok(false);
        }
        if self.store.has_finished_run(code).await? {
            self.first_runs
                .lock()
                .expect("first runs lock")
                .insert(code.to_string());
            return Ok(false);
        }
        Ok(true)
    }
}

/// What became of one delivery.
enum Step {
    /// Nothing to send (already delivered, or carried by a later entry).
    Skip,
    /// Not sent, with the row saying why; the link is left as it is in the store (a paused
    /// record, a verdict of the read before sending): writing back the copy read at claim
    /// time could undo what a resume or a run did meanwhile.
    Skipped(NewChange),
    /// Sent; `link` is the binding's link afterwards (`None`: the pair is gone).
    Delivered {
        /// The change-control row (none when nothing needed sending).
        row: Option<NewChange>,
        link: Option<Link>,
        binding: String,
    },
    Failed(NewChange, Fate),
    /// Not tried: waits until then without spending an attempt.
    Wait(chrono::DateTime<Utc>),
}

enum Fate {
    Retry(String, chrono::DateTime<Utc>),
    Dead(String),
}

/// Aborts a task when dropped (the claim renewal of a batch, once the batch is written).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A batch's results, to be written together.
#[derive(Default)]
struct Done {
    links: Vec<Link>,
    unlinks: Vec<(String, i64)>,
    rows: Vec<NewChange>,
    finished: Vec<i64>,
    fates: Vec<(i64, Fate)>,
    waits: Vec<(i64, chrono::DateTime<Utc>)>,
    /// What went out: (sync, local id, the record's version sent).
    sent: Vec<(String, i64, i64)>,
}

impl Done {
    fn add(&mut self, entry: OutboxEntry, step: Step) {
        match step {
            Step::Skip => self.finished.push(entry.id),
            Step::Skipped(row) => {
                self.rows.push(row);
                self.finished.push(entry.id);
            }
            Step::Wait(at) => self.waits.push((entry.id, at)),
            Step::Delivered { row, link, binding } => {
                match link {
                    Some(l) => {
                        if entry.action != "delete" {
                            self.sent
                                .push((entry.sync.clone(), l.local_id, l.synced_version));
                        }
                        self.links.push(l)
                    }
                    None => self.unlinks.push((binding, entry.local_id)),
                }
                self.rows.extend(row);
                self.finished.push(entry.id);
            }
            Step::Failed(mut row, fate) => {
                row.error_message = match &fate {
                    Fate::Retry(m, _) | Fate::Dead(m) => m.clone(),
                };
                self.rows.push(row);
                self.fates.push((entry.id, fate));
            }
        }
    }
}

/// Not sent, with a `skipped` row saying why; the link is left as it is.
fn skipped(
    entry: &OutboxEntry,
    sync: &Sync,
    action: LogAction,
    external_id: Option<String>,
    title: &str,
    values: &Map<String, Value>,
    why: String,
) -> Step {
    let mut row = success_row(
        entry,
        sync,
        action,
        external_id,
        title,
        Value::Object(values.clone()),
        json!({}),
    );
    row.status = LogStatus::Skipped;
    row.error_message = why;
    Step::Skipped(row)
}

/// Whether mapped values hold nothing but empties (null, `""`, nested objects of those).
fn carries_nothing(values: &Map<String, Value>) -> bool {
    values.values().all(|v| match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(o) => carries_nothing(o),
        _ => false,
    })
}
