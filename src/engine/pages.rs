//! A run's pulled pages applied: each record through the writer, its outcome counted and
//! confirmed to the connector. A page of upserts of distinct records can be handed to the
//! writer while the page before it is still being applied (`send_page`, then `finish_page`),
//! so that reading, checking and mapping overlap with the hub's transaction; any other page
//! is applied on its own (`apply_page`).

use super::apply::{Reply, replies};
use super::guard::Collecting;
use super::memory::SyncMemory;
use super::stop::RunStop;
use super::{
    Ctx, Engine, InboundOp,
    apply::{Applied, ApplyError},
};
use crate::connectors::{Confirmation, PullAction, PullError, Pulled, Puller};
use crate::domain::mapping::id_text;
use crate::store::{LogAction, LogStatus, NewChange, RunCounts, StoreError};
use serde_json::Value;
use tracing::Instrument;

/// A page of upserts handed to the writer, its outcomes still to come.
pub(super) struct InFlight {
    page: Vec<Pulled>,
    ids: Vec<String>,
    replies: Vec<Reply>,
}

/// A page handed to the writer, with its span and its number in the run.
pub(super) type Flying = (InFlight, tracing::Span, usize);

/// What a run confirms its applied pages to: the connector's puller, the sync's memory, and
/// the run's progress, reported after each page.
pub(super) struct Confirmer<'a, 'm> {
    pub puller: &'a mut Box<dyn Puller>,
    pub memory: &'a SyncMemory<'m>,
    pub progress: &'a tokio::sync::watch::Sender<RunCounts>,
}

impl Confirmer<'_, '_> {
    /// Confirms a page's outcomes to the connector, then reports the run's counts so far.
    pub(super) async fn confirm(
        &mut self,
        outcomes: &[Confirmation],
        (span, page): (&tracing::Span, usize),
        counts: &RunCounts,
    ) -> Result<(), PullError> {
        self.puller
            .confirm(self.memory, outcomes)
            .instrument(tracing::info_span!(parent: span, "connector.confirm"))
            .await?;
        tracing::debug!(page, records = outcomes.len(), "Page applied and confirmed");
        self.progress.send_replace(counts.clone());
        Ok(())
    }
}

fn store_failed(e: StoreError) -> RunStop {
    RunStop::from(format!("the store failed: {e}"))
}

impl Engine {
    /// Hands a page to the writer without waiting for it, when every record of it is an
    /// upsert with an id of its own (no record twice, no delete): its outcomes do not depend
    /// on one another, nor on the delete guard's view of the links. Any other page is given
    /// back, to be applied once the pages before it are done.
    pub(super) async fn send_page(
        &self,
        code: &str,
        page: Vec<Pulled>,
        ctx: &Ctx,
        guard: &mut Option<Collecting>,
    ) -> Result<Result<InFlight, Vec<Pulled>>, RunStop> {
        let plan = self.plan();
        let sync = plan.sync(code).ok_or("the sync is no longer configured")?;
        let external_ref = sync.external_ref.as_str();
        let mut ids = Vec::with_capacity(page.len());
        let mut seen = std::collections::HashSet::with_capacity(page.len());
        for item in &page {
            let id = item
                .external_id
                .clone()
                .or_else(|| item.values.get(external_ref).and_then(id_text));
            let simple = matches!(item.action, PullAction::Update | PullAction::Insert);
            match id {
                Some(id) if simple && seen.insert(id.clone()) => ids.push(id),
                _ => return Ok(Err(page)),
            }
        }
        let mut items = Vec::with_capacity(page.len());
        for (item, id) in page.iter().zip(&ids) {
            if let Some(g) = guard.as_mut() {
                self.uncollect(g, id).await.map_err(store_failed)?;
            }
            items.push((
                id.clone(),
                upsert_payload(item, external_ref, id),
                item_ctx(item, ctx),
            ));
        }
        let replies = self.send_upserts(code, items, false).await;
        Ok(Ok(InFlight { page, ids, replies }))
    }

    /// Waits for a page handed to the writer by [`Engine::send_page`] and counts its
    /// outcomes: the confirmations to give the connector, in the page's order.
    pub(super) async fn finish_page(
        &self,
        code: &str,
        flight: InFlight,
        ctx: &Ctx,
        counts: &mut RunCounts,
        unresolved: &mut Vec<Pulled>,
    ) -> Result<Vec<Confirmation>, RunStop> {
        let InFlight {
            page,
            ids,
            replies: waiting,
        } = flight;
        let results = replies(waiting).await;
        let mut confirmations = Vec::with_capacity(page.len());
        for ((item, id), result) in page.iter().zip(ids).zip(results) {
            let error = self
                .count_outcome(code, item, &id, result, ctx, counts, unresolved)
                .await?;
            confirmations.push(Confirmation {
                external_id: id,
                error,
            });
        }
        Ok(confirmations)
    }

    /// Waits for the page in flight, if there is one, counts its outcomes and confirms it.
    pub(super) async fn land(
        &self,
        code: &str,
        flying: Option<Flying>,
        ctx: &Ctx,
        counts: &mut RunCounts,
        unresolved: &mut Vec<Pulled>,
        confirmer: &mut Confirmer<'_, '_>,
    ) -> Result<(), RunStop> {
        let Some((flight, span, n)) = flying else {
            return Ok(());
        };
        let outcomes = self
            .finish_page(code, flight, ctx, counts, unresolved)
            .instrument(tracing::info_span!(parent: &span, "apply"))
            .await?;
        confirmer
            .confirm(&outcomes, (&span, n), counts)
            .await
            .map_err(|e| RunStop::Failed(e.to_string()))
    }

    /// Applies a page, concurrently where records differ (so they group-commit) and in order
    /// where the same record appears twice.
    pub(super) async fn apply_page(
        &self,
        code: &str,
        page: &[Pulled],
        ctx: &Ctx,
        counts: &mut RunCounts,
        unresolved: &mut Vec<Pulled>,
        guard: &mut Option<Collecting>,
    ) -> Result<Vec<Confirmation>, RunStop> {
        let plan = self.plan();
        let sync = plan.sync(code).ok_or("the sync is no longer configured")?;
        let external_ref = sync.external_ref.as_str();
        // Waves: the n-th occurrence of each external id goes in wave n.
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut waves: Vec<Vec<(usize, String)>> = Vec::new();
        let mut confirmations: Vec<Option<Confirmation>> = vec![None; page.len()];
        for (i, item) in page.iter().enumerate() {
            let id = item
                .external_id
                .clone()
                .or_else(|| item.values.get(external_ref).and_then(id_text));
            let Some(id) = id else {
                counts.failed += 1;
                confirmations[i] = Some(Confirmation {
                    external_id: String::new(),
                    error: Some(format!("{external_ref}: missing")),
                });
                continue;
            };
            let n = seen.entry(id.clone()).or_insert(0);
            if waves.len() <= *n {
                waves.push(Vec::new());
            }
            waves[*n].push((i, id));
            *n += 1;
        }
        for wave in waves {
            // Upserts go to the writer as one bundle (one group, one transaction); deletes
            // take their own path.
            let mut upserts = Vec::new();
            let mut deletes = Vec::new();
            let mut collected = Vec::new();
            // The wave's deletes of linked records go to the guard's hold, in one batch.
            let held = match guard.as_mut() {
                Some(g) => {
                    let ids: Vec<String> = wave
                        .iter()
                        .filter(|(i, _)| page[*i].action == PullAction::Delete)
                        .map(|(_, id)| id.clone())
                        .collect();
                    self.collect_deletes(sync, g, &ids)
                        .await
                        .map_err(store_failed)?
                }
                None => Default::default(),
            };
            for (n, (i, id)) in wave.iter().enumerate() {
                let item = &page[*i];
                let ctx = item_ctx(item, ctx);
                if let Some(g) = guard.as_mut() {
                    if item.action == PullAction::Delete {
                        if held.contains(id) {
                            collected.push(n);
                            continue;
                        }
                    } else if item.action != PullAction::Unlink {
                        self.uncollect(g, id).await.map_err(store_failed)?;
                    }
                }
                if matches!(item.action, PullAction::Delete | PullAction::Unlink) {
                    deletes.push((n, id.clone(), item.action == PullAction::Unlink, ctx));
                } else {
                    upserts.push((n, id.clone(), upsert_payload(item, external_ref, id), ctx));
                }
            }
            let mut results: Vec<Option<Result<Applied, ApplyError>>> =
                (0..wave.len()).map(|_| None).collect();
            let (slots, items): (Vec<usize>, Vec<_>) = upserts
                .into_iter()
                .map(|(n, id, payload, ctx)| (n, (id, payload, ctx)))
                .unzip();
            let deleted =
                futures_util::future::join_all(deletes.iter().map(|(_, id, unlink_only, ctx)| {
                    self.apply_inbound(
                        code,
                        InboundOp::Delete {
                            external_id: id.clone(),
                            unlink_only: *unlink_only,
                        },
                        ctx,
                    )
                }));
            let (applied, deleted) =
                futures_util::future::join(self.apply_upserts(code, items, false), deleted).await;
            for (n, r) in slots.into_iter().zip(applied) {
                results[n] = Some(r);
            }
            for ((n, _, _, _), r) in deletes.iter().zip(deleted) {
                results[*n] = Some(r);
            }
            // Collected by the delete guard: settled at the end of the run.
            for n in collected {
                results[n] = Some(Ok(Applied::Collected));
            }
            let results = results
                .into_iter()
                .map(|r| r.expect("every item has a result"));
            for ((i, id), result) in wave.into_iter().zip(results) {
                let error = self
                    .count_outcome(code, &page[i], &id, result, ctx, counts, unresolved)
                    .await?;
                confirmations[i] = Some(Confirmation {
                    external_id: id,
                    error,
                });
            }
        }
        Ok(confirmations.into_iter().flatten().collect())
    }

    /// Counts one pulled record's outcome; a refusal is logged (and a record waiting for a
    /// reference kept for a second attempt) and its message is what the connector hears.
    #[allow(clippy::too_many_arguments)]
    async fn count_outcome(
        &self,
        code: &str,
        item: &Pulled,
        id: &str,
        result: Result<Applied, ApplyError>,
        ctx: &Ctx,
        counts: &mut RunCounts,
        unresolved: &mut Vec<Pulled>,
    ) -> Result<Option<String>, RunStop> {
        match result {
            Ok(Applied::Created(_)) => counts.created += 1,
            Ok(Applied::Updated(_, conflicts)) => {
                counts.updated += 1;
                counts.conflicts += conflicts as i64;
            }
            Ok(Applied::Deleted(_)) => counts.deleted += 1,
            Ok(Applied::Unlinked(_)) => counts.unlinked += 1,
            Ok(Applied::Collected) => {}
            Ok(Applied::Held(_)) => counts.held += 1,
            Ok(Applied::Ambiguous) => counts.ambiguous += 1,
            Ok(Applied::NoOp(_))
            | Err(ApplyError::UnknownExternalId(..))
            | Ok(Applied::Skipped(_)) => counts.skipped += 1,
            Err(ApplyError::Store(e)) => return Err(store_failed(e)),
            Err(e) => {
                counts.failed += 1;
                let msg = e.to_string();
                self.log_pull_failure(code, item, id, &msg, ctx)
                    .await
                    .map_err(store_failed)?;
                if matches!(e, ApplyError::MissingReference(_)) {
                    unresolved.push(item.clone());
                }
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// The change-control row of a pulled record that could not be applied.
    async fn log_pull_failure(
        &self,
        code: &str,
        item: &Pulled,
        id: &str,
        msg: &str,
        ctx: &Ctx,
    ) -> Result<(), StoreError> {
        let action = match (item.label, item.action) {
            (Some(label), _) => super::label_action(label),
            (None, PullAction::Delete) => LogAction::Delete,
            (None, PullAction::Unlink) => LogAction::Unlink,
            (None, PullAction::Update) => LogAction::Update,
            (None, PullAction::Insert) => LogAction::Create,
        };
        self.log_alone(NewChange {
            external_id: Some(id.to_string()),
            origin_values: Value::Object(item.values.clone()),
            run_id: ctx.run_id,
            actor: ctx.actor.clone(),
            ..NewChange::unapplied(
                code,
                action,
                format!("Pulled {} refused", action.as_str()),
                LogStatus::Failed,
                msg,
            )
        })
        .await
    }
}

/// A pulled record's values as an upsert's payload: its id under the sync's `external_ref`
/// when the values lack it.
fn upsert_payload(item: &Pulled, external_ref: &str, id: &str) -> Value {
    let mut values = item.values.clone();
    values
        .entry(external_ref.to_string())
        .or_insert_with(|| Value::String(id.to_string()));
    Value::Object(values)
}

/// The run's context for one pulled record: its own modification time and label.
fn item_ctx(item: &Pulled, ctx: &Ctx) -> Ctx {
    Ctx {
        modified_at: item.modified_at.or(ctx.modified_at),
        relabel: item.label.map(super::label_action),
        ..ctx.clone()
    }
}
