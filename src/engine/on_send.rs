//! Conflicts on send (`mapping.md`): before a batch of updates goes out, the records are read
//! as they are now, in one call per sync where the connector can (Odoo reads many ids in one
//! `search_read`). A record changed there since the base is not written over: the change is
//! applied here first, as if pulled (three-way merge, `priority`, `conflict` rows, fan-out),
//! and whatever the merge kept that the external side lacks goes out in an entry of its own.
//! A connector that cannot read one record is not asked; the next pull settles it.

use super::memory::SyncMemory;
use super::rows::as_pulled;
use super::{Ctx, Engine};
use crate::connectors::{PullAction, Pulled};
use crate::domain::Plan;
use crate::domain::mapping::{ExternalField, NoRefs, to_external, to_local};
use crate::domain::plan::Sync;
use crate::engine::Applied;
use crate::store::{Link, LogDirection, OutboxEntry, Record, StoreError};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use tracing::Instrument;

/// What the read before sending decided for an entry (entries not named are sent as usual).
#[derive(Clone)]
pub(super) enum Verdict {
    /// The external change was applied here first (or a create found its record there and
    /// linked it); what still has to go out was queued anew.
    Superseded,
    /// A create whose `match_on` fields match several external records: nothing is created
    /// or linked, and the row names the candidates.
    Ambiguous(String),
    /// The external record is gone (its delete held here for a person, or not seen yet):
    /// nothing is sent to it, and a `skipped` row says why.
    Gone(String),
    /// Not sent this time: the read or the apply failed (retried with backoff).
    Failed(String),
}

/// An update about to go out: the entry, its record and its external id.
struct Due {
    entry: i64,
    local_id: i64,
    external_id: String,
}

impl Engine {
    /// Reads the external records of the batch's updates, applies the ones that changed
    /// there since they were last synced, and refreshes `links` for those that still go out.
    pub(super) async fn check_before_send(
        &self,
        plan: &Plan,
        batch: &[OutboxEntry],
        records: &HashMap<(String, i64), Record>,
        links: &mut HashMap<(String, i64), Link>,
        paused: &HashSet<(String, i64)>,
    ) -> Result<HashMap<i64, Verdict>, StoreError> {
        let mut due: BTreeMap<&str, Vec<Due>> = BTreeMap::new();
        for e in batch.iter().filter(|e| e.action != "delete") {
            let Some(sync) = plan.sync(&e.sync) else {
                continue;
            };
            if !sync.direction.to_local() || !sync.active {
                continue;
            }
            let key = (e.sync.clone(), e.local_id);
            if paused.contains(&key) {
                continue;
            }
            let Some(record) = records.get(&(sync.model.clone(), e.local_id)) else {
                continue;
            };
            let Some(link) = links.get(&key) else {
                continue;
            };
            let Some(ext) = link.external_id.clone() else {
                continue;
            };
            let forced = e.payload.get("force") == Some(&Value::Bool(true));
            if record.deleted || (!forced && link.synced_version >= record.version) {
                continue;
            }
            due.entry(sync.code.as_str()).or_default().push(Due {
                entry: e.id,
                local_id: e.local_id,
                external_id: ext,
            });
        }
        let mut verdicts = self
            .match_creates(plan, batch, records, links, paused)
            .await?;
        // Records whose delete from the external side waits in a hold: that side no longer
        // has them, so no update is sent there while a person decides.
        let mut held_by_sync: HashMap<&str, HashSet<i64>> = HashMap::new();
        for code in due.keys() {
            held_by_sync.insert(
                code,
                self.store
                    .held_local_ids(code, LogDirection::ExternalToLocal.as_str())
                    .await?,
            );
        }
        for (code, items) in due.iter_mut() {
            let held = &held_by_sync[code];
            if held.is_empty() {
                continue;
            }
            items.retain(|d| {
                if held.contains(&d.local_id) {
                    verdicts.insert(
                        d.entry,
                        Verdict::Gone(format!(
                            "external `{}` is gone and its delete is held for a person (`recsync holds`); nothing is sent to it",
                            d.external_id
                        )),
                    );
                    false
                } else {
                    true
                }
            });
        }
        for (code, items) in due {
            let sync = plan.sync(code).expect("listed above");
            let Some(connector) = self.connector(&sync.web_service) else {
                continue;
            };
            let mut ids: Vec<String> = items.iter().map(|d| d.external_id.clone()).collect();
            ids.sort();
            ids.dedup();
            let memory = SyncMemory {
                engine: self,
                code,
                ctx: Ctx::actor("outbox"),
            };
            let current: HashMap<String, Pulled> = match connector
                .read_records(sync, plan, &memory, &ids)
                .instrument(tracing::info_span!(
                    "connector.read_records",
                    sync = code,
                    ids = ids.len()
                ))
                .await
            {
                Ok(None) => continue,
                Ok(Some(list)) => list
                    .into_iter()
                    .filter_map(|p| p.external_id.clone().map(|id| (id, p)))
                    .collect(),
                Err(e) => {
                    let why = format!(
                        "reading the record from web service `{}` before updating it failed: {e}",
                        sync.web_service
                    );
                    for d in &items {
                        verdicts.insert(d.entry, Verdict::Failed(why.clone()));
                    }
                    continue;
                }
            };
            // Records changed there since the base, each applied once.
            let mut changed: Vec<(&Due, &Pulled)> = Vec::new();
            let mut seen = HashSet::new();
            for d in &items {
                let Some(p) = current.get(&d.external_id) else {
                    // Not there any more (deleted, or out of the sync's view): nothing is
                    // written to it; the next full run or reconciliation finds it gone and
                    // settles it (a delete through the guard).
                    verdicts.insert(
                        d.entry,
                        Verdict::Gone(format!(
                            "external `{}` is not there any more (deleted, or out of the sync's view), so nothing was sent; the next full run or reconciliation settles it",
                            d.external_id
                        )),
                    );
                    continue;
                };
                let link = &links[&(code.to_string(), d.local_id)];
                if p.action == PullAction::Update
                    && changed_there(sync, link, p)
                    && seen.insert(&d.external_id)
                {
                    changed.push((d, p));
                }
            }
            if changed.is_empty() {
                continue;
            }
            let work = changed
                .iter()
                .map(|(d, p)| {
                    let payload = as_pulled(sync, &d.external_id, p.values.clone());
                    (d.external_id.clone(), payload, read_ctx(p))
                })
                .collect();
            let applied = self.apply_upserts(code, work, true).await;
            let mut fresh = Vec::new();
            for ((d, _), result) in changed.iter().zip(applied) {
                let verdict = match result {
                    // Nothing to merge after all (a reference resolved to what was synced).
                    Ok(Applied::NoOp(_)) => {
                        fresh.push(d.local_id);
                        continue;
                    }
                    Ok(_) => Verdict::Superseded,
                    Err(e) => Verdict::Failed(format!(
                        "the record changed in web service `{}` since it was last synced, and that change could not be applied here: {e}",
                        sync.web_service
                    )),
                };
                for other in items.iter().filter(|o| o.external_id == d.external_id) {
                    verdicts.insert(other.entry, verdict.clone());
                }
            }
            // A rebased link goes out with the base the apply wrote.
            if !fresh.is_empty() {
                for l in self
                    .store
                    .links_by_local(&plan.binding_of(code), &fresh)
                    .await?
                {
                    links.insert((code.to_string(), l.local_id), l);
                }
            }
        }
        Ok(verdicts)
    }
}

impl Engine {
    /// `match_on` on send: a create of a sync with `match_on`, where the connector can search,
    /// first looks for the record on the external side. One match is linked instead of copied
    /// (and, for a sync that receives, its values are merged here as on a pull: fields that
    /// differ are settled by `priority`); several match: nothing is created.
    async fn match_creates(
        &self,
        plan: &Plan,
        batch: &[OutboxEntry],
        records: &HashMap<(String, i64), Record>,
        links: &mut HashMap<(String, i64), Link>,
        paused: &HashSet<(String, i64)>,
    ) -> Result<HashMap<i64, Verdict>, StoreError> {
        let mut verdicts = HashMap::new();
        for e in batch.iter().filter(|e| e.action != "delete") {
            let Some(sync) = plan.sync(&e.sync) else {
                continue;
            };
            let key = (e.sync.clone(), e.local_id);
            if sync.match_on.is_empty()
                || !sync.active
                || paused.contains(&key)
                || links.get(&key).is_some_and(|l| l.external_id.is_some())
            {
                continue;
            }
            let Some(record) = records.get(&(sync.model.clone(), e.local_id)) else {
                continue;
            };
            // A deleted record's create goes out only so that its delete can follow (an
            // earlier attempt may have reached the service). It is looked for there only when
            // an earlier attempt was made: a crash before its answer was recorded left a copy
            // there, which the delete must remove, instead of a second copy made now.
            if (record.deleted && e.attempts <= 1) || self.awaits_first_run(sync).await? {
                continue;
            }
            let Some(connector) = self.connector(&sync.web_service) else {
                continue;
            };
            let binding = plan.binding_of(&e.sync);
            // Linked since the batch was read (a pull matched the record on `match_on`
            // meanwhile): the entry goes out as an update over that link, never as a second
            // create.
            if let Some(l) = self.store.link_by_local(&binding, e.local_id).await?
                && l.external_id.is_some()
            {
                links.insert(key, l);
                continue;
            }
            let mut found = None;
            for group in &sync.match_on {
                let Some((wanted, criteria)) = group_values(sync, group, &record.values) else {
                    continue;
                };
                let memory = SyncMemory {
                    engine: self,
                    code: sync.code.as_str(),
                    ctx: Ctx::actor("outbox"),
                };
                let candidates = match connector
                    .search(sync, plan, &memory, &criteria)
                    .instrument(tracing::info_span!("connector.search", sync = %sync.code))
                    .await
                {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(err) => {
                        verdicts.insert(
                            e.id,
                            Verdict::Failed(format!(
                                "looking for the record in web service `{}` before creating it failed: {err}",
                                sync.web_service
                            )),
                        );
                        break;
                    }
                };
                let mut hits = Vec::new();
                let mut linked_meanwhile = None;
                for c in candidates {
                    let Some(id) = c.external_id.clone() else {
                        continue;
                    };
                    if c.action != PullAction::Update || !same_key(sync, group, &wanted, &c) {
                        continue;
                    }
                    match self.store.link_by_external(&binding, &id).await? {
                        // This record's since the link was read (a pull matched it while the
                        // search ran): the entry goes out as an update over that link.
                        Some(l) if l.local_id == e.local_id => linked_meanwhile = Some(l),
                        // Someone else's already.
                        Some(_) => {}
                        None => hits.push((id, c)),
                    }
                }
                if let Some(l) = linked_meanwhile {
                    links.insert(key.clone(), l);
                    break;
                }
                match hits.len() {
                    0 => continue,
                    1 => found = hits.pop(),
                    _ => {
                        let ids: Vec<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
                        verdicts.insert(
                            e.id,
                            Verdict::Ambiguous(format!(
                                "several records of web service `{}` match on {}: {}; nothing was created or linked",
                                sync.web_service,
                                group.join(", "),
                                ids.join(", ")
                            )),
                        );
                    }
                }
                break;
            }
            let Some((ext, found)) = found else {
                continue;
            };
            let why = format!(
                "found in web service `{}` by {} before creating it: linked, not copied",
                sync.web_service,
                sync.match_on
                    .iter()
                    .map(|g| g.join(", "))
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
            let left = links.get(&key).map(|l| l.left.clone()).unwrap_or_default();
            // Deleted here: linked only (nothing merged into a deleted record); its delete,
            // queued behind this entry, removes the copy there.
            let found = (!record.deleted).then_some(found);
            match self
                .adopt(plan, sync, e.local_id, record, &ext, found, why, left)
                .await?
            {
                Adopted::Linked(_) if record.deleted => {
                    verdicts.insert(e.id, Verdict::Superseded);
                }
                Adopted::Merged => {
                    verdicts.insert(e.id, Verdict::Superseded);
                }
                Adopted::Failed(m) => {
                    verdicts.insert(e.id, Verdict::Failed(m));
                }
                Adopted::Linked(link) => {
                    links.insert(key, link);
                }
                // Linked by someone else while it was adopted: over that link if it is this
                // record's, else the entry is decided again on its next attempt (never a
                // create that would copy the record a second time).
                Adopted::Raced => match self.store.link_by_local(&binding, e.local_id).await? {
                    Some(l) if l.external_id.is_some() => {
                        links.insert(key, l);
                    }
                    _ => {
                        verdicts.insert(
                            e.id,
                            Verdict::Failed(format!(
                                "record `{ext}` of web service `{}` was linked elsewhere while it was being linked; decided again on the next attempt",
                                sync.web_service
                            )),
                        );
                    }
                },
            }
        }
        Ok(verdicts)
    }
}

/// What became of a record found on the external side for a create.
pub(super) enum Adopted {
    /// Linked, and its values merged here as a pull would; what the external side lacks was
    /// queued anew.
    Merged,
    /// Linked, for a sync that only sends: the create goes out as an update of every field.
    Linked(Link),
    /// Linked meanwhile by someone else (a pull, another instance): the entry decides again.
    Raced,
    /// Linked, and its values could not be applied (or read).
    Failed(String),
}

impl Engine {
    /// Links local record `local_id` to external record `ext` with nothing agreed yet (every
    /// field that differs is then settled by `priority`, as when a pull matches a record),
    /// with a `link` row saying `why`, and, for a sync that receives, merges the external
    /// values (read now when `found` is not given; unread, the next pull merges them).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn adopt(
        &self,
        plan: &Plan,
        sync: &Sync,
        local_id: i64,
        record: &Record,
        ext: &str,
        found: Option<Pulled>,
        why: String,
        left: Vec<String>,
    ) -> Result<Adopted, StoreError> {
        let binding = plan.binding_of(sync.code.as_str());
        let mut found = found;
        let mut read_failed = None;
        if found.is_none()
            && !record.deleted
            && sync.direction.to_local()
            && let Some(connector) = self.connector(&sync.web_service)
        {
            let memory = SyncMemory {
                engine: self,
                code: sync.code.as_str(),
                ctx: Ctx::actor("outbox"),
            };
            match connector
                .read_records(sync, plan, &memory, &[ext.to_string()])
                .instrument(
                    tracing::info_span!("connector.read_records", sync = %sync.code, ids = 1),
                )
                .await
            {
                Ok(Some(list)) => found = list.into_iter().find(|p| p.action == PullAction::Update),
                Ok(None) => {}
                Err(e) => read_failed = Some(e.to_string()),
            }
        }
        if let Some(e) = read_failed {
            // Not linked yet: the entry tries again, and reads again.
            return Ok(Adopted::Failed(format!(
                "web service `{}` already holds the record as `{ext}`, and reading it failed: {e}",
                sync.web_service
            )));
        }
        let link = Link {
            binding: binding.clone(),
            local_id,
            external_id: Some(ext.to_string()),
            base: Default::default(),
            // Unread, nothing goes out over the record there until a pull has merged it.
            synced_version: if sync.direction.to_local() && found.is_none() {
                record.version
            } else {
                0
            },
            external_hash: None,
            left,
        };
        let mut tx = self.store.begin().await?;
        if let Some(other) = tx.link_by_external(&binding, ext).await? {
            if other.local_id != local_id {
                return Ok(Adopted::Failed(format!(
                    "web service `{}` already holds the record as `{ext}`, which is linked to local record {}: two local records stand for one there",
                    sync.web_service, other.local_id
                )));
            }
            return Ok(Adopted::Raced);
        }
        if tx
            .link_by_local(&binding, local_id)
            .await?
            .is_some_and(|l| l.external_id.is_some())
        {
            return Ok(Adopted::Raced);
        }
        tx.upsert_links(std::slice::from_ref(&link)).await?;
        let mut row = super::rows::log_row(
            sync,
            &plan.models[&sync.model],
            crate::store::LogDirection::LocalToExternal,
            crate::store::LogAction::Link,
            Some(local_id),
            &record.values,
        );
        row.external_id = Some(ext.to_string());
        row.error_message = why;
        row.actor = "outbox".into();
        tx.log_changes(&[row]).await?;
        tx.commit().await?;
        if !sync.direction.to_local() || record.deleted {
            return Ok(Adopted::Linked(link));
        }
        let Some(found) = found else {
            return Ok(Adopted::Merged);
        };
        let ctx = read_ctx(&found);
        let applied = self.apply_pulled(sync, ext, found.values, ctx, true).await;
        Ok(match applied {
            Ok(_) => Adopted::Merged,
            Err(err) => Adopted::Failed(format!(
                "the record found in web service `{}` was linked, and its values could not be applied here: {err}",
                sync.web_service
            )),
        })
    }
}

/// How a record read from the external side is applied: by the outbox, with its time there.
fn read_ctx(p: &Pulled) -> Ctx {
    Ctx {
        modified_at: p.modified_at,
        ..Ctx::actor("outbox")
    }
}

/// A `match_on` group's normalised local values and, by local field, the external values to
/// search for; `None` when a field is empty or not sent.
fn group_values(
    sync: &Sync,
    group: &[String],
    values: &serde_json::Map<String, Value>,
) -> Option<(Vec<String>, serde_json::Map<String, Value>)> {
    let mut wanted = Vec::new();
    let mut criteria = serde_json::Map::new();
    for f in group {
        wanted.push(key_of(values.get(f))?);
        let pair = sync
            .fields
            .iter()
            .find(|p| &p.local == f && p.direction.to_external())?;
        let mapped = Value::Object(to_external(std::slice::from_ref(pair), values, &NoRefs).ok()?);
        let v = match &pair.external {
            ExternalField::Name(n) => mapped.get(n).cloned(),
            ExternalField::Path(p) => p.select(&mapped).first().map(|v| (*v).clone()),
            ExternalField::Computed => None,
        }?;
        criteria.insert(f.clone(), v);
    }
    Some((wanted, criteria))
}

/// Whether a candidate's values carry the same `match_on` key.
fn same_key(sync: &Sync, group: &[String], wanted: &[String], c: &Pulled) -> bool {
    let Ok(inbound) = to_local(&sync.fields, &Value::Object(c.values.clone())) else {
        return false;
    };
    group
        .iter()
        .zip(wanted)
        .all(|(f, w)| key_of(inbound.values.get(f)).as_ref() == Some(w))
}

/// A `match_on` value as compared: text trimmed and lower-cased, numbers as written.
fn key_of(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_lowercase()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether the external record differs from what was last synced in a field this sync both
/// takes in and sends (only what is also sent can be written over; a field that only comes in,
/// a path or a computed value, is left to the next pull).
fn changed_there(sync: &Sync, link: &Link, p: &Pulled) -> bool {
    crate::connectors::changed_since(sync, &link.base, &p.values)
}
