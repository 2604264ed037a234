//! The delete guard and reconciliation.
//!
//! During a run of a sync whose deletes propagate, pulled deletes are not applied at once: they
//! are collected in a hold in the store (so a crash loses none of them). At the end of the run
//! the guard compares their number with `delete_guard`: under the limit they are applied; over
//! it the hold waits for a person, who approves (exactly those deletes are applied) or
//! discards it (nothing is deleted, nothing is relinked).
//!
//! Reconciliation (`reconcile`, `recsync run --full`) lists every external record through the
//! connector, page by page, notes the ids it saw in the store, sends what is new or different
//! through the usual apply path, and then finds in the store the links whose external record
//! was not listed: those are deletes, through the guard.

use super::apply::{Applied, ApplyError};
use super::stop::RunStop;
use super::{Ctx, Engine, InboundOp};
use crate::connectors::{Ahead, Connector, PullAction, PullError, Pulled};
use crate::domain::Plan;
use crate::domain::plan::Sync;
use crate::store::{
    Hold, HoldItem, HoldStatus, LogAction, LogDirection, LogStatus, NewChange, RunCounts,
    StoreError,
};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;

/// Hold items read at a time.
const ITEMS_PAGE: i64 = 500;

/// The deletes of one run, collected while the run goes on.
pub(super) struct Collecting {
    code: String,
    run_id: i64,
    hold: Option<i64>,
    ids: HashSet<String>,
}

impl Collecting {
    pub(super) fn new(sync: &Sync, run_id: i64) -> Option<Collecting> {
        (sync.propagate_deletes && sync.delete_guard.is_some()).then(|| Collecting {
            code: sync.code.to_string(),
            run_id,
            hold: None,
            ids: HashSet::new(),
        })
    }
}

/// What became of a hold an operator decided.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decided {
    pub hold: i64,
    pub status: HoldStatus,
    /// Deletes applied (approve).
    pub deleted: i64,
    /// Deletes with nothing left to delete: the link had ended or the record was gone.
    pub skipped: i64,
}

/// Why a hold could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("no hold {0}")]
    Unknown(i64),
    #[error("hold {id} is {status}; only a held hold can be approved or discarded")]
    NotHeld { id: i64, status: HoldStatus },
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

impl Engine {
    /// Collects these pulled deletes instead of applying them, where the record is linked
    /// (a delete of nothing needs no guard), and answers the ids collected. A collected delete
    /// is confirmed to the service as taken: the hold owns it from now on. One lookup of the
    /// links, one of the records and one write, whatever the number of deletes.
    pub(super) async fn collect_deletes(
        &self,
        sync: &Sync,
        guard: &mut Collecting,
        external_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if external_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let links = self
            .store
            .links_by_external_ids(&sync.binding(), external_ids)
            .await?;
        if links.is_empty() {
            return Ok(HashSet::new());
        }
        // Deletes a held hold has already taken wait for its decision: they are not collected
        // again, so a later run never opens a second hold for them.
        let held = self
            .store
            .held_local_ids(sync.code.as_str(), LogDirection::ExternalToLocal.as_str())
            .await?;
        let (already, links): (
            std::collections::HashMap<String, crate::store::Link>,
            std::collections::HashMap<String, crate::store::Link>,
        ) = links
            .into_iter()
            .partition(|(_, l)| held.contains(&l.local_id));
        let already: HashSet<String> = already.into_keys().collect();
        if links.is_empty() {
            return Ok(already);
        }
        let hold = match guard.hold {
            Some(h) => h,
            None => {
                let h = self
                    .store
                    .open_hold(&guard.code, Some(guard.run_id))
                    .await?;
                guard.hold = Some(h);
                h
            }
        };
        let plan = self.plan();
        let mut titles = std::collections::HashMap::new();
        if let Some(model) = plan.models.get(&sync.model) {
            let local: Vec<i64> = links.values().map(|l| l.local_id).collect();
            for r in self.store.records_by_ids(&model.name, &local).await? {
                titles.insert(r.id, model.title(r.id, &r.values));
            }
        }
        let items: Vec<HoldItem> = links
            .iter()
            .map(|(external_id, link)| HoldItem {
                external_id: external_id.clone(),
                local_id: Some(link.local_id),
                name: titles.remove(&link.local_id).unwrap_or_default(),
            })
            .collect();
        self.store.add_hold_items(hold, &items).await?;
        let ids: HashSet<String> = links.into_keys().collect();
        guard.ids.extend(ids.iter().cloned());
        Ok(ids.into_iter().chain(already).collect())
    }

    /// A record collected for deletion came back later in the run: its delete is dropped.
    pub(super) async fn uncollect(
        &self,
        guard: &mut Collecting,
        external_id: &str,
    ) -> Result<(), StoreError> {
        if let Some(hold) = guard.hold
            && guard.ids.remove(external_id)
        {
            self.store.remove_hold_item(hold, external_id).await?;
        }
        Ok(())
    }

    /// The end of a run: the collected deletes are applied, or held when they are more than
    /// the guard allows.
    pub(super) async fn settle_deletes(
        &self,
        sync: &Sync,
        guard: Collecting,
        ctx: &Ctx,
        counts: &mut RunCounts,
    ) -> Result<(), String> {
        let Some(hold) = guard.hold else {
            return Ok(());
        };
        let failed = |e: StoreError| format!("the store failed: {e}");
        let n = guard.ids.len() as u64;
        let linked = self
            .store
            .count_links(&sync.binding())
            .await
            .map_err(failed)? as u64;
        let limit = sync.delete_guard.unwrap_or_default();
        match limit.holds(n, linked) {
            Some(reason) => {
                self.store
                    .decide_hold(
                        hold,
                        HoldStatus::Collecting,
                        HoldStatus::Held,
                        Some(&reason),
                        None,
                    )
                    .await
                    .map_err(failed)?;
                counts.held += n as i64;
                metrics::counter!("recsync_deletes_held_total", "sync" => sync.code.to_string())
                    .increment(n);
                tracing::warn!(sync = %sync.code, hold, deletes = n, linked, reason = %reason, "Deletes held for approval: `recsync holds approve {hold}` applies them, `recsync holds discard {hold}` keeps the records");
                let mut row = NewChange::unapplied(
                    sync.code.as_str(),
                    LogAction::Delete,
                    format!("Hold {hold}: {n} deletes held"),
                    LogStatus::Skipped,
                    format!("{reason}; nothing was deleted. Approve or discard hold {hold}."),
                );
                row.origin_values = json!({"hold": hold, "deletes": n, "linked": linked});
                row.run_id = ctx.run_id;
                row.actor = ctx.actor.clone();
                self.log_alone(row).await.map_err(failed)?;
            }
            None => {
                let (deleted, skipped) = self
                    .apply_hold(sync, hold, ctx)
                    .await
                    .map_err(|e| e.to_string())?;
                counts.deleted += deleted;
                counts.skipped += skipped;
                self.store
                    .decide_hold(
                        hold,
                        HoldStatus::Collecting,
                        HoldStatus::Applied,
                        None,
                        None,
                    )
                    .await
                    .map_err(failed)?;
            }
        }
        Ok(())
    }

    /// Applies every delete of a hold; answers how many deleted and how many had nothing left
    /// to delete.
    async fn apply_hold(
        &self,
        sync: &Sync,
        hold: i64,
        ctx: &Ctx,
    ) -> Result<(i64, i64), ApplyError> {
        let (mut deleted, mut skipped) = (0, 0);
        let mut after = String::new();
        loop {
            let items = self.store.hold_items(hold, &after, ITEMS_PAGE).await?;
            let Some(last) = items.last() else { break };
            after = last.external_id.clone();
            for it in &items {
                let op = InboundOp::Delete {
                    external_id: it.external_id.clone(),
                    unlink_only: false,
                };
                match self.apply_inbound(sync.code.as_str(), op, ctx).await {
                    Ok(Applied::Deleted(_) | Applied::Unlinked(_)) => deleted += 1,
                    Ok(_) | Err(ApplyError::UnknownExternalId(..)) => skipped += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((deleted, skipped))
    }

    /// Deletes collected by a run of this sync that stopped before it ended (a crash) join
    /// this run's: nobody decided yet whether they were too many, and this run decides at its
    /// end, as for its own. Without a guard now (the sync stopped propagating deletes), they
    /// are held for a person instead.
    pub(super) async fn adopt_orphans(
        &self,
        code: &str,
        run_id: i64,
        guard: &mut Option<Collecting>,
    ) -> Result<(), StoreError> {
        let orphans: Vec<Hold> = self
            .store
            .holds(Some(HoldStatus::Collecting), Some(code), 100)
            .await?
            .into_iter()
            .filter(|h| h.run_id != Some(run_id))
            .collect();
        for h in orphans {
            let Some(g) = guard.as_mut() else {
                self.store
                    .decide_hold(
                        h.id,
                        HoldStatus::Collecting,
                        HoldStatus::Held,
                        Some("the run that collected these deletes stopped before it ended"),
                        None,
                    )
                    .await?;
                tracing::warn!(
                    sync = code,
                    hold = h.id,
                    "Deletes of an interrupted run held for approval"
                );
                continue;
            };
            let mut items = Vec::new();
            loop {
                let after = items
                    .last()
                    .map(|i: &HoldItem| i.external_id.clone())
                    .unwrap_or_default();
                let page = self.store.hold_items(h.id, &after, ITEMS_PAGE).await?;
                if page.is_empty() {
                    break;
                }
                items.extend(page);
            }
            match g.hold {
                None => {
                    self.store.adopt_hold(h.id, run_id).await?;
                    g.hold = Some(h.id);
                }
                Some(mine) => {
                    self.store.add_hold_items(mine, &items).await?;
                    self.store
                        .decide_hold(
                            h.id,
                            HoldStatus::Collecting,
                            HoldStatus::Discarded,
                            Some(&format!("its deletes joined hold {mine}")),
                            None,
                        )
                        .await?;
                }
            }
            tracing::info!(
                sync = code,
                hold = h.id,
                deletes = items.len(),
                "Deletes of an interrupted run join this run's"
            );
            g.ids.extend(items.into_iter().map(|i| i.external_id));
        }
        Ok(())
    }

    /// The guard over an hour of real-time traffic (`DELETE /sync`, local deletes of a
    /// real-time sync): answers the hold that takes this delete instead of it being applied or
    /// sent. While a real-time hold waits for a person, every further delete joins it; without
    /// one, a delete that brings the hour's count over the guard opens it. In the caller's
    /// transaction.
    pub(super) async fn guard_realtime(
        &self,
        tx: &mut crate::store::Tx,
        sync: &Sync,
        direction: LogDirection,
        item: HoldItem,
        ctx: &Ctx,
    ) -> Result<Option<i64>, StoreError> {
        let Some(limit) = sync.delete_guard else {
            return Ok(None);
        };
        let code = sync.code.as_str();
        let dir = direction.as_str();
        let held = match tx.realtime_hold(code, dir).await? {
            Some(h) => Some((h, None)),
            None => {
                let now = chrono::Utc::now();
                let n = tx
                    .note_guard_delete(code, dir, now, now - chrono::Duration::hours(1))
                    .await? as u64;
                let linked = tx.count_links(&sync.binding()).await? as u64;
                match limit.holds_within(n, linked, "within an hour") {
                    Some(reason) => Some((
                        tx.create_hold(code, None, dir, HoldStatus::Held, &reason)
                            .await?,
                        Some((reason, n, linked)),
                    )),
                    None => None,
                }
            }
        };
        let Some((hold, opened)) = held else {
            return Ok(None);
        };
        tx.add_hold_items(hold, std::slice::from_ref(&item)).await?;
        metrics::counter!("recsync_deletes_held_total", "sync" => code.to_string()).increment(1);
        let mut row = NewChange::unapplied(
            code,
            LogAction::Delete,
            format!("Delete held in hold {hold}"),
            LogStatus::Skipped,
            format!(
                "held by the delete guard in hold {hold}; nothing was deleted{}. Approve or discard hold {hold}.",
                match &opened {
                    Some((reason, _, _)) => format!(" ({reason})"),
                    None => String::new(),
                }
            ),
        );
        row.direction = direction;
        row.external_id = Some(item.external_id.clone());
        row.local_id = item.local_id;
        row.title = item.name.clone();
        row.origin_values = json!({"hold": hold});
        row.actor = ctx.actor.clone();
        self.log(tx, row).await?;
        if let Some((reason, n, linked)) = opened {
            tracing::warn!(sync = code, hold, direction = dir, deletes = n, linked, reason = %reason, "Real-time deletes held for approval: `recsync holds approve {hold}` applies them, `recsync holds discard {hold}` keeps the records");
        }
        Ok(Some(hold))
    }

    /// Approves a hold: exactly its deletes are applied, as `by`.
    pub async fn approve_hold(&self, id: i64, by: &str) -> Result<Decided, HoldError> {
        let hold = self.held(id).await?;
        if !self
            .store
            .decide_hold(id, HoldStatus::Held, HoldStatus::Approved, None, Some(by))
            .await?
        {
            return Err(self.not_held(id).await);
        }
        let plan = self.plan();
        let Some(sync) = plan.sync(&hold.sync) else {
            return Ok(Decided {
                hold: id,
                status: HoldStatus::Approved,
                deleted: 0,
                skipped: hold.items,
            });
        };
        let ctx = Ctx {
            hold: Some(id),
            ..Ctx::actor(format!("{by} (hold {id})"))
        };
        if hold.direction == LogDirection::LocalToExternal.as_str() {
            let (deleted, skipped) = self.send_held(sync, id).await?;
            tracing::info!(sync = %hold.sync, hold = id, deleted, skipped, by, "Held local deletes approved and queued");
            return Ok(Decided {
                hold: id,
                status: HoldStatus::Approved,
                deleted,
                skipped,
            });
        }
        let (deleted, skipped) = self.apply_hold(sync, id, &ctx).await.map_err(|e| match e {
            ApplyError::Store(s) => HoldError::Store(s),
            other => HoldError::Store(StoreError::Database(sqlx::Error::Protocol(
                other.to_string(),
            ))),
        })?;
        tracing::info!(sync = %hold.sync, hold = id, deleted, skipped, by, "Held deletes approved and applied");
        Ok(Decided {
            hold: id,
            status: HoldStatus::Approved,
            deleted,
            skipped,
        })
    }

    /// Discards a hold: nothing is deleted, and the links stay as they are.
    pub async fn discard_hold(&self, id: i64, by: &str) -> Result<Decided, HoldError> {
        let hold = self.held(id).await?;
        if !self
            .store
            .decide_hold(id, HoldStatus::Held, HoldStatus::Discarded, None, Some(by))
            .await?
        {
            return Err(self.not_held(id).await);
        }
        if hold.direction == LogDirection::LocalToExternal.as_str()
            && let Some(sync) = self.plan().sync(&hold.sync)
        {
            // The external records stay where they are, detached: neither deleted there nor
            // imported here again (their links are kept, so nothing looks new).
            let detached = self.detach_held(sync, id, by).await?;
            tracing::info!(sync = %hold.sync, hold = id, by, detached, "Held local deletes discarded; the external records stay, detached (`recsync record {} <id> resync` brings one back)", hold.sync);
        } else {
            tracing::info!(sync = %hold.sync, hold = id, by, "Held deletes discarded; the records stay");
        }
        Ok(Decided {
            hold: id,
            status: HoldStatus::Discarded,
            deleted: 0,
            skipped: hold.items,
        })
    }

    /// The local records of a hold that are still deleted here and still linked: the links,
    /// with the record's version.
    async fn held_tombstones(
        &self,
        sync: &Sync,
        hold: i64,
    ) -> Result<(Vec<(crate::store::Link, i64)>, i64), StoreError> {
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut after = String::new();
        loop {
            let items = self.store.hold_items(hold, &after, ITEMS_PAGE).await?;
            let Some(last) = items.last() else { break };
            after = last.external_id.clone();
            let ids: Vec<i64> = items.iter().filter_map(|i| i.local_id).collect();
            let links: std::collections::HashMap<i64, crate::store::Link> = self
                .store
                .links_by_local(&sync.binding(), &ids)
                .await?
                .into_iter()
                .map(|l| (l.local_id, l))
                .collect();
            let records: std::collections::HashMap<i64, crate::store::Record> = self
                .store
                .records_by_ids(&sync.model, &ids)
                .await?
                .into_iter()
                .map(|r| (r.id, r))
                .collect();
            for it in &items {
                let found = it.local_id.and_then(|id| {
                    let l = links.get(&id)?;
                    let r = records.get(&id).filter(|r| r.deleted)?;
                    (l.external_id.as_deref() == Some(it.external_id.as_str()))
                        .then(|| (l.clone(), r.version))
                });
                match found {
                    Some(f) => out.push(f),
                    None => skipped += 1,
                }
            }
        }
        Ok((out, skipped))
    }

    /// Queues the deletes of an approved hold of local deletes.
    async fn send_held(&self, sync: &Sync, hold: i64) -> Result<(i64, i64), StoreError> {
        let (found, skipped) = self.held_tombstones(sync, hold).await?;
        let entries: Vec<crate::store::NewOutbox> = found
            .iter()
            .map(|(l, version)| crate::store::NewOutbox {
                sync: sync.code.to_string(),
                local_id: l.local_id,
                action: "delete".into(),
                payload: super::fanout::traced(json!({"version": version, "hold": hold})),
            })
            .collect();
        let mut tx = self.store.begin().await?;
        tx.enqueue_many(&entries).await?;
        tx.commit().await?;
        self.wake();
        Ok((entries.len() as i64, skipped))
    }

    /// Detaches the links of a discarded hold of local deletes, one `detach` row each.
    async fn detach_held(&self, sync: &Sync, hold: i64, by: &str) -> Result<i64, StoreError> {
        let (found, _) = self.held_tombstones(sync, hold).await?;
        let mut tx = self.store.begin().await?;
        for (l, _) in &found {
            tx.detach_record(sync.code.as_str(), l.local_id, by, hold)
                .await?;
            let mut row = NewChange::unapplied(
                sync.code.as_str(),
                LogAction::Detach,
                "Held delete discarded",
                LogStatus::Success,
                format!(
                    "hold {hold} was discarded: the external record stays where it is, detached (neither deleted there nor imported here again); `recsync record {} {} resync` brings it back",
                    sync.code, l.local_id
                ),
            );
            row.direction = LogDirection::LocalToExternal;
            row.external_id = l.external_id.clone();
            row.local_id = Some(l.local_id);
            row.actor = by.to_string();
            self.log(&mut tx, row).await?;
        }
        tx.commit().await?;
        Ok(found.len() as i64)
    }

    async fn held(&self, id: i64) -> Result<Hold, HoldError> {
        let hold = self.store.hold(id).await?.ok_or(HoldError::Unknown(id))?;
        if hold.status != HoldStatus::Held {
            return Err(HoldError::NotHeld {
                id,
                status: hold.status,
            });
        }
        Ok(hold)
    }

    async fn not_held(&self, id: i64) -> HoldError {
        match self.store.hold(id).await {
            Ok(Some(h)) => HoldError::NotHeld {
                id,
                status: h.status,
            },
            Ok(None) => HoldError::Unknown(id),
            Err(e) => HoldError::Store(e),
        }
    }

    /// Reconciliation by listing: every external record is listed; what is not linked or
    /// differs from what was last synced goes through the apply path, and the links whose
    /// record was not listed come back as deletes (through the guard). Memory holds one page
    /// at a time: the ids seen are noted in the store.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reconcile_listing(
        &self,
        sync: &Sync,
        plan: &Arc<Plan>,
        connector: &Arc<dyn Connector>,
        ctx: &Ctx,
        counts: &mut RunCounts,
        guard: &mut Option<Collecting>,
        unresolved: &mut Vec<Pulled>,
    ) -> Result<(), RunStop> {
        let run_id = ctx.run_id.unwrap_or_default();
        let failed = |e: StoreError| RunStop::from(format!("the store failed: {e}"));
        let binding = sync.binding();
        let code = sync.code.as_str();
        // The next page is read while this one is compared and applied.
        let read = |after: Option<String>| {
            let (connector, sync, plan) = (connector.clone(), sync.clone(), plan.clone());
            Ahead::start(async move { connector.list_records(&sync, &plan, after).await })
        };
        // Links written from here on are of records the listing may not see.
        let listed_from = chrono::Utc::now();
        let mut ahead = Some(read(None));
        let outcome: Result<(), RunStop> = async {
            while let Some(page) = ahead.take() {
                let (listed, next) = page
                    .result()
                    .await
                    .map_err(|e: PullError| RunStop::Failed(format!("reconciliation: {e}")))?;
                ahead = next.map(|n| read(Some(n)));
                let ids: Vec<String> = listed.iter().map(|l| l.external_id.clone()).collect();
                self.store
                    .reconcile_seen(run_id, &ids)
                    .await
                    .map_err(failed)?;
                let links = self
                    .store
                    .links_by_external_ids(&binding, &ids)
                    .await
                    .map_err(failed)?;
                let mut candidates = Vec::new();
                for l in listed {
                    let Some(values) = l.values else { continue };
                    if let Some(link) = links.get(&l.external_id)
                        && super::batch::echoes(plan, sync, &l.external_id, &values, &link.base)
                    {
                        continue;
                    }
                    candidates.push(Pulled {
                        action: PullAction::Update,
                        values,
                        external_id: Some(l.external_id),
                        modified_at: None,
                        label: None,
                    });
                }
                if !candidates.is_empty() {
                    let (created, updated) = (counts.created, counts.updated);
                    self.apply_page(code, &candidates, ctx, counts, unresolved, guard)
                        .await?;
                    counts.extra += counts.created - created;
                    counts.different += counts.updated - updated;
                }
                if self.is_stopping() {
                    return Err(RunStop::ShuttingDown);
                }
            }
            // What was linked and not listed is gone on the external side.
            let mut from = 0;
            loop {
                let gone = self
                    .store
                    .reconcile_unseen(&binding, run_id, listed_from, from, ITEMS_PAGE)
                    .await
                    .map_err(failed)?;
                let Some(last) = gone.last() else { break };
                from = last.local_id;
                counts.missing += gone.len() as i64;
                let deletes: Vec<Pulled> = gone
                    .into_iter()
                    .filter_map(|l| l.external_id)
                    .map(|id| Pulled {
                        action: PullAction::Delete,
                        values: Default::default(),
                        external_id: Some(id),
                        modified_at: None,
                        label: None,
                    })
                    .collect();
                self.apply_page(code, &deletes, ctx, counts, unresolved, guard)
                    .await?;
            }
            Ok(())
        }
        .await;
        self.store.reconcile_done(run_id).await.map_err(failed)?;
        outcome
    }
}

/// A row for the change-control log saying what a reconciliation found.
pub(super) fn reconcile_row(sync: &Sync, counts: &RunCounts, ctx: &Ctx) -> NewChange {
    let mut row = NewChange::unapplied(
        sync.code.as_str(),
        LogAction::Reconcile,
        "Reconciliation",
        LogStatus::Success,
        format!(
            "{} missing, {} extra, {} different",
            counts.missing, counts.extra, counts.different
        ),
    );
    row.direction = LogDirection::ExternalToLocal;
    row.origin_values = json!({
        "missing": counts.missing,
        "extra": counts.extra,
        "different": counts.different,
    });
    row.destination_values = Value::Object(Default::default());
    row.run_id = ctx.run_id;
    row.actor = ctx.actor.clone();
    row
}
