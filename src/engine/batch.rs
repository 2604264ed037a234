//! Group commit for inbound upserts: requests that arrive together are applied in one
//! transaction with multi-row statements, so throughput does not stop at one transaction's
//! round trips per request. Each request still gets its own outcome; a batch that fails as a
//! whole is retried request by request.

use super::apply::{Applied, ApplyError, Checked, Job, Mapped, Reply, Work, invalid, replies};
use super::{Ctx, Engine};
use crate::domain::Plan;
use crate::domain::mapping::{PendingRef, id_text, to_local};
use crate::domain::plan::Sync;
use crate::domain::value::coerce;
use crate::store::{NewChange, StoreError};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Requests applied in one transaction at most.
const MAX_BATCH: usize = 256;

/// How often a round that lost a race with a concurrent writer is applied again.
const RACE_RETRIES: u32 = 8;

/// A job checked and mapped, before any database work.
pub(super) struct Prepared {
    pub(super) job: Job,
    /// The binding of the job's sync: links are looked up there.
    pub(super) binding: String,
    pub(super) external_id: String,
    pub(super) origin: Value,
    pub(super) incoming: Map<String, Value>,
    pub(super) refs: Vec<PendingRef>,
}

impl Engine {
    /// Starts the writer: the one task that applies every change, in arrival order.
    /// Consecutive upserts are grouped into batches; a delete or a local edit is applied on
    /// its own, after what arrived before it.
    pub fn spawn_writer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let rx = self.writer_rx.lock().expect("writer lock").take();
        let engine = self.clone();
        tokio::spawn(async move {
            let Some(mut rx) = rx else { return };
            let mut next: Option<Work> = None;
            loop {
                let work = match next.take() {
                    Some(w) => w,
                    None => match rx.recv().await {
                        Some(w) => w,
                        None => break,
                    },
                };
                match work {
                    Work::Upserts(mut jobs) => {
                        // A bundle is never split, so a pulled page goes in as one group.
                        while jobs.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(Work::Upserts(more)) => jobs.extend(more),
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        engine.run_batch(jobs).await;
                    }
                    other => engine.run_single(other).await,
                }
            }
        })
    }

    /// Applies a delete or a local edit in its own transaction.
    async fn run_single(&self, work: Work) {
        match work {
            Work::Upserts(jobs) => self.run_batch(jobs).await,
            Work::Delete {
                code,
                external_id,
                unlink_only,
                ctx,
                reply,
                span,
            } => {
                let r = self
                    .delete_inbound(&code, &external_id, unlink_only, &ctx)
                    .instrument(span)
                    .await;
                let _ = reply.send(r);
            }
            Work::Local {
                model,
                op,
                reply,
                span,
            } => {
                let r = self.local_edit(&model, op).instrument(span).await;
                let _ = reply.send(r);
            }
        }
    }

    /// Hands a delete or a local edit to the writer (or applies it here when no writer runs)
    /// and waits for its result.
    pub(crate) async fn submit_single<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApplyError>>) -> Work,
    ) -> Result<T, ApplyError> {
        let closed = || ApplyError::Store(StoreError::Database(sqlx::Error::PoolClosed));
        let (tx, rx) = oneshot::channel();
        let work = make(tx);
        if self.writer_started() {
            if self.writer_tx.send(work).await.is_err() {
                return Err(closed());
            }
        } else {
            self.run_single(work).await;
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Hands an upsert to the writer (or applies it here when no writer runs).
    pub(crate) async fn submit(&self, job: Job) -> Result<Applied, ApplyError> {
        self.submit_many(vec![job])
            .await
            .pop()
            .unwrap_or(Err(ApplyError::Store(StoreError::Database(
                sqlx::Error::PoolClosed,
            ))))
    }

    /// Hands upserts to the writer as one bundle, which it applies in one group (one
    /// transaction when they concern different records); the results come back in order.
    pub(crate) async fn submit_many(&self, jobs: Vec<Job>) -> Vec<Result<Applied, ApplyError>> {
        replies(self.send_many(jobs).await).await
    }

    /// Hands upserts to the writer as one bundle (or applies them here when no writer runs),
    /// without waiting: each job's reply comes on its receiver, in order.
    pub(crate) async fn send_many(&self, jobs: Vec<Job>) -> Vec<Reply> {
        let plan = self.plan();
        let mut waiting = Vec::with_capacity(jobs.len());
        let jobs: Vec<Job> = jobs
            .into_iter()
            .map(|job| {
                let (tx, rx) = oneshot::channel();
                waiting.push(rx);
                // A span per record applied, in the span it came in (a request, a page).
                let span = tracing::info_span!(
                    "record",
                    sync = %job.code,
                    external_id = job.external_id.as_deref(),
                );
                let checked = Some(Checked {
                    result: check(&plan, &job),
                    plan: plan.clone(),
                });
                Job {
                    reply: tx,
                    span,
                    checked,
                    ..job
                }
            })
            .collect();
        if self.writer_started() {
            // A closed writer drops the jobs: their receivers answer "closed".
            let _ = self.writer_tx.send(Work::Upserts(jobs)).await;
        } else {
            self.run_batch(jobs).await;
        }
        waiting
    }

    async fn run_batch(&self, jobs: Vec<Job>) {
        let plan = self.plan();
        let mut ready: Vec<Prepared> = Vec::with_capacity(jobs.len());
        for job in jobs {
            match prepare(&plan, job) {
                Ok(p) => ready.push(p),
                Err((job, e)) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        // Two changes that may touch the same local record go in separate rounds, in arrival
        // order, whichever syncs they come from: each is decided against what the one before
        // it wrote (a conflict between two systems is then seen as one, and a second create
        // with the same `match_on` key finds the first instead of copying it).
        let mut keyed: Vec<(Prepared, Vec<String>)> = {
            let keys = self.touch_keys(&plan, &ready).await;
            ready.into_iter().zip(keys).collect()
        };
        while !keyed.is_empty() {
            let mut seen: HashSet<String> = HashSet::new();
            let mut round = Vec::new();
            let mut later = Vec::new();
            for (p, keys) in keyed {
                let clash = keys.iter().any(|k| seen.contains(k));
                // A deferred change's keys block the changes after it too, so order holds.
                seen.extend(keys.iter().cloned());
                if clash {
                    later.push((p, keys));
                } else {
                    round.push(p);
                }
            }
            keyed = later;
            self.run_round(&plan, round).await;
        }
        if self.woke.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.wake();
        }
    }

    /// What each change may touch, as keys: its link (binding and external id), the local
    /// record that link names (read when the batch holds several bindings), and the
    /// normalized value of each `match_on` group of any sync of its model (trimmed, lower
    /// case, as `match_on` compares). Changes sharing a key go in separate rounds.
    async fn touch_keys(&self, plan: &Plan, ready: &[Prepared]) -> Vec<Vec<String>> {
        let mut groups: HashMap<&str, Vec<&Vec<String>>> = HashMap::new();
        for s in plan.syncs.values() {
            let g = groups.entry(s.model.as_str()).or_default();
            for group in &s.match_on {
                if !g.contains(&group) {
                    g.push(group);
                }
            }
        }
        let mut keys: Vec<Vec<String>> = ready
            .iter()
            .map(|p| {
                let model = plan.syncs[&p.job.code].model.as_str();
                let mut k = vec![format!("link\u{1}{}\u{1}{}", p.binding, p.external_id)];
                for group in groups.get(model).into_iter().flatten() {
                    let values: Option<Vec<String>> = group
                        .iter()
                        .map(|f| match p.incoming.get(f) {
                            Some(Value::String(s)) if !s.trim().is_empty() => {
                                Some(s.trim().to_lowercase())
                            }
                            Some(Value::Number(n)) => Some(n.to_string()),
                            _ => None,
                        })
                        .collect();
                    if let Some(values) = values {
                        k.push(format!(
                            "match\u{1}{model}\u{1}{}\u{1}{}",
                            group.join(","),
                            values.join("\u{1}")
                        ));
                    }
                }
                k
            })
            .collect();
        let mut by_binding: HashMap<&str, Vec<String>> = HashMap::new();
        for p in ready {
            by_binding
                .entry(p.binding.as_str())
                .or_default()
                .push(p.external_id.clone());
        }
        // One binding links each local record once: its link keys say it all.
        if by_binding.len() < 2 {
            return keys;
        }
        for (binding, ids) in by_binding {
            let found = self.store.links_by_external_ids(binding, &ids).await;
            for (i, p) in ready.iter().enumerate() {
                if p.binding != binding {
                    continue;
                }
                let model = &plan.syncs[&p.job.code].model;
                match &found {
                    Ok(links) => {
                        if let Some(l) = links.get(&p.external_id) {
                            keys[i].push(format!("record\u{1}{model}\u{1}{}", l.local_id));
                        }
                    }
                    // Unknown: the model's changes go one round each.
                    Err(_) => keys[i].push(format!("record\u{1}{model}\u{1}*")),
                }
            }
        }
        keys
    }

    /// Applies upserts of several syncs handed to the writer together, as pages of two runs
    /// queued at the same moment are: `(sync, payload)`, each payload holding its sync's
    /// `external_ref`. Each change is decided against what the ones before it wrote; the
    /// results come back in order.
    pub async fn apply_inbound_bundle(
        &self,
        items: Vec<(String, Value)>,
        ctx: &Ctx,
    ) -> Vec<Result<Applied, ApplyError>> {
        let jobs = items
            .into_iter()
            .map(|(code, payload)| Job {
                code,
                external_id: None,
                payload,
                must_exist: false,
                ctx: ctx.clone(),
                reply: oneshot::channel().0,
                span: tracing::Span::current(),
                checked: None,
            })
            .collect();
        self.submit_many(jobs).await
    }

    async fn run_round(&self, plan: &Plan, round: Vec<Prepared>) {
        let n = round.len();
        // Another instance sharing the database may have written the same record at the same
        // moment (the same create retried through a load balancer): the round is rolled back
        // and run again, and then finds that record, so it becomes an update.
        let mut races = 0;
        let outcome = loop {
            match self.execute(plan, &round).await {
                Err(e) if e.is_race() && races < RACE_RETRIES => {
                    races += 1;
                    tracing::debug!(error = %e, attempt = races, "A concurrent writer got there first; applying the round again");
                    tokio::time::sleep(std::time::Duration::from_millis(
                        rand::random::<u64>() % (5 * races as u64) + 1,
                    ))
                    .await;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(results) => {
                let wrote = results
                    .iter()
                    .any(|r| matches!(r, Ok(Applied::Created(_) | Applied::Updated(..))));
                for (p, r) in round.into_iter().zip(results) {
                    // Logged inside the span the change came in (the request, the run); the
                    // guard is dropped before any await.
                    let entered = p.job.span.enter();
                    match &r {
                        Ok(applied) => tracing::debug!(
                            sync = %p.job.code,
                            external_id = %p.external_id,
                            local_id = applied.local_id(),
                            applied = ?applied,
                            "Committed"
                        ),
                        Err(e) => tracing::debug!(
                            sync = %p.job.code,
                            external_id = %p.external_id,
                            error = %e,
                            "Refused"
                        ),
                    }
                    drop(entered);
                    let _ = p.job.reply.send(r);
                }
                // The outbox workers are woken once the whole batch is in (`run_batch`), so
                // that a delivery queued by one round is not claimed before a later round of
                // the same batch links its record (a second system's copy of the person).
                if wrote {
                    self.woke.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            Err(e) if n > 1 && !e.is_unavailable() => {
                tracing::warn!(error = %e, requests = n, "A grouped commit failed; applying its requests one by one");
                for p in round {
                    Box::pin(self.run_round(plan, vec![p])).await;
                }
            }
            Err(e) => {
                let unavailable = e.is_unavailable();
                tracing::error!(error = %e, "Failed to apply inbound changes");
                for p in round {
                    let err = if unavailable {
                        ApplyError::Store(StoreError::Database(sqlx::Error::PoolTimedOut))
                    } else {
                        ApplyError::Store(StoreError::Database(sqlx::Error::Protocol(
                            "write failed".into(),
                        )))
                    };
                    let _ = p.job.reply.send(Err(err));
                }
            }
        }
    }
}

pub(super) fn fill(row: &mut NewChange, ctx: &Ctx) {
    row.modified_at = ctx.modified_at;
    row.actor = ctx.actor.clone();
    row.run_id = ctx.run_id;
}

/// Checks and maps one request without touching the store; a request checked under this
/// very plan before it reached the writer is not checked again.
#[allow(clippy::result_large_err)]
pub(super) fn prepare(plan: &Plan, mut job: Job) -> Result<Prepared, (Job, ApplyError)> {
    let checked = match job.checked.take() {
        Some(c) if std::ptr::eq(Arc::as_ptr(&c.plan), plan) => c.result,
        _ => check(plan, &job),
    };
    match checked {
        Ok((external_id, origin, incoming, refs)) => Ok(Prepared {
            binding: plan.syncs[&job.code].binding(),
            external_id,
            origin,
            incoming,
            refs,
            job,
        }),
        Err(e) => Err((job, e)),
    }
}

fn check(plan: &Plan, job: &Job) -> Result<Mapped, ApplyError> {
    map_inbound(
        plan,
        &job.code,
        job.external_id.as_deref(),
        job.payload.as_object(),
    )
}

/// Whether a listed record's values, mapped as an inbound change would be, equal what was
/// last synced (`base`): such a record needs nothing. A record whose mapping needs references
/// resolved, or that does not map, is not known to be equal.
pub(super) fn echoes(
    plan: &Plan,
    sync: &Sync,
    external_id: &str,
    values: &Map<String, Value>,
    base: &Map<String, Value>,
) -> bool {
    match map_inbound(plan, sync.code.as_str(), Some(external_id), Some(values)) {
        Ok((_, _, mapped, refs)) => {
            refs.is_empty()
                && mapped
                    .iter()
                    .all(|(k, v)| base.get(k).unwrap_or(&Value::Null) == v)
        }
        Err(_) => false,
    }
}

/// Checks and maps one inbound change (the body of a `/sync` call or a pulled record).
fn map_inbound(
    plan: &Plan,
    code: &str,
    given_id: Option<&str>,
    fields: Option<&Map<String, Value>>,
) -> Result<Mapped, ApplyError> {
    let sync = plan
        .sync(code)
        .ok_or_else(|| ApplyError::UnknownSync(code.to_string()))?;
    if !sync.direction.to_local() {
        return Err(ApplyError::NotInbound(code.to_string()));
    }
    if !sync.active {
        return Err(ApplyError::Inactive(code.to_string()));
    }
    let Some(fields) = fields else {
        return Err(ApplyError::Invalid(
            "the body must be an object of field values".into(),
        ));
    };
    let ext_model = &plan.external_models[&sync.external_model];
    // Unknown external fields are refused (`Plan::takes_external_field`).
    let unknown: Vec<(String, String)> = fields
        .keys()
        .filter(|k| !plan.takes_external_field(sync, k))
        .map(|k| {
            (
                k.clone(),
                format!("unknown field of external model `{}`", ext_model.name),
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(invalid(unknown));
    }
    let external_id = match given_id {
        Some(id) => id.to_string(),
        None => match fields.get(&sync.external_ref) {
            Some(v) => id_text(v).ok_or_else(|| {
                ApplyError::Invalid(format!(
                    "{}: the external id must be a non-empty string or an integer, not `{v}`",
                    sync.external_ref
                ))
            })?,
            None => {
                return Err(ApplyError::Invalid(format!(
                    "{}: missing; it holds the external id for sync `{}`",
                    sync.external_ref, sync.code
                )));
            }
        },
    };
    if let Some(problem) = crate::domain::mapping::id_problem(&external_id) {
        return Err(ApplyError::Invalid(format!(
            "{}: {problem}",
            sync.external_ref
        )));
    }
    let mut typed = Map::new();
    let mut errors = Vec::new();
    for (k, v) in fields {
        match ext_model.fields.get(k) {
            Some(ty) => match coerce(ty, v) {
                Ok(c) => {
                    typed.insert(k.clone(), c);
                }
                Err(e) => errors.push((k.clone(), e.to_string())),
            },
            None => {
                typed.insert(k.clone(), v.clone());
            }
        }
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let typed = Value::Object(typed);
    let mapped = to_local(&sync.fields, &typed)
        .map_err(|e| invalid(e.into_iter().map(|e| (e.field, e.message))))?;
    Ok((external_id, typed, mapped.values, mapped.refs))
}
