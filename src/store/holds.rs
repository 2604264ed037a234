//! Deletes held by a delete guard, the scratch list of ids a reconciliation has seen, and
//! the candidates of ambiguous `match_on` matches.

use super::*;
use serde::Serialize;

/// A group of deletes the delete guard held (or is still collecting, during a run).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct Hold {
    pub id: i64,
    pub sync: String,
    pub run_id: Option<i64>,
    #[sqlx(try_from = "String")]
    pub status: HoldStatus,
    pub reason: String,
    pub items: i64,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    /// `external_to_local` (deletes reported by the external side, to apply here) or
    /// `local_to_external` (local deletes, to send).
    pub direction: String,
}

/// One delete of a hold: the external record that is gone and the local record it would
/// delete.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct HoldItem {
    pub external_id: String,
    pub local_id: Option<i64>,
    pub name: String,
}

const HOLD_SELECT: &str = "SELECT id, sync, run_id, status, reason, items, created_at, decided_at, decided_by, direction FROM holds";

impl Store {
    /// Opens a hold that collects a run's deletes.
    pub async fn open_hold(&self, sync: &str, run_id: Option<i64>) -> Result<i64> {
        let mut c = self.writer().await?;
        let out = Ok(on!(c.conn(), |c| {
            query_scalar::<_, i64>(
            "INSERT INTO holds (sync, run_id, status, created_at) VALUES ($1, $2, 'collecting', $3) RETURNING id"
        )
        .bind(sync)
        .bind(run_id)
        .bind(Utc::now())
        .fetch_one(c)
        .await
        })?);
        c.done(out).await
    }

    /// Adds deletes to a hold (an id already there is kept once).
    pub async fn add_hold_items(&self, hold: i64, items: &[HoldItem]) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.add_hold_items(hold, items).await?;
        tx.commit().await
    }

    /// Gives a hold still collecting to another run (the one that collected it stopped).
    pub async fn adopt_hold(&self, hold: i64, run_id: i64) -> Result<()> {
        let mut c = self.writer().await?;
        on!(c.conn(), |c| query(
            "UPDATE holds SET run_id = $1 WHERE id = $2 AND status = 'collecting'"
        )
        .bind(run_id)
        .bind(hold)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        c.done(Ok(())).await
    }

    /// Takes a delete out of a hold still collecting (the record came back in the same run).
    pub async fn remove_hold_item(&self, hold: i64, external_id: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        on!(tx.conn(), |c| query(
            "DELETE FROM hold_items WHERE hold_id = $1 AND external_id = $2"
        )
        .bind(hold)
        .bind(external_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        count_items(tx.conn(), hold).await?;
        tx.commit().await
    }

    /// A page of a hold's deletes, in external id order after `after`.
    pub async fn hold_items(&self, hold: i64, after: &str, limit: i64) -> Result<Vec<HoldItem>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            query_as::<_, HoldItem>(
            "SELECT external_id, local_id, name FROM hold_items WHERE hold_id = $1 AND external_id > $2 ORDER BY external_id LIMIT $3"
        )
        .bind(hold)
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await
        })?)
    }

    pub async fn hold(&self, id: i64) -> Result<Option<Hold>> {
        let mut c = self.reader().await?;
        let sql = format!("{HOLD_SELECT} WHERE id = $1");
        Ok(on!(c.conn(), |c| query_as::<_, Hold>(&sql)
            .bind(id)
            .fetch_optional(c)
            .await)?)
    }

    /// Holds, newest first, by status and sync when given.
    pub async fn holds(
        &self,
        status: Option<HoldStatus>,
        sync: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Hold>> {
        let mut c = self.reader().await?;
        let sql = format!(
            "{HOLD_SELECT} WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR sync = $2) ORDER BY id DESC LIMIT $3"
        );
        Ok(on!(c.conn(), |c| query_as::<_, Hold>(&sql)
            .bind(status.map(HoldStatus::as_str))
            .bind(sync)
            .bind(limit)
            .fetch_all(c)
            .await)?)
    }

    /// Moves a hold from one status to another, only if it is still in `from`: of two
    /// operators (or instances) deciding at once, exactly one gets `true`.
    pub async fn decide_hold(
        &self,
        id: i64,
        from: HoldStatus,
        to: HoldStatus,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<bool> {
        let mut c = self.writer().await?;
        let n = on!(c.conn(), |c| {
            query(
            "UPDATE holds SET status = $1, reason = COALESCE($2, reason), decided_at = $3, decided_by = COALESCE($4, decided_by)
             WHERE id = $5 AND status = $6"
        )
        .bind(to.as_str())
        .bind(reason)
        .bind(Utc::now())
        .bind(by)
        .bind(id)
        .bind(from.as_str())
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?;
        c.done(Ok(n == 1)).await
    }

    /// How many records the binding links.
    pub async fn count_links(&self, binding: &str) -> Result<i64> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM links WHERE binding = $1 AND external_id IS NOT NULL"
        )
        .bind(binding)
        .fetch_one(c)
        .await)?)
    }

    /// The binding's links of these external ids, by external id (a read outside any
    /// transaction).
    pub async fn links_by_external_ids(
        &self,
        binding: &str,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Link>> {
        let mut c = self.reader().await?;
        let pg = matches!(c, Pooled::Postgres(_));
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        for chunk in pieces(ids) {
            let mut ph = Ph::new(pg);
            let sql = format!(
                "{LINK_SELECT} WHERE binding = {} AND external_id IN ({})",
                ph.next(),
                ph.list(chunk.len())
            );
            let rows = on!(c.conn(), |c| {
                let mut q = query_as::<_, LinkRow>(&sql).bind(binding);
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(c).await
            })?;
            for l in rows.into_iter().map(Link::from) {
                if let Some(e) = l.external_id.clone() {
                    out.insert(e, l);
                }
            }
        }
        Ok(out)
    }

    /// Notes external ids a reconciliation listed.
    pub async fn reconcile_seen(&self, run_id: i64, ids: &[String]) -> Result<()> {
        let mut tx = self.begin().await?;
        for chunk in pieces(ids) {
            let mut ph = Ph::new(tx.is_pg());
            let values: Vec<String> = chunk.iter().map(|_| ph.tuple(2)).collect();
            let sql = format!(
                "INSERT INTO reconcile_seen (run_id, external_id) VALUES {} ON CONFLICT (run_id, external_id) DO NOTHING",
                values.join(", ")
            );
            on!(tx.conn(), |c| {
                let mut q = query(&sql);
                for id in chunk {
                    q = q.bind(run_id).bind(id);
                }
                q.execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        tx.commit().await
    }

    /// A page of the binding's links (by local id after `after`) whose external id the
    /// reconciliation of `run_id` did not list, among those not written since the listing
    /// began at `listed_from` (a record linked meanwhile, such as one a delivery created
    /// there, was not there to be listed).
    pub async fn reconcile_unseen(
        &self,
        binding: &str,
        run_id: i64,
        listed_from: DateTime<Utc>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Link>> {
        let mut c = self.reader().await?;
        let sql = format!(
            "{LINK_SELECT} WHERE binding = $1 AND external_id IS NOT NULL AND local_id > $2
               AND NOT EXISTS (SELECT 1 FROM reconcile_seen s WHERE s.run_id = $3 AND s.external_id = links.external_id)
               AND updated_at < $5
             ORDER BY local_id LIMIT $4"
        );
        let rows = on!(c.conn(), |c| query_as::<_, LinkRow>(&sql)
            .bind(binding)
            .bind(after)
            .bind(run_id)
            .bind(limit)
            .bind(listed_from)
            .fetch_all(c)
            .await)?;
        Ok(rows.into_iter().map(Link::from).collect())
    }

    /// Forgets what the reconciliation of `run_id` listed.
    pub async fn reconcile_done(&self, run_id: i64) -> Result<()> {
        let mut c = self.writer().await?;
        on!(c.conn(), |c| query(
            "DELETE FROM reconcile_seen WHERE run_id = $1"
        )
        .bind(run_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        c.done(Ok(())).await
    }

    /// The next reconciliation of a sync, as stored.
    pub async fn next_reconcile(&self, sync: &str) -> Result<Option<DateTime<Utc>>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            query_scalar::<_, Option<DateTime<Utc>>>(
                "SELECT next_reconcile_at FROM sync_state WHERE sync = $1",
            )
            .bind(sync)
            .fetch_optional(c)
            .await
        })?
        .flatten())
    }

    /// Sets the next reconciliation; with `due`, only if it is still `due` (of several
    /// instances ticking at once, exactly one gets `true`).
    pub async fn set_next_reconcile(
        &self,
        sync: &str,
        due: Option<DateTime<Utc>>,
        next: DateTime<Utc>,
    ) -> Result<bool> {
        let mut c = self.writer().await?;
        self.ensure_state(c.conn(), sync).await?;
        let n = on!(c.conn(), |c| query(
            "UPDATE sync_state SET next_reconcile_at = $1, updated_at = $2
             WHERE sync = $3 AND ($4 IS NULL OR next_reconcile_at = $4)"
        )
        .bind(next)
        .bind(Utc::now())
        .bind(sync)
        .bind(due)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        c.done(Ok(n == 1)).await
    }
}

async fn count_items(c: Conn<'_>, hold: i64) -> Result<()> {
    on!(c, |c| {
        query(
        "UPDATE holds SET items = (SELECT COUNT(*) FROM hold_items WHERE hold_id = $1) WHERE id = $1"
    )
    .bind(hold)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

impl Store {
    /// Local records in held holds of this sync and direction: a push does not send (or hold)
    /// their deletes again while a person decides.
    pub async fn held_local_ids(
        &self,
        sync: &str,
        direction: &str,
    ) -> Result<std::collections::HashSet<i64>> {
        let mut c = self.reader().await?;
        let ids = on!(c.conn(), |c| {
            query_scalar::<_, i64>(
            "SELECT i.local_id FROM hold_items i JOIN holds h ON h.id = i.hold_id
             WHERE h.sync = $1 AND h.direction = $2 AND h.status = 'held' AND i.local_id IS NOT NULL"
        )
        .bind(sync)
        .bind(direction)
        .fetch_all(c)
        .await
        })?;
        Ok(ids.into_iter().collect())
    }
}

impl Tx {
    /// Notes one real-time delete of `sync` in `direction` at `now`, forgets those before
    /// `since`, and answers how many remain (this one included).
    pub async fn note_guard_delete(
        &mut self,
        sync: &str,
        direction: &str,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> Result<i64> {
        on!(self.conn(), |c| query(
            "DELETE FROM guard_deletes WHERE sync = $1 AND direction = $2 AND at < $3"
        )
        .bind(sync)
        .bind(direction)
        .bind(since)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        on!(self.conn(), |c| query(
            "INSERT INTO guard_deletes (sync, direction, at) VALUES ($1, $2, $3)"
        )
        .bind(sync)
        .bind(direction)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(on!(self.conn(), |c| query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM guard_deletes WHERE sync = $1 AND direction = $2"
        )
        .bind(sync)
        .bind(direction)
        .fetch_one(c)
        .await)?)
    }

    /// The real-time hold (no run) of a sync and direction that waits for a decision.
    pub async fn realtime_hold(&mut self, sync: &str, direction: &str) -> Result<Option<i64>> {
        Ok(on!(self.conn(), |c| {
            query_scalar::<_, i64>(
            "SELECT id FROM holds WHERE sync = $1 AND direction = $2 AND run_id IS NULL AND status = 'held' ORDER BY id LIMIT 1"
        )
        .bind(sync)
        .bind(direction)
        .fetch_optional(c)
        .await
        })?)
    }

    /// A new hold, in `status`, with its reason.
    pub async fn create_hold(
        &mut self,
        sync: &str,
        run_id: Option<i64>,
        direction: &str,
        status: HoldStatus,
        reason: &str,
    ) -> Result<i64> {
        Ok(on!(self.conn(), |c| {
            query_scalar::<_, i64>(
            "INSERT INTO holds (sync, run_id, status, reason, created_at, direction) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id"
        )
        .bind(sync)
        .bind(run_id)
        .bind(status.as_str())
        .bind(reason)
        .bind(Utc::now())
        .bind(direction)
        .fetch_one(c)
        .await
        })?)
    }

    /// Adds deletes to a hold, in this transaction.
    pub async fn add_hold_items(&mut self, hold: i64, items: &[HoldItem]) -> Result<()> {
        for chunk in pieces(items) {
            let mut ph = Ph::new(self.is_pg());
            let values: Vec<String> = chunk.iter().map(|_| ph.tuple(4)).collect();
            let sql = format!(
                "INSERT INTO hold_items (hold_id, external_id, local_id, name) VALUES {} ON CONFLICT (hold_id, external_id) DO NOTHING",
                values.join(", ")
            );
            on!(self.conn(), |c| {
                let mut q = query(&sql);
                for it in chunk {
                    q = q
                        .bind(hold)
                        .bind(&it.external_id)
                        .bind(it.local_id)
                        .bind(&it.name);
                }
                q.execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        count_items(self.conn(), hold).await
    }

    /// How many records the binding links, in this transaction.
    pub async fn count_links(&mut self, binding: &str) -> Result<i64> {
        Ok(on!(self.conn(), |c| query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM links WHERE binding = $1 AND external_id IS NOT NULL"
        )
        .bind(binding)
        .fetch_one(c)
        .await)?)
    }

    /// Live local records of `model` not linked through `binding` whose fields equal the given
    /// values, each compared trimmed and without letter case (the database folds both sides
    /// alike). At most `limit`, by id.
    pub async fn match_candidates(
        &mut self,
        model: &str,
        binding: &str,
        fields: &[(&str, String)],
        limit: i64,
    ) -> Result<Vec<i64>> {
        let pg = self.is_pg();
        let mut ph = Ph::new(pg);
        // Placeholders in the order they appear (SQLite's `?` bind by position).
        let m = ph.next();
        let conds = equal_fields(&mut ph, pg, fields.len());
        let (b, lim) = (ph.next(), ph.next());
        let sql = format!(
            "SELECT id FROM records WHERE model = {m} AND deleted_at IS NULL AND {}
               AND NOT EXISTS (SELECT 1 FROM links l WHERE l.binding = {b} AND l.local_id = records.id)
             ORDER BY id LIMIT {lim}",
            conds.join(" AND ")
        );
        Ok(on!(self.conn(), |c| {
            let mut q = query_scalar::<_, i64>(&sql).bind(model);
            for (field, value) in fields {
                q = q.bind(field_path(pg, field)).bind(value);
            }
            q.bind(binding).bind(limit).fetch_all(c).await
        })?)
    }

    /// A deleted local record of `model` whose fields equal the given values (compared as
    /// [`Tx::match_candidates`] does) and that still has a delivery of sync `sync` to make:
    /// a pulled record matching it is the create of that delivery, seen before its answer
    /// was recorded.
    pub async fn match_deleted_in_flight(
        &mut self,
        model: &str,
        sync: &str,
        fields: &[(&str, String)],
    ) -> Result<Option<i64>> {
        let pg = self.is_pg();
        let mut ph = Ph::new(pg);
        let m = ph.next();
        let conds = equal_fields(&mut ph, pg, fields.len());
        let s = ph.next();
        let sql = format!(
            "SELECT id FROM records WHERE model = {m} AND deleted_at IS NOT NULL AND {}
               AND EXISTS (SELECT 1 FROM outbox o WHERE o.sync = {s} AND o.local_id = records.id
                                                    AND o.action = 'create' AND o.status <> 'done' AND o.attempts > 0)
             ORDER BY id DESC LIMIT 1",
            conds.join(" AND ")
        );
        Ok(on!(self.conn(), |c| {
            let mut q = query_scalar::<_, i64>(&sql).bind(model);
            for (field, value) in fields {
                q = q.bind(field_path(pg, field)).bind(value);
            }
            q.bind(sync).fetch_optional(c).await
        })?)
    }

    /// Notes the local candidates of an ambiguous match of `external_id`.
    pub async fn note_ambiguous(
        &mut self,
        binding: &str,
        local_ids: &[i64],
        external_id: &str,
    ) -> Result<()> {
        let now = Utc::now();
        for id in local_ids {
            on!(self.conn(), |c| {
                query(
                "INSERT INTO match_ambiguous (binding, local_id, external_id, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (binding, local_id, external_id) DO NOTHING"
            )
            .bind(binding)
            .bind(id)
            .bind(external_id)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }
}

impl Store {
    /// Local records of `binding` left unlinked by an ambiguous match.
    pub async fn ambiguous_local_ids(
        &self,
        binding: &str,
    ) -> Result<std::collections::HashSet<i64>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| query_scalar::<_, i64>(
            "SELECT local_id FROM match_ambiguous WHERE binding = $1"
        )
        .bind(binding)
        .fetch_all(c)
        .await)?
        .into_iter()
        .collect())
    }
}

/// `n` conditions "the record's field equals the value", trimmed and without letter case, each
/// taking two placeholders (the field's path, see [`field_path`], then the value).
fn equal_fields(ph: &mut Ph, pg: bool, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (path, value) = (ph.next(), ph.next());
            if pg {
                format!("lower(btrim(vals ->> {path})) = lower(btrim({value}))")
            } else {
                format!("lower(trim(json_extract(vals, {path}))) = lower(trim({value}))")
            }
        })
        .collect()
}

/// How a field of `vals` is named to the database: its key (PostgreSQL's `->>`) or a JSON
/// path (SQLite's `json_extract`).
fn field_path(pg: bool, field: &str) -> String {
    if pg {
        field.to_string()
    } else {
        format!("$.{field}")
    }
}
