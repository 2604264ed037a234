//! Dropbox syncs: the mirror of each sync's folder (kept in the store, keyed by Dropbox id and
//! looked up by path), listing loops that classify entries as create, update, rename, move or
//! delete and apply them through the ordinary inbound path, writes back to Dropbox for outbox
//! entries, and the webhook coordinator that coalesces notifications into one loop.

use super::{Ctx, Engine, InboundOp, Trigger, apply::Applied, apply::ApplyError};
use crate::connectors::SendError;
use crate::connectors::dropbox::{Change, DbxError, Dropbox, Page};
use crate::connectors::rest::{SendAction, Sent};
use crate::domain::mapping::ExternalField;
use crate::domain::plan::{DropboxFolder, ServiceSpec, Sync};
use crate::store::{DbxEntry, LogAction, LogDirection, LogStatus, NewChange, RunCounts};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Notifications arriving within this window of the first one share its loop.
pub const WEBHOOK_DEBOUNCE: Duration = Duration::from_millis(400);
/// Files larger than this are mirrored without their bytes.
const MAX_DOWNLOAD: i64 = 32 * 1024 * 1024;

/// What a listed entry is, compared with the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Update,
    Rename,
    Move,
    /// Exactly as mirrored (a write recsync made itself, or a replayed page).
    Same,
}

/// A sync's mirror in memory during a loop.
#[derive(Default)]
struct Mirror {
    by_id: HashMap<String, DbxEntry>,
    by_path: HashMap<String, String>,
}

impl Mirror {
    fn load(entries: Vec<DbxEntry>) -> Mirror {
        let mut m = Mirror::default();
        for e in entries {
            m.put(e);
        }
        m
    }

    fn put(&mut self, e: DbxEntry) {
        if let Some(old) = self.by_id.get(&e.id)
            && self.by_path.get(&old.path_lower) == Some(&e.id)
        {
            self.by_path.remove(&old.path_lower);
        }
        self.by_path.insert(e.path_lower.clone(), e.id.clone());
        self.by_id.insert(e.id.clone(), e);
    }

    /// Takes out the entry at `path` and, with `children`, everything below it.
    fn take_under(&mut self, path: &str, children: bool) -> Vec<DbxEntry> {
        let prefix = format!("{path}/");
        let ids: Vec<String> = self
            .by_id
            .values()
            .filter(|e| e.path_lower == path || (children && e.path_lower.starts_with(&prefix)))
            .map(|e| e.id.clone())
            .collect();
        ids.iter()
            .filter_map(|id| {
                let e = self.by_id.remove(id)?;
                if self.by_path.get(&e.path_lower) == Some(&e.id) {
                    self.by_path.remove(&e.path_lower);
                }
                Some(e)
            })
            .collect()
    }
}

fn parent(path_lower: &str) -> &str {
    path_lower.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// The path of `display` relative to `root` (`/a/b`), if it lies strictly below the root.
fn relative<'a>(root: &str, display: &'a str) -> Option<&'a str> {
    if root.is_empty() {
        return display.starts_with('/').then_some(display);
    }
    let head = display.get(..root.len())?;
    let rest = &display[root.len()..];
    (head.eq_ignore_ascii_case(root) || head.to_lowercase() == root.to_lowercase())
        .then_some(rest)
        .filter(|r| r.starts_with('/') && r.len() > 1)
}

/// The external values of a mirrored entry: every Dropbox field plus the pattern's captures.
fn entry_values(e: &DbxEntry, captures: BTreeMap<String, String>) -> Map<String, Value> {
    let mut v = Map::new();
    v.insert("id".into(), json!(e.id));
    v.insert("tag".into(), json!(e.tag));
    v.insert("name".into(), json!(e.name));
    v.insert("path".into(), json!(e.path_display));
    v.insert("path_lower".into(), json!(e.path_lower));
    let display_parent = e
        .path_display
        .rsplit_once('/')
        .map(|(p, _)| p)
        .unwrap_or("");
    v.insert("parent".into(), json!(display_parent));
    v.insert("size".into(), json!(e.size));
    v.insert("rev".into(), json!(e.rev));
    v.insert("content_hash".into(), json!(e.content_hash));
    v.insert("server_modified".into(), json!(e.server_modified));
    for (k, val) in captures {
        v.insert(k, Value::String(val));
    }
    v
}

/// A record-side operation of a loop, in order.
enum RecordOp {
    Upsert {
        id: String,
        values: Map<String, Value>,
        relabel: Option<LogAction>,
        modified_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    Delete(String),
}

/// A round of webhook work (debounce, then the loops), counted while it lives.
struct Round(Arc<Engine>);

impl Round {
    fn new(engine: Arc<Engine>) -> Round {
        engine
            .dropbox_rounds
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Round(engine)
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        self.0
            .dropbox_rounds
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Engine {
    /// The Dropbox client of a web service (one per service, kept until the plan changes).
    pub(crate) fn dropbox_client(&self, web_service: &str) -> Option<Arc<Dropbox>> {
        let plan = self.plan();
        let ServiceSpec::Dropbox(d) = &plan.web_services.get(web_service)?.spec else {
            return None;
        };
        let mut clients = self.dropbox.lock().expect("dropbox lock");
        Some(
            clients
                .entry(web_service.to_string())
                .or_insert_with(|| Arc::new(Dropbox::new(d, Duration::from_secs(60))))
                .clone(),
        )
    }

    /// The lock that keeps a sync's listing pages and its writes back from interleaving, so a
    /// write's echo always finds the mirror already updated.
    fn dropbox_gate(&self, code: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.dropbox_gates
            .lock()
            .expect("gates lock")
            .entry(code.to_string())
            .or_default()
            .clone()
    }

    /// The mirrored folder as a nested tree, from the store.
    pub async fn dropbox_tree(
        &self,
        code: &str,
    ) -> Result<Option<Value>, crate::store::StoreError> {
        let plan = self.plan();
        let Some(folder) = plan
            .sync(code)
            .and_then(|s| plan.external_models.get(&s.external_model))
            .and_then(|m| m.dropbox.as_ref())
        else {
            return Ok(None);
        };
        let entries = self.store.dbx_entries(code).await?;
        Ok(Some(build_tree(folder, entries)))
    }

    /// One listing loop of a Dropbox sync: `list_folder` the first time (or after a reset),
    /// `list_folder/continue` from the stored cursor otherwise, until `has_more` is false.
    pub(super) async fn pull_dropbox(
        &self,
        sync: &Sync,
        ctx: &Ctx,
        counts: &mut RunCounts,
        progress: &tokio::sync::watch::Sender<RunCounts>,
    ) -> Result<(), super::run::RunStop> {
        let code = sync.code.as_str();
        let plan = self.plan();
        let folder = plan
            .external_models
            .get(&sync.external_model)
            .and_then(|m| m.dropbox.clone())
            .ok_or("the external model is not a Dropbox folder")?;
        let dbx = self
            .dropbox_client(&sync.web_service)
            .ok_or("the web service is not a Dropbox account")?;
        let store_err = |e: crate::store::StoreError| format!("the store failed: {e}");
        let gate = self.dropbox_gate(code);
        let inbound = sync.direction.to_local() && sync.active;
        let wants_content = sync.fields.iter().any(|p| {
            p.direction.to_local()
                && matches!(&p.external, ExternalField::Name(n) if n == "content")
        });
        let started = Instant::now();
        let mut cursor = self
            .store
            .sync_state(code)
            .await
            .map_err(store_err)?
            .and_then(|s| s.cursor);
        let mut mirror = Mirror::load(self.store.dbx_entries(code).await.map_err(store_err)?);
        // A full listing (first start, or after a reset) ends by dropping what it did not see.
        let mut listing = cursor.is_none();
        let mut seen: HashSet<String> = HashSet::new();
        // Deleted entries wait until the loop ends: their id may reappear at a new path.
        let mut pending: HashMap<String, DbxEntry> = HashMap::new();
        let mut read = 0u64;
        loop {
            let _g = gate.lock().await;
            let page: Page = match &cursor {
                None => match dbx
                    .list_folder(&folder.root, folder.recursive, sync.limit as u32)
                    .await
                {
                    Ok(p) => p,
                    // The folder does not exist (yet): the mirror is empty, and the next loop
                    // lists again. Writes back create it.
                    Err(DbxError::NotFound(_)) => {
                        tracing::info!(sync = code, root = %folder.root, "The Dropbox folder does not exist yet");
                        Page {
                            entries: Vec::new(),
                            cursor: String::new(),
                            has_more: false,
                        }
                    }
                    Err(e) => return Err(format!("list_folder failed: {e}").into()),
                },
                Some(c) => match dbx.list_folder_continue(c).await {
                    Ok(p) => p,
                    Err(DbxError::Reset) => {
                        tracing::warn!(
                            sync = code,
                            "The Dropbox cursor was reset; listing the folder again and reconciling"
                        );
                        self.log_alone(NewChange {
                            sync: code.to_string(),
                            direction: LogDirection::ExternalToLocal,
                            action: LogAction::Update,
                            external_id: None,
                            local_id: None,
                            name: "Dropbox cursor reset".into(),
                            title: folder.root.clone(),
                            origin_values: json!({}),
                            destination_values: json!({}),
                            modified_at: None,
                            synced_at: None,
                            status: LogStatus::Skipped,
                            error_message: "Dropbox reset the cursor; the folder is listed again and reconciled with the store".into(),
                            run_id: ctx.run_id,
                            actor: ctx.actor.clone(),
                        })
                        .await
                        .map_err(store_err)?;
                        cursor = None;
                        listing = true;
                        seen.clear();
                        // What was waiting is reconciled by the full listing.
                        for (_, e) in pending.drain() {
                            mirror.put(e);
                        }
                        continue;
                    }
                    Err(e) => return Err(format!("list_folder/continue failed: {e}").into()),
                },
            };
            read += page.entries.len() as u64;
            counts.pulled += page.entries.len() as i64;
            let mut ops = Vec::new();
            let mut upserts: Vec<DbxEntry> = Vec::new();
            for change in page.entries {
                match change {
                    Change::Deleted { path_lower, .. } => {
                        for e in mirror.take_under(&path_lower, true) {
                            upserts.retain(|u| u.id != e.id);
                            pending.insert(e.id.clone(), e);
                        }
                    }
                    Change::Upsert(e) => {
                        let Some(rel) = relative(&folder.root, &e.path_display) else {
                            counts.skipped += 1;
                            continue;
                        };
                        let rel = rel.to_string();
                        seen.insert(e.id.clone());
                        let old = pending
                            .remove(&e.id)
                            .or_else(|| mirror.by_id.get(&e.id).cloned());
                        // Whatever else was at this path is replaced (a file replaces the
                        // children too).
                        if let Some(other) = mirror.by_path.get(&e.path_lower).cloned()
                            && other != e.id
                        {
                            for x in mirror.take_under(&e.path_lower, e.tag == "file") {
                                if x.id != e.id {
                                    pending.insert(x.id.clone(), x);
                                }
                            }
                        }
                        let kind = match &old {
                            None => Kind::Create,
                            Some(o) if o.path_lower == e.path_lower => {
                                if *o == e {
                                    Kind::Same
                                } else {
                                    Kind::Update
                                }
                            }
                            Some(o) if parent(&o.path_lower) == parent(&e.path_lower) => {
                                Kind::Rename
                            }
                            Some(_) => Kind::Move,
                        };
                        mirror.put(e.clone());
                        upserts.retain(|u| u.id != e.id);
                        upserts.push(e.clone());
                        if !inbound || kind == Kind::Same {
                            continue;
                        }
                        let captures = match &folder.pattern {
                            Some(p) => p.matches(&rel),
                            None => Some(BTreeMap::new()),
                        };
                        let Some(captures) = captures else {
                            counts.skipped += 1;
                            if old.is_some() {
                                // It left the pattern: its record goes.
                                ops.push(RecordOp::Delete(e.id.clone()));
                            }
                            continue;
                        };
                        let mut values = entry_values(&e, captures);
                        let content_changed = old
                            .as_ref()
                            .is_none_or(|o| o.content_hash != e.content_hash);
                        if wants_content
                            && e.tag == "file"
                            && content_changed
                            && e.size.unwrap_or(0) <= MAX_DOWNLOAD
                        {
                            match dbx.download(&e.id).await {
                                Ok(bytes) => {
                                    use base64::Engine as _;
                                    values.insert(
                                        "content".into(),
                                        json!(
                                            base64::engine::general_purpose::STANDARD.encode(bytes)
                                        ),
                                    );
                                }
                                Err(DbxError::NotFound(_)) => {}
                                Err(err) => {
                                    return Err(format!(
                                        "download of {} failed: {err}",
                                        e.path_display
                                    )
                                    .into());
                                }
                            }
                        }
                        let modified_at = e
                            .server_modified
                            .as_deref()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(|t| t.with_timezone(&chrono::Utc));
                        ops.push(RecordOp::Upsert {
                            id: e.id.clone(),
                            values,
                            relabel: match kind {
                                Kind::Rename => Some(LogAction::Rename),
                                Kind::Move => Some(LogAction::Move),
                                _ => None,
                            },
                            modified_at,
                        });
                    }
                }
            }
            self.apply_record_ops(code, ops, ctx, counts).await?;
            crate::crash::point("dropbox.before_mirror");
            let cursor_now = (!page.cursor.is_empty()
                && (!page.has_more || (!listing && pending.is_empty())))
            .then_some(page.cursor.as_str());
            if page.has_more {
                // The cursor is stored only where nothing is left waiting, so a crash replays
                // from a point where the mirror and the records agree.
                self.store
                    .dbx_apply(code, &upserts, &[], cursor_now)
                    .await
                    .map_err(store_err)?;
            } else {
                // The loop is over: what a full listing did not see is gone, and deletions
                // that did not come back as moves are real.
                if listing {
                    let unseen: Vec<String> = mirror
                        .by_id
                        .keys()
                        .filter(|id| !seen.contains(*id))
                        .cloned()
                        .collect();
                    for id in unseen {
                        if let Some(e) = mirror.by_id.remove(&id) {
                            pending.insert(id, e);
                        }
                    }
                }
                let gone: Vec<DbxEntry> = pending.drain().map(|(_, e)| e).collect();
                if inbound {
                    let mut ops: Vec<RecordOp> = gone
                        .iter()
                        .map(|e| RecordOp::Delete(e.id.clone()))
                        .collect();
                    if listing {
                        // A full listing is the truth: a record linked to an entry that is
                        // neither listed nor mirrored (its mirror row was lost to a crash
                        // between the record's write and the mirror's) goes too.
                        let known: HashSet<&str> = gone.iter().map(|e| e.id.as_str()).collect();
                        for id in self
                            .store
                            .linked_external_ids(code)
                            .await
                            .map_err(store_err)?
                        {
                            if !seen.contains(&id)
                                && !known.contains(id.as_str())
                                && !mirror.by_id.contains_key(&id)
                            {
                                ops.push(RecordOp::Delete(id));
                            }
                        }
                    }
                    self.apply_record_ops(code, ops, ctx, counts).await?;
                }
                let deletes: Vec<String> = gone.into_iter().map(|e| e.id).collect();
                self.store
                    .dbx_apply(code, &upserts, &deletes, cursor_now)
                    .await
                    .map_err(store_err)?;
            }
            cursor = Some(page.cursor);
            progress.send_replace(counts.clone());
            if !page.has_more {
                break;
            }
            if self.is_stopping() {
                return Err(super::run::RunStop::ShuttingDown);
            }
        }
        let lag = self
            .dropbox_lag
            .lock()
            .expect("lag lock")
            .remove(code)
            .map(|t| t.elapsed().as_secs_f64())
            .or(Some(started.elapsed().as_secs_f64()));
        crate::metrics::dropbox_loop(code, read, lag);
        Ok(())
    }

    /// Applies a loop's record operations in order: upserts of different entries go together,
    /// an entry seen twice or a deletion starts a new group.
    async fn apply_record_ops(
        &self,
        code: &str,
        ops: Vec<RecordOp>,
        ctx: &Ctx,
        counts: &mut RunCounts,
    ) -> Result<(), String> {
        let mut group: Vec<(String, Value, Ctx)> = Vec::new();
        for op in ops {
            match op {
                RecordOp::Upsert {
                    id,
                    values,
                    relabel,
                    modified_at,
                } => {
                    if group.iter().any(|(g, _, _)| *g == id) {
                        self.flush_upserts(code, std::mem::take(&mut group), counts)
                            .await?;
                    }
                    let c = Ctx {
                        relabel,
                        modified_at: modified_at.or(ctx.modified_at),
                        ..ctx.clone()
                    };
                    group.push((id, Value::Object(values), c));
                }
                RecordOp::Delete(id) => {
                    self.flush_upserts(code, std::mem::take(&mut group), counts)
                        .await?;
                    let r = self
                        .apply_inbound(
                            code,
                            InboundOp::Delete {
                                external_id: id.clone(),
                            },
                            ctx,
                        )
                        .await;
                    self.count_applied(code, &id, r, ctx, counts).await?;
                }
            }
        }
        self.flush_upserts(code, group, counts).await
    }

    async fn flush_upserts(
        &self,
        code: &str,
        group: Vec<(String, Value, Ctx)>,
        counts: &mut RunCounts,
    ) -> Result<(), String> {
        if group.is_empty() {
            return Ok(());
        }
        let meta: Vec<(String, Ctx)> = group
            .iter()
            .map(|(i, _, c)| (i.clone(), c.clone()))
            .collect();
        let results = self.apply_upserts(code, group).await;
        for ((id, ctx), r) in meta.into_iter().zip(results) {
            self.count_applied(code, &id, r, &ctx, counts).await?;
        }
        Ok(())
    }

    async fn count_applied(
        &self,
        code: &str,
        id: &str,
        r: Result<Applied, ApplyError>,
        ctx: &Ctx,
        counts: &mut RunCounts,
    ) -> Result<(), String> {
        match r {
            Ok(Applied::Created(_)) => counts.created += 1,
            Ok(Applied::Updated(_, c)) => {
                counts.updated += 1;
                counts.conflicts += c as i64;
            }
            Ok(Applied::Deleted(_)) => counts.deleted += 1,
            Ok(Applied::Unlinked(_)) => counts.unlinked += 1,
            Ok(Applied::NoOp(_))
            | Err(ApplyError::UnknownExternalId(..))
            | Ok(Applied::Skipped(_)) => counts.skipped += 1,
            Err(ApplyError::Store(e)) => return Err(format!("the store failed: {e}")),
            Err(e) => {
                counts.failed += 1;
                self.log_alone(NewChange {
                    sync: code.to_string(),
                    direction: LogDirection::ExternalToLocal,
                    action: ctx.relabel.unwrap_or(LogAction::Update),
                    external_id: Some(id.to_string()),
                    local_id: None,
                    name: "Dropbox entry refused".into(),
                    title: String::new(),
                    origin_values: json!({}),
                    destination_values: json!({}),
                    modified_at: None,
                    synced_at: None,
                    status: LogStatus::Failed,
                    error_message: e.to_string(),
                    run_id: ctx.run_id,
                    actor: ctx.actor.clone(),
                })
                .await
                .map_err(|e| format!("the store failed: {e}"))?;
            }
        }
        Ok(())
    }

    /// Delivers one outbox entry to Dropbox: create the folder or upload the file, move or
    /// rename it when its path changed, upload new bytes over the known revision, delete it.
    /// The mirror is updated under the sync's gate, so the webhook echo of this write is
    /// recognised and ignored.
    pub(super) async fn dropbox_send(
        &self,
        sync: &Sync,
        action: SendAction,
        external_id: Option<&str>,
        mapped: &Map<String, Value>,
    ) -> Result<(Sent, Option<LogAction>), SendError> {
        let code = sync.code.as_str();
        let plan = self.plan();
        let folder = plan
            .external_models
            .get(&sync.external_model)
            .and_then(|m| m.dropbox.clone())
            .ok_or_else(|| {
                SendError::Permanent("the external model is not a Dropbox folder".into())
            })?;
        let dbx = self.dropbox_client(&sync.web_service).ok_or_else(|| {
            SendError::Permanent("the web service is not a Dropbox account".into())
        })?;
        let gate = self.dropbox_gate(code);
        let _g = gate.lock().await;
        let store_err = |e: crate::store::StoreError| SendError::Retry {
            reason: format!("the store failed: {e}"),
            after: None,
        };
        if action == SendAction::Delete {
            let id = external_id.unwrap_or_default();
            match dbx.delete(id).await {
                Ok(()) | Err(DbxError::NotFound(_)) => {}
                Err(e) => return Err(send_error(e)),
            }
            let entries = self.store.dbx_entries(code).await.map_err(store_err)?;
            let gone = entries
                .iter()
                .find(|e| e.id == id)
                .map(|e| e.path_lower.clone());
            let deletes: Vec<String> = entries
                .iter()
                .filter(|e| {
                    gone.as_ref().is_some_and(|g| {
                        e.path_lower == *g || e.path_lower.starts_with(&format!("{g}/"))
                    })
                })
                .map(|e| e.id.clone())
                .collect();
            self.store
                .dbx_apply(code, &[], &deletes, None)
                .await
                .map_err(store_err)?;
            return Ok((
                Sent {
                    external_id: Some(id.to_string()),
                    request: json!({"call": "delete_v2", "path": id}),
                },
                None,
            ));
        }
        let path = target_path(&folder, mapped).map_err(SendError::Permanent)?;
        let content = match mapped.get("content") {
            Some(Value::String(b64)) => {
                use base64::Engine as _;
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| SendError::Permanent(format!("content: not base64 ({e})")))?,
                )
            }
            _ => None,
        };
        let is_file = match mapped.get("tag").and_then(Value::as_str) {
            Some(t) => t == "file",
            None => content.is_some(),
        };
        let mut calls = Vec::new();
        let mut relabel = None;
        let entry = match (action, external_id) {
            (SendAction::Create, _) | (_, None) => {
                if is_file {
                    calls.push("upload");
                    dbx.upload(&path, content.clone().unwrap_or_default(), None)
                        .await
                        .map_err(send_error)?
                } else {
                    calls.push("create_folder_v2");
                    match dbx.create_folder(&path).await {
                        Ok(e) => e,
                        // Already there: adopt the existing folder.
                        Err(DbxError::Conflict(_)) => match dbx.get_metadata(&path).await {
                            Ok(Some(Change::Upsert(e))) if e.tag == "folder" => e,
                            Ok(_) => {
                                return Err(SendError::Permanent(format!(
                                    "{path} is taken in Dropbox by something that is not a folder"
                                )));
                            }
                            Err(e) => return Err(send_error(e)),
                        },
                        Err(e) => return Err(send_error(e)),
                    }
                }
            }
            (_, Some(id)) => {
                let current = match self.store.dbx_entry(code, id).await.map_err(store_err)? {
                    Some(e) => e,
                    None => match dbx.get_metadata(id).await.map_err(send_error)? {
                        Some(Change::Upsert(e)) => e,
                        _ => {
                            return Err(SendError::Permanent(format!(
                                "the Dropbox entry {id} no longer exists"
                            )));
                        }
                    },
                };
                let mut e = current.clone();
                if e.path_lower != path.to_lowercase() {
                    calls.push("move_v2");
                    relabel = Some(if parent(&e.path_lower) == parent(&path.to_lowercase()) {
                        LogAction::Rename
                    } else {
                        LogAction::Move
                    });
                    if let Some(moved) = dbx.move_entry(id, &path).await.map_err(send_error)? {
                        e = moved;
                    }
                }
                if is_file
                    && let Some(bytes) = &content
                    && e.content_hash.as_deref()
                        != Some(crate::connectors::dropbox::content_hash(bytes).as_str())
                {
                    calls.push("upload");
                    e = dbx
                        .upload(&e.path_display.clone(), bytes.clone(), e.rev.as_deref())
                        .await
                        .map_err(send_error)?;
                }
                if e.path_lower != current.path_lower && e.tag == "folder" {
                    // Children moved with the folder.
                    let old = format!("{}/", current.path_lower);
                    let moved: Vec<DbxEntry> = self
                        .store
                        .dbx_entries(code)
                        .await
                        .map_err(store_err)?
                        .into_iter()
                        .filter(|c| c.path_lower.starts_with(&old))
                        .map(|mut c| {
                            c.path_lower =
                                format!("{}/{}", e.path_lower, &c.path_lower[old.len()..]);
                            let tail = c.path_display[old.len()..].to_string();
                            c.path_display = format!("{}/{tail}", e.path_display);
                            c
                        })
                        .collect();
                    self.store
                        .dbx_apply(code, &moved, &[], None)
                        .await
                        .map_err(store_err)?;
                }
                e
            }
        };
        self.store
            .dbx_apply(code, std::slice::from_ref(&entry), &[], None)
            .await
            .map_err(store_err)?;
        Ok((
            Sent {
                external_id: Some(entry.id.clone()),
                request: json!({"calls": calls, "path": entry.path_display, "id": entry.id, "rev": entry.rev}),
            },
            relabel,
        ))
    }

    /// A valid webhook notification for a web service: every sync on it runs one listing
    /// loop. Notifications that arrive while a loop is scheduled join it.
    pub fn dropbox_notified(self: &Arc<Self>, web_service: &str) {
        if !self
            .dropbox_scheduled
            .lock()
            .expect("webhook lock")
            .insert(web_service.to_string())
        {
            crate::metrics::dropbox_notification(web_service, "coalesced");
            return;
        }
        crate::metrics::dropbox_notification(web_service, "started");
        let engine = self.clone();
        let ws = web_service.to_string();
        let first = Instant::now();
        let round = Round::new(self.clone());
        self.spawn(async move {
            let _round = round;
            tokio::time::sleep(WEBHOOK_DEBOUNCE).await;
            // From here on, a new notification schedules another loop.
            engine
                .dropbox_scheduled
                .lock()
                .expect("webhook lock")
                .remove(&ws);
            let plan = engine.plan();
            let codes: Vec<String> = plan
                .syncs
                .values()
                .filter(|s| s.web_service == ws && s.active)
                .map(|s| s.code.to_string())
                .collect();
            for code in codes {
                engine
                    .dropbox_lag
                    .lock()
                    .expect("lag lock")
                    .entry(code.clone())
                    .or_insert(first);
                engine.run_when_free(&code, Trigger::Webhook).await;
            }
        });
    }

    /// Is every webhook notification taken in (no round debouncing, waiting or running)?
    pub fn dropbox_settled(&self) -> bool {
        self.dropbox_rounds
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
    }

    /// At start-up, every active Dropbox sync that has never listed its folder takes its
    /// initial mirror, without waiting for a notification or its schedule.
    pub fn start_dropbox_mirrors(self: &Arc<Self>) {
        let plan = self.plan();
        for sync in plan.syncs.values().filter(|s| s.active) {
            let dropbox = plan
                .web_services
                .get(&sync.web_service)
                .is_some_and(|w| matches!(w.spec, ServiceSpec::Dropbox(_)));
            if !dropbox {
                continue;
            }
            let engine = self.clone();
            let code = sync.code.to_string();
            self.spawn(async move {
                match engine.store.sync_state(&code).await {
                    Ok(Some(s)) if s.cursor.is_some() => {}
                    Ok(_) => engine.run_when_free(&code, Trigger::Startup).await,
                    Err(e) => {
                        tracing::warn!(sync = %code, error = %e, "Could not read a Dropbox sync's state at start-up")
                    }
                }
            });
        }
    }

    /// Runs a sync, waiting for a run in progress to end first.
    async fn run_when_free(self: &Arc<Self>, code: &str, trigger: Trigger) {
        // One waiter per sync is enough: the loop it starts reads every change made until then.
        if !self
            .dropbox_waiting
            .lock()
            .expect("waiting lock")
            .insert(code.to_string())
        {
            return;
        }
        let _waiting = Waiting(self.clone(), code.to_string());
        let stale = chrono::Duration::from_std(self.opts.claim_timeout)
            .unwrap_or(chrono::Duration::minutes(2));
        for _ in 0..1200 {
            // A claim that is no longer renewed belongs to a dead instance: start_run takes
            // it over.
            let busy = matches!(self.store.sync_state(code).await, Ok(Some(s))
                if s.running_by.is_some()
                    && s.running_since.is_some_and(|t| t > chrono::Utc::now() - stale));
            if !busy {
                match self.start_run(code, trigger, false).await {
                    Ok(s) => {
                        drop(_waiting);
                        let _ = s.task.await;
                        return;
                    }
                    Err(super::RunError::Busy { .. }) => {}
                    Err(e) => {
                        tracing::warn!(sync = code, error = %e, "A Dropbox loop could not start");
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tracing::warn!(
            sync = code,
            "A Dropbox notification gave up waiting for the run in progress"
        );
    }
}

/// Marks a sync as having a loop waiting to start, until dropped.
struct Waiting(Arc<Engine>, String);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0
            .dropbox_waiting
            .lock()
            .expect("waiting lock")
            .remove(&self.1);
    }
}

fn send_error(e: DbxError) -> SendError {
    match e {
        DbxError::Transient {
            reason,
            retry_after,
        } => SendError::Retry {
            reason,
            after: retry_after,
        },
        DbxError::Reset => SendError::Retry {
            reason: "Dropbox reset the cursor".into(),
            after: None,
        },
        DbxError::NotFound(w) => SendError::Permanent(format!("nothing at {w} in Dropbox")),
        DbxError::Conflict(w) => SendError::Permanent(format!("conflict in Dropbox: {w}")),
        DbxError::Permanent(w) => SendError::Permanent(w),
    }
}

/// The Dropbox path of a record: the root, then the pattern filled with the mapped values (or
/// the `name` field when there is no pattern).
fn target_path(folder: &DropboxFolder, mapped: &Map<String, Value>) -> Result<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let rel = match &folder.pattern {
        Some(p) => {
            let mut caps = BTreeMap::new();
            for c in p.captures() {
                match mapped.get(c).and_then(text) {
                    Some(v) if !v.is_empty() && !v.contains('/') && v != "." && v != ".." => {
                        caps.insert(c.to_string(), v);
                    }
                    Some(v) => {
                        return Err(format!(
                            "{c}: {v:?} cannot be a path segment (empty, `.`, `..` or containing `/`)"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "{c}: missing; the pattern {} needs it to build the Dropbox path",
                            p.text
                        ));
                    }
                }
            }
            p.build(&caps).ok_or("the pattern could not be filled")?
        }
        None => {
            match mapped.get("name").and_then(text) {
                Some(n) if !n.is_empty() && !n.contains('/') && n != "." && n != ".." => {
                    format!("/{n}")
                }
                _ => return Err(
                    "name: missing or not a valid file name, and the external model has no pattern"
                        .into(),
                ),
            }
        }
    };
    Ok(format!("{}{rel}", folder.root))
}

/// The nested tree of a mirror: the root folder, then each entry under its parent.
fn build_tree(folder: &DropboxFolder, entries: Vec<DbxEntry>) -> Value {
    let root_lower = folder.root.to_lowercase();
    let mut children: BTreeMap<String, Vec<DbxEntry>> = BTreeMap::new();
    for e in entries {
        children
            .entry(parent(&e.path_lower).to_string())
            .or_default()
            .push(e);
    }
    fn node(
        e: Option<&DbxEntry>,
        path: &str,
        name: &str,
        children: &mut BTreeMap<String, Vec<DbxEntry>>,
    ) -> Value {
        let mut kids = children.remove(path).unwrap_or_default();
        kids.sort_by(|a, b| (a.tag != "folder", &a.name).cmp(&(b.tag != "folder", &b.name)));
        let tag = e.map(|e| e.tag.as_str()).unwrap_or("folder");
        let mut v = json!({
            "id": e.map(|e| e.id.clone()),
            "name": name,
            "tag": tag,
            "path": e.map(|e| e.path_display.clone()),
            "size": e.and_then(|e| e.size),
            "rev": e.and_then(|e| e.rev.clone()),
        });
        if tag == "folder" {
            v["children"] = Value::Array(
                kids.iter()
                    .map(|k| node(Some(k), &k.path_lower, &k.name, children))
                    .collect(),
            );
        }
        v
    }
    let name = folder.root.rsplit('/').next().unwrap_or("");
    let mut root = node(None, &root_lower, name, &mut children);
    root["path"] = json!(if folder.root.is_empty() {
        "/"
    } else {
        folder.root.as_str()
    });
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, path: &str, tag: &str) -> DbxEntry {
        DbxEntry {
            id: id.into(),
            tag: tag.into(),
            name: path.rsplit('/').next().unwrap().into(),
            path_lower: path.to_lowercase(),
            path_display: path.into(),
            rev: (tag == "file").then(|| "015f0000000a".into()),
            size: (tag == "file").then_some(3),
            content_hash: None,
            server_modified: None,
        }
    }

    #[test]
    fn relative_paths_are_strictly_below_the_root_whatever_the_case() {
        assert_eq!(relative("/DMS", "/dms/a/b"), Some("/a/b"));
        assert_eq!(relative("/DMS", "/DMS"), None);
        assert_eq!(relative("/DMS", "/DMSX/a"), None);
        assert_eq!(relative("", "/a"), Some("/a"));
    }

    #[test]
    fn the_tree_nests_entries_under_their_parents() {
        let folder = DropboxFolder {
            root: "/Root".into(),
            recursive: true,
            pattern: None,
        };
        let t = build_tree(
            &folder,
            vec![
                entry("id:1", "/Root/A", "folder"),
                entry("id:2", "/Root/A/x.txt", "file"),
                entry("id:3", "/Root/b.txt", "file"),
            ],
        );
        assert_eq!(t["name"], "Root");
        assert_eq!(t["children"][0]["id"], "id:1");
        assert_eq!(t["children"][0]["children"][0]["name"], "x.txt");
        assert_eq!(t["children"][0]["children"][0]["size"], 3);
        assert_eq!(t["children"][1]["name"], "b.txt");
        assert!(t["children"][1].get("children").is_none());
    }

    #[test]
    fn paths_are_built_from_the_pattern_and_refuse_traversal() {
        let folder = DropboxFolder {
            root: "/P".into(),
            recursive: true,
            pattern: Some(
                crate::domain::plan::PathPattern::parse("/{project}/{po}_{vendor}").unwrap(),
            ),
        };
        let m: Map<String, Value> =
            serde_json::from_value(json!({"project": "Alpha", "po": "PO-1", "vendor": "ACME"}))
                .unwrap();
        assert_eq!(target_path(&folder, &m).unwrap(), "/P/Alpha/PO-1_ACME");
        let bad: Map<String, Value> =
            serde_json::from_value(json!({"project": "..", "po": "1", "vendor": "v"})).unwrap();
        assert!(
            target_path(&folder, &bad)
                .unwrap_err()
                .starts_with("project:")
        );
        let missing: Map<String, Value> = serde_json::from_value(json!({"project": "A"})).unwrap();
        assert!(
            target_path(&folder, &missing)
                .unwrap_err()
                .contains("missing")
        );
    }
}
