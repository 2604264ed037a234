//! Plans (`recsync plan`, `POST /api/v1/syncs/<CODE>/plan`): what a run of one sync would do,
//! computed without doing it.
//!
//! A plan reads what a run would read: the connector's pages (opened in preview mode, so
//! nothing is confirmed and no webhook hint is taken; the connector's memory is kept in the
//! plan, not in the store), the listing of a full run, and the local records a push would
//! send. Each page's upserts are decided by the writer's own decision code in a transaction
//! that only reads and is rolled back. Nothing is written on either side: not a record, a
//! link, an outbox entry, a change-control row, a cursor or a run.

use super::apply::{ApplyError, Job};
use super::batch::prepare;
use super::decide::{Intent, Round};
use super::round_trip::SAMPLE;
use super::{Ctx, Engine};
use crate::connectors::{Connector, Memory, MemoryError, PullAction, PullStart, Turn};
use crate::domain::Plan;
use crate::domain::merge::Conflict;
use crate::domain::mirror::MirrorEntry;
use crate::domain::plan::Sync;
use crate::store::StoreError;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The kinds of change counted on each side, in the order they are shown.
const KINDS: [&str; 11] = [
    "create",
    "update",
    "delete",
    "unlink",
    "link",
    "conflict",
    "ambiguous",
    "held",
    "skipped",
    "failed",
    "unchanged",
];

/// What a run would do on one side.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct SidePlan {
    /// How many records each kind of change touches (every kind listed, zeros included).
    pub counts: BTreeMap<String, u64>,
    /// Up to `SAMPLE` records per kind.
    pub samples: BTreeMap<String, Vec<Value>>,
}

impl SidePlan {
    fn new() -> SidePlan {
        SidePlan {
            counts: KINDS.iter().map(|k| (k.to_string(), 0)).collect(),
            samples: BTreeMap::new(),
        }
    }

    fn add(&mut self, kind: &str, sample: Value) {
        *self.counts.entry(kind.to_string()).or_default() += 1;
        let s = self.samples.entry(kind.to_string()).or_default();
        if s.len() < SAMPLE {
            s.push(sample);
        }
    }

    /// Takes back one record counted under `kind` (it came again later in the run).
    fn remove(&mut self, kind: &str, external_id: &str) {
        if let Some(n) = self.counts.get_mut(kind) {
            *n = n.saturating_sub(1);
        }
        if let Some(s) = self.samples.get_mut(kind) {
            s.retain(|v| v.get("external_id").and_then(Value::as_str) != Some(external_id));
        }
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }
}

/// Deletes a run would hold for approval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HoldPlan {
    /// `local` (deletes of local records the external side reported) or `external`.
    pub side: String,
    pub deletes: u64,
    pub linked: u64,
    pub reason: String,
}

/// What a run of one sync would do.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SyncPlan {
    pub sync: String,
    /// `current`, or the folder of the edited mapping files planned with.
    pub configuration: String,
    /// Whether the run would read everything (`--full`, or a first `match_on` run).
    pub full: bool,
    /// Changes to local records, from what the external side reports.
    pub local: SidePlan,
    /// Changes sent to the external side.
    pub external: SidePlan,
    /// What a full run's listing would find.
    pub reconcile: Option<BTreeMap<String, u64>>,
    pub holds: Vec<HoldPlan>,
    /// Things worth knowing about this plan (only the first page could be read, ...).
    pub notes: Vec<String>,
    /// The two-way transformed fields, with the values they do not give back (empty when
    /// the sync has none).
    pub round_trip: Vec<super::RoundTrip>,
}

impl SyncPlan {
    /// Hides secret fields' values and secret strings in everything the plan shows.
    fn mask(&mut self, masker: &crate::domain::mask::Masker) {
        if masker.is_empty() {
            return;
        }
        for side in [&mut self.local, &mut self.external] {
            side.samples
                .values_mut()
                .flatten()
                .for_each(|s| masker.mask_value(s));
        }
        super::round_trip::mask(&mut self.round_trip, masker);
        for n in &mut self.notes {
            *n = masker.mask_text(n).into_owned();
        }
    }
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no sync `{0}`")]
    UnknownSync(String),
    /// The sync cannot be read without taking its changes (a `rest` service without
    /// `confirmation_url`).
    #[error("{0}")]
    CannotPlan(String),
    /// The external service failed.
    #[error("{0}")]
    Service(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

/// The connector's memory during a plan: read from the store, written to the plan only.
struct PlanMemory<'a> {
    engine: &'a Engine,
    code: &'a str,
    binding: String,
    turn: Arc<tokio::sync::Mutex<()>>,
    cursor: Mutex<Option<Option<String>>>,
    mirror: Mutex<HashMap<String, Option<MirrorEntry>>>,
    notes: Mutex<Vec<String>>,
}

fn lost(e: StoreError) -> MemoryError {
    MemoryError(e.to_string())
}

#[async_trait]
impl Memory for PlanMemory<'_> {
    async fn turn(&self) -> Turn {
        self.turn.clone().lock_owned().await
    }

    async fn cursor(&self) -> Result<Option<String>, MemoryError> {
        if let Some(c) = self.cursor.lock().expect("plan memory").clone() {
            return Ok(c);
        }
        Ok(self
            .engine
            .store
            .sync_state(self.code)
            .await
            .map_err(lost)?
            .and_then(|s| s.cursor))
    }

    async fn mirror(&self) -> Result<Vec<MirrorEntry>, MemoryError> {
        let mut entries = self
            .engine
            .store
            .dbx_entries(self.code)
            .await
            .map_err(lost)?;
        let over = self.mirror.lock().expect("plan memory").clone();
        entries.retain(|e| !over.contains_key(&e.id));
        entries.extend(over.into_values().flatten());
        Ok(entries)
    }

    async fn mirror_entry(&self, id: &str) -> Result<Option<MirrorEntry>, MemoryError> {
        if let Some(e) = self.mirror.lock().expect("plan memory").get(id) {
            return Ok(e.clone());
        }
        self.engine
            .store
            .dbx_entry(self.code, id)
            .await
            .map_err(lost)
    }

    async fn save(
        &self,
        upserts: &[MirrorEntry],
        deletes: &[String],
        cursor: Option<&str>,
    ) -> Result<(), MemoryError> {
        let mut m = self.mirror.lock().expect("plan memory");
        for e in upserts {
            m.insert(e.id.clone(), Some(e.clone()));
        }
        for id in deletes {
            m.insert(id.clone(), None);
        }
        if let Some(c) = cursor {
            *self.cursor.lock().expect("plan memory") = Some(Some(c.to_string()));
        }
        Ok(())
    }

    async fn linked_ids(&self) -> Result<Vec<String>, MemoryError> {
        self.engine
            .store
            .linked_external_ids(&self.binding)
            .await
            .map_err(lost)
    }

    async fn note(&self, _name: &str, _title: &str, message: &str) -> Result<(), MemoryError> {
        self.notes
            .lock()
            .expect("plan memory")
            .push(message.to_string());
        Ok(())
    }
}

/// The plan's state while pages are read: what each external id would do, the local records
/// matched so far, and the deletes reported.
struct Reading {
    local: SidePlan,
    /// External id -> the kind it was counted under.
    seen: HashMap<String, &'static str>,
    /// Local records `match_on` would link.
    taken: HashSet<(String, i64)>,
    linked: HashSet<i64>,
    /// Local candidates of ambiguous matches: a run's push does not copy them over.
    ambiguous: HashSet<i64>,
    /// Reported deletes (external id -> unlink only), in order.
    deletes: Vec<(String, bool)>,
    deleted: HashSet<String>,
    /// Records whose reference is not here (yet).
    failed_refs: HashSet<String>,
    /// The round trips of two-way transformed fields.
    trips: super::round_trip::RoundTrips,
}

impl Engine {
    /// Plans a run of sync `code`: under the current configuration, or under `edited` (a
    /// compiled configuration not yet in use, with the folder it came from). `full` plans a
    /// full run (`recsync run --full`).
    pub async fn plan_run(
        self: &Arc<Self>,
        code: &str,
        full: bool,
        edited: Option<(Arc<Plan>, String)>,
    ) -> Result<SyncPlan, PlanError> {
        let (plan, configuration) = match edited {
            Some((p, folder)) => (p, folder),
            None => (self.plan(), "current".to_string()),
        };
        let sync = plan
            .sync(code)
            .ok_or_else(|| PlanError::UnknownSync(code.to_string()))?
            .clone();
        // An edited configuration gets connectors of its own: its services may differ.
        let connector: Arc<dyn Connector> = match plan.web_services.get(&sync.web_service) {
            Some(s) if configuration != "current" => crate::connectors::build(s, &self.http),
            _ => self
                .connector(&sync.web_service)
                .ok_or_else(|| PlanError::UnknownSync(code.to_string()))?,
        };
        if let Some(why) = connector.preview_refusal(&sync) {
            return Err(PlanError::CannotPlan(why));
        }
        let binding = sync.binding();
        let full =
            full || (!sync.match_on.is_empty() && self.store.count_links(&binding).await? == 0);
        let mut out = SyncPlan {
            sync: code.to_string(),
            configuration,
            full,
            local: SidePlan::new(),
            external: SidePlan::new(),
            reconcile: None,
            holds: Vec::new(),
            notes: Vec::new(),
            round_trip: Vec::new(),
        };
        if !sync.active {
            out.notes
                .push(format!("sync `{code}` is inactive: a run does nothing"));
            return Ok(out);
        }
        let mut reading = Reading {
            local: SidePlan::new(),
            seen: HashMap::new(),
            taken: HashSet::new(),
            linked: HashSet::new(),
            ambiguous: HashSet::new(),
            deletes: Vec::new(),
            deleted: HashSet::new(),
            failed_refs: HashSet::new(),
            trips: super::round_trip::RoundTrips::new(&sync),
        };
        let memory = PlanMemory {
            engine: self,
            code,
            binding: binding.clone(),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            cursor: Mutex::new(None),
            mirror: Mutex::new(HashMap::new()),
            notes: Mutex::new(Vec::new()),
        };
        let ctx = Ctx {
            // Decided as a run's records are (an overlap read of a record deleted here does
            // not bring it back); the id is never written.
            run_id: Some(0),
            ..Ctx::actor("plan")
        };
        if sync.direction.to_local() || connector.keeps_mirror() {
            let service = |e: crate::connectors::PullError| PlanError::Service(e.to_string());
            let start = PullStart {
                notified_at: None,
                full,
                preview: true,
            };
            let mut puller = connector
                .open_pull(&sync, &plan, start, &memory)
                .await
                .map_err(service)?;
            loop {
                let page = puller.next_page(&memory).await.map_err(service)?;
                self.plan_page(&plan, &sync, &page.records, &ctx, &mut reading)
                    .await?;
                // Taken by the plan's memory only: nothing reaches the service.
                let confirmations: Vec<crate::connectors::Confirmation> = Vec::new();
                puller
                    .confirm(&memory, &confirmations)
                    .await
                    .map_err(service)?;
                if !page.more {
                    break;
                }
            }
            if full
                && sync.direction.to_local()
                && !connector.full_pull_lists()
                && connector.can_list(&sync)
            {
                let found = self
                    .plan_listing(&plan, &sync, &connector, &ctx, &mut reading)
                    .await?;
                out.reconcile = Some(found);
            }
        }
        out.notes
            .extend(memory.notes.lock().expect("plan memory").drain(..));
        self.plan_deletes(&plan, &sync, &mut reading, &mut out)
            .await?;
        if !reading.failed_refs.is_empty() {
            out.notes.push(format!(
                "{} record(s) refer to records not here yet; a run tries them again at its end, after the rest of the run is applied",
                reading.failed_refs.len()
            ));
        }
        out.local = std::mem::replace(&mut reading.local, SidePlan::new());
        if sync.direction.to_external() {
            let skip: HashSet<i64> = reading.linked.union(&reading.ambiguous).copied().collect();
            self.plan_push(&plan, &sync, full, &skip, &mut out).await?;
        }
        let mut trips = std::mem::take(&mut reading.trips);
        trips.check_local(&self.store, &sync).await?;
        out.round_trip = trips.done();
        if full && connector.full_pull_lists() {
            out.reconcile = Some(BTreeMap::from([
                ("extra".to_string(), out.local.count("create")),
                ("different".to_string(), out.local.count("update")),
                (
                    "missing".to_string(),
                    out.local.count("delete") + out.local.count("unlink") + out.local.count("held"),
                ),
            ]));
        }
        out.mask(&plan.masker());
        Ok(out)
    }

    /// Plans one page of pulled records.
    async fn plan_page(
        &self,
        plan: &Plan,
        sync: &Sync,
        page: &[crate::connectors::Pulled],
        ctx: &Ctx,
        reading: &mut Reading,
    ) -> Result<(), PlanError> {
        let external_ref = sync.external_ref.as_str();
        let mut upserts: Vec<(String, Value, Ctx)> = Vec::new();
        for item in page {
            let Some(id) = item.external_id.clone().or_else(|| {
                item.values
                    .get(external_ref)
                    .and_then(crate::domain::mapping::id_text)
            }) else {
                reading.local.add(
                    "failed",
                    json!({"external_id": null, "error": format!("{external_ref}: missing")}),
                );
                continue;
            };
            match item.action {
                PullAction::Delete | PullAction::Unlink => {
                    if reading.deleted.insert(id.clone()) {
                        reading
                            .deletes
                            .push((id, item.action == PullAction::Unlink));
                    }
                }
                _ => {
                    // Back after a delete earlier in the run: the delete is dropped.
                    if reading.deleted.remove(&id) {
                        reading.deletes.retain(|(d, _)| *d != id);
                    }
                    let mut values = item.values.clone();
                    values
                        .entry(external_ref.to_string())
                        .or_insert_with(|| Value::String(id.clone()));
                    let ctx = Ctx {
                        modified_at: item.modified_at,
                        relabel: item.label.map(super::label_action),
                        ..ctx.clone()
                    };
                    let values = Value::Object(values);
                    reading.trips.check_pulled(sync, &id, &values);
                    upserts.push((id, values, ctx));
                }
            }
        }
        // The same record twice in a page: the later one counts.
        for chunk in upserts.chunks(256) {
            let decided = self
                .preview_upserts(plan, sync.code.as_str(), chunk.to_vec(), &reading.taken)
                .await?;
            for item in decided {
                self.tally(sync, item, reading);
            }
        }
        Ok(())
    }

    fn tally(&self, sync: &Sync, item: PreviewItem, reading: &mut Reading) {
        let id = item.external_id.clone();
        if let Some(old) = reading.seen.remove(&id) {
            reading.local.remove(old, &id);
        }
        reading.failed_refs.remove(&id);
        if let Some((local_id, on)) = &item.matched {
            reading.taken.insert((sync.binding(), *local_id));
            if reading.linked.insert(*local_id) {
                reading.local.add(
                    "link",
                    json!({"external_id": id, "local_id": local_id, "match_on": on}),
                );
            }
        }
        let (kind, sample) = match item.outcome {
            Previewed::Failed(e, missing_ref) => {
                if missing_ref {
                    reading.failed_refs.insert(id.clone());
                }
                ("failed", json!({"external_id": id, "error": e}))
            }
            Previewed::Unchanged => ("unchanged", json!({"external_id": id})),
            Previewed::Ambiguous(candidates) => {
                reading.ambiguous.extend(candidates.iter().copied());
                (
                    "ambiguous",
                    json!({"external_id": id, "candidates": candidates}),
                )
            }
            Previewed::Skipped(local_id, reason) => (
                "skipped",
                json!({"external_id": id, "local_id": local_id, "reason": reason}),
            ),
            Previewed::Create(values) => ("create", json!({"external_id": id, "values": values})),
            Previewed::Update {
                local_id,
                changes,
                conflicts,
                leaves,
            } => {
                for c in &conflicts {
                    reading.local.add(
                        "conflict",
                        json!({
                            "external_id": id,
                            "local_id": local_id,
                            "field": c.field,
                            "local": c.local,
                            "external": c.external,
                            "winner": if c.winner == crate::domain::merge::Side::Local { "local" } else { "external" },
                        }),
                    );
                }
                if leaves {
                    reading.local.add(
                        "unlink",
                        json!({"external_id": id, "local_id": local_id, "reason": "leaves the sync's domain"}),
                    );
                }
                let changes: Map<String, Value> = changes
                    .into_iter()
                    .map(|(k, from, to)| (k, json!({"from": from, "to": to})))
                    .collect();
                (
                    "update",
                    json!({"external_id": id, "local_id": local_id, "changes": changes}),
                )
            }
        };
        reading.local.add(kind, sample);
        reading.seen.insert(id, kind);
    }

    /// A full run's listing: what is listed and not linked or differs is planned like a
    /// pulled record, and what is linked and not listed is a delete.
    async fn plan_listing(
        &self,
        plan: &Arc<Plan>,
        sync: &Sync,
        connector: &Arc<dyn Connector>,
        ctx: &Ctx,
        reading: &mut Reading,
    ) -> Result<BTreeMap<String, u64>, PlanError> {
        let binding = sync.binding();
        let mut listed: HashSet<String> = HashSet::new();
        let (created, updated) = (reading.local.count("create"), reading.local.count("update"));
        let mut after = None;
        loop {
            let (page, next) = connector
                .list_records(sync, plan, after)
                .await
                .map_err(|e| PlanError::Service(format!("reconciliation: {e}")))?;
            let ids: Vec<String> = page.iter().map(|l| l.external_id.clone()).collect();
            let links = self.store.links_by_external_ids(&binding, &ids).await?;
            let mut candidates = Vec::new();
            for l in page {
                listed.insert(l.external_id.clone());
                let Some(values) = l.values else { continue };
                if let Some(link) = links.get(&l.external_id)
                    && super::batch::echoes(plan, sync, &l.external_id, &values, &link.base)
                {
                    continue;
                }
                candidates.push(crate::connectors::Pulled {
                    action: PullAction::Update,
                    values,
                    external_id: Some(l.external_id),
                    modified_at: None,
                    label: None,
                });
            }
            self.plan_page(plan, sync, &candidates, ctx, reading)
                .await?;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut missing = 0;
        for id in self.store.linked_external_ids(&binding).await? {
            if !listed.contains(&id) {
                missing += 1;
                if reading.deleted.insert(id.clone()) {
                    reading.deletes.push((id, false));
                }
            }
        }
        Ok(BTreeMap::from([
            ("missing".to_string(), missing),
            ("extra".to_string(), reading.local.count("create") - created),
            (
                "different".to_string(),
                reading.local.count("update").saturating_sub(updated),
            ),
        ]))
    }

    /// The reported deletes of linked records, through the delete guard.
    async fn plan_deletes(
        &self,
        plan: &Plan,
        sync: &Sync,
        reading: &mut Reading,
        out: &mut SyncPlan,
    ) -> Result<(), PlanError> {
        let binding = sync.binding();
        let model = &plan.models[&sync.model];
        let mut planned: Vec<(&'static str, Value)> = Vec::new();
        for chunk in reading.deletes.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let links = self.store.links_by_external_ids(&binding, &ids).await?;
            let local: Vec<i64> = links.values().map(|l| l.local_id).collect();
            let paused = self.store.paused_among(sync.code.as_str(), &local).await?;
            let titles: HashMap<i64, String> = self
                .store
                .records_by_ids(&model.name, &local)
                .await?
                .into_iter()
                .map(|r| (r.id, model.title(r.id, &r.values)))
                .collect();
            for (id, unlink_only) in chunk {
                let Some(link) = links.get(id) else { continue };
                let sample = json!({
                    "external_id": id,
                    "local_id": link.local_id,
                    "title": titles.get(&link.local_id),
                });
                if paused.contains(&link.local_id) {
                    planned.push(("skipped", sample));
                } else if sync.propagate_deletes && !unlink_only {
                    planned.push(("delete", sample));
                } else {
                    planned.push(("unlink", sample));
                }
            }
        }
        let deletes = planned.iter().filter(|(k, _)| *k == "delete").count() as u64;
        let hold = match (&sync.delete_guard, sync.propagate_deletes) {
            (Some(g), true) if deletes > 0 => {
                let linked = self.store.count_links(&binding).await? as u64;
                g.holds(deletes, linked).map(|reason| HoldPlan {
                    side: "local".into(),
                    deletes,
                    linked,
                    reason,
                })
            }
            _ => None,
        };
        for (kind, sample) in planned {
            let kind = if kind == "delete" && hold.is_some() {
                "held"
            } else {
                kind
            };
            reading.local.add(kind, sample);
        }
        out.holds.extend(hold);
        Ok(())
    }

    /// What the run's push would send: for cron syncs (and every sync with `full`), the
    /// records the push would choose, less those the pull would link.
    async fn plan_push(
        &self,
        plan: &Plan,
        sync: &Sync,
        full: bool,
        linked_by_pull: &HashSet<i64>,
        out: &mut SyncPlan,
    ) -> Result<(), PlanError> {
        let code = sync.code.as_str();
        let binding = sync.binding();
        let model = &plan.models[&sync.model];
        let super::run::Left {
            waiting,
            ambiguous,
            paused,
        } = self.left_by_push(plan, sync).await?;
        if !waiting.is_empty() {
            let dead = self.store.dead_local_ids(code).await?;
            let queued = waiting.iter().filter(|id| !dead.contains(id)).count();
            if queued > 0 {
                out.notes.push(format!(
                    "{queued} record(s) of this binding are waiting in the outbox; they are delivered whether or not a run happens (`recsync outbox list --status pending`)"
                ));
            }
            if !dead.is_empty() {
                out.notes.push(format!(
                    "{} record(s) of sync `{code}` are dead letters: their delivery gave up and is not tried again, by a run or otherwise, until a person retries it (`recsync outbox list`, then `recsync outbox retry <id>` or `recsync outbox retry-all {code}`)",
                    dead.len()
                ));
            }
        }
        if sync.mode != crate::domain::plan::Mode::Cron && !full {
            out.notes.push(format!(
                "sync `{code}` is real-time: local changes go out through the outbox as they happen, not in runs (`--full` plans sending every record again)"
            ));
            return Ok(());
        }
        let sent: Vec<&str> = sync
            .fields
            .iter()
            .filter(|p| p.direction.to_external())
            .flat_map(|p| p.sends_from())
            .collect();
        let mut side = SidePlan::new();
        let mut deletes: Vec<Value> = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.records_after(&sync.model, after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let ids: Vec<i64> = page.iter().map(|r| r.id).collect();
            let links: HashMap<i64, crate::store::Link> = self
                .store
                .links_by_local(&binding, &ids)
                .await?
                .into_iter()
                .map(|l| (l.local_id, l))
                .collect();
            let records: HashMap<i64, &crate::store::Record> =
                page.iter().map(|r| (r.id, r)).collect();
            let skip = |id: i64| {
                waiting.contains(&id) || paused.contains(&id) || linked_by_pull.contains(&id)
            };
            let resend = self.push_resends_all(sync, full);
            let selected = self.select_for_push(
                sync,
                model,
                &page,
                links.clone(),
                skip,
                &ambiguous,
                resend,
                0,
            );
            for (row, _) in &selected.unlinks {
                side.add(
                    "unlink",
                    json!({"local_id": row.local_id, "title": row.title, "reason": row.error_message}),
                );
            }
            for e in &selected.entries {
                let rec = records[&e.local_id];
                let link = links.get(&e.local_id);
                let title = model.title(rec.id, &rec.values);
                let external_id = link.and_then(|l| l.external_id.clone());
                match e.action.as_str() {
                    "create" => {
                        let values: Map<String, Value> = sent
                            .iter()
                            .filter_map(|f| rec.values.get(*f).map(|v| (f.to_string(), v.clone())))
                            .collect();
                        side.add(
                            "create",
                            json!({"local_id": rec.id, "title": title, "values": values}),
                        );
                    }
                    "delete" => deletes.push(
                        json!({"local_id": rec.id, "external_id": external_id, "title": title}),
                    ),
                    _ => {
                        let base = link.map(|l| &l.base);
                        let changes: Map<String, Value> = sent
                            .iter()
                            .filter_map(|f| {
                                let now = rec.values.get(*f).cloned().unwrap_or(Value::Null);
                                let was =
                                    base.and_then(|b| b.get(*f)).cloned().unwrap_or(Value::Null);
                                (now != was)
                                    .then(|| (f.to_string(), json!({"from": was, "to": now})))
                            })
                            .collect();
                        let kind = if changes.is_empty() {
                            "unchanged"
                        } else {
                            "update"
                        };
                        side.add(
                            kind,
                            json!({"local_id": rec.id, "external_id": external_id, "title": title, "changes": changes}),
                        );
                    }
                }
            }
        }
        if full && side.count("unchanged") > 0 {
            out.notes.push(format!(
                "a full run sends every linked record again: {} of them carry what the external side already has (`unchanged`)",
                side.count("unchanged")
            ));
        }
        let n = deletes.len() as u64;
        let hold = match (&sync.delete_guard, sync.propagate_deletes) {
            (Some(g), true) if n > 0 => {
                let linked = self.store.count_links(&binding).await? as u64;
                g.holds(n, linked).map(|reason| HoldPlan {
                    side: "external".into(),
                    deletes: n,
                    linked,
                    reason,
                })
            }
            _ => None,
        };
        let kind = if hold.is_some() { "held" } else { "delete" };
        for d in deletes {
            side.add(kind, d);
        }
        out.holds.extend(hold);
        out.external = side;
        Ok(())
    }
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
                checked: None,
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
