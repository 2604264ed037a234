//! One listing loop of a Dropbox sync (`DropboxPull`): entries classified against the
//! sync's mirror, values read (bytes downloaded when the sync maps them), pages confirmed with
//! the mirror and the cursor written together.

use super::*;

/// What a page leaves for its confirmation to write: the mirror changes and, where nothing is
/// left waiting, the cursor.
pub(super) struct Commit {
    upserts: Vec<MirrorEntry>,
    deletes: Vec<String>,
    cursor: Option<String>,
}

/// One listing loop of a Dropbox sync.
pub(super) struct DropboxPull {
    pub(super) client: Arc<Dropbox>,
    pub(super) code: String,
    pub(super) folder: DropboxFolder,
    pub(super) limit: u32,
    /// Whether records are written (a sync that only sends keeps the mirror alone).
    pub(super) inbound: bool,
    pub(super) wants_content: bool,
    pub(super) cursor: Option<String>,
    pub(super) mirror: Mirror,
    /// A full listing (first start, or after a reset) ends by dropping what it did not see.
    pub(super) listing: bool,
    pub(super) seen: HashSet<String>,
    /// Deleted entries wait until the loop ends: their id may reappear at a new path.
    pub(super) pending: HashMap<String, MirrorEntry>,
    pub(super) read: u64,
    pub(super) started: Instant,
    pub(super) notified_at: Option<Instant>,
    /// The page's commit, written by `confirm`.
    pub(super) commit: Option<Commit>,
    /// The sync's turn, held from a page's listing to its confirmation, so a write back's echo
    /// always finds the mirror already updated.
    pub(super) turn: Option<Turn>,
}

impl DropboxPull {
    /// The next listing page, listing again from scratch when Dropbox reset the cursor.
    async fn list(&mut self, memory: &dyn Memory) -> Result<client::Page, PullError> {
        loop {
            let page = match &self.cursor {
                None => match self
                    .client
                    .list_folder(&self.folder.root, self.folder.recursive, self.limit)
                    .await
                {
                    Ok(p) => p,
                    // The folder does not exist (yet): the mirror is empty, and the next loop
                    // lists again. Writes back create it.
                    Err(DbxError::NotFound(_)) => {
                        tracing::info!(sync = %self.code, root = %self.folder.root, "The Dropbox folder does not exist yet");
                        client::Page {
                            entries: Vec::new(),
                            cursor: String::new(),
                            has_more: false,
                        }
                    }
                    Err(e) => return Err(PullError::Service(format!("list_folder failed: {e}"))),
                },
                Some(c) => match self.client.list_folder_continue(c).await {
                    Ok(p) => p,
                    Err(DbxError::Reset) => {
                        tracing::warn!(
                            sync = %self.code,
                            "The Dropbox cursor was reset; listing the folder again and reconciling"
                        );
                        memory
                            .note(
                                "Dropbox cursor reset",
                                &self.folder.root,
                                "Dropbox reset the cursor; the folder is listed again and reconciled with the store",
                            )
                            .await?;
                        self.cursor = None;
                        self.listing = true;
                        self.seen.clear();
                        // What was waiting is reconciled by the full listing.
                        for (_, e) in self.pending.drain() {
                            self.mirror.put(e);
                        }
                        continue;
                    }
                    Err(e) => {
                        return Err(PullError::Service(format!(
                            "list_folder/continue failed: {e}"
                        )));
                    }
                },
            };
            return Ok(page);
        }
    }

    /// The record of a listed entry, or `None` when the sync does not take it.
    async fn record_of(
        &self,
        e: &MirrorEntry,
        rel: &str,
        old: Option<&MirrorEntry>,
        kind: Kind,
    ) -> Result<Option<Pulled>, PullError> {
        let Some(values) =
            values_of(&self.client, &self.folder, self.wants_content, e, rel, old).await?
        else {
            return Ok(None);
        };
        Ok(Some(Pulled {
            action: if kind == Kind::Create {
                PullAction::Insert
            } else {
                PullAction::Update
            },
            values,
            external_id: Some(e.id.clone()),
            modified_at: modified_at(e),
            label: match kind {
                Kind::Rename => Some(Label::Rename),
                Kind::Move => Some(Label::Move),
                _ => None,
            },
        }))
    }
}

pub(super) fn modified_at(e: &MirrorEntry) -> Option<chrono::DateTime<chrono::Utc>> {
    e.server_modified
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Does the sync map a file's bytes (`content`) to the local side?
pub(super) fn wants_content(sync: &Sync) -> bool {
    sync.fields.iter().any(|p| {
        p.direction.to_local() && matches!(&p.external, ExternalField::Name(n) if n == "content")
    })
}

/// The external values of an entry at `rel` (below the root), or `None` when the folder's
/// pattern does not take it. The bytes are downloaded when the sync maps them and they
/// changed since `old`.
pub(super) async fn values_of(
    client: &Dropbox,
    folder: &DropboxFolder,
    wants_content: bool,
    e: &MirrorEntry,
    rel: &str,
    old: Option<&MirrorEntry>,
) -> Result<Option<Map<String, Value>>, PullError> {
    let Some(mut values) = external_values(folder, e, rel) else {
        return Ok(None);
    };
    let content_changed = old.is_none_or(|o| o.content_hash != e.content_hash);
    if wants_content && e.tag == "file" && content_changed && e.size.unwrap_or(0) <= MAX_DOWNLOAD {
        match client.download(&e.id).await {
            Ok(bytes) => {
                use base64::Engine as _;
                values.insert(
                    "content".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                );
            }
            Err(DbxError::NotFound(_)) => {}
            Err(err) => {
                return Err(PullError::Service(format!(
                    "download of {} failed: {err}",
                    e.path_display
                )));
            }
        }
    }
    Ok(Some(values))
}

pub(super) fn deleted(id: String) -> Pulled {
    Pulled {
        action: PullAction::Delete,
        values: Map::new(),
        external_id: Some(id),
        modified_at: None,
        label: None,
    }
}

#[async_trait]
impl Puller for DropboxPull {
    async fn next_page(&mut self, memory: &dyn Memory) -> Result<Page, PullError> {
        self.turn = Some(memory.turn().await);
        let page = self.list(memory).await?;
        self.read += page.entries.len() as u64;
        let read = page.entries.len();
        let mut skipped = 0;
        let mut records = Vec::new();
        let mut upserts: Vec<MirrorEntry> = Vec::new();
        for change in page.entries {
            match change {
                Change::Deleted { path_lower, .. } => {
                    for e in self.mirror.take_under(&path_lower, true) {
                        upserts.retain(|u| u.id != e.id);
                        self.pending.insert(e.id.clone(), e);
                    }
                }
                Change::Upsert(e) => {
                    let Some(rel) = relative(&self.folder.root, &e.path_display) else {
                        skipped += 1;
                        continue;
                    };
                    let rel = rel.to_string();
                    self.seen.insert(e.id.clone());
                    let old = self
                        .pending
                        .remove(&e.id)
                        .or_else(|| self.mirror.by_id.get(&e.id).cloned());
                    // Whatever else was at this path is replaced (a file replaces the
                    // children too).
                    if let Some(other) = self.mirror.by_path.get(&e.path_lower).cloned()
                        && other != e.id
                    {
                        for x in self.mirror.take_under(&e.path_lower, e.tag == "file") {
                            if x.id != e.id {
                                self.pending.insert(x.id.clone(), x);
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
                        Some(o) if parent(&o.path_lower) == parent(&e.path_lower) => Kind::Rename,
                        Some(_) => Kind::Move,
                    };
                    self.mirror.put(e.clone());
                    upserts.retain(|u| u.id != e.id);
                    upserts.push(e.clone());
                    if !self.inbound || kind == Kind::Same {
                        continue;
                    }
                    match self.record_of(&e, &rel, old.as_ref(), kind).await? {
                        Some(r) => records.push(r),
                        None => {
                            skipped += 1;
                            if old.is_some() {
                                // It left the pattern: its record goes.
                                records.push(deleted(e.id.clone()));
                            }
                        }
                    }
                }
            }
        }
        // The cursor is stored only where nothing is left waiting, so a crash replays from a
        // point where the mirror and the records agree.
        let cursor_now = (!page.cursor.is_empty()
            && (!page.has_more || (!self.listing && self.pending.is_empty())))
        .then(|| page.cursor.clone());
        let mut deletes = Vec::new();
        if !page.has_more {
            // The loop is over: what a full listing did not see is gone, and deletions that
            // did not come back as moves are real.
            if self.listing {
                let unseen: Vec<String> = self
                    .mirror
                    .by_id
                    .keys()
                    .filter(|id| !self.seen.contains(*id))
                    .cloned()
                    .collect();
                for id in unseen {
                    if let Some(e) = self.mirror.by_id.remove(&id) {
                        self.pending.insert(id, e);
                    }
                }
            }
            let gone: Vec<MirrorEntry> = self.pending.drain().map(|(_, e)| e).collect();
            if self.inbound {
                records.extend(gone.iter().map(|e| deleted(e.id.clone())));
                if self.listing {
                    // A full listing is the truth: a record linked to an entry that is neither
                    // listed nor mirrored (its mirror row was lost to a crash between the
                    // record's write and the mirror's) goes too.
                    let known: HashSet<&str> = gone.iter().map(|e| e.id.as_str()).collect();
                    for id in memory.linked_ids().await? {
                        if !self.seen.contains(&id)
                            && !known.contains(id.as_str())
                            && !self.mirror.by_id.contains_key(&id)
                            // Written back between two pages of this listing (the mirror row
                            // is stored with the link): it is there, listed by the next loop.
                            && memory.mirror_entry(&id).await?.is_none()
                        {
                            records.push(deleted(id));
                        }
                    }
                }
            }
            deletes = gone.into_iter().map(|e| e.id).collect();
            let lag = self
                .notified_at
                .map(|t| t.elapsed().as_secs_f64())
                .or(Some(self.started.elapsed().as_secs_f64()));
            crate::metrics::dropbox_loop(&self.code, self.read, lag);
        }
        self.commit = Some(Commit {
            upserts,
            deletes,
            cursor: cursor_now,
        });
        self.cursor = Some(page.cursor);
        Ok(Page {
            records,
            read,
            skipped,
            more: page.has_more,
        })
    }

    async fn confirm(
        &mut self,
        memory: &dyn Memory,
        _outcomes: &[Confirmation],
    ) -> Result<(), PullError> {
        // A second confirmation (of records retried at the end of the run) has nothing left
        // to write.
        if let Some(c) = self.commit.take() {
            crate::crash::point("dropbox.before_mirror");
            memory
                .save(&c.upserts, &c.deletes, c.cursor.as_deref())
                .await?;
        }
        self.turn = None;
        Ok(())
    }
}
