//! The apply path: inbound external changes and local edits become record writes, link
//! updates, change-control rows and outbox entries, all in one transaction.

use super::fanout::Route;
use super::rows::{as_pulled, log_row, paused_reason};
use super::{Ctx, Engine};
use crate::domain::Plan;
use crate::domain::mapping::{PendingRef, Reference};
use crate::domain::plan::{Model, Sync};
use crate::store::{LogAction, LogDirection, NewOutbox, Record, StoreError, Tx};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

/// An inbound change from an external system.
#[derive(Debug, Clone)]
pub enum InboundOp {
    /// Create or update. `external_id` comes from the URL on a PUT; on a create it is read
    /// from the payload's `external_ref` field. `must_exist` makes an unknown id a 404.
    Upsert {
        external_id: Option<String>,
        payload: Value,
        must_exist: bool,
    },
    Delete {
        external_id: String,
        /// Only end the link, whatever `propagate_deletes` says.
        unlink_only: bool,
    },
}

/// A reference lookup's scope: (related model or binding, field).
type RefScope = (String, String);

/// Reference lookups of one transaction: per (related model or binding, field), key to the
/// ids found. The pairs are few, so they are searched in order and a hit allocates nothing.
#[derive(Default)]
pub(super) struct RefCache(Vec<(RefScope, std::collections::HashMap<String, Vec<i64>>)>);

impl RefCache {
    pub(super) fn get(&self, scope: &str, field: &str, key: &str) -> Option<&[i64]> {
        self.0
            .iter()
            .find(|((s, f), _)| s == scope && f == field)
            .and_then(|(_, m)| m.get(key))
            .map(Vec::as_slice)
    }

    pub(super) fn put(&mut self, scope: &str, field: &str, key: &str, ids: Vec<i64>) {
        let at = match self
            .0
            .iter()
            .position(|((s, f), _)| s == scope && f == field)
        {
            Some(at) => at,
            None => {
                self.0
                    .push(((scope.to_string(), field.to_string()), Default::default()));
                self.0.len() - 1
            }
        };
        self.0[at].1.insert(key.to_string(), ids);
    }
}

/// A local edit (records API).
#[derive(Debug, Clone)]
pub enum LocalOp {
    Create(Map<String, Value>),
    Update(i64, Map<String, Value>),
    Delete(i64),
}

/// What an applied change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created(i64),
    /// Updated; with the number of fields that were in conflict.
    Updated(i64, usize),
    Deleted(i64),
    Unlinked(i64),
    /// Nothing changed (for instance an echo of what recsync last sent).
    NoOp(i64),
    /// Not applied: the record is outside the sync's domain (a `skipped` row says so).
    Skipped(Option<i64>),
    /// A pulled delete the delete guard collected: applied or held at the end of the run.
    Collected,
    /// Not applied: the record's `match_on` fields matched several local records (a `skipped`
    /// row names them).
    Ambiguous,
    /// A real-time delete the delete guard held: it waits in this hold for a person.
    Held(i64),
}

impl Applied {
    pub fn local_id(&self) -> Option<i64> {
        match self {
            Applied::Created(i)
            | Applied::Updated(i, _)
            | Applied::Deleted(i)
            | Applied::Unlinked(i)
            | Applied::NoOp(i) => Some(*i),
            Applied::Skipped(i) => *i,
            Applied::Collected | Applied::Ambiguous | Applied::Held(_) => None,
        }
    }
}

/// Why a change was refused. Every message is one sentence naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("unknown sync `{0}`")]
    UnknownSync(String),
    #[error("sync `{0}` does not accept inbound changes: its direction is to_external")]
    NotInbound(String),
    #[error("sync `{0}` is not active")]
    Inactive(String),
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    #[error("no record with external id `{0}` is linked in sync `{1}`")]
    UnknownExternalId(String, String),
    #[error("no `{0}` record with id {1}")]
    UnknownRecord(String, i64),
    #[error("{0}")]
    Invalid(String),
    /// A relational value names a record that is not there (yet): a pull retries it once the
    /// rest of the run has arrived.
    #[error("{0}")]
    MissingReference(String),
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
}

pub(super) fn invalid(errors: impl IntoIterator<Item = (String, String)>) -> ApplyError {
    ApplyError::Invalid(
        errors
            .into_iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// The admission check of inbound changes: the sync exists, takes changes in, is active, and
/// its model is configured.
fn admit<'p>(plan: &'p Plan, code: &str) -> Result<(&'p Sync, &'p Model), ApplyError> {
    let sync = plan
        .sync(code)
        .ok_or_else(|| ApplyError::UnknownSync(code.to_string()))?;
    if !sync.direction.to_local() {
        return Err(ApplyError::NotInbound(code.to_string()));
    }
    if !sync.active {
        return Err(ApplyError::Inactive(code.to_string()));
    }
    let model = plan
        .models
        .get(&sync.model)
        .ok_or_else(|| ApplyError::UnknownModel(sync.model.clone()))?;
    Ok((sync, model))
}

impl Engine {
    /// One external record applied through sync `sync` as a pull applies it (read by id, kept
    /// for a paused record, found before a create).
    pub(super) async fn apply_pulled(
        &self,
        sync: &Sync,
        external_id: &str,
        values: Map<String, Value>,
        ctx: Ctx,
        must_exist: bool,
    ) -> Result<Applied, ApplyError> {
        let payload = as_pulled(sync, external_id, values);
        self.apply_upserts(
            sync.code.as_str(),
            vec![(external_id.to_string(), payload, ctx)],
            must_exist,
        )
        .await
        .pop()
        .expect("one result")
    }

    /// Upserts of one sync as one bundle (a pulled page): `(external id, payload, context)`.
    /// The results come back in order. `must_exist` refuses an id no longer linked instead of
    /// creating a record for it.
    pub(crate) async fn apply_upserts(
        &self,
        code: &str,
        items: Vec<(String, Value, Ctx)>,
        must_exist: bool,
    ) -> Vec<Result<Applied, ApplyError>> {
        replies(self.send_upserts(code, items, must_exist).await).await
    }

    /// [`Engine::apply_upserts`] without waiting: each item's answer comes on its receiver.
    pub(crate) async fn send_upserts(
        &self,
        code: &str,
        items: Vec<(String, Value, Ctx)>,
        must_exist: bool,
    ) -> Vec<Reply> {
        let plan = self.plan();
        if admit(&plan, code).is_err() {
            return items
                .iter()
                .map(|_| {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = tx.send(Err(admit(&plan, code).expect_err("refused")));
                    rx
                })
                .collect();
        }
        let jobs = items
            .into_iter()
            .map(|(external_id, payload, ctx)| Job {
                code: code.to_string(),
                external_id: Some(external_id),
                payload,
                must_exist,
                ctx,
                reply: tokio::sync::oneshot::channel().0,
                span: tracing::Span::none(),
                checked: None,
            })
            .collect();
        self.send_many(jobs).await
    }

    /// Applies one inbound change from sync `code` through the writer. On success the change
    /// is committed; on error nothing was written (the caller logs the failure).
    pub async fn apply_inbound(
        &self,
        code: &str,
        op: InboundOp,
        ctx: &Ctx,
    ) -> Result<Applied, ApplyError> {
        admit(&self.plan(), code)?;
        match op {
            InboundOp::Upsert {
                external_id,
                payload,
                must_exist,
            } => {
                let (reply, _) = tokio::sync::oneshot::channel();
                self.submit(Job {
                    code: code.to_string(),
                    external_id,
                    payload,
                    must_exist,
                    ctx: ctx.clone(),
                    reply,
                    span: tracing::Span::none(),
                    checked: None,
                })
                .await
            }
            InboundOp::Delete {
                external_id,
                unlink_only,
            } => {
                self.submit_single(|reply| Work::Delete {
                    code: code.to_string(),
                    external_id,
                    unlink_only,
                    ctx: ctx.clone(),
                    reply,
                    span: tracing::Span::current(),
                })
                .await
            }
        }
    }

    /// An inbound or pulled delete, in the writer: unlink, tombstone the record when the sync
    /// propagates deletes (and fan the delete out), one change-control row, one commit.
    pub(super) async fn delete_inbound(
        &self,
        code: &str,
        external_id: &str,
        unlink_only: bool,
        ctx: &Ctx,
    ) -> Result<Applied, ApplyError> {
        let plan = self.plan();
        let (sync, model) = admit(&plan, code)?;
        let propagate = sync.propagate_deletes && !unlink_only;
        let mut tx = self.store.begin().await?;
        let binding = sync.binding();
        let link = tx
            .link_by_external(&binding, external_id)
            .await?
            .ok_or_else(|| {
                ApplyError::UnknownExternalId(external_id.to_string(), sync.code.to_string())
            })?;
        let record = tx.get_record(&model.name, link.local_id).await?;
        let values = record
            .as_ref()
            .map(|r| r.values.clone())
            .unwrap_or_default();
        if !tx
            .paused_among(sync.code.as_str(), &[link.local_id])
            .await?
            .is_empty()
        {
            let mut row = log_row(
                sync,
                model,
                LogDirection::ExternalToLocal,
                if propagate {
                    LogAction::Delete
                } else {
                    LogAction::Unlink
                },
                Some(link.local_id),
                &values,
            );
            row.external_id = Some(external_id.to_string());
            row.status = crate::store::LogStatus::Skipped;
            row.error_message = paused_reason(sync);
            row.actor = ctx.actor.clone();
            row.run_id = ctx.run_id;
            // Not applied, and not lost: the resume applies it.
            tx.keep_paused_change(sync.code.as_str(), link.local_id, external_id, None)
                .await?;
            self.log(&mut tx, row).await?;
            tx.commit().await?;
            return Ok(Applied::Skipped(Some(link.local_id)));
        }
        // Real-time traffic (not a run, which has its own guard, nor an approved hold) goes
        // through the guard's hour.
        if propagate
            && ctx.run_id.is_none()
            && ctx.hold.is_none()
            && let Some(hold) = self
                .guard_realtime(
                    &mut tx,
                    sync,
                    LogDirection::ExternalToLocal,
                    crate::store::HoldItem {
                        external_id: external_id.to_string(),
                        local_id: Some(link.local_id),
                        name: model.title(link.local_id, &values),
                    },
                    ctx,
                )
                .await?
        {
            tx.commit().await?;
            return Ok(Applied::Held(hold));
        }
        tx.delete_link(&binding, link.local_id).await?;
        // Changes still waiting (or dead-lettered) for that record there have nothing left to
        // write to: they are given up, so that none blocks the record's later changes and an
        // operator is not asked to retry them.
        let reason = format!(
            "not needed: the record was deleted in {} (external id {external_id})",
            sync.code
        );
        for other in plan.syncs.values().filter(|s| s.same_binding(sync)) {
            tx.supersede_undelivered(
                other.code.as_str(),
                link.local_id,
                crate::store::Superseded::All,
                &reason,
            )
            .await?;
        }
        let applied = if propagate {
            if let Some(rec) = tx.delete_record(&model.name, link.local_id).await? {
                self.fan_out(&mut tx, &plan, Some(sync), &rec, "delete")
                    .await?;
            }
            Applied::Deleted(link.local_id)
        } else {
            Applied::Unlinked(link.local_id)
        };
        let action = if propagate {
            LogAction::Delete
        } else {
            LogAction::Unlink
        };
        let mut row = log_row(
            sync,
            model,
            LogDirection::ExternalToLocal,
            action,
            Some(link.local_id),
            &values,
        );
        row.external_id = Some(external_id.to_string());
        row.origin_values = json!({ sync.external_ref.clone(): external_id });
        row.destination_values = if propagate {
            json!({"deleted": true})
        } else {
            json!({"unlinked": true})
        };
        row.modified_at = ctx.modified_at;
        row.actor = ctx.actor.clone();
        row.run_id = ctx.run_id;
        self.log(&mut tx, row).await?;
        crate::crash::point("single.before_commit");
        tx.commit().await?;
        tracing::debug!(sync = %code, external_id, applied = ?applied, "Committed");
        self.wake();
        Ok(applied)
    }

    /// Resolves relational references to local ids, or fails naming the missing record.
    /// `cache` remembers lookups made in the same transaction before anything is written in
    /// it (a page of partners names the same few countries again and again).
    pub(super) async fn resolve_refs(
        &self,
        tx: &mut Tx,
        plan: &Plan,
        refs: &[PendingRef],
        out: &mut Map<String, Value>,
        cache: &mut RefCache,
    ) -> Result<(), ApplyError> {
        for r in refs {
            let mut ids = Vec::new();
            for key in &r.keys {
                let id = match &r.reference {
                    Reference::Sync(code) => {
                        let binding = plan.binding_of(code.as_str());
                        match cache.get(&binding, "", key) {
                            Some(found) => found.first().copied(),
                            None => {
                                let found: Vec<i64> = tx
                                    .link_by_external(&binding, key)
                                    .await?
                                    .map(|l| l.local_id)
                                    .into_iter()
                                    .collect();
                                let first = found.first().copied();
                                cache.put(&binding, "", key, found);
                                first
                            }
                        }
                    }
                    Reference::Field(f) => {
                        let found = match cache.get(&r.related_model, f, key) {
                            Some(found) => found.to_vec(),
                            None => {
                                let found = tx.find_by_field(&r.related_model, f, key).await?;
                                cache.put(&r.related_model, f, key, found.clone());
                                found
                            }
                        };
                        if found.len() > 1 {
                            return Err(ApplyError::Invalid(format!(
                                "{}: several `{}` records have {f} = `{key}`",
                                r.field, r.related_model
                            )));
                        }
                        found.first().copied()
                    }
                    Reference::None => key.parse().ok(),
                };
                match id {
                    Some(id) => ids.push(id),
                    None => {
                        let how = match &r.reference {
                            Reference::Sync(code) => {
                                format!("linked to external id `{key}` in sync `{code}`")
                            }
                            Reference::Field(f) => format!("with {f} = `{key}`"),
                            Reference::None => format!("with id `{key}`"),
                        };
                        return Err(ApplyError::MissingReference(format!(
                            "{}: no `{}` record {how}",
                            r.field, r.related_model
                        )));
                    }
                }
            }
            let v = if r.many {
                json!(ids)
            } else {
                ids.first().map(|i| json!(i)).unwrap_or(Value::Null)
            };
            out.insert(r.field.clone(), v);
        }
        Ok(())
    }

    /// Queues the record's change for every realtime sync of its model that sends, except
    /// the syncs of `origin`'s binding (echo suppression). A record that left a sync's domain
    /// stops being carried by it (logged `unlink`; the binding keeps the identity), and one
    /// that came back is carried again.
    pub(crate) async fn fan_out(
        &self,
        tx: &mut Tx,
        plan: &Plan,
        origin: Option<&Sync>,
        rec: &Record,
        action: &str,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        let model = &plan.models[&rec.model];
        for t in super::fanout::receivers(plan, &rec.model, origin, false) {
            let mut link = tx.link_by_local(&t.binding(), rec.id).await?;
            // A delete of a record whose create (or update) has not been recorded as delivered
            // yet goes out too: that delivery may be in flight, or may have reached the service
            // just before a crash. The delete entry waits behind it, and is skipped at delivery
            // if the record never got an external id.
            let in_flight = action == "delete"
                && link.as_ref().is_none_or(|l| l.external_id.is_none())
                && tx.has_undelivered(t.code.as_str(), rec.id).await?;
            match super::fanout::route(t, model, rec, link.as_mut(), action, "engine") {
                Route::Nothing if in_flight => {}
                Route::Nothing => continue,
                Route::Exit(row) => {
                    tx.upsert_link(link.as_ref().expect("an exit has a link"))
                        .await?;
                    self.log(tx, *row).await?;
                    continue;
                }
                Route::Send { relinked } => {
                    if relinked {
                        tx.upsert_link(link.as_ref().expect("a return has a link"))
                            .await?;
                    }
                }
            }
            // A local delete of a linked record goes through the guard's hour.
            if action == "delete"
                && t.propagate_deletes
                && let Some(external_id) = link.as_ref().and_then(|l| l.external_id.clone())
                && self
                    .guard_realtime(
                        tx,
                        t,
                        LogDirection::LocalToExternal,
                        crate::store::HoldItem {
                            external_id,
                            local_id: Some(rec.id),
                            name: model.title(rec.id, &rec.values),
                        },
                        &super::Ctx::actor("engine"),
                    )
                    .await?
                    .is_some()
            {
                continue;
            }
            // Updates still waiting (or dead-lettered) before the delete would write a record
            // about to go: the delete goes out alone.
            if action == "delete" && t.propagate_deletes {
                tx.supersede_undelivered(
                    t.code.as_str(),
                    rec.id,
                    crate::store::Superseded::Updates,
                    "not needed: the record was deleted before this update was delivered",
                )
                .await?;
            }
            tx.enqueue(&NewOutbox {
                sync: t.code.to_string(),
                local_id: rec.id,
                action: action.to_string(),
                payload: super::fanout::traced(json!({"version": rec.version})),
            })
            .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Applies a local edit (records API) through the writer and fans it out to every sync
    /// of the model.
    pub async fn apply_local(&self, model_name: &str, op: LocalOp) -> Result<Record, ApplyError> {
        self.submit_single(|reply| Work::Local {
            model: model_name.to_string(),
            op,
            reply,
            span: tracing::Span::current(),
        })
        .await
    }

    /// A local edit, in the writer.
    pub(super) async fn local_edit(
        &self,
        model_name: &str,
        op: LocalOp,
    ) -> Result<Record, ApplyError> {
        let plan = self.plan();
        let model = plan
            .models
            .get(model_name)
            .ok_or_else(|| ApplyError::UnknownModel(model_name.to_string()))?;
        let mut tx = self.store.begin().await?;
        let (rec, action) = match op {
            LocalOp::Create(values) => {
                let values = model.coerce_values(&values, true).map_err(invalid)?;
                (tx.insert_record(model_name, &values).await?, "create")
            }
            LocalOp::Update(id, patch) => {
                let patch = model.coerce_values(&patch, false).map_err(invalid)?;
                let current = tx
                    .get_record(model_name, id)
                    .await?
                    .filter(|r| !r.deleted)
                    .ok_or_else(|| ApplyError::UnknownRecord(model_name.to_string(), id))?;
                let mut values = current.values.clone();
                values.extend(patch);
                if values == current.values {
                    return Ok(current);
                }
                let rec = tx
                    .update_record(model_name, id, &values)
                    .await?
                    .ok_or_else(|| ApplyError::UnknownRecord(model_name.to_string(), id))?;
                (rec, "update")
            }
            LocalOp::Delete(id) => {
                let rec = tx
                    .delete_record(model_name, id)
                    .await?
                    .ok_or_else(|| ApplyError::UnknownRecord(model_name.to_string(), id))?;
                (rec, "delete")
            }
        };
        let n = self.fan_out(&mut tx, &plan, None, &rec, action).await?;
        crate::crash::point("single.before_commit");
        tx.commit().await?;
        tracing::debug!(model = model_name, local_id = rec.id, action, "Committed");
        if n > 0 {
            self.wake();
        }
        Ok(rec)
    }
}

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
    /// Checked and mapped before it reached the writer (by the task that submitted it, so
    /// that the writer's time goes to the store), under the plan named here.
    pub checked: Option<Checked>,
}

/// The answer to one job handed to the writer.
pub(crate) type Reply = oneshot::Receiver<Result<Applied, ApplyError>>;

/// The writer's answers, in order; a writer gone before answering is a closed store.
pub(crate) async fn replies(waiting: Vec<Reply>) -> Vec<Result<Applied, ApplyError>> {
    let mut out = Vec::with_capacity(waiting.len());
    for rx in waiting {
        out.push(
            rx.await
                .unwrap_or(Err(ApplyError::Store(StoreError::Database(
                    sqlx::Error::PoolClosed,
                )))),
        );
    }
    out
}

/// A request checked and mapped: its external id, its typed values, the mapped values and
/// the references still to resolve.
pub(super) type Mapped = (String, Value, Map<String, Value>, Vec<PendingRef>);

/// A request checked before it reached the writer, and the plan it was checked under.
pub(crate) struct Checked {
    pub(super) plan: std::sync::Arc<Plan>,
    pub(super) result: Result<Mapped, ApplyError>,
}
