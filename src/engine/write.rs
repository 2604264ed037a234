//! One decided round written in one transaction: records created and updated with
//! multi-row statements, links, change-control rows, and the fan-out to the other syncs.

use super::Engine;
use super::apply::{Applied, ApplyError};
use super::batch::{Prepared, fill};
use super::decide::{Intent, Round};
use super::fanout::{Route, receivers, route};
use super::rows::log_row;
use crate::domain::Plan;
use crate::domain::merge::Side;
use crate::domain::plan::Sync;
use crate::store::{
    Link, LogAction, LogDirection, LogStatus, NewChange, NewOutbox, Record, StoreError, Tx,
};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};

/// A record's field values.
type Values = Map<String, Value>;

/// What writing a round has produced so far.
struct Out<'p> {
    /// Per request, its outcome once known.
    results: Vec<Option<Result<Applied, ApplyError>>>,
    new_links: Vec<Link>,
    rows: Vec<NewChange>,
    /// (request, record, action, the sync it came through, whether the origin must get the
    /// merged result back)
    written: Vec<(usize, Record, &'static str, &'p Sync, bool)>,
}

/// The writes a round's intents sort into, done per model in as few statements as possible.
#[derive(Default)]
struct Sorted {
    creates: HashMap<String, Vec<(usize, Values)>>,
    updates: HashMap<String, Vec<usize>>,
    /// Links left pointing at a deleted record, replaced by a create.
    stale_links: Vec<(String, i64)>,
}

impl Engine {
    /// Applies one round in one transaction. Per-request refusals are in the result; an error
    /// means nothing of the round was written.
    pub(super) async fn execute(
        &self,
        plan: &Plan,
        round: &[Prepared],
    ) -> Result<Vec<Result<Applied, ApplyError>>, StoreError> {
        let mut tx = self.store.begin().await?;
        let Round {
            results,
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
        let mut out = Out {
            results,
            new_links: Vec::new(),
            rows: Vec::new(),
            written: Vec::new(),
        };
        let sorted = sort(&mut tx, plan, round, &intents, &matched, &records, &mut out).await?;
        for (binding, local_id) in &sorted.stale_links {
            tx.delete_link(binding, *local_id).await?;
        }
        create(&mut tx, plan, round, sorted.creates, &mut out).await?;
        update(&mut tx, plan, round, sorted.updates, &intents, &mut out).await?;
        tx.upsert_links(&out.new_links).await?;
        let outbox = fan_out(&mut tx, plan, round, &mut out).await?;
        let Out {
            results, mut rows, ..
        } = out;
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
}

/// Sorts a round's intents into creates and updates, and writes at once what needs no record
/// written: `match_on` links, skips, kept changes of paused records, rebased links.
async fn sort<'p>(
    tx: &mut Tx,
    plan: &'p Plan,
    round: &[Prepared],
    intents: &[Option<Intent>],
    matched: &HashMap<usize, (i64, Vec<String>)>,
    records: &HashMap<(String, i64), Record>,
    out: &mut Out<'p>,
) -> Result<Sorted, StoreError> {
    let mut sorted = Sorted::default();
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
            out.rows.push(row);
        }
        match intent {
            Intent::NoOp(id) => out.results[i] = Some(Ok(Applied::NoOp(*id))),
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
                out.rows.push(row);
                out.results[i] = Some(Ok(Applied::Ambiguous));
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
                out.rows.push(row);
                out.results[i] = Some(Ok(Applied::Skipped(id)));
            }
            Intent::Rebase(id, link) => {
                out.new_links.push(link.clone());
                out.results[i] = Some(Ok(Applied::NoOp(*id)));
            }
            Intent::Create { values, stale } => {
                if let Some(old) = stale {
                    sorted.stale_links.push((round[i].binding.clone(), *old));
                }
                sorted
                    .creates
                    .entry(model.clone())
                    .or_default()
                    .push((i, values.clone()))
            }
            Intent::Update { .. } => sorted.updates.entry(model.clone()).or_default().push(i),
        }
    }
    Ok(sorted)
}

/// New records, per model in one statement each, with their links and rows.
async fn create<'p>(
    tx: &mut Tx,
    plan: &'p Plan,
    round: &[Prepared],
    creates: HashMap<String, Vec<(usize, Values)>>,
    out: &mut Out<'p>,
) -> Result<(), StoreError> {
    for (model, items) in creates {
        let (idx, values): (Vec<usize>, Vec<Values>) = items.into_iter().unzip();
        let recs = tx.insert_records(&model, values).await?;
        for (i, rec) in idx.into_iter().zip(recs) {
            let p = &round[i];
            let sync = &plan.syncs[&p.job.code];
            let m = &plan.models[&sync.model];
            out.new_links.push(Link {
                binding: p.binding.clone(),
                local_id: rec.id,
                external_id: Some(p.external_id.clone()),
                base: rec.values.clone(),
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
            row.destination_values = Value::Object(rec.values.clone());
            fill(&mut row, &p.job.ctx);
            out.rows.push(row);
            out.results[i] = Some(Ok(Applied::Created(rec.id)));
            out.written.push((i, rec, "create", sync, false));
        }
    }
    Ok(())
}

/// Updated records, per model in one statement each, with their links, conflicts and rows.
async fn update<'p>(
    tx: &mut Tx,
    plan: &'p Plan,
    round: &[Prepared],
    updates: HashMap<String, Vec<usize>>,
    intents: &[Option<Intent>],
    out: &mut Out<'p>,
) -> Result<(), StoreError> {
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
                out.results[i] = Some(Err(ApplyError::UnknownRecord(model.clone(), record.id)));
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
            out.new_links.push(Link {
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
                out.rows.push(row);
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
            // What those fields held before, for the change view.
            row.before_values = Value::Object(
                changed
                    .keys()
                    .map(|k| {
                        let was = record.values.get(k).cloned().unwrap_or(Value::Null);
                        (k.clone(), was)
                    })
                    .collect(),
            );
            fill(&mut row, &p.job.ctx);
            out.rows.push(row);
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
                out.rows.push(row);
            }
            out.results[i] = Some(Ok(Applied::Updated(rec.id, conflicts.len())));
            // Merged values the origin lacks go back to it as well.
            out.written.push((i, rec, "update", sync, *resend));
        }
    }
    Ok(())
}

/// The fan-out of what was written to the other syncs of each model, with the domain exits
/// and returns: the outbox entries to add (the links it changed are written here).
async fn fan_out(
    tx: &mut Tx,
    plan: &Plan,
    round: &[Prepared],
    out: &mut Out<'_>,
) -> Result<Vec<NewOutbox>, StoreError> {
    // Fan-out to the other syncs of each model, with the domain exits and returns.
    let mut outbox: Vec<NewOutbox> = Vec::new();
    let mut targets: HashMap<String, Vec<i64>> = HashMap::new();
    for (_, rec, action, origin, resend) in &out.written {
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
    for (i, rec, action, origin, resend) in &out.written {
        let model = &plan.models[&rec.model];
        let ctx = &round[*i].job.ctx;
        for t in receivers(plan, &rec.model, Some(origin), *resend) {
            let key = (t.binding(), rec.id);
            match route(t, model, rec, linked.get_mut(&key), action, "engine") {
                Route::Nothing => continue,
                Route::Exit(row) => {
                    touched.insert(key);
                    out.rows.push(*row);
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
    Ok(outbox)
}
