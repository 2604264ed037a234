//! The change-control log: writing rows, filtering, statistics and retention.

use super::*;

impl Store {
    /// Writes a change-control row on its own (for requests that wrote nothing else).
    pub async fn log_change(&self, row: &NewChange) -> Result<i64> {
        let mut c = self.writer().await?;
        let out = log_change(c.conn(), row).await;
        c.done(out).await
    }

    /// Queries the log, newest first, keyset-paginated: rows with `id < before`. Only the
    /// filters given go into the SQL, so each query can use the index that fits it.
    pub async fn changes(&self, f: &ChangeFilter) -> Result<Vec<Change>> {
        enum Arg {
            Text(String),
            Int(i64),
            Time(DateTime<Utc>),
        }
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        let mut add = |cond: &str, arg: Arg| {
            args.push(arg);
            conds.push(cond.replace('?', &format!("${}", args.len())));
        };
        if let Some(v) = &f.sync {
            add("sync = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.direction {
            add("direction = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.action {
            add("action = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.status {
            add("status = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.external_id {
            add("external_id = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = f.local_id {
            add("local_id = ?", Arg::Int(v));
        }
        if let Some(v) = f.since {
            add("synced_at >= ?", Arg::Time(v));
        }
        if let Some(v) = f.until {
            add("synced_at < ?", Arg::Time(v));
        }
        if let Some(q) = &f.q {
            let pattern = format!(
                "%{}%",
                q.to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            add(
                "(LOWER(title) LIKE ? ESCAPE '\\' OR LOWER(error_message) LIKE ? ESCAPE '\\')",
                Arg::Text(pattern),
            );
        }
        // With a time range the newest rows are found through the (synced_at, id) index, so the
        // order (and the keyset cursor) follows it; ids grow with synced_at, so the order is the
        // same as by id.
        let by_time = (f.since.is_some() || f.until.is_some()) && f.after_id.is_none();
        if let Some(v) = f.before {
            if by_time {
                add(
                    "(synced_at, id) < (SELECT c.synced_at, c.id FROM change_log c WHERE c.id = ?)",
                    Arg::Int(v),
                );
            } else {
                add("id < ?", Arg::Int(v));
            }
        }
        if let Some(v) = f.run_id {
            add("run_id = ?", Arg::Int(v));
        }
        if let Some(v) = f.after_id {
            add("id > ?", Arg::Int(v));
        }
        if f.status.as_deref().is_some_and(|s| s != "success") {
            // Lets the partial index of failures and conflicts serve the query.
            conds.push("status <> 'success'".into());
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT id, sync, direction, action, external_id, local_id, name, title, origin_values, destination_values,
                    before_values, modified_at, synced_at, status, error_message, run_id, actor FROM change_log
             {filter} ORDER BY {} LIMIT {}",
            if f.after_id.is_some() {
                "id ASC"
            } else if by_time {
                "synced_at DESC, id DESC"
            } else {
                "id DESC"
            },
            f.limit.clamp(1, 10_000)
        );
        let mut c = self.reader().await?;
        let rows = on!(c.conn(), |c| {
            let mut q = query_as::<_, ChangeRow>(&sql);
            for a in &args {
                q = match a {
                    Arg::Text(s) => q.bind(s.as_str()),
                    Arg::Int(i) => q.bind(*i),
                    Arg::Time(t) => q.bind(*t),
                };
            }
            q.fetch_all(c).await
        })?;
        Ok(rows.into_iter().map(Change::from).collect())
    }

    /// One change-control row.
    /// Whether the log holds any row of `sync`.
    pub async fn has_changes_of(&self, sync: &str) -> Result<bool> {
        let mut c = self.reader().await?;
        let n = on!(c.conn(), |c| {
            query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM (SELECT 1 FROM change_log WHERE sync = $1 LIMIT 1) t",
            )
            .bind(sync)
            .fetch_one(c)
            .await
        })?;
        Ok(n > 0)
    }

    pub async fn change(&self, id: i64) -> Result<Option<Change>> {
        let mut c = self.reader().await?;
        let row = on!(c.conn(), |c| {
            query_as::<_, ChangeRow>(
                "SELECT id, sync, direction, action, external_id, local_id, name, title, origin_values,
                        destination_values, before_values, modified_at, synced_at, status, error_message, run_id, actor
                 FROM change_log WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(c)
            .await
        })?;
        Ok(row.map(Change::from))
    }

    /// Rows per sync and UTC hour (`YYYY-MM-DDTHH`) since `since`: (sync, hour, all, failed).
    pub async fn change_stats(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, String, i64, i64, i64)>> {
        let hour = match &self.backend {
            Backend::Sqlite { .. } => "substr(synced_at, 1, 13)",
            Backend::Postgres(_) => "to_char(synced_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')",
        };
        // `failed` counts failed attempts; `unresolved` those of them that no later success of
        // the same record, sync and direction has made good (a delivery that failed, then went
        // through on its retry, is not a failure to look at).
        let sql = format!(
            "SELECT sync, {hour} AS hour, COUNT(*) AS n,
                    CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed,
                    CAST(SUM(CASE WHEN status = 'failed' AND NOT EXISTS (
                        SELECT 1 FROM change_log later
                         WHERE later.sync = f.sync AND later.direction = f.direction
                           AND later.id > f.id AND later.status IN ('success', 'conflict_resolved')
                           AND ((f.local_id IS NOT NULL AND later.local_id = f.local_id)
                             OR (f.local_id IS NULL AND later.external_id = f.external_id))
                    ) THEN 1 ELSE 0 END) AS BIGINT) AS unresolved
             FROM change_log f WHERE synced_at >= $1 GROUP BY sync, {hour} ORDER BY sync, hour"
        );
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            query_as::<_, (String, String, i64, i64, i64)>(&sql)
                .bind(since)
                .fetch_all(c)
                .await
        })?)
    }

    /// Deletes up to `batch` of the oldest rows synced before `cutoff`; returns how many.
    pub async fn prune_changes(&self, cutoff: DateTime<Utc>, batch: i64) -> Result<u64> {
        let mut c = self.writer().await?;
        let out = Ok(on!(c.conn(), |c| {
            query(
                "DELETE FROM change_log WHERE id IN
                   (SELECT id FROM change_log WHERE synced_at < $1 ORDER BY synced_at, id LIMIT $2)",
            )
            .bind(cutoff)
            .bind(batch)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?);
        c.done(out).await
    }
}

impl Tx {
    /// Writes many change-control rows.
    pub async fn log_changes(&mut self, rows: &[NewChange]) -> Result<()> {
        let now = Utc::now();
        for chunk in pieces(rows) {
            let values = values_clause(self.is_pg(), 16, chunk.len());
            let sql = format!(
                "INSERT INTO change_log (sync, direction, action, external_id, local_id, name, title, origin_values,
                     destination_values, before_values, modified_at, synced_at, status, error_message, run_id, actor)
                 VALUES {values}"
            );
            on!(self.conn(), |c| {
                let mut q = query(&sql);
                for r in chunk {
                    q = q
                        .bind(&r.sync)
                        .bind(r.direction.as_str())
                        .bind(r.action.as_str())
                        .bind(r.external_id.as_deref())
                        .bind(r.local_id)
                        .bind(&r.name)
                        .bind(&r.title)
                        .bind(Json(&r.origin_values))
                        .bind(Json(&r.destination_values))
                        .bind(Json(before(&r.before_values)))
                        .bind(r.modified_at)
                        .bind(r.synced_at.unwrap_or(now))
                        .bind(r.status.as_str())
                        .bind(&r.error_message)
                        .bind(r.run_id)
                        .bind(&r.actor);
                }
                q.execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }

    pub async fn log_change(&mut self, row: &NewChange) -> Result<i64> {
        log_change(self.conn(), row).await
    }
}

/// What a row stores as its before values: `{}` when none are known.
pub(crate) fn before(v: &Value) -> &Value {
    static EMPTY: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| Value::Object(serde_json::Map::new()));
    if v.is_null() { &EMPTY } else { v }
}
