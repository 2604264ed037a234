//! The Dropbox connector (`kind = "dropbox"`): a sync's folder is pulled by listing loops
//! (`list_folder`, then `list_folder/continue` from the cursor) whose entries are classified
//! against the sync's mirror as create, update, rename, move or delete; local records are
//! written back as folders and files; webhook notifications are checked against the app
//! secret. The mirror is kept through the engine's [`Memory`], written with the cursor.

pub mod client;
pub mod config;
mod mirror;
mod names;
mod pull;
pub mod spec;
mod webhook;

pub use client::{Change, DbxError, Dropbox, content_hash};
pub use mirror::build_tree;
use pull::*;
pub use webhook::signature_ok;

use super::{
    Confirmation, Connector, Failure, Label, Memory, Notice, Page, PullAction, PullError,
    PullStart, Pulled, Puller, SendAction, Sent, Target, Turn, Webhook,
};
use crate::domain::mapping::ExternalField;
use crate::domain::mirror::MirrorEntry;
use crate::domain::plan::{Plan, Sync, WebService};
use async_trait::async_trait;
use mirror::{Kind, Mirror, external_values, parent, relative, target_path};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use spec::{DropboxFolder, DropboxService};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Files larger than this are mirrored without their bytes.
const MAX_DOWNLOAD: i64 = 32 * 1024 * 1024;

/// Most candidates a search before a create returns.
const SEARCH_LIMIT: usize = 20;

/// The connector of a `dropbox` web service: one account.
pub struct DropboxConnector {
    client: Arc<Dropbox>,
    app_secret: SecretString,
    api_url: Option<String>,
}

impl DropboxConnector {
    pub fn new(name: &str, service: &DropboxService) -> DropboxConnector {
        let api_url = service.api_url.as_ref().map(super::transport::location);
        let origin = api_url
            .clone()
            .unwrap_or_else(|| "https://api.dropboxapi.com".into());
        DropboxConnector {
            client: Arc::new(Dropbox::new(
                service,
                Duration::from_secs(60),
                format!("web service `{name}` ({origin})"),
            )),
            app_secret: service.app_secret.clone(),
            api_url,
        }
    }

    /// Where the account is reached, for messages.
    fn api_origin(&self) -> String {
        self.api_url
            .clone()
            .unwrap_or_else(|| "https://api.dropboxapi.com".into())
    }
}

impl super::ConnectorKind for config::Dropbox {
    fn connector(&self, service: &WebService, _http: &reqwest::Client) -> Arc<dyn Connector> {
        let settings = service
            .settings::<DropboxService>()
            .expect("a dropbox web service has Dropbox settings");
        Arc::new(DropboxConnector::new(&service.name, settings))
    }
}

fn folder_of(sync: &Sync, plan: &Plan) -> Option<DropboxFolder> {
    plan.external_models
        .get(&sync.external_model)
        .and_then(|m| m.settings::<DropboxFolder>().cloned())
}

fn memory_error(e: super::MemoryError) -> Failure {
    Failure::Transient {
        message: format!("the store failed: {e}"),
        retry_after: None,
    }
}

fn send_error(e: DbxError) -> Failure {
    match e {
        DbxError::Transient {
            reason,
            retry_after,
        } => Failure::Transient {
            message: reason,
            retry_after,
        },
        DbxError::Reset => Failure::Transient {
            message: "Dropbox reset the cursor".into(),
            retry_after: None,
        },
        DbxError::NotFound(w) => Failure::NotFound {
            message: format!("nothing at {w} in Dropbox"),
        },
        DbxError::Conflict(w) => Failure::Conflict {
            existing_id: None,
            message: format!("conflict in Dropbox: {w}"),
        },
        DbxError::Permanent(w) => Failure::Permanent { message: w },
    }
}

/// Most listing pages read to see what changed since the sync's cursor before a write; past
/// it the next pull settles what changed.
const MAX_PEEK_PAGES: usize = 8;

/// The sync's folder as it is now, without a call per record: the mirror, with the changes
/// Dropbox lists since the sync's cursor laid over it (nothing is stored: the pull still
/// takes them). `None` when the sync has not listed the folder yet, Dropbox reset the cursor
/// or more changed than a few pages hold.
struct Now {
    folder: DropboxFolder,
    stored: Mirror,
    now: Mirror,
}

impl DropboxConnector {
    async fn now(
        &self,
        sync: &Sync,
        plan: &Plan,
        memory: &dyn Memory,
    ) -> Result<Option<Now>, PullError> {
        let folder = folder_of(sync, plan).ok_or_else(|| {
            PullError::Service("the external model is not a Dropbox folder".into())
        })?;
        let Some(mut cursor) = memory.cursor().await? else {
            return Ok(None);
        };
        let entries = memory.mirror().await?;
        let stored = Mirror::load(entries.clone());
        let mut now = Mirror::load(entries);
        for _ in 0..MAX_PEEK_PAGES {
            let page = match self.client.list_folder_continue(&cursor).await {
                Ok(p) => p,
                Err(DbxError::Reset) => return Ok(None),
                Err(e) => {
                    return Err(PullError::Service(format!(
                        "list_folder/continue failed: {e}"
                    )));
                }
            };
            for change in page.entries {
                match change {
                    Change::Deleted { path_lower, .. } => {
                        now.take_under(&path_lower, true);
                    }
                    Change::Upsert(e) => {
                        if let Some(other) = now.by_path.get(&e.path_lower).cloned()
                            && other != e.id
                        {
                            now.take_under(&e.path_lower, e.tag == "file");
                        }
                        now.put(e);
                    }
                }
            }
            if !page.has_more {
                return Ok(Some(Now {
                    folder,
                    stored,
                    now,
                }));
            }
            cursor = page.cursor;
        }
        Ok(None)
    }

    /// Moves an entry to `to` only while it still holds what both sides held at the last
    /// sync (`base`), for a sync that also receives: Dropbox moves what is at `from_path`, so
    /// the move names the path last seen, and a rename made there in the meantime makes it
    /// fail instead of being written over. The entry is then read by id: if its name still
    /// carries the base (only the mirror was behind), it is moved from where it is; if it
    /// changed there, the delivery is retried, and the read before sending merges the change
    /// first.
    async fn move_unless_changed(
        &self,
        sync: &Sync,
        folder: &DropboxFolder,
        base: &Map<String, Value>,
        seen: &MirrorEntry,
        to: &str,
    ) -> Result<Option<MirrorEntry>, Failure> {
        let changed_there = |e: &MirrorEntry| Failure::Transient {
            message: format!(
                "{} was renamed or moved in Dropbox since it was last synced; that change is read and merged before the next attempt",
                e.path_display
            ),
            retry_after: None,
        };
        let mut from = seen.clone();
        let mut read = false;
        loop {
            let holds_base = relative(&folder.root, &from.path_display)
                .and_then(|rel| external_values(folder, &from, rel))
                .is_some_and(|values| !crate::connectors::changed_since(sync, base, &values));
            if holds_base {
                if from.path_lower == to.to_lowercase() {
                    return Ok(Some(from));
                }
                match self.client.move_entry(&from.path_display, to).await {
                    Ok(moved) => return Ok(moved),
                    Err(DbxError::NotFound(_)) if !read => {}
                    Err(DbxError::NotFound(_)) => return Err(changed_there(&from)),
                    Err(e) => return Err(send_error(e)),
                }
            } else if read {
                return Err(changed_there(&from));
            }
            // Not where it was last seen (or the mirror is behind): where is it now?
            read = true;
            from = match self.client.get_metadata(&seen.id).await {
                Ok(Some(Change::Upsert(now))) => now,
                Ok(_) | Err(DbxError::NotFound(_)) => {
                    return Err(Failure::Transient {
                        message: format!(
                            "the Dropbox entry {} is no longer there; the read before the next attempt settles it",
                            seen.id
                        ),
                        retry_after: None,
                    });
                }
                Err(e) => return Err(send_error(e)),
            };
        }
    }

    /// The record of an entry as it is now (an update: it was there before).
    async fn current(
        &self,
        now: &Now,
        wants_content: bool,
        e: &MirrorEntry,
    ) -> Result<Option<Pulled>, PullError> {
        let Some(rel) = relative(&now.folder.root, &e.path_display) else {
            return Ok(None);
        };
        let old = now.stored.by_id.get(&e.id);
        let Some(values) = values_of(&self.client, &now.folder, wants_content, e, rel, old).await?
        else {
            return Ok(None);
        };
        Ok(Some(Pulled {
            action: PullAction::Update,
            values,
            external_id: Some(e.id.clone()),
            modified_at: modified_at(e),
            label: None,
        }))
    }
}

#[async_trait]
impl Connector for DropboxConnector {
    fn mirror_tree(&self, sync: &Sync, plan: &Plan, entries: Vec<MirrorEntry>) -> Option<Value> {
        folder_of(sync, plan).map(|folder| build_tree(&folder, entries))
    }

    fn kind(&self) -> &'static str {
        "dropbox"
    }

    /// A Dropbox folder is mirrored in both directions' interest: writes back need the
    /// mirror too.
    fn keeps_mirror(&self) -> bool {
        true
    }

    async fn open_pull(
        &self,
        sync: &Sync,
        plan: &Plan,
        start: PullStart,
        memory: &dyn Memory,
    ) -> Result<Box<dyn Puller>, PullError> {
        let folder = folder_of(sync, plan).ok_or_else(|| {
            PullError::Service("the external model is not a Dropbox folder".into())
        })?;
        let cursor = memory.cursor().await?;
        let mirror = Mirror::load(memory.mirror().await?);
        Ok(Box::new(DropboxPull {
            client: self.client.clone(),
            code: sync.code.to_string(),
            folder,
            limit: sync.limit as u32,
            inbound: sync.direction.to_local() && sync.active,
            wants_content: wants_content(sync),
            listing: cursor.is_none(),
            cursor,
            mirror,
            seen: HashSet::new(),
            pending: HashMap::new(),
            read: 0,
            started: Instant::now(),
            notified_at: start.notified_at,
            commit: None,
            turn: None,
        }))
    }

    /// Every entry id of the sync's folder that the sync takes (under the root, matching the
    /// pattern), a listing page at a time: `after` is the listing cursor of the previous page.
    fn can_list(&self, _sync: &Sync) -> bool {
        true
    }

    async fn list_ids(
        &self,
        sync: &Sync,
        plan: &Plan,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), PullError> {
        let folder = folder_of(sync, plan).ok_or_else(|| {
            PullError::Service("the external model is not a Dropbox folder".into())
        })?;
        let page = match &after {
            None => match self
                .client
                .list_folder(&folder.root, folder.recursive, sync.limit as u32)
                .await
            {
                Ok(p) => p,
                Err(DbxError::NotFound(_)) => return Ok((Vec::new(), None)),
                Err(e) => return Err(PullError::Service(format!("list_folder failed: {e}"))),
            },
            Some(c) => self
                .client
                .list_folder_continue(c)
                .await
                .map_err(|e| PullError::Service(format!("list_folder/continue failed: {e}")))?,
        };
        let ids = page
            .entries
            .into_iter()
            .filter_map(|c| match c {
                Change::Upsert(e) => relative(&folder.root, &e.path_display)
                    .filter(|rel| {
                        folder
                            .pattern
                            .as_ref()
                            .is_none_or(|p| p.matches(rel).is_some())
                    })
                    .map(|_| e.id.clone()),
                Change::Deleted { .. } => None,
            })
            .collect();
        Ok((ids, page.has_more.then_some(page.cursor)))
    }

    /// The entries with these ids as they are now: the mirror with what Dropbox lists since
    /// the sync's cursor laid over it, in one `list_folder/continue` (or a few pages) for the
    /// whole batch; before the first listing (or after a reset), `get_metadata` per entry.
    /// An entry deleted there, or moved out of the pattern, is not in the answer.
    async fn read_records(
        &self,
        sync: &Sync,
        plan: &Plan,
        memory: &dyn Memory,
        external_ids: &[String],
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        let wants = wants_content(sync);
        let Some(now) = self.now(sync, plan, memory).await? else {
            // No listing to lay changes over yet (or it was reset): each entry is read by id.
            let folder = folder_of(sync, plan).ok_or_else(|| {
                PullError::Service("the external model is not a Dropbox folder".into())
            })?;
            let stored = Mirror::load(memory.mirror().await?);
            let mut found = Vec::new();
            for id in external_ids {
                let e = match self.client.get_metadata(id).await {
                    Ok(Some(Change::Upsert(e))) => e,
                    Ok(_) | Err(DbxError::NotFound(_)) => continue,
                    Err(e) => return Err(PullError::Service(format!("get_metadata failed: {e}"))),
                };
                let Some(rel) = relative(&folder.root, &e.path_display) else {
                    continue;
                };
                let old = stored.by_id.get(&e.id);
                if let Some(values) = values_of(&self.client, &folder, wants, &e, rel, old).await? {
                    found.push(Pulled {
                        action: PullAction::Update,
                        values,
                        external_id: Some(e.id.clone()),
                        modified_at: modified_at(&e),
                        label: None,
                    });
                }
            }
            return Ok(Some(found));
        };
        let mut found = Vec::new();
        for id in external_ids {
            if let Some(e) = now.now.by_id.get(id)
                && let Some(p) = self.current(&now, wants, e).await?
            {
                found.push(p);
            }
        }
        Ok(Some(found))
    }

    /// The entries whose mapped fields equal the criteria (text compared without case, as
    /// Dropbox compares paths), among the folder as it is now.
    async fn search(
        &self,
        sync: &Sync,
        plan: &Plan,
        memory: &dyn Memory,
        criteria: &Map<String, Value>,
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        let mut wanted = Vec::new();
        for (local, v) in criteria {
            let Some(field) = super::plain_field(sync, local) else {
                return Ok(None);
            };
            wanted.push((field.to_string(), v.clone()));
        }
        let Some(now) = self.now(sync, plan, memory).await? else {
            return Ok(None);
        };
        let same = |a: &Value, b: &Value| match (a, b) {
            (Value::String(a), Value::String(b)) => {
                a.trim().to_lowercase() == b.trim().to_lowercase()
            }
            (a, b) => a == b,
        };
        let mut found = Vec::new();
        for e in now.now.by_id.values() {
            // Compared without the bytes; they are read for the hits only.
            let Some(p) = self.current(&now, false, e).await? else {
                continue;
            };
            if wanted
                .iter()
                .all(|(f, v)| p.values.get(f).is_some_and(|x| same(x, v)))
            {
                found.push(p);
            }
        }
        found.sort_by(|a, b| a.external_id.cmp(&b.external_id));
        found.truncate(SEARCH_LIMIT);
        if wants_content(sync) {
            let mut with_bytes = Vec::new();
            for p in found {
                let id = p.external_id.clone().unwrap_or_default();
                let e = &now.now.by_id[&id];
                if let Some(p) = self.current(&now, true, e).await? {
                    with_bytes.push(p);
                }
            }
            found = with_bytes;
        }
        Ok(Some(found))
    }

    /// Delivers one change: create the folder or upload the file, move or rename it when its
    /// path changed, upload new bytes over the known revision, delete it. The mirror is
    /// updated in the sync's turn, so the webhook echo of this write is recognised and
    /// ignored.
    async fn send(
        &self,
        sync: &Sync,
        plan: &Plan,
        memory: &dyn Memory,
        action: SendAction,
        target: Target<'_>,
        mapped: &Map<String, Value>,
    ) -> Result<Sent, Failure> {
        let folder = folder_of(sync, plan).ok_or_else(|| Failure::Permanent {
            message: "the external model is not a Dropbox folder".into(),
        })?;
        let dbx = &self.client;
        let external_id = target.external_id;
        let _turn = memory.turn().await;
        if action == SendAction::Delete {
            let id = external_id.unwrap_or_default();
            match dbx.delete(id).await {
                Ok(()) | Err(DbxError::NotFound(_)) => {}
                Err(e) => return Err(send_error(e)),
            }
            let entries = memory.mirror().await.map_err(memory_error)?;
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
            memory
                .save(&[], &deletes, None)
                .await
                .map_err(memory_error)?;
            return Ok(Sent {
                external_id: Some(id.to_string()),
                request: json!({"call": "delete_v2", "path": id}),
                label: None,
            });
        }
        let path = target_path(&folder, mapped).map_err(Failure::permanent)?;
        let content = match mapped.get("content") {
            Some(Value::String(b64)) => {
                use base64::Engine as _;
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| Failure::Permanent {
                            message: format!("content: not base64 ({e})"),
                        })?,
                )
            }
            _ => None,
        };
        let is_file = match mapped.get("tag").and_then(Value::as_str) {
            Some(t) => t == "file",
            None => content.is_some(),
        };
        let mut calls = Vec::new();
        let mut label = None;
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
                                return Err(Failure::Permanent {
                                    message: format!(
                                        "{path} is taken in Dropbox by something that is not a folder"
                                    ),
                                });
                            }
                            Err(e) => return Err(send_error(e)),
                        },
                        Err(e) => return Err(send_error(e)),
                    }
                }
            }
            (_, Some(id)) => {
                let current = match memory.mirror_entry(id).await.map_err(memory_error)? {
                    Some(e) => e,
                    None => match dbx.get_metadata(id).await.map_err(send_error)? {
                        Some(Change::Upsert(e)) => e,
                        // Deleted there: a sync that receives takes the delete (its read
                        // before the next attempt finds the entry gone); one that only sends
                        // cannot write to it.
                        _ if sync.direction.to_local() && sync.active => {
                            return Err(Failure::Transient {
                                message: format!("the Dropbox entry {id} no longer exists"),
                                retry_after: None,
                            });
                        }
                        _ => {
                            return Err(Failure::Permanent {
                                message: format!("the Dropbox entry {id} no longer exists"),
                            });
                        }
                    },
                };
                let mut e = current.clone();
                if e.path_lower != path.to_lowercase() {
                    calls.push("move_v2");
                    label = Some(if parent(&e.path_lower) == parent(&path.to_lowercase()) {
                        Label::Rename
                    } else {
                        Label::Move
                    });
                    let base = target
                        .base
                        .filter(|_| sync.direction.to_local() && sync.active);
                    let moved = match base {
                        Some(base) => {
                            self.move_unless_changed(sync, &folder, base, &e, &path)
                                .await?
                        }
                        // The hub is the only writer this sync knows of: moved by id.
                        None => dbx.move_entry(id, &path).await.map_err(send_error)?,
                    };
                    if let Some(moved) = moved {
                        e = moved;
                    }
                }
                if is_file
                    && let Some(bytes) = &content
                    && e.content_hash.as_deref() != Some(content_hash(bytes).as_str())
                {
                    calls.push("upload");
                    e = match dbx
                        .upload(&e.path_display.clone(), bytes.clone(), e.rev.as_deref())
                        .await
                    {
                        Ok(e) => e,
                        // Written conditionally: the file changed there since the revision
                        // read. A sync that also receives reads it first on the next attempt
                        // and merges the change.
                        Err(DbxError::Conflict(w)) if sync.direction.to_local() && sync.active => {
                            return Err(Failure::Transient {
                                message: w,
                                retry_after: None,
                            });
                        }
                        Err(err) => return Err(send_error(err)),
                    };
                }
                if e.path_lower != current.path_lower && e.tag == "folder" {
                    // Children moved with the folder.
                    let old = format!("{}/", current.path_lower);
                    let moved: Vec<MirrorEntry> = memory
                        .mirror()
                        .await
                        .map_err(memory_error)?
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
                    memory.save(&moved, &[], None).await.map_err(memory_error)?;
                }
                e
            }
        };
        memory
            .save(std::slice::from_ref(&entry), &[], None)
            .await
            .map_err(memory_error)?;
        Ok(Sent {
            external_id: Some(entry.id.clone()),
            request: json!({"calls": calls, "path": entry.path_display, "id": entry.id, "rev": entry.rev}),
            label,
        })
    }

    /// The credentials are tried for real: a token refresh (with the app key and secret) and
    /// a listing of one entry.
    async fn check(&self, _plan: &Plan) -> Result<String, String> {
        let started = Instant::now();
        let api = self.api_origin();
        match self.client.list_folder("", false, 1).await {
            Ok(_) => Ok(format!(
                "{api} answered and took the credentials in {} ms",
                started.elapsed().as_millis()
            )),
            // The error names the web service and its URL, and what to check when it knows.
            Err(e) if e.to_string().contains("check ") => Err(e.to_string()),
            Err(e) => Err(format!(
                "{e} (check `app_key`, `app_secret` and `refresh_token`, and that the app may list files)"
            )),
        }
    }

    /// Dropbox verifies a webhook with `?challenge=...`, expecting it back as it is.
    fn webhook_challenge(&self, query: &str) -> Option<Result<String, String>> {
        let challenge = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "challenge")
            .map(|(_, v)| v.into_owned());
        Some(challenge.ok_or_else(|| "the `challenge` parameter is missing".to_string()))
    }

    /// A notification is genuine when `X-Dropbox-Signature` is the HMAC-SHA256 of the body
    /// keyed with the app secret.
    fn notification(&self, call: Webhook<'_>) -> Notice {
        let signature = call
            .headers
            .iter()
            .find(|(k, _)| k == "x-dropbox-signature")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if signature_ok(
            self.app_secret.expose_secret().as_bytes(),
            call.body,
            signature,
        ) {
            Notice::Changed
        } else {
            Notice::Refused {
                outcome: "bad_signature",
                message: "bad signature".into(),
            }
        }
    }
}
