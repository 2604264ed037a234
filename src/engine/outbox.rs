//! Outbox workers: claim due entries, deliver them through the sync's connector, record every
//! attempt, retry with backoff and jitter, and dead-letter after the retry budget.

use super::Engine;
use crate::connectors::SendError;
use crate::connectors::rest::{self, SendAction};
use crate::domain::mapping::{FieldPair, RefResolver, Reference, to_external};
use crate::domain::plan::Sync;
use crate::store::{Link, LogAction, LogDirection, LogStatus, NewChange, OutboxEntry, StoreError};
use chrono::Utc;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What one round of the worker found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This many entries were attempted.
    Done(usize),
    /// Nothing was due.
    Empty,
}

/// How long a claimed entry stays leased to this worker.
const LEASE: Duration = Duration::from_secs(120);
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
    /// Claims and delivers one batch of due entries.
    pub async fn try_execute(self: &Arc<Self>) -> Result<Outcome, StoreError> {
        let batch = self
            .store
            .claim_outbox(&self.opts.instance, Utc::now(), LEASE, BATCH)
            .await?;
        if batch.is_empty() {
            return Ok(Outcome::Empty);
        }
        let n = batch.len();
        let mut tasks = Vec::with_capacity(n);
        for entry in batch {
            let engine = self.clone();
            tasks.push(tokio::spawn(async move {
                let id = entry.id;
                if let Err(e) = engine.deliver(entry).await {
                    tracing::error!(outbox_id = id, error = %e, "Failed to record an outbox delivery; the entry will be retried when its lease ends");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
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
                    _ = stop.changed() => {}
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

    async fn deliver(&self, entry: OutboxEntry) -> Result<(), StoreError> {
        let plan = self.plan();
        let Some(sync) = plan.sync(&entry.sync) else {
            return self
                .give_up(&entry, None, "the sync is no longer configured")
                .await;
        };
        let model = &plan.models[&sync.model];
        let record = self.store.get_record(&model.name, entry.local_id).await?;
        let link = self
            .store
            .link_by_local(sync.code.as_str(), entry.local_id)
            .await?;
        let values = record
            .as_ref()
            .map(|r| r.values.clone())
            .unwrap_or_default();
        let title = model.title(entry.local_id, &values);

        let Some(service) = plan
            .web_services
            .get(&sync.web_service)
            .and_then(|w| w.rest())
        else {
            return self
                .give_up(
                    &entry,
                    Some(sync),
                    "this build delivers to REST web services only",
                )
                .await;
        };

        let (action, external_id) = if entry.action == "delete" {
            let Some(ext) = link.as_ref().and_then(|l| l.external_id.clone()) else {
                return self
                    .finish(
                        &entry,
                        sync,
                        LogAction::Delete,
                        None,
                        &title,
                        json!({}),
                        json!({}),
                        None,
                    )
                    .await;
            };
            if !sync.propagate_deletes {
                // Deletions only unlink the pair on this sync.
                return self
                    .finish(
                        &entry,
                        sync,
                        LogAction::Unlink,
                        Some(ext),
                        &title,
                        json!({}),
                        json!({"unlinked": true}),
                        None,
                    )
                    .await;
            }
            (SendAction::Delete, Some(ext))
        } else {
            let Some(rec) = record.as_ref().filter(|r| !r.deleted) else {
                // Deleted since: the delete entry that follows carries it across.
                self.store.outbox_done(entry.id).await?;
                return Ok(());
            };
            if let Some(l) = &link
                && l.external_id.is_some()
                && l.synced_version >= rec.version
            {
                // Already delivered (for instance by an earlier entry of the same record).
                self.store.outbox_done(entry.id).await?;
                return Ok(());
            }
            match link.as_ref().and_then(|l| l.external_id.clone()) {
                Some(ext) => (SendAction::Update, Some(ext)),
                None => (SendAction::Create, None),
            }
        };

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
                    return self
                        .failed(
                            &entry,
                            sync,
                            &title,
                            action,
                            &values,
                            SendError::Retry {
                                reason,
                                after: None,
                            },
                        )
                        .await;
                }
            }
        };
        let permits = self.limit_for(&sync.web_service, service.max_concurrency);
        let _permit = permits.acquire().await.expect("semaphore open");
        let result = rest::send(
            &self.http,
            service,
            sync,
            action,
            external_id.as_deref(),
            entry.local_id,
            &mapped,
        )
        .await;
        drop(_permit);
        match result {
            Ok(sent) => {
                let log_action = match action {
                    SendAction::Create => LogAction::Create,
                    SendAction::Update => LogAction::Update,
                    SendAction::Delete => LogAction::Delete,
                };
                let ext = sent
                    .external_id
                    .or(external_id)
                    .unwrap_or_else(|| entry.local_id.to_string());
                let link_after = (action != SendAction::Delete).then(|| Link {
                    sync: sync.code.to_string(),
                    local_id: entry.local_id,
                    external_id: Some(ext.clone()),
                    base: sync
                        .fields
                        .iter()
                        .filter_map(|p| values.get(&p.local).map(|v| (p.local.clone(), v.clone())))
                        .collect(),
                    synced_version: record.as_ref().map(|r| r.version).unwrap_or(0),
                    external_hash: None,
                });
                self.finish(
                    &entry,
                    sync,
                    log_action,
                    Some(ext),
                    &title,
                    Value::Object(values.clone()),
                    sent.request,
                    link_after,
                )
                .await
            }
            Err(e) => self.failed(&entry, sync, &title, action, &values, e).await,
        }
    }

    /// Resolves relational values to the related records' external references.
    async fn prefetch(
        &self,
        sync: &Sync,
        values: &Map<String, Value>,
    ) -> Result<Prefetched, StoreError> {
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
                        .link_by_local(code.as_str(), id)
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

    /// Records a success: the link, the row and the entry's end, in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        entry: &OutboxEntry,
        sync: &Sync,
        action: LogAction,
        external_id: Option<String>,
        title: &str,
        origin: Value,
        destination: Value,
        link: Option<Link>,
    ) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        match &link {
            Some(l) => tx.upsert_link(l).await?,
            None => {
                tx.delete_link(sync.code.as_str(), entry.local_id).await?;
            }
        }
        let row = NewChange {
            sync: sync.code.to_string(),
            direction: LogDirection::LocalToExternal,
            action,
            external_id,
            local_id: Some(entry.local_id),
            name: format!("{} {}", verb(action), sync.model),
            title: title.to_string(),
            origin_values: origin,
            destination_values: destination,
            modified_at: Some(entry.created_at),
            synced_at: None,
            status: LogStatus::Success,
            error_message: String::new(),
            run_id: None,
            actor: "outbox".into(),
        };
        self.log(&mut tx, row).await?;
        tx.outbox_mark(entry.id, "done").await?;
        tx.commit().await
    }

    /// Records a failed attempt: retry later, or dead-letter after the budget.
    async fn failed(
        &self,
        entry: &OutboxEntry,
        sync: &Sync,
        title: &str,
        action: SendAction,
        values: &Map<String, Value>,
        err: SendError,
    ) -> Result<(), StoreError> {
        let max = self.opts.max_attempts as i64;
        let (dead, message) = match &err {
            SendError::Permanent(r) => (
                true,
                format!("Delivery failed and will not be retried: {r}"),
            ),
            SendError::Retry { reason, .. } if entry.attempts >= max => (
                true,
                format!(
                    "Delivery failed after {} attempts, the last because {reason}; dead-lettered",
                    entry.attempts
                ),
            ),
            SendError::Retry { reason, .. } => (
                false,
                format!("Attempt {} of {max} failed: {reason}", entry.attempts),
            ),
        };
        let row = NewChange {
            sync: sync.code.to_string(),
            direction: LogDirection::LocalToExternal,
            action: match action {
                SendAction::Create => LogAction::Create,
                SendAction::Update => LogAction::Update,
                SendAction::Delete => LogAction::Delete,
            },
            external_id: None,
            local_id: Some(entry.local_id),
            name: format!("{} {}", verb_of(action), sync.model),
            title: title.to_string(),
            origin_values: Value::Object(values.clone()),
            destination_values: json!({}),
            modified_at: Some(entry.created_at),
            synced_at: None,
            status: LogStatus::Failed,
            error_message: message.clone(),
            run_id: None,
            actor: "outbox".into(),
        };
        self.store.log_change(&row).await?;
        if dead {
            tracing::warn!(sync = %sync.code, local_id = entry.local_id, outbox_id = entry.id, error = %message, "Outbox entry dead-lettered");
            self.store.outbox_dead(entry.id, &message).await
        } else {
            let hint = match &err {
                SendError::Retry { after, .. } => *after,
                SendError::Permanent(_) => None,
            };
            let wait = self.backoff(entry.attempts, hint);
            let at = Utc::now()
                + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
            self.store.outbox_retry_at(entry.id, at, &message).await
        }
    }

    async fn give_up(
        &self,
        entry: &OutboxEntry,
        sync: Option<&Sync>,
        why: &str,
    ) -> Result<(), StoreError> {
        let row = NewChange {
            sync: entry.sync.clone(),
            direction: LogDirection::LocalToExternal,
            action: LogAction::parse(&entry.action).unwrap_or(LogAction::Update),
            external_id: None,
            local_id: Some(entry.local_id),
            name: format!(
                "Deliver to {}",
                sync.map(|s| s.web_service.as_str()).unwrap_or("?")
            ),
            title: String::new(),
            origin_values: entry.payload.clone(),
            destination_values: json!({}),
            modified_at: Some(entry.created_at),
            synced_at: None,
            status: LogStatus::Failed,
            error_message: format!("Delivery failed and will not be retried: {why}"),
            run_id: None,
            actor: "outbox".into(),
        };
        self.store.log_change(&row).await?;
        self.store.outbox_dead(entry.id, why).await
    }
}

fn verb(a: LogAction) -> &'static str {
    match a {
        LogAction::Create => "Create",
        LogAction::Update => "Update",
        LogAction::Delete => "Delete",
        LogAction::Unlink => "Unlink",
        LogAction::Rename => "Rename",
        LogAction::Move => "Move",
        LogAction::Conflict => "Resolve conflict on",
    }
}

fn verb_of(a: SendAction) -> &'static str {
    match a {
        SendAction::Create => "Create",
        SendAction::Update => "Update",
        SendAction::Delete => "Delete",
    }
}
