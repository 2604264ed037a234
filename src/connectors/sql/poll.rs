//! A poll of one table (`capture = "poll"`, and a logical capture's pages): keyset pages on
//! (`cursor`, `key`) from the watermark minus `overlap`, the next page read ahead, and the
//! watermark moved on as pages are confirmed.

use super::*;

/// How often a poll saves its watermark while later pages wait for their confirmation.
const WATERMARK_SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a poll stands: the last (`cursor`, `key`) applied.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Watermark {
    pub(super) at: Value,
    pub(super) key: Value,
}

/// A poll of one table, a keyset page at a time.
pub(super) struct SqlPull {
    pub(super) conn: Arc<SqlConnector>,
    pub(super) shape: Arc<Shape>,
    pub(super) cols: Arc<BTreeMap<String, Column>>,
    pub(super) limit: usize,
    /// Where the next page starts: (cursor, key) or, without a cursor, (null, key).
    pub(super) from: Option<Watermark>,
    /// Whether the first page starts at the watermark itself (inclusive, the overlap).
    pub(super) first: bool,
    /// The rows' positions of each page read and not yet confirmed, in order, to advance the
    /// watermark on confirmation (pages overlap: the next is read before the last is
    /// confirmed).
    pub(super) last: std::collections::VecDeque<Vec<(String, Watermark)>>,
    /// A record of this run failed: the watermark stays before it until a later run.
    pub(super) held: bool,
    pub(super) more: bool,
    /// How far the confirmed pages reach.
    pub(super) reached: Option<Watermark>,
    /// `reached` moved since it was last saved.
    pub(super) unsaved: bool,
    /// When the watermark was last saved.
    pub(super) saved_at: Option<std::time::Instant>,
    /// Read the whole table by key, whatever `cursor` says (a logical capture's snapshot).
    pub(super) whole: bool,
    /// `capture = "logical"`: the slot being read.
    pub(super) stream: Option<logical::Stream>,
    /// The next page of a poll, read while the engine applies the one before (its rows are
    /// read earlier than they would be otherwise, which a watermark allows: what changes
    /// after the read is after the watermark it leaves).
    pub(super) ahead: Option<tokio::task::JoinHandle<Result<Rows, PullError>>>,
}

/// A page's rows, as read.
pub(super) type Rows = Vec<Map<String, Value>>;

impl Drop for SqlPull {
    fn drop(&mut self) {
        if let Some(h) = self.ahead.take() {
            h.abort();
        }
    }
}

impl SqlConnector {
    pub(super) fn arc(&self) -> Arc<SqlConnector> {
        Arc::new(SqlConnector {
            name: self.name.clone(),
            service: self.service.clone(),
            pool: self.pool.clone(),
            catalog: Mutex::new(self.catalog.lock().expect("catalog").clone()),
            groups: self.groups.clone(),
        })
    }
}

impl SqlPull {
    /// Reads the next page.
    async fn read(&mut self) -> Result<Vec<Pulled>, PullError> {
        let rows = match self.ahead.take() {
            Some(h) => h.await.map_err(|e| {
                PullError::Service(format!("the read of the next page failed: {e}"))
            })??,
            None => self.fetch()?.await?,
        };
        let records = self.absorb(rows);
        // The next page of a poll is read at once, while the engine applies this one.
        if self.more && self.stream.is_none() {
            use tracing::Instrument;
            let span = tracing::info_span!("connector.read_ahead", table = %self.shape.table.table);
            self.ahead = Some(tokio::spawn(self.fetch()?.instrument(span)));
        }
        Ok(records)
    }

    /// The read of the page after the rows taken so far, ready to be awaited (or spawned).
    fn fetch(
        &self,
    ) -> Result<
        impl std::future::Future<Output = Result<Rows, PullError>> + Send + 'static,
        PullError,
    > {
        let conn = self.conn.clone();
        let shape = self.shape.clone();
        let t = &self.shape.table;
        let pool = conn.pool().map_err(PullError::Service)?;
        let d = pool.dialect();
        let who = conn.who(t);
        let select = conn.select_list(d, t, &self.cols);
        let key = d.quote(&t.key);
        let key_col = self.cols.get(&t.key);
        let mut binds = Vec::new();
        let mut cond = String::from("1 = 1");
        let key_ty = self.shape.fields.get(&t.key);
        let cursor = t.cursor.as_ref().filter(|_| !self.whole);
        let order = match cursor {
            Some(c) => {
                let cq = d.quote(c);
                let cur_col = self.cols.get(c);
                let cur_ty = self.shape.fields.get(c);
                let cmp = |p: String| match (d, t.cursor_is_time) {
                    (Dialect::Sqlite, true) => {
                        (format!("julianday({cq})"), format!("julianday({p})"))
                    }
                    _ => (cq.clone(), p),
                };
                cond = format!("{cq} IS NOT NULL");
                if let Some(w) = &self.from {
                    binds.push(db::bind_of(d, cur_ty, &w.at));
                    let (l, r) = cmp(db::param_expr(d, 1, cur_col));
                    if self.first {
                        cond = format!("{l} >= {r}");
                    } else {
                        // A row value, which an index on (cursor, key) serves: each page
                        // starts where the last ended instead of scanning from the start.
                        binds.push(db::bind_of(d, key_ty, &w.key));
                        cond = format!("({l}, {key}) > ({r}, {})", db::param_expr(d, 2, key_col));
                    }
                }
                format!("{cq}, {key}")
            }
            None => {
                if let Some(w) = &self.from {
                    binds.push(db::bind_of(d, key_ty, &w.key));
                    cond = format!("{key} > {}", db::param_expr(d, 1, key_col));
                }
                key.clone()
            }
        };
        let sql = format!(
            "SELECT {select} FROM {} WHERE {cond} ORDER BY {order} LIMIT {}",
            t.qualified(d),
            self.limit
        );
        Ok(async move {
            let t = &shape.table;
            let names: Vec<&str> = t.columns.iter().map(String::as_str).collect();
            conn.rows(&sql, binds, &names, &shape.fields)
                .await
                .map_err(|e| PullError::Service(format!("{who}: {}", db::describe(&e))))
        })
    }

    /// Takes a page's rows: the watermark moves past them.
    fn absorb(&mut self, rows: Rows) -> Vec<Pulled> {
        let t = &self.shape.table;
        self.more = rows.len() == self.limit;
        self.first = false;
        let mut out = Vec::with_capacity(rows.len());
        let mut positions = Vec::with_capacity(rows.len());
        for values in rows {
            let id = id_text(values.get(&t.key));
            let at = t
                .cursor
                .as_ref()
                .and_then(|c| values.get(c).cloned())
                .unwrap_or(Value::Null);
            let position = Watermark {
                at,
                key: values.get(&t.key).cloned().unwrap_or(Value::Null),
            };
            self.from = Some(position.clone());
            positions.push((id.clone(), position));
            let deleted = t
                .deleted
                .as_ref()
                .is_some_and(|c| !values.get(c).is_none_or(Value::is_null));
            let modified_at = t
                .cursor
                .as_ref()
                .filter(|_| t.cursor_is_time)
                .and_then(|c| values.get(c))
                .and_then(Value::as_str)
                .and_then(|s| crate::domain::value::parse_datetime(s).ok());
            out.push(Pulled::read(values, id, modified_at, deleted));
        }
        // A logical capture's snapshot confirms by its slot, not by positions.
        if self.stream.is_none() {
            self.last.push_back(positions);
        }
        out
    }
}

#[async_trait]
impl Puller for SqlPull {
    async fn next_page(&mut self, _memory: &dyn Memory) -> Result<Page, PullError> {
        if !self.more {
            return Ok(Page::default());
        }
        if self.stream.as_ref().is_some_and(|s| !s.snapshot) {
            return self.stream_page().await;
        }
        let records = self.read().await?;
        // A logical capture's snapshot ends; the slot is read next.
        if let Some(s) = &mut self.stream
            && !self.more
        {
            s.snapshot_done = true;
            self.more = true;
        }
        Ok(Page {
            read: records.len(),
            skipped: 0,
            more: self.more,
            records,
        })
    }

    async fn confirm(
        &mut self,
        memory: &dyn Memory,
        outcomes: &[crate::connectors::Confirmation],
    ) -> Result<(), PullError> {
        if self.stream.is_some() {
            return self.stream_confirm(memory, outcomes).await;
        }
        // The oldest page not yet confirmed (none for the second attempt at the end of a run).
        let page = self.last.pop_front().unwrap_or_default();
        if self.shape.table.cursor.is_none() {
            return Ok(());
        }
        let failed: std::collections::HashSet<&str> = outcomes
            .iter()
            .filter(|o| o.error.is_some())
            .map(|o| o.external_id.as_str())
            .collect();
        for (id, position) in page {
            if self.held || failed.contains(id.as_str()) {
                self.held = true;
                break;
            }
            self.reached = Some(position);
            self.unsaved = true;
        }
        // Saved at once when no later page waits for its confirmation (the run's last page, a
        // page applied on its own), else at most once every `WATERMARK_SAVE_EVERY`: saving takes the hub's
        // one write connection, which the next page's transaction holds meanwhile. A crash
        // between two saves only makes the next run read those pages again, which writes
        // nothing for rows that did not change.
        let due = self.last.is_empty()
            || self
                .saved_at
                .is_none_or(|at| at.elapsed() >= WATERMARK_SAVE_EVERY);
        if let Some(w) = self.reached.as_ref().filter(|_| self.unsaved && due) {
            let text = serde_json::to_string(w).expect("a watermark serializes");
            memory.save(&[], &[], Some(&text)).await?;
            self.unsaved = false;
            self.saved_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// A poll's pages overlap (the next is read ahead anyway); a logical capture's do not,
    /// its slot advancing with the confirmation of a batch's last page.
    fn pages_overlap(&self) -> bool {
        self.stream.is_none()
    }
}
