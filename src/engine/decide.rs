//! What each request of a round will do, decided against the store as it is, reading only:
//! the link and record of each request, `match_on` for unlinked ones, the three-way merge.

use super::Engine;
use super::apply::{Applied, ApplyError, invalid};
use super::batch::Prepared;
use super::rows::paused_reason;
use crate::domain::Plan;
use crate::domain::merge::{Conflict, Modified, merge};
use crate::domain::plan::{Model, Sync};
use crate::store::{Link, Record, StoreError};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// What a prepared job will write.
pub(super) enum Intent {
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
    pub(super) results: Vec<Option<Result<Applied, ApplyError>>>,
    pub(super) records: HashMap<(String, i64), Record>,
    pub(super) matched: HashMap<usize, (i64, Vec<String>)>,
    pub(super) ambiguous: HashMap<usize, (String, Vec<i64>)>,
    pub(super) intents: Vec<Option<Intent>>,
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

impl Engine {
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

fn outside(sync: &Sync) -> String {
    format!(
        "the record does not match the domain of sync `{}`, so nothing was written",
        sync.code
    )
}
