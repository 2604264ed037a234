//! One record at a time, for operators: pause and resume a record's syncing, drop or set its
//! link, and re-read it from the external side. Each operation writes a change-control row.

use super::{Ctx, Engine, Trigger};
use crate::store::{Link, LogAction, LogDirection, LogStatus, NewOutbox, StoreError};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// An operation on one record of one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOp {
    /// Neither sent by the sync nor overwritten by its pulls, until resumed.
    Pause,
    Resume,
    /// The link ends; both records stay.
    Unlink,
    /// The record is linked to this external id (replacing its link, if any).
    Relink(String),
    /// The record is read again from the external side, whose values then win.
    Resync,
}

impl RecordOp {
    pub const NAMES: [&'static str; 5] = ["pause", "resume", "unlink", "relink", "resync"];

    pub fn name(&self) -> &'static str {
        match self {
            RecordOp::Pause => "pause",
            RecordOp::Resume => "resume",
            RecordOp::Unlink => "unlink",
            RecordOp::Relink(_) => "relink",
            RecordOp::Resync => "resync",
        }
    }
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpDone {
    pub sync: String,
    pub local_id: i64,
    pub op: &'static str,
    pub external_id: Option<String>,
    pub message: String,
    /// The run that re-reads the record (`resync`).
    pub run_id: Option<i64>,
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordOpError {
    #[error("unknown sync `{0}`")]
    UnknownSync(String),
    #[error("no live record {1} of model `{0}`")]
    UnknownRecord(String, i64),
    #[error("record {0} is not linked through sync `{1}`")]
    NotLinked(i64, String),
    #[error("external id `{external_id}` is linked to record {local_id} already; unlink it first")]
    Taken { external_id: String, local_id: i64 },
    #[error("the external id must not be empty")]
    EmptyId,
    #[error(
        "sync `{0}`'s web service ({1}) cannot re-read one record; `recsync run {0} --full` reconciles every record"
    )]
    CannotReread(String, &'static str),
    #[error("{0}")]
    Run(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

impl Engine {
    /// Performs `op` on local record `local_id` of sync `code`, as `by`.
    pub async fn record_op(
        self: &Arc<Self>,
        code: &str,
        local_id: i64,
        op: RecordOp,
        by: &str,
    ) -> Result<OpDone, RecordOpError> {
        let plan = self.plan();
        let sync = plan
            .sync(code)
            .ok_or_else(|| RecordOpError::UnknownSync(code.to_string()))?;
        let model = &plan.models[&sync.model];
        if matches!(op, RecordOp::Resync | RecordOp::Relink(_))
            && let Some(hold) = self.store.detached_hold(code, local_id).await?
        {
            return self.bring_back(sync, local_id, hold, &op, by).await;
        }
        // A record deleted while paused can still be resumed: its delete then goes out.
        if op == RecordOp::Resume
            && self
                .store
                .get_record(&model.name, local_id)
                .await?
                .is_some_and(|r| r.deleted)
        {
            return self.resume_deleted(sync, local_id, by).await;
        }
        let record = self
            .store
            .get_record(&model.name, local_id)
            .await?
            .filter(|r| !r.deleted)
            .ok_or_else(|| RecordOpError::UnknownRecord(model.name.clone(), local_id))?;
        let binding = sync.binding();
        let link = self.store.link_by_local(&binding, local_id).await?;
        let linked_id = link.as_ref().and_then(|l| l.external_id.clone());
        let not_linked = || RecordOpError::NotLinked(local_id, code.to_string());
        // The values last synced, as the binding keeps them: the record's own values for the
        // sync's fields (the external side's differences then win).
        let as_synced: Map<String, Value> = sync
            .fields
            .iter()
            .flat_map(|p| {
                p.sends_from()
                    .chain((!p.local.is_empty()).then_some(p.local.as_str()))
            })
            .filter_map(|f| record.values.get(f).map(|v| (f.to_string(), v.clone())))
            .collect();
        let mut run_id = None;
        let (action, external_id, message) = match &op {
            RecordOp::Pause => {
                let fresh = self.store.pause_record(code, local_id, by).await?;
                let message = if fresh {
                    format!("paused for sync `{code}`: nothing is sent or applied until resumed")
                } else {
                    format!("was paused for sync `{code}` already")
                };
                (LogAction::Update, linked_id, message)
            }
            RecordOp::Resume => {
                let kept = self.store.resume_record(code, local_id).await?;
                let was = kept.is_some();
                // What arrived from the external side meanwhile is applied now, merged by
                // `priority` as any change is.
                let caught_up = match kept {
                    Some(k) => self.apply_kept(sync, k, by).await?,
                    None => String::new(),
                };
                // The record as it is after that.
                let record = match self.store.get_record(&model.name, local_id).await? {
                    Some(r) => r,
                    None => record.clone(),
                };
                // What changed here while paused goes out now (a cron sync's next push finds it
                // behind its link anyway).
                let behind = link
                    .as_ref()
                    .is_none_or(|l| l.synced_version < record.version);
                if was
                    && behind
                    && sync.direction.to_external()
                    && sync.mode == crate::domain::plan::Mode::Realtime
                {
                    let mut tx = self.store.begin().await?;
                    tx.enqueue_many(&[NewOutbox {
                        sync: code.to_string(),
                        local_id,
                        action: if linked_id.is_some() {
                            "update"
                        } else {
                            "create"
                        }
                        .into(),
                        payload: super::fanout::payload(record.version, &Ctx::actor(by)),
                    }])
                    .await?;
                    tx.commit().await?;
                    self.wake();
                }
                let message = if was {
                    format!("resumed for sync `{code}`{caught_up}")
                } else {
                    format!("was not paused for sync `{code}`")
                };
                (LogAction::Update, linked_id, message)
            }
            RecordOp::Unlink => {
                let ext = linked_id.ok_or_else(not_linked)?;
                let mut tx = self.store.begin().await?;
                tx.delete_link(&binding, local_id).await?;
                tx.commit().await?;
                (
                    LogAction::Unlink,
                    Some(ext.clone()),
                    format!("unlinked from external `{ext}` by an operator; both records stay"),
                )
            }
            RecordOp::Relink(ext) => {
                let ext = ext.trim().to_string();
                if ext.is_empty() {
                    return Err(RecordOpError::EmptyId);
                }
                if let Some(other) = self.store.link_by_external(&binding, &ext).await?
                    && other.local_id != local_id
                {
                    return Err(RecordOpError::Taken {
                        external_id: ext,
                        local_id: other.local_id,
                    });
                }
                let mut tx = self.store.begin().await?;
                tx.upsert_links(&[Link {
                    binding: binding.clone(),
                    local_id,
                    external_id: Some(ext.clone()),
                    base: as_synced.clone(),
                    synced_version: record.version,
                    external_hash: None,
                    left: Vec::new(),
                }])
                .await?;
                tx.commit().await?;
                let before = linked_id
                    .map(|e| format!(" (was `{e}`)"))
                    .unwrap_or_default();
                (
                    LogAction::Link,
                    Some(ext.clone()),
                    format!("linked to external `{ext}` by an operator{before}"),
                )
            }
            RecordOp::Resync => {
                let (Some(mut link), Some(ext)) = (link.clone(), linked_id) else {
                    return Err(not_linked());
                };
                let connector = self.connector(&sync.web_service).ok_or_else(|| {
                    RecordOpError::Run("the web service is not configured".into())
                })?;
                let by_id = connector.reread(sync, &plan, std::slice::from_ref(&ext));
                // Without a read by id, the service's listing is searched for the record.
                let listed = if by_id {
                    None
                } else if connector.can_list(sync) && sync.direction.to_local() {
                    Some(self.find_listed(&connector, sync, &plan, &ext).await?)
                } else {
                    return Err(RecordOpError::CannotReread(
                        code.to_string(),
                        connector.kind(),
                    ));
                };
                link.base = as_synced.clone();
                let mut tx = self.store.begin().await?;
                tx.upsert_links(&[link]).await?;
                tx.commit().await?;
                if let Some(values) = listed {
                    let ctx = super::Ctx::actor(by);
                    let applied = self.apply_pulled(sync, &ext, values, ctx, false).await;
                    let message = match applied {
                        Ok(_) => format!(
                            "re-read from external `{ext}` in the service's listing; its values win where they differ"
                        ),
                        Err(e) => return Err(RecordOpError::Run(e.to_string())),
                    };
                    let mut row = super::rows::log_row(
                        sync,
                        model,
                        LogDirection::ExternalToLocal,
                        LogAction::Update,
                        Some(local_id),
                        &record.values,
                    );
                    row.name = format!("Operator: resync {}", model.name);
                    row.external_id = Some(ext.clone());
                    row.error_message = message.clone();
                    row.actor = by.to_string();
                    self.log_alone(row).await?;
                    tracing::info!(sync = code, local_id, op = "resync", by, "{message}");
                    return Ok(OpDone {
                        sync: code.to_string(),
                        local_id,
                        op: "resync",
                        external_id: Some(ext),
                        message,
                        run_id: None,
                    });
                }
                let started = self
                    .start_run(code, Trigger::Manual, false)
                    .await
                    .map_err(|e| RecordOpError::Run(e.to_string()))?;
                run_id = Some(started.run_id);
                (
                    LogAction::Update,
                    Some(ext.clone()),
                    format!(
                        "re-read from external `{ext}` in run {}; its values win where they differ",
                        started.run_id
                    ),
                )
            }
        };
        let row = super::rows::log_row(
            sync,
            model,
            LogDirection::LocalToExternal,
            action,
            Some(local_id),
            &record.values,
        );
        let done = OpDone {
            sync: code.to_string(),
            local_id,
            op: op.name(),
            external_id,
            message,
            run_id,
        };
        self.finish_op(row, done, &model.name, by).await
    }

    /// Writes an operation's change-control row (its common fields filled from `done`),
    /// logs it, and answers `done`.
    async fn finish_op(
        &self,
        mut row: crate::store::NewChange,
        done: OpDone,
        model: &str,
        by: &str,
    ) -> Result<OpDone, RecordOpError> {
        row.name = format!("Operator: {} {model}", done.op);
        row.external_id = done.external_id.clone();
        row.local_id = Some(done.local_id);
        row.status = LogStatus::Success;
        row.error_message = done.message.clone();
        row.destination_values = json!({ "op": done.op });
        row.actor = by.to_string();
        self.log_alone(row).await?;
        tracing::info!(sync = %done.sync, local_id = done.local_id, op = done.op, by, "{}", done.message);
        Ok(done)
    }
}

impl Engine {
    /// Ends the detachment a discarded hold left on a deleted record: the link ends with it,
    /// so the external record is imported here again (at once by a full run where the
    /// service can list, else at its next change or reconciliation) as a new local record.
    async fn bring_back(
        self: &Arc<Self>,
        sync: &crate::domain::plan::Sync,
        local_id: i64,
        hold: i64,
        op: &RecordOp,
        by: &str,
    ) -> Result<OpDone, RecordOpError> {
        let code = sync.code.as_str();
        let binding = sync.binding();
        let link = self.store.link_by_local(&binding, local_id).await?;
        let external_id = link.and_then(|l| l.external_id);
        let mut tx = self.store.begin().await?;
        tx.end_detachment(code, local_id).await?;
        tx.delete_link(&binding, local_id).await?;
        tx.commit().await?;
        let lists = self
            .connector(&sync.web_service)
            .is_some_and(|c| c.can_list(sync))
            && sync.direction.to_local();
        let run_id = if lists {
            match self.start_run(code, Trigger::Manual, true).await {
                Ok(started) => Some(started.run_id),
                Err(e) => return Err(RecordOpError::Run(e.to_string())),
            }
        } else {
            None
        };
        let ext = external_id.clone().unwrap_or_default();
        let message = match run_id {
            Some(run) => format!(
                "no longer detached (hold {hold}): external `{ext}` is imported again as a new record by run {run}"
            ),
            None => format!(
                "no longer detached (hold {hold}): external `{ext}` is imported again as a new record at its next change or reconciliation"
            ),
        };
        let row = crate::store::NewChange::unapplied(
            code,
            LogAction::Link,
            String::new(),
            LogStatus::Success,
            String::new(),
        );
        let done = OpDone {
            sync: code.to_string(),
            local_id,
            op: op.name(),
            external_id,
            message,
            run_id,
        };
        self.finish_op(row, done, &sync.model, by).await
    }

    /// Applies what was kept for a paused record at its resume; answers what to add to the
    /// resume's message.
    async fn apply_kept(
        &self,
        sync: &crate::domain::plan::Sync,
        kept: crate::store::Kept,
        by: &str,
    ) -> Result<String, RecordOpError> {
        let Some(ext) = kept.external_id else {
            return Ok(String::new());
        };
        let code = sync.code.as_str();
        let ctx = Ctx::actor(by);
        if kept.delete {
            let applied = self
                .apply_inbound(
                    code,
                    super::InboundOp::Delete {
                        external_id: ext.clone(),
                        unlink_only: false,
                    },
                    &ctx,
                )
                .await;
            return Ok(match applied {
                Ok(_) => format!("; the delete that arrived from `{ext}` meanwhile was applied"),
                Err(e) => format!(
                    "; the delete that arrived from `{ext}` meanwhile could not be applied: {e}"
                ),
            });
        }
        let Some(values) = kept.values else {
            return Ok(String::new());
        };
        let applied = self.apply_pulled(sync, &ext, values, ctx, true).await;
        Ok(match applied {
            Ok(_) => format!("; the change that arrived from `{ext}` meanwhile was applied"),
            Err(e) => format!(
                "; the change that arrived from `{ext}` meanwhile could not be applied: {e}"
            ),
        })
    }

    /// Resumes a record deleted here while it was paused: the delete goes out (at once for a
    /// real-time sync, with the next push for a cron one).
    async fn resume_deleted(
        self: &Arc<Self>,
        sync: &crate::domain::plan::Sync,
        local_id: i64,
        by: &str,
    ) -> Result<OpDone, RecordOpError> {
        let code = sync.code.as_str();
        // The pause ends, and when the record was deleted on both sides meanwhile, the pair
        // too, in one transaction: no delivery finds it unpaused and still linked.
        let mut tx = self.store.begin().await?;
        let kept = tx.resume_record(code, local_id).await?;
        let was = kept.is_some();
        let gone_there = kept.as_ref().is_some_and(|k| k.delete);
        if gone_there {
            tx.delete_link(&sync.binding(), local_id).await?;
        }
        tx.commit().await?;
        let version = self
            .store
            .get_record(&sync.model, local_id)
            .await?
            .map(|r| r.version)
            .unwrap_or(0);
        let link = self.store.link_by_local(&sync.binding(), local_id).await?;
        let external_id = link.and_then(|l| l.external_id);
        if !gone_there
            && was
            && external_id.is_some()
            && sync.direction.to_external()
            && sync.mode == crate::domain::plan::Mode::Realtime
        {
            let mut tx = self.store.begin().await?;
            tx.enqueue_many(&[NewOutbox {
                sync: code.to_string(),
                local_id,
                action: "delete".into(),
                payload: super::fanout::payload(version, &Ctx::actor(by)),
            }])
            .await?;
            tx.commit().await?;
            self.wake();
        }
        let message = if gone_there {
            format!(
                "resumed for sync `{code}`; the record was deleted here and there meanwhile, so nothing is sent and the pair ends"
            )
        } else if was {
            format!(
                "resumed for sync `{code}`; the record was deleted here meanwhile, so its delete goes out"
            )
        } else {
            format!("was not paused for sync `{code}`")
        };
        let mut row = crate::store::NewChange::unapplied(
            code,
            LogAction::Update,
            String::new(),
            LogStatus::Success,
            String::new(),
        );
        row.direction = LogDirection::LocalToExternal;
        let done = OpDone {
            sync: code.to_string(),
            local_id,
            op: "resume",
            external_id,
            message,
            run_id: None,
        };
        self.finish_op(row, done, &sync.model, by).await
    }

    /// One record's values, found in the service's listing (page by page, stopping at it).
    async fn find_listed(
        &self,
        connector: &Arc<dyn crate::connectors::Connector>,
        sync: &crate::domain::plan::Sync,
        plan: &crate::domain::Plan,
        ext: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, RecordOpError> {
        let mut after = None;
        loop {
            let (page, next) = connector
                .list_records(sync, plan, after)
                .await
                .map_err(|e| RecordOpError::Run(format!("listing failed: {e}")))?;
            if let Some(found) = page.into_iter().find(|l| l.external_id == ext) {
                return found.values.ok_or_else(|| {
                    RecordOpError::CannotReread(sync.code.to_string(), connector.kind())
                });
            }
            match next {
                Some(n) => after = Some(n),
                None => {
                    return Err(RecordOpError::Run(format!(
                        "the service no longer lists external `{ext}`; `recsync run {} --full` reconciles it (through the delete guard)",
                        sync.code
                    )));
                }
            }
        }
    }
}
