//! Conflicts on send (`mapping.md`): before a batch of updates goes out, the records are read
//! as they are now, in one call per sync where the connector can (Odoo reads many ids in one
//! `search_read`). A record changed there since the base is not written over: the change is
//! applied here first, as if pulled (three-way merge, `priority`, `conflict` rows, fan-out),
//! and whatever the merge kept that the external side lacks goes out in an entry of its own.
//! A connector that cannot read one record is not asked; the next pull settles it.

use super::{Ctx, Engine};
use crate::connectors::{PullAction, Pulled};
use crate::domain::Plan;
use crate::domain::mapping::to_local;
use crate::domain::plan::Sync;
use crate::engine::Applied;
use crate::store::{Link, OutboxEntry, Record, StoreError};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// What the read before sending decided for an entry (entries not named are sent as usual).
pub(super) enum Verdict {
    /// The external change was applied here first; what still has to go out was queued anew.
    Superseded,
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
        let mut verdicts = HashMap::new();
        for (code, items) in due {
            let sync = plan.sync(code).expect("listed above");
            let Some(connector) = self.connector(&sync.web_service) else {
                continue;
            };
            let mut ids: Vec<String> = items.iter().map(|d| d.external_id.clone()).collect();
            ids.sort();
            ids.dedup();
            let current: HashMap<String, Pulled> = match connector
                .read_records(sync, plan, &ids)
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
                    // Not there (or out of the sync's view): sent as usual, and the service
                    // answers for it.
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
                    let mut values = p.values.clone();
                    values
                        .entry(sync.external_ref.clone())
                        .or_insert_with(|| Value::String(d.external_id.clone()));
                    let ctx = Ctx {
                        modified_at: p.modified_at,
                        ..Ctx::actor("outbox")
                    };
                    (d.external_id.clone(), Value::Object(values), ctx)
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
                    verdicts.insert(
                        other.entry,
                        match &verdict {
                            Verdict::Superseded => Verdict::Superseded,
                            Verdict::Failed(m) => Verdict::Failed(m.clone()),
                        },
                    );
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

/// Whether the external record differs from what was last synced in a field this sync takes
/// in. Relational values are compared by the apply (their references resolve there); values
/// that do not map are left to the next pull, which reports them.
fn changed_there(sync: &Sync, link: &Link, p: &Pulled) -> bool {
    match to_local(&sync.fields, &Value::Object(p.values.clone())) {
        Ok(inbound) => {
            !inbound.refs.is_empty()
                || inbound
                    .values
                    .iter()
                    .any(|(k, v)| link.base.get(k).unwrap_or(&Value::Null) != v)
        }
        Err(_) => false,
    }
}
