//! Group commit for inbound upserts: requests that arrive together are applied in one
//! transaction with multi-row statements, so throughput does not stop at one transaction's
//! round trips per request. Each request still gets its own outcome; a batch that fails as a
//! whole is retried request by request.

use super::apply::{Applied, ApplyError, invalid, log_row};
use super::fanout::{Route, receivers, route};
use super::{Ctx, Engine};
use crate::domain::Plan;
use crate::domain::mapping::{PendingRef, id_text, to_local};
use crate::domain::merge::{Conflict, Modified, Side, merge};
use crate::domain::plan::{Model, Sync};
use crate::domain::value::coerce;
use crate::store::{
    Link, LogAction, LogDirection, LogStatus, NewChange, NewOutbox, Record, StoreError,
};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Requests applied in one transaction at most.
const MAX_BATCH: usize = 256;

/// How often a round that lost a race with a concurrent writer is applied again.
const RACE_RETRIES: u32 = 8;

/// A change waiting for the writer. Everything that writes records goes through this one
/// queue, in arrival order: inbound upserts (grouped into shared transactions), inbound and
/// pulled deletes, and local edits.
pub(crate) enum Work {
    /// A bundle of upserts, applied in one group (never split).
    Upserts(Vec<Job>),
    /// An inbound or pulled delete.
    Delete {
        code: String,
        external_id: String,
        /// Only end the link, whatever `propagate_deletes` says (an archived Odoo record).
        unlink_only: bool,
        ctx: Ctx,
        reply: oneshot::Sender<Result<Applied, ApplyError>>,
        span: tracing::Span,
    },
    /// A local edit (records API).
    Local {
        model: String,
        op: super::LocalOp,
        reply: oneshot::Sender<Result<Record, ApplyError>>,
        span: tracing::Span,
    },
}

/// One inbound upsert waiting for the writer.
pub(crate) struct Job {
    pub code: String,
    pub external_id: Option<String>,
    pub payload: Value,
    pub must_exist: bool,
    pub ctx: Ctx,
    pub reply: oneshot::Sender<Result<Applied, ApplyError>>,
    /// The span the change was submitted in (the HTTP request, the run): the writer's events
    /// about it are logged inside it.
    pub span: tracing::Span,
}

/// A record's field values.
type Values = Map<String, Value>;

/// A job checked and mapped, before any database work.
pub(super) struct Prepared {
    job: Job,
    /// The binding of the job's sync: links are looked up there.
    binding: String,
    external_id: String,
    origin: Value,
    incoming: Map<String, Value>,
    refs: Vec<PendingRef>,
}

/// What a prepared job will write.
enum Intent {
    NoOp(i64),
    /// Several local records match the record's `match_on` fields: nothing is linked or
    /// created; the reason names them.
    Ambiguous(String),
    /// The record is outside the sync's domain and the sync does not carry it: nothing is
    /// written but a `skipped` row with the reason.
    Skip(Option<i64>, String),
    /// The linked record is paused for the sync: nothing is written but a `skipped` row, and
    /// the change is kept for the resume.
    Paused(i64, String),
    /// Same values as stored: only the link's base moves.
    Rebase(i64, Link),
    /// A new record; `stale` is a link left pointing at a deleted record, replaced here.
    Create {
        values: Map<String, Value>,
        stale: Option<i64>,
    },
    Update {
        record: Record,
        link: Link,
        values: Map<String, Value>,
        changed: Map<String, Value>,
        base: Map<String, Value>,
        conflicts: Vec<Conflict>,
        /// The origin does not hold the merged result: send it back there too.
        resend: bool,
        /// The link stays behind the record's version (something is still to go out).
        keep_behind: bool,
        /// The update takes the record out of the sync's domain: the sync no longer carries
        /// it (logged `unlink`), while the binding keeps the identity.
        leaves: bool,
    },
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
        let closed = || ApplyError::Store(StoreError::Database(sqlx::Error::PoolClosed));
        let mut waiting = Vec::with_capacity(jobs.len());
        let jobs: Vec<Job> = jobs
            .into_iter()
            .map(|job| {
                let (tx, rx) = oneshot::channel();
                waiting.push(rx);
                Job {
                    reply: tx,
                    span: tracing::Span::current(),
                    ..job
                }
            })
            .collect();
        if self.writer_started() {
            if self.writer_tx.send(Work::Upserts(jobs)).await.is_err() {
                return waiting.iter().map(|_| Err(closed())).collect();
            }
        } else {
            self.run_batch(jobs).await;
        }
        let mut out = Vec::with_capacity(waiting.len());
        for rx in waiting {
            out.push(rx.await.unwrap_or_else(|_| Err(closed())));
        }
        out
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

    /// Applies one round in one transaction. Per-request refusals are in the result; an error
    /// means nothing of the round was written.
    async fn execute(
        &self,
        plan: &Plan,
        round: &[Prepared],
    ) -> Result<Vec<Result<Applied, ApplyError>>, StoreError> {
        let mut tx = self.store.begin().await?;
        let Round {
            mut results,
            records,
            matched,
            ambiguous,
            intents,
        } = self
            .decide_round(&mut tx, plan, round, &HashSet::new())
            .await?;
        for (i, (_, candidates)) in &ambiguous {
            tx.note_ambiguous(&round[*i].binding, candidates, &round[*i].external_id)
                .await?;
        }

        // Write: new records and updates per model, in as few statements as possible.
        let mut new_links: Vec<Link> = Vec::new();
        let mut rows: Vec<NewChange> = Vec::new();
        // (request, record, action, the sync it came through, whether the origin must get the
        // merged result back)
        let mut written: Vec<(usize, Record, &'static str, &Sync, bool)> = Vec::new();
        let mut creates: HashMap<String, Vec<(usize, Values)>> = HashMap::new();
        let mut updates: HashMap<String, Vec<usize>> = HashMap::new();
        let mut stale_links: Vec<(String, i64)> = Vec::new();
        for (i, intent) in intents.iter().enumerate() {
            let Some(intent) = intent else { continue };
            let model = &plan.syncs[&round[i].job.code].model;
            if let Some((local_id, on)) = matched.get(&i) {
                let p = &round[i];
                let sync = &plan.syncs[&p.job.code];
                let m = &plan.models[&sync.model];
                let mut row = log_row(
                    sync,
                    m,
                    LogDirection::ExternalToLocal,
                    LogAction::Link,
                    Some(*local_id),
                    records
                        .get(&(m.name.clone(), *local_id))
                        .map(|r| &r.values)
                        .unwrap_or(&p.incoming),
                );
                row.external_id = Some(p.external_id.clone());
                row.origin_values = p.origin.clone();
                row.destination_values = json!({ "match_on": on });
                row.error_message = format!(
                    "linked to the existing local record {local_id}: equal {}",
                    on.join(", ")
                );
                fill(&mut row, &p.job.ctx);
                rows.push(row);
            }
            match intent {
                Intent::NoOp(id) => results[i] = Some(Ok(Applied::NoOp(*id))),
                Intent::Ambiguous(why) => {
                    let p = &round[i];
                    let sync = &plan.syncs[&p.job.code];
                    let m = &plan.models[&sync.model];
                    let mut row = log_row(
                        sync,
                        m,
                        LogDirection::ExternalToLocal,
                        LogAction::Link,
                        None,
                        &p.incoming,
                    );
                    row.external_id = Some(p.external_id.clone());
                    row.origin_values = p.origin.clone();
                    row.status = LogStatus::Skipped;
                    row.error_message = why.clone();
                    fill(&mut row, &p.job.ctx);
                    rows.push(row);
                    results[i] = Some(Ok(Applied::Ambiguous));
                }
                Intent::Skip(..) | Intent::Paused(..) => {
                    let p = &round[i];
                    let (id, why) = match intent {
                        Intent::Paused(local_id, why) => {
                            // Not applied, and not lost: kept for the resume.
                            tx.keep_paused_change(
                                &p.job.code,
                                *local_id,
                                &p.external_id,
                                p.job.payload.as_object(),
                            )
                            .await?;
                            (Some(*local_id), why)
                        }
                        Intent::Skip(id, why) => (*id, why),
                        _ => unreachable!("matched above"),
                    };
                    let sync = &plan.syncs[&p.job.code];
                    let m = &plan.models[&sync.model];
                    let action = match id {
                        Some(_) => p.job.ctx.relabel.unwrap_or(LogAction::Update),
                        None => LogAction::Create,
                    };
                    let mut row = log_row(
                        sync,
                        m,
                        LogDirection::ExternalToLocal,
                        action,
                        id,
                        &p.incoming,
                    );
                    row.external_id = Some(p.external_id.clone());
                    row.origin_values = p.origin.clone();
                    row.status = LogStatus::Skipped;
                    row.error_message = why.clone();
                    fill(&mut row, &p.job.ctx);
                    rows.push(row);
                    results[i] = Some(Ok(Applied::Skipped(id)));
                }
                Intent::Rebase(id, link) => {
                    new_links.push(link.clone());
                    results[i] = Some(Ok(Applied::NoOp(*id)));
                }
                Intent::Create { values, stale } => {
                    if let Some(old) = stale {
                        stale_links.push((round[i].binding.clone(), *old));
                    }
                    creates
                        .entry(model.clone())
                        .or_default()
                        .push((i, values.clone()))
                }
                Intent::Update { .. } => updates.entry(model.clone()).or_default().push(i),
            }
        }
        for (binding, local_id) in &stale_links {
            tx.delete_link(binding, *local_id).await?;
        }
        for (model, items) in creates {
            let values: Vec<Map<String, Value>> = items.iter().map(|(_, v)| v.clone()).collect();
            let recs = tx.insert_records(&model, &values).await?;
            for ((i, values), rec) in items.into_iter().zip(recs) {
                let p = &round[i];
                let sync = &plan.syncs[&p.job.code];
                let m = &plan.models[&sync.model];
                new_links.push(Link {
                    binding: p.binding.clone(),
                    local_id: rec.id,
                    external_id: Some(p.external_id.clone()),
                    base: values.clone(),
                    synced_version: rec.version,
                    external_hash: None,
                    left: Vec::new(),
                });
                let mut row = log_row(
                    sync,
                    m,
                    LogDirection::ExternalToLocal,
                    LogAction::Create,
                    Some(rec.id),
                    &rec.values,
                );
                row.external_id = Some(p.external_id.clone());
                row.origin_values = p.origin.clone();
                row.destination_values = Value::Object(values);
                fill(&mut row, &p.job.ctx);
                rows.push(row);
                results[i] = Some(Ok(Applied::Created(rec.id)));
                written.push((i, rec, "create", sync, false));
            }
        }
        for (model, idx) in updates {
            let batch: Vec<(i64, Map<String, Value>)> = idx
                .iter()
                .map(|i| match &intents[*i] {
                    Some(Intent::Update { record, values, .. }) => (record.id, values.clone()),
                    _ => unreachable!("only updates are listed"),
                })
                .collect();
            let recs: HashMap<i64, Record> = tx
                .update_records(&model, &batch)
                .await?
                .into_iter()
                .map(|r| (r.id, r))
                .collect();
            for i in idx {
                let Some(Intent::Update {
                    record,
                    link,
                    changed,
                    base,
                    conflicts,
                    resend,
                    keep_behind,
                    leaves,
                    ..
                }) = &intents[i]
                else {
                    continue;
                };
                let Some(rec) = recs.get(&record.id).cloned() else {
                    results[i] = Some(Err(ApplyError::UnknownRecord(model.clone(), record.id)));
                    continue;
                };
                let p = &round[i];
                let sync = &plan.syncs[&p.job.code];
                let m = &plan.models[&sync.model];
                // When the merge kept local values the origin has not seen (a conflict won
                // locally, or a local change to another field), or a local change was still
                // waiting to go out, the link stays behind the record's version so the result
                // reaches the origin too.
                let mut left = link.left.clone();
                left.retain(|c| c != sync.code.as_str());
                if *leaves {
                    left.push(sync.code.to_string());
                }
                new_links.push(Link {
                    base: base.clone(),
                    synced_version: if *keep_behind {
                        link.synced_version
                    } else {
                        rec.version
                    },
                    left,
                    ..link.clone()
                });
                for c in conflicts {
                    let mut row = log_row(
                        sync,
                        m,
                        LogDirection::ExternalToLocal,
                        LogAction::Conflict,
                        Some(rec.id),
                        &rec.values,
                    );
                    row.external_id = Some(p.external_id.clone());
                    row.origin_values = json!({"field": c.field, "base": c.base, "local": c.local, "external": c.external});
                    row.destination_values = json!({c.field.clone(): if c.winner == Side::Local { &c.local } else { &c.external }});
                    row.status = LogStatus::ConflictResolved;
                    row.error_message = format!(
                        "`{}` changed on both sides; {} wins by priority `{}`",
                        c.field,
                        if c.winner == Side::Local {
                            "local"
                        } else {
                            "external"
                        },
                        sync.priority.as_str()
                    );
                    fill(&mut row, &p.job.ctx);
                    rows.push(row);
                }
                let mut row = log_row(
                    sync,
                    m,
                    LogDirection::ExternalToLocal,
                    p.job.ctx.relabel.unwrap_or(LogAction::Update),
                    Some(rec.id),
                    &rec.values,
                );
                row.external_id = Some(p.external_id.clone());
                row.origin_values = p.origin.clone();
                row.destination_values = Value::Object(changed.clone());
                fill(&mut row, &p.job.ctx);
                rows.push(row);
                if *leaves {
                    let mut row = log_row(
                        sync,
                        m,
                        LogDirection::ExternalToLocal,
                        LogAction::Unlink,
                        Some(rec.id),
                        &rec.values,
                    );
                    row.external_id = Some(p.external_id.clone());
                    row.error_message = format!(
                        "the record no longer matches the domain of sync `{}`; the sync stops carrying it",
                        sync.code
                    );
                    fill(&mut row, &p.job.ctx);
                    rows.push(row);
                }
                results[i] = Some(Ok(Applied::Updated(rec.id, conflicts.len())));
                // Merged values the origin lacks go back to it as well.
                written.push((i, rec, "update", sync, *resend));
            }
        }
        tx.upsert_links(&new_links).await?;

        // Fan-out to the other syncs of each model, with the domain exits and returns.
        let mut outbox: Vec<NewOutbox> = Vec::new();
        let mut targets: HashMap<String, Vec<i64>> = HashMap::new();
        for (_, rec, action, origin, resend) in &written {
            for t in receivers(plan, &rec.model, Some(origin), *resend) {
                if *action == "update" {
                    targets.entry(t.binding()).or_default().push(rec.id);
                }
            }
        }
        let mut linked: HashMap<(String, i64), Link> = HashMap::new();
        for (binding, ids) in targets {
            for l in tx.links_by_local(&binding, &ids).await? {
                linked.insert((binding.clone(), l.local_id), l);
            }
        }
        let mut touched: HashSet<(String, i64)> = HashSet::new();
        for (i, rec, action, origin, resend) in &written {
            let model = &plan.models[&rec.model];
            let ctx = &round[*i].job.ctx;
            for t in receivers(plan, &rec.model, Some(origin), *resend) {
                let key = (t.binding(), rec.id);
                match route(t, model, rec, linked.get_mut(&key), action, "engine") {
                    Route::Nothing => continue,
                    Route::Exit(row) => {
                        touched.insert(key);
                        rows.push(*row);
                        continue;
                    }
                    Route::Send { relinked } => {
                        if relinked {
                            touched.insert(key);
                        }
                    }
                }
                outbox.push(NewOutbox {
                    sync: t.code.to_string(),
                    local_id: rec.id,
                    action: action.to_string(),
                    payload: super::fanout::payload(rec.version, ctx),
                });
            }
        }
        let changed_links: Vec<Link> = touched
            .iter()
            .filter_map(|k| linked.get(k).cloned())
            .collect();
        tx.upsert_links(&changed_links).await?;
        rows.iter_mut().for_each(|r| self.mask_row(r));
        if !self.opts.change_log {
            rows.retain(|r| r.status != LogStatus::Success);
        }
        tx.log_changes(&rows).await?;
        tx.enqueue_many(&outbox).await?;
        crate::crash::point("inbound.before_commit");
        tx.commit().await?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or(Err(ApplyError::Invalid(
                    "the request was not applied".into(),
                )))
            })
            .collect())
    }

    /// Decides each request of a round against the store as it is, reading only: `taken`
    /// local records are not matched again (a plan's earlier pages matched them).
    pub(super) async fn decide_round(
        &self,
        tx: &mut crate::store::Tx,
        plan: &Plan,
        round: &[Prepared],
        taken: &HashSet<(String, i64)>,
    ) -> Result<Round, StoreError> {
        let mut results: Vec<Option<Result<Applied, ApplyError>>> =
            (0..round.len()).map(|_| None).collect();
        // Requests with references get a copy completed with the resolved ids.
        let mut resolved: HashMap<usize, Map<String, Value>> = HashMap::new();
        // Nothing is written before every reference is resolved, so lookups can be shared.
        let mut cache = super::apply::RefCache::default();
        for (i, p) in round.iter().enumerate() {
            if p.refs.is_empty() {
                continue;
            }
            let mut values = p.incoming.clone();
            let outcome = self
                .resolve_refs(tx, plan, &p.refs, &mut values, &mut cache)
                .await;
            resolved.insert(i, values);
            if let Err(e) = outcome {
                match e {
                    ApplyError::Store(s) => return Err(s),
                    other => results[i] = Some(Err(other)),
                }
            }
        }
        // Current links and records, a query per binding and per model.
        let mut by_binding: HashMap<&str, Vec<String>> = HashMap::new();
        for p in round {
            by_binding
                .entry(p.binding.as_str())
                .or_default()
                .push(p.external_id.clone());
        }
        let mut links: HashMap<(String, String), Link> = HashMap::new();
        for (binding, ids) in by_binding {
            for l in tx.links_by_external(binding, &ids).await? {
                if let Some(ext) = l.external_id.clone() {
                    links.insert((binding.to_string(), ext), l);
                }
            }
        }
        let mut by_model: HashMap<String, Vec<i64>> = HashMap::new();
        for p in round {
            if let Some(l) = links.get(&(p.binding.clone(), p.external_id.clone())) {
                by_model
                    .entry(plan.syncs[&p.job.code].model.clone())
                    .or_default()
                    .push(l.local_id);
            }
        }
        let mut records: HashMap<(String, i64), Record> = HashMap::new();
        for (model, ids) in by_model {
            for r in tx.records_by_ids(&model, &ids).await? {
                records.insert((model.clone(), r.id), r);
            }
        }

        // Records an operator paused for the request's sync are not overwritten.
        let mut linked_by_sync: HashMap<&str, Vec<i64>> = HashMap::new();
        for p in round {
            if let Some(l) = links.get(&(p.binding.clone(), p.external_id.clone())) {
                linked_by_sync
                    .entry(p.job.code.as_str())
                    .or_default()
                    .push(l.local_id);
            }
        }
        let mut paused: HashSet<(&str, i64)> = HashSet::new();
        for (code, ids) in linked_by_sync {
            paused.extend(
                tx.paused_among(code, &ids)
                    .await?
                    .into_iter()
                    .map(|id| (code, id)),
            );
        }

        // match_on: an unlinked record is first looked for among the unlinked local records.
        let (matched, ambiguous, deleted_here) = self
            .match_unlinked(
                tx,
                plan,
                round,
                &results,
                &resolved,
                &links,
                &mut records,
                taken,
            )
            .await?;

        // Decide each request.
        let mut sent_by_sync: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut intents: Vec<Option<Intent>> = (0..round.len()).map(|_| None).collect();
        for (i, p) in round.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let sync = &plan.syncs[&p.job.code];
            let model = &plan.models[&sync.model];
            if let Some((why, _)) = ambiguous.get(&i) {
                intents[i] = Some(Intent::Ambiguous(why.clone()));
                continue;
            }
            if let Some((id, why)) = deleted_here.get(&i) {
                intents[i] = Some(Intent::Skip(Some(*id), why.clone()));
                continue;
            }
            if let Some(l) = links.get(&(p.binding.clone(), p.external_id.clone()))
                && paused.contains(&(p.job.code.as_str(), l.local_id))
            {
                intents[i] = Some(Intent::Paused(l.local_id, paused_reason(sync)));
                continue;
            }
            let link = links
                .get(&(p.binding.clone(), p.external_id.clone()))
                .cloned()
                .or_else(|| {
                    matched.get(&i).map(|(local_id, _)| Link {
                        binding: p.binding.clone(),
                        local_id: *local_id,
                        external_id: Some(p.external_id.clone()),
                        // Nothing was synced yet: every field that differs is a conflict,
                        // settled by `priority`.
                        base: Map::new(),
                        synced_version: 0,
                        external_hash: None,
                        left: Vec::new(),
                    })
                });
            let current = link
                .as_ref()
                .and_then(|l| records.get(&(model.name.clone(), l.local_id)))
                .filter(|r| !r.deleted)
                .cloned();
            let incoming = resolved.get(&i).unwrap_or(&p.incoming);
            let sent = sent_by_sync
                .entry(sync.code.as_str())
                .or_insert_with(|| sent_fields(plan, sync));
            match decide(sync, model, p, incoming, link, current, sent) {
                Ok(intent) => intents[i] = Some(intent),
                Err(e) => results[i] = Some(Err(e)),
            }
        }

        Ok(Round {
            results,
            records,
            matched,
            ambiguous,
            intents,
        })
    }
}

/// Requests of a round matched by `match_on`: by position, the local record and the fields
/// it matched on; the ambiguous ones, with the reason; and those that match a record deleted
/// here while its create there was on its way (the pull sees that create: not copied back).
type Matches = (
    HashMap<usize, (i64, Vec<String>)>,
    HashMap<usize, (String, Vec<i64>)>,
    HashMap<usize, (i64, String)>,
);

/// A round decided: per request, a result already known (a refusal) or the intent, with the
/// records read and the `match_on` outcomes.
pub(super) struct Round {
    results: Vec<Option<Result<Applied, ApplyError>>>,
    records: HashMap<(String, i64), Record>,
    matched: HashMap<usize, (i64, Vec<String>)>,
    ambiguous: HashMap<usize, (String, Vec<i64>)>,
    intents: Vec<Option<Intent>>,
}

impl Engine {
    /// `match_on`: each unlinked request of a sync with `match_on` is looked for among the
    /// local records its binding does not link, group by group (a group whose values are
    /// empty is passed over). One match links it (the record is added to `records`); several
    /// are an ambiguity, noted with its candidates so a push does not copy them over.
    #[allow(clippy::too_many_arguments)]
    async fn match_unlinked(
        &self,
        tx: &mut crate::store::Tx,
        plan: &Plan,
        round: &[Prepared],
        results: &[Option<Result<Applied, ApplyError>>],
        resolved: &HashMap<usize, Map<String, Value>>,
        links: &HashMap<(String, String), Link>,
        records: &mut HashMap<(String, i64), Record>,
        taken: &HashSet<(String, i64)>,
    ) -> Result<Matches, StoreError> {
        let mut matched = HashMap::new();
        let mut ambiguous = HashMap::new();
        let mut deleted_here = HashMap::new();
        // A local record matched earlier in the round (or the plan) is taken.
        let mut taken: HashSet<(String, i64)> = taken.clone();
        for (i, p) in round.iter().enumerate() {
            let sync = &plan.syncs[&p.job.code];
            if results[i].is_some()
                || sync.match_on.is_empty()
                || links.contains_key(&(p.binding.clone(), p.external_id.clone()))
            {
                continue;
            }
            let incoming = resolved.get(&i).unwrap_or(&p.incoming);
            for group in &sync.match_on {
                let values: Option<Vec<(&str, String)>> = group
                    .iter()
                    .map(|f| match incoming.get(f) {
                        Some(Value::String(s)) if !s.trim().is_empty() => {
                            Some((f.as_str(), s.clone()))
                        }
                        Some(Value::Number(n)) => Some((f.as_str(), n.to_string())),
                        _ => None,
                    })
                    .collect();
                let Some(values) = values else { continue };
                let found: Vec<i64> = tx
                    .match_candidates(&sync.model, &p.binding, &values, 10)
                    .await?
                    .into_iter()
                    .filter(|id| !taken.contains(&(p.binding.clone(), *id)))
                    .collect();
                match found.as_slice() {
                    [] => {
                        // The record a create of this sync made, for a local record deleted
                        // since (its delete waits behind the create): not copied back.
                        if let Some(id) = tx
                            .match_deleted_in_flight(&sync.model, &p.job.code, &values)
                            .await?
                        {
                            deleted_here.insert(
                                i,
                                (
                                    id,
                                    format!(
                                        "matches local record {id} on {}, deleted here while its create was on its way there; not copied back (the delete follows the create)",
                                        group.join(", ")
                                    ),
                                ),
                            );
                            break;
                        }
                        continue;
                    }
                    [id] => {
                        taken.insert((p.binding.clone(), *id));
                        for r in tx.records_by_ids(&sync.model, &[*id]).await? {
                            records.insert((sync.model.clone(), r.id), r);
                        }
                        matched.insert(i, (*id, group.clone()));
                    }
                    several => {
                        let ids: Vec<String> = several.iter().map(i64::to_string).collect();
                        ambiguous.insert(
                            i,
                            (
                                format!(
                                    "several local records match on {}: {}; nothing was linked or created",
                                    group.join(", "),
                                    ids.join(", ")
                                ),
                                several.to_vec(),
                            ),
                        );
                    }
                }
                break;
            }
        }
        Ok((matched, ambiguous, deleted_here))
    }
}

fn fill(row: &mut NewChange, ctx: &Ctx) {
    row.modified_at = ctx.modified_at;
    row.actor = ctx.actor.clone();
    row.run_id = ctx.run_id;
}

/// Checks and maps one request without touching the store.
#[allow(clippy::result_large_err)]
fn prepare(plan: &Plan, job: Job) -> Result<Prepared, (Job, ApplyError)> {
    match check(plan, &job) {
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

type Checked = (String, Value, Map<String, Value>, Vec<PendingRef>);

fn check(plan: &Plan, job: &Job) -> Result<Checked, ApplyError> {
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
) -> Result<Checked, ApplyError> {
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

/// What one request does, given the record and link as stored.
fn decide(
    sync: &Sync,
    model: &Model,
    p: &Prepared,
    incoming: &Map<String, Value>,
    link: Option<Link>,
    current: Option<Record>,
    sent: &[&str],
) -> Result<Intent, ApplyError> {
    if p.job.must_exist && current.is_none() {
        return Err(ApplyError::UnknownExternalId(
            p.external_id.clone(),
            sync.code.to_string(),
        ));
    }
    let Some(record) = current else {
        // Deleted here, its delete not yet sent: a pull repeating what was last synced (an
        // overlap read) does not bring the record back. (An explicit create does.)
        if let Some(l) = &link
            && p.job.ctx.run_id.is_some()
            && l.external_id.is_some()
        {
            if incoming
                .iter()
                .all(|(k, v)| l.base.get(k).unwrap_or(&Value::Null) == v)
            {
                return Ok(Intent::NoOp(l.local_id));
            }
            // Nor does an edit made there meanwhile: the delete wins, and goes out with the
            // sync's next push (nothing deleted comes back).
            if sync.propagate_deletes {
                return Ok(Intent::Skip(
                    Some(l.local_id),
                    format!(
                        "the record was deleted here; its delete goes out to sync `{}` at its next push, so this change made there meanwhile is not applied",
                        sync.code
                    ),
                ));
            }
        }
        let values = model.coerce_values(incoming, true).map_err(invalid)?;
        if !sync.domain.matches(&values) {
            return Ok(Intent::Skip(None, outside(sync)));
        }
        return Ok(Intent::Create {
            values,
            stale: link.map(|l| l.local_id),
        });
    };
    let link = link.expect("a current record has a link");
    // An echo of what was last synced is not a change.
    if incoming
        .iter()
        .all(|(k, v)| link.base.get(k).unwrap_or(&Value::Null) == v)
    {
        return Ok(Intent::NoOp(record.id));
    }
    let keys: Vec<&str> = incoming.keys().map(String::as_str).collect();
    let m = merge(
        &keys,
        &link.base,
        &record.values,
        incoming,
        sync.priority,
        Modified {
            local: Some(record.updated_at),
            external: p.job.ctx.modified_at.or(Some(chrono::Utc::now())),
        },
    );
    let mut values = record.values.clone();
    let mut changed = Map::new();
    for (k, v) in &m.merged {
        if values.get(k).unwrap_or(&Value::Null) != v {
            changed.insert(k.clone(), v.clone());
        }
        values.insert(k.clone(), v.clone());
    }
    let mut base = link.base.clone();
    for (k, v) in incoming {
        base.insert(k.clone(), v.clone());
    }
    // A local change that has not gone out yet keeps the link behind, so a cron push still
    // finds it (in real time its outbox entry is already queued), unless the external side
    // now holds the merged result in every field the binding sends (an external win).
    let lacks = sent
        .iter()
        .any(|f| values.get(*f).unwrap_or(&Value::Null) != base.get(*f).unwrap_or(&Value::Null));
    let pending_local = link.synced_version < record.version && lacks;
    if changed.is_empty() && m.conflicts.is_empty() {
        let id = record.id;
        return Ok(Intent::Rebase(
            id,
            Link {
                base,
                synced_version: if pending_local {
                    link.synced_version
                } else {
                    record.version
                },
                ..link
            },
        ));
    }
    let values = model.coerce_values(&values, false).map_err(invalid)?;
    // Leaving the domain is applied and ends this sync's carriage of the record; a record the
    // sync no longer carries that stays outside is not this sync's to change.
    let leaves = !sync.domain.matches(&values);
    if leaves && !link.carried_by(sync.code.as_str()) {
        return Ok(Intent::Skip(Some(record.id), outside(sync)));
    }
    let resend = m
        .merged
        .iter()
        .any(|(k, v)| incoming.get(k).unwrap_or(&Value::Null) != v);
    let keep_behind = resend || pending_local;
    Ok(Intent::Update {
        record,
        link,
        values,
        changed,
        base,
        conflicts: m.conflicts,
        resend,
        keep_behind,
        leaves,
    })
}

/// Local fields that some sync of `sync`'s binding sends to the external side.
fn sent_fields<'a>(plan: &'a Plan, sync: &'a Sync) -> Vec<&'a str> {
    let mut out: Vec<&str> = plan
        .syncs_of_model(&sync.model)
        .filter(|s| s.same_binding(sync) && s.direction.to_external())
        .flat_map(|s| s.fields.iter())
        .filter(|p| p.direction.to_external())
        .flat_map(|p| p.sends_from())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Why a change of a paused record was not applied.
pub(super) fn paused_reason(sync: &Sync) -> String {
    format!(
        "the record is paused for sync `{}`, so nothing was written; `resume` it to sync it again",
        sync.code
    )
}

fn outside(sync: &Sync) -> String {
    format!(
        "the record does not match the domain of sync `{}`, so nothing was written",
        sync.code
    )
}

/// What an upsert would do, as a plan shows it (nothing written).
#[derive(Debug, Clone)]
pub(super) enum Previewed {
    /// Refused (a wrong value, a missing reference): the reason, and whether it is a missing
    /// reference (which a run tries again at its end).
    Failed(String, bool),
    /// Nothing to change.
    Unchanged,
    /// Several local records match on `match_on`.
    Ambiguous(Vec<i64>),
    /// Not written, with the reason (outside the domain, paused).
    Skipped(Option<i64>, String),
    Create(Map<String, Value>),
    Update {
        local_id: i64,
        /// Field by field: the local value now and the value after.
        changes: Vec<(String, Value, Value)>,
        conflicts: Vec<Conflict>,
        /// The update takes the record out of the sync's domain.
        leaves: bool,
    },
}

/// One previewed upsert: its external id, the local record `match_on` would link it to (and
/// on which fields), and what it would do.
#[derive(Debug, Clone)]
pub(super) struct PreviewItem {
    pub external_id: String,
    pub matched: Option<(i64, Vec<String>)>,
    pub outcome: Previewed,
}

impl Engine {
    /// Decides these pulled upserts of sync `code` as the writer would, under `plan` (the
    /// current configuration or an edited one), and writes nothing: the transaction only
    /// reads and is rolled back. `taken` local records are not matched again.
    pub(super) async fn preview_upserts(
        &self,
        plan: &Plan,
        code: &str,
        items: Vec<(String, Value, Ctx)>,
        taken: &HashSet<(String, i64)>,
    ) -> Result<Vec<PreviewItem>, StoreError> {
        let mut out: Vec<Option<PreviewItem>> = (0..items.len()).map(|_| None).collect();
        let mut round = Vec::new();
        let mut slots = Vec::new();
        for (n, (external_id, payload, ctx)) in items.into_iter().enumerate() {
            let (reply, _) = oneshot::channel();
            let job = Job {
                code: code.to_string(),
                external_id: Some(external_id.clone()),
                payload,
                must_exist: false,
                ctx,
                reply,
                span: tracing::Span::current(),
            };
            match prepare(plan, job) {
                Ok(p) => {
                    round.push(p);
                    slots.push(n);
                }
                Err((_, e)) => {
                    out[n] = Some(PreviewItem {
                        external_id,
                        matched: None,
                        outcome: Previewed::Failed(e.to_string(), false),
                    })
                }
            }
        }
        if !round.is_empty() {
            let mut tx = self.store.begin().await?;
            let decided = self.decide_round(&mut tx, plan, &round, taken).await?;
            // Nothing was written: the transaction ends here.
            tx.rollback().await?;
            let Round {
                results,
                records,
                mut matched,
                mut ambiguous,
                intents,
            } = decided;
            for (i, ((p, result), intent)) in round.iter().zip(results).zip(intents).enumerate() {
                let outcome = match (result, intent) {
                    (Some(Err(e)), _) => {
                        let missing = matches!(e, ApplyError::MissingReference(_));
                        Previewed::Failed(e.to_string(), missing)
                    }
                    (Some(Ok(_)), _) | (None, None) => Previewed::Unchanged,
                    (None, Some(intent)) => match intent {
                        Intent::NoOp(_) | Intent::Rebase(..) => Previewed::Unchanged,
                        Intent::Ambiguous(_) => Previewed::Ambiguous(
                            ambiguous.remove(&i).map(|(_, c)| c).unwrap_or_default(),
                        ),
                        Intent::Skip(id, why) => Previewed::Skipped(id, why),
                        Intent::Paused(id, why) => Previewed::Skipped(Some(id), why),
                        Intent::Create { values, .. } => Previewed::Create(values),
                        Intent::Update {
                            record,
                            changed,
                            conflicts,
                            leaves,
                            ..
                        } => {
                            let before = records
                                .get(&(record.model.clone(), record.id))
                                .map(|r| &r.values)
                                .unwrap_or(&record.values);
                            Previewed::Update {
                                local_id: record.id,
                                changes: changed
                                    .into_iter()
                                    .map(|(k, v)| {
                                        let was = before.get(&k).cloned().unwrap_or(Value::Null);
                                        (k, was, v)
                                    })
                                    .collect(),
                                conflicts,
                                leaves,
                            }
                        }
                    },
                };
                out[slots[i]] = Some(PreviewItem {
                    external_id: p.external_id.clone(),
                    matched: matched.remove(&i),
                    outcome,
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}
