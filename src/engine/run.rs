//! Runs of a sync: claimed so that runs of one sync never overlap (across instances too),
//! recorded with their trigger, status and counts. A run pulls pages from the web service
//! through the same apply path as real-time calls, and confirms each page when the service
//! asks for confirmations.

use super::guard::Collecting;
use super::memory::SyncMemory;
use super::pages::{Confirmer, Flying};
pub(crate) use super::stop::RunStop;
use super::{Ctx, Engine};
use crate::connectors::{PullError, PullStart, Pulled};
use crate::store::{
    LogAction, LogDirection, LogStatus, NewChange, RunCounts, RunStatus, StoreError,
};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Cron,
    Manual,
    Startup,
    /// A Dropbox webhook notification.
    Webhook,
    /// The sync's `reconcile` interval: a full run.
    Reconcile,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::Manual => "manual",
            Trigger::Startup => "startup",
            Trigger::Webhook => "webhook",
            Trigger::Reconcile => "reconcile",
        }
    }

    /// Who the change-control log names as the actor of this run's changes.
    pub fn actor(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Webhook => "webhook",
            Trigger::Cron | Trigger::Startup => "cron",
            Trigger::Reconcile => "reconcile",
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("unknown sync `{0}`")]
    UnknownSync(String),
    #[error(
        "a run of sync `{sync}` is in progress; this request was recorded as run {run_id} and skipped"
    )]
    Busy { sync: String, run_id: i64 },
    #[error("the server is shutting down; no run starts now")]
    ShuttingDown,
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
}

/// A run that has started: its id, and the task doing it.
pub struct Started {
    pub run_id: i64,
    pub task: tokio::task::JoinHandle<(RunStatus, RunCounts)>,
    /// The counts so far, updated after each page.
    pub progress: tokio::sync::watch::Receiver<RunCounts>,
}

/// Counts a run of this process while it lives.
struct ActiveRun(Arc<Engine>);

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0
            .active_runs
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Engine {
    /// Push, for cron syncs that send: queue what changed since the last sync (new records in
    /// the domain, records whose version passed the link's, tombstones of linked records),
    /// unlink records that left the domain, then deliver through the outbox. What fails stays
    /// in the outbox's retry path. A `full` push sends every linked record in the domain
    /// again, whatever its version.
    async fn push(
        self: &Arc<Self>,
        code: &str,
        run_id: i64,
        full: bool,
        counts: &mut RunCounts,
    ) -> Result<(), RunStop> {
        let plan = self.plan();
        let Some(sync) = plan.sync(code).cloned() else {
            return Ok(());
        };
        if !sync.direction.to_external() || (sync.mode != crate::domain::plan::Mode::Cron && !full)
        {
            return Ok(());
        }
        let model = &plan.models[&sync.model];
        let store_err = |e: StoreError| format!("the store failed: {e}");
        let binding = sync.binding();
        let Left {
            waiting,
            ambiguous,
            paused,
        } = self.left_by_push(&plan, &sync).await.map_err(store_err)?;
        let full = self.push_resends_all(&sync, full);
        let guarded = sync.propagate_deletes && sync.delete_guard.is_some();
        let mut deletes: Vec<(crate::store::NewOutbox, crate::store::HoldItem)> = Vec::new();
        let mut queued: Vec<i64> = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .store
                .records_after(&sync.model, after, 500)
                .await
                .map_err(store_err)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let ids: Vec<i64> = page.iter().map(|r| r.id).collect();
            let links: std::collections::HashMap<i64, crate::store::Link> = self
                .store
                .links_by_local(&binding, &ids)
                .await
                .map_err(store_err)?
                .into_iter()
                .map(|l| (l.local_id, l))
                .collect();
            let skip = |id: i64| waiting.contains(&id) || paused.contains(&id);
            let external: std::collections::HashMap<i64, String> = links
                .values()
                .filter_map(|l| l.external_id.clone().map(|e| (l.local_id, e)))
                .collect();
            let Selected {
                mut entries,
                unlinks,
                returns,
            } = self.select_for_push(&sync, model, &page, links, skip, &ambiguous, full, run_id);
            // The run's deletes wait for the guard's decision at the end of the push.
            if guarded {
                let (del, rest): (Vec<_>, Vec<_>) =
                    entries.into_iter().partition(|e| e.action == "delete");
                entries = rest;
                for e in del {
                    let rec = page.iter().find(|r| r.id == e.local_id);
                    let item = crate::store::HoldItem {
                        external_id: external.get(&e.local_id).cloned().unwrap_or_default(),
                        local_id: Some(e.local_id),
                        name: rec
                            .map(|r| model.title(r.id, &r.values))
                            .unwrap_or_default(),
                    };
                    deletes.push((e, item));
                }
            }
            if entries.is_empty() && unlinks.is_empty() {
                continue;
            }
            let mut tx = self.store.begin().await.map_err(store_err)?;
            for (row, link) in &unlinks {
                tx.upsert_link(link).await.map_err(store_err)?;
                tx.log_change(row).await.map_err(store_err)?;
            }
            for link in &returns {
                tx.upsert_link(link).await.map_err(store_err)?;
            }
            tx.enqueue_many(&entries).await.map_err(store_err)?;
            tx.commit().await.map_err(store_err)?;
            counts.unlinked += unlinks.len() as i64;
            queued.extend(entries.iter().map(|e| e.local_id));
        }
        if !deletes.is_empty() {
            let n = deletes.len() as u64;
            let linked = self.store.count_links(&binding).await.map_err(store_err)? as u64;
            let limit = sync.delete_guard.unwrap_or_default();
            let mut tx = self.store.begin().await.map_err(store_err)?;
            match limit.holds(n, linked) {
                Some(reason) => {
                    let dir = LogDirection::LocalToExternal;
                    let hold = tx
                        .create_hold(
                            code,
                            Some(run_id),
                            dir.as_str(),
                            crate::store::HoldStatus::Held,
                            &reason,
                        )
                        .await
                        .map_err(store_err)?;
                    let items: Vec<crate::store::HoldItem> =
                        deletes.iter().map(|(_, i)| i.clone()).collect();
                    tx.add_hold_items(hold, &items).await.map_err(store_err)?;
                    let mut row = NewChange::unapplied(
                        code,
                        LogAction::Delete,
                        format!("Hold {hold}: {n} deletes held"),
                        LogStatus::Skipped,
                        format!(
                            "{reason}; nothing was deleted on the external side. Approve or discard hold {hold}."
                        ),
                    );
                    row.direction = dir;
                    row.origin_values =
                        serde_json::json!({"hold": hold, "deletes": n, "linked": linked});
                    row.run_id = Some(run_id);
                    row.actor = "engine".into();
                    self.mask_row(&mut row);
                    tx.log_change(&row).await.map_err(store_err)?;
                    tx.commit().await.map_err(store_err)?;
                    counts.held += n as i64;
                    metrics::counter!("recsync_deletes_held_total", "sync" => code.to_string())
                        .increment(n);
                    tracing::warn!(sync = code, hold, deletes = n, linked, reason = %reason, "Local deletes held for approval: `recsync holds approve {hold}` sends them, `recsync holds discard {hold}` keeps the external records");
                }
                None => {
                    let entries: Vec<crate::store::NewOutbox> =
                        deletes.into_iter().map(|(e, _)| e).collect();
                    tx.enqueue_many(&entries).await.map_err(store_err)?;
                    tx.commit().await.map_err(store_err)?;
                    queued.extend(entries.iter().map(|e| e.local_id));
                }
            }
        }
        if queued.is_empty() {
            return Ok(());
        }
        // Deliver now (alongside the background worker, which may take some); entries that fail
        // wait for their retry in the outbox.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            self.drain().await.map_err(store_err)?;
            let unsettled = self
                .store
                .unsettled_in_run(code, run_id, chrono::Utc::now())
                .await
                .map_err(store_err)?;
            if unsettled == 0 || std::time::Instant::now() > deadline || self.is_stopping() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        counts.pushed += self
            .store
            .delivered_in_run(code, run_id)
            .await
            .map_err(store_err)?;
        // Sends that failed count as failed records of the run (they wait for their retry in
        // the outbox, or are dead letters).
        counts.failed += self
            .store
            .failed_in_run(code, run_id)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    /// Claims the sync's run slot and starts a run in the background.
    /// With `full`, the run reconciles: it reads or lists every external record and repairs what
    /// differs; a push that could not compare re-sends every local record in the domain, not only what changed
    /// since the last sync (and works for real-time syncs too: a re-sync by hand).
    pub async fn start_run(
        self: &Arc<Self>,
        code: &str,
        trigger: Trigger,
        full: bool,
    ) -> Result<Started, RunError> {
        if self.plan().sync(code).is_none() {
            return Err(RunError::UnknownSync(code.to_string()));
        }
        if self.is_stopping() {
            return Err(RunError::ShuttingDown);
        }
        let instance = self.opts.instance.clone();
        if !self
            .store
            .claim_run(code, &instance, chrono::Utc::now(), self.opts.claim_timeout)
            .await?
        {
            let run_id = self
                .store
                .skipped_run(
                    code,
                    trigger.as_str(),
                    &instance,
                    "another run of this sync was in progress",
                )
                .await?;
            return Err(RunError::Busy {
                sync: code.to_string(),
                run_id,
            });
        }
        let run_id = match self
            .store
            .start_run(code, trigger.as_str(), &instance, RunStatus::Running)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                let _ = self.store.release_run(code, &instance).await;
                return Err(e.into());
            }
        };
        self.store.set_running_run(code, &instance, run_id).await?;
        let engine = self.clone();
        let code = code.to_string();
        let (progress_tx, progress) = tokio::sync::watch::channel(RunCounts::default());
        self.active_runs
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let active = ActiveRun(self.clone());
        // The claim is renewed while the run lives, so only a dead instance's claim expires.
        let heartbeat = {
            let engine = self.clone();
            let code = code.clone();
            self.spawn(async move {
                let every = engine.opts.claim_timeout / 4;
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = engine
                        .store
                        .renew_run_claim(&code, &engine.opts.instance, chrono::Utc::now())
                        .await
                    {
                        tracing::warn!(sync = %code, error = %e, "Could not renew a run's claim");
                    }
                }
            })
        };
        let span =
            tracing::info_span!("run", sync = %code, run_id, trigger = trigger.as_str(), full);
        let task = self.spawn(
            async move {
            let _active = active;
            let run_started = std::time::Instant::now();
            let mut counts = RunCounts::default();
            let mut outcome = engine
                .pull(&code, run_id, trigger, full, &mut counts, &progress_tx)
                .await;
            if outcome.is_ok() && !engine.is_stopping() {
                // The other side has been read (matched on `match_on`): creates go out from
                // now on (`outbox::awaits_first_run`).
                engine
                    .first_runs
                    .lock()
                    .expect("first runs lock")
                    .insert(code.clone());
                outcome = engine.push(&code, run_id, full, &mut counts).await;
            }
            heartbeat.abort();
            progress_tx.send_replace(counts.clone());
            let (status, error) = match &outcome {
                Err(e @ RunStop::ShuttingDown) => (RunStatus::Partial, Some(e.to_string())),
                Ok(()) if counts.failed == 0 => (RunStatus::Success, None),
                Ok(()) => (
                    RunStatus::Partial,
                    Some(format!(
                        "{} record(s) failed; see the change-control log",
                        counts.failed
                    )),
                ),
                Err(RunStop::Failed(e)) => (RunStatus::Failed, Some(e.clone())),
            };
            if let Some(e) = &error {
                tracing::warn!(sync = %code, run_id, error = %e, "Run ended with errors");
            }
            if status == RunStatus::Failed {
                // One row per failed run, whatever retries happened inside it.
                if let Err(e) = engine
                    .log_alone(NewChange {
                        run_id: Some(run_id),
                        actor: trigger.actor().into(),
                        ..NewChange::unapplied(
                            &code,
                            LogAction::Run,
                            "Run failed",
                            LogStatus::Failed,
                            error.clone().unwrap_or_default(),
                        )
                    })
                    .await
                {
                    tracing::error!(sync = %code, run_id, error = %e, "Failed to log a failed run");
                }
            }
            crate::metrics::run_finished(&code, status.as_str(), run_started.elapsed().as_secs_f64());
            if let Err(e) = engine
                .store
                .end_run(
                    run_id,
                    status,
                    &counts,
                    error.as_deref(),
                    &code,
                    &engine.opts.instance,
                )
                .await
            {
                // The claim then expires as a stale one.
                tracing::error!(sync = %code, run_id, error = %e, "Failed to record the end of a run");
            }
            (status, counts)
        }
            .instrument(span),
        );
        Ok(Started {
            run_id,
            task,
            progress,
        })
    }

    /// Pulls pages through the sync's connector and applies them, each confirmed once
    /// applied, until a page says no more follow. Records whose reference arrived later in
    /// the run get a second attempt at the end.
    async fn pull(
        &self,
        code: &str,
        run_id: i64,
        trigger: Trigger,
        full: bool,
        counts: &mut RunCounts,
        progress: &tokio::sync::watch::Sender<RunCounts>,
    ) -> Result<(), RunStop> {
        let plan = self.plan();
        let sync = plan
            .sync(code)
            .ok_or("the sync is no longer configured")?
            .clone();
        let connector = self
            .connector(&sync.web_service)
            .ok_or("the web service is no longer configured")?;
        if !sync.direction.to_local() && !connector.keeps_mirror() {
            return Ok(());
        }
        let ctx = Ctx {
            actor: trigger.actor().to_string(),
            run_id: Some(run_id),
            modified_at: None,
            relabel: None,
            request_id: None,
            hold: None,
            traceparent: crate::telemetry::traceparent(),
        };
        let memory = SyncMemory {
            engine: self,
            code,
            ctx: ctx.clone(),
        };
        // The first run of a sync with `match_on` reads the other side in full, so that every
        // record already there is matched before anything is copied.
        let full = full
            || (!sync.match_on.is_empty()
                && self
                    .store
                    .count_links(&sync.binding())
                    .await
                    .map_err(|e| RunStop::from(format!("the store failed: {e}")))?
                    == 0);
        let start = PullStart {
            notified_at: self.notify_lag.lock().expect("lag lock").remove(code),
            full,
            preview: false,
        };
        let failed = |e: PullError| RunStop::Failed(e.to_string());
        let mut puller = connector
            .open_pull(&sync, &plan, start, &memory)
            .instrument(tracing::info_span!(
                "connector.open_pull",
                sync = code,
                full
            ))
            .await
            .map_err(failed)?;
        let mut guard = Collecting::new(&sync, run_id);
        self.adopt_orphans(code, run_id, &mut guard)
            .await
            .map_err(|e| RunStop::from(format!("the store failed: {e}")))?;
        let mut retry_later: Vec<Pulled> = Vec::new();
        // Where the connector allows it, a page of upserts goes to the writer while the page
        // before it is still being applied; pages are confirmed in order all the same.
        let overlap = puller.pages_overlap();
        let mut in_flight: Option<Flying> = None;
        let mut confirmer = Confirmer {
            puller: &mut puller,
            memory: &memory,
            progress,
        };
        let mut n = 0;
        loop {
            n += 1;
            // One span per page: the connector's read, the engine's apply and the confirmation
            // inside it.
            let span = tracing::info_span!("page", sync = code, page = n);
            let page = confirmer
                .puller
                .next_page(&memory)
                .instrument(tracing::info_span!(parent: &span, "connector.next_page"))
                .await
                .map_err(failed)?;
            counts.pulled += page.read as i64;
            counts.skipped += page.skipped as i64;
            let more = page.more;
            let mut records = Some(page.records);
            if overlap {
                let sent = self
                    .send_page(code, records.take().unwrap_or_default(), &ctx, &mut guard)
                    .instrument(tracing::info_span!(parent: &span, "apply"))
                    .await?;
                match sent {
                    Ok(flight) => {
                        let before = in_flight.replace((flight, span.clone(), n));
                        self.land(code, before, &ctx, counts, &mut retry_later, &mut confirmer)
                            .await?;
                    }
                    Err(page) => records = Some(page),
                }
            }
            if let Some(records) = records {
                // Applied on its own, after the page still in flight.
                self.land(
                    code,
                    in_flight.take(),
                    &ctx,
                    counts,
                    &mut retry_later,
                    &mut confirmer,
                )
                .await?;
                let outcomes = self
                    .apply_page(code, &records, &ctx, counts, &mut retry_later, &mut guard)
                    .instrument(tracing::info_span!(parent: &span, "apply"))
                    .await?;
                confirmer
                    .confirm(&outcomes, (&span, n), counts)
                    .await
                    .map_err(failed)?;
            }
            if !more {
                break;
            }
            if self.is_stopping() {
                return Err(RunStop::ShuttingDown);
            }
        }
        self.land(
            code,
            in_flight.take(),
            &ctx,
            counts,
            &mut retry_later,
            &mut confirmer,
        )
        .await?;
        // A full run of a connector that does not read everything itself lists every record
        // (reconciliation).
        let listing = full
            && !connector.full_pull_lists()
            && connector.can_list(&sync)
            && sync.direction.to_local();
        if listing {
            self.reconcile_listing(
                &sync,
                &plan,
                &connector,
                &ctx,
                counts,
                &mut guard,
                &mut retry_later,
            )
            .await?;
        }
        // References to records that arrived later in the run get a second chance, and the
        // service hears how it went.
        if !retry_later.is_empty() {
            let items = std::mem::take(&mut retry_later);
            let mut still = Vec::new();
            counts.failed -= items.len() as i64;
            let outcomes = self
                .apply_page(code, &items, &ctx, counts, &mut still, &mut guard)
                .await?;
            puller.confirm(&memory, &outcomes).await.map_err(failed)?;
        }
        if let Some(g) = guard {
            self.settle_deletes(&sync, g, &ctx, counts).await?;
        }
        if full {
            if connector.full_pull_lists() {
                // The connector read every record: what it created was not linked, what it
                // updated differed, and what it deleted or unlinked (or the guard held) was
                // gone.
                counts.extra = counts.created;
                counts.different = counts.updated;
                counts.missing = counts.deleted + counts.unlinked + counts.held;
            }
            if listing || connector.full_pull_lists() {
                self.log_alone(super::guard::reconcile_row(&sync, counts, &ctx))
                    .await
                    .map_err(|e| RunStop::from(format!("the store failed: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Local records a push leaves alone.
pub(super) struct Left {
    /// Still on their way through some sync of the binding: not queued again.
    pub waiting: std::collections::HashSet<i64>,
    /// Left unlinked by an ambiguous match: their match is already there.
    pub ambiguous: std::collections::HashSet<i64>,
    /// Paused for the sync, or with a delete a person is deciding on.
    pub paused: std::collections::HashSet<i64>,
}

impl Engine {
    /// Whether a full run's push re-sends every linked record: only where the run could not
    /// compare them. A sync whose pull read (or listed) every external record already repaired
    /// what differed, and a record that matches is written nothing.
    pub(super) fn push_resends_all(&self, sync: &crate::domain::plan::Sync, full: bool) -> bool {
        let compared = sync.direction.to_local()
            && self
                .connector(&sync.web_service)
                .is_some_and(|c| c.full_pull_lists() || c.can_list(sync));
        full && !compared
    }

    /// The local records a push of `sync` leaves alone (a run's and a plan's alike).
    pub(super) async fn left_by_push(
        &self,
        plan: &crate::domain::Plan,
        sync: &crate::domain::plan::Sync,
    ) -> Result<Left, StoreError> {
        let code = sync.code.as_str();
        let mut waiting = std::collections::HashSet::new();
        for s in plan.syncs.values().filter(|s| s.same_binding(sync)) {
            waiting.extend(self.store.undelivered_local_ids(s.code.as_str()).await?);
        }
        let ambiguous = self.store.ambiguous_local_ids(&sync.binding()).await?;
        let mut paused = self.store.paused_ids(code).await?;
        paused.extend(
            self.store
                .held_local_ids(code, LogDirection::LocalToExternal.as_str())
                .await?,
        );
        // Gone on the external side, their delete held here: nothing to send them.
        paused.extend(
            self.store
                .held_local_ids(code, LogDirection::ExternalToLocal.as_str())
                .await?,
        );
        Ok(Left {
            waiting,
            ambiguous,
            paused,
        })
    }
}

/// What a push takes from one page of local records.
pub(super) struct Selected {
    /// The deliveries to queue.
    pub entries: Vec<crate::store::NewOutbox>,
    /// Records that left the sync's domain: the row and the link that no longer carries them.
    pub unlinks: Vec<(crate::store::NewChange, crate::store::Link)>,
    /// Links of records back in the domain, carried again.
    pub returns: Vec<crate::store::Link>,
}

impl Engine {
    /// Chooses what a push sends of one page of local records (`links` by local id): new
    /// records in the domain (not those an ambiguous match left unlinked), records whose
    /// version passed the link's (every linked one with `full`), tombstones of linked
    /// records; records for which `skip` holds are left alone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn select_for_push(
        &self,
        sync: &crate::domain::plan::Sync,
        model: &crate::domain::plan::Model,
        page: &[crate::store::Record],
        mut links: std::collections::HashMap<i64, crate::store::Link>,
        skip: impl Fn(i64) -> bool,
        ambiguous: &std::collections::HashSet<i64>,
        full: bool,
        run_id: i64,
    ) -> Selected {
        let code = sync.code.as_str();
        let mut entries = Vec::new();
        let mut unlinks = Vec::new();
        let mut returns = Vec::new();
        for rec in page {
            if skip(rec.id) {
                continue;
            }
            let mut link = links.remove(&rec.id);
            let carried = link.as_ref().is_some_and(|l| l.carried_by(code));
            let action = if rec.deleted {
                match &link {
                    Some(l) if l.external_id.is_some() && carried => "delete",
                    _ => continue,
                }
            } else {
                let guess = match &link {
                    Some(l) if l.external_id.is_some() => "update",
                    _ if ambiguous.contains(&rec.id) => continue,
                    _ => "create",
                };
                match super::fanout::route(sync, model, rec, link.as_mut(), guess, "cron") {
                    super::fanout::Route::Nothing => continue,
                    super::fanout::Route::Exit(mut row) => {
                        row.run_id = Some(run_id);
                        self.mask_row(&mut row);
                        unlinks.push((*row, link.expect("an exit has a link")));
                        continue;
                    }
                    super::fanout::Route::Send { relinked } => {
                        if relinked {
                            // Back in the domain: carried again, and sent as an update.
                            returns.push(link.clone().expect("a return has a link"));
                        }
                    }
                }
                match &link {
                    Some(l)
                        if !full
                            && carried
                            && l.external_id.is_some()
                            && l.synced_version >= rec.version =>
                    {
                        continue;
                    }
                    _ => guess,
                }
            };
            entries.push(crate::store::NewOutbox {
                sync: code.to_string(),
                local_id: rec.id,
                action: action.to_string(),
                payload: super::fanout::traced(if full {
                    serde_json::json!({"version": rec.version, "run_id": run_id, "force": true})
                } else {
                    serde_json::json!({"version": rec.version, "run_id": run_id})
                }),
            });
        }
        Selected {
            entries,
            unlinks,
            returns,
        }
    }
}
