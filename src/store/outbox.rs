//! The outbox: queueing, claiming (with instance heartbeats), settling and inspecting deliveries.

use super::*;

impl Store {
    /// Local ids of a sync with an undelivered entry (pending, in flight or dead).
    pub async fn undelivered_local_ids(
        &self,
        sync: &str,
    ) -> Result<std::collections::HashSet<i64>> {
        let mut c = self.reader().await?;
        let ids = on!(c.conn(), |c| {
            query_scalar::<_, i64>(
            "SELECT DISTINCT local_id FROM outbox WHERE sync = $1 AND status IN ('pending', 'inflight', 'dead')"
        )
        .bind(sync)
        .fetch_all(c)
        .await
        })?;
        Ok(ids.into_iter().collect())
    }

    /// The local records of a sync with a dead-lettered delivery (given up, waiting for a
    /// person to retry or discard it).
    pub async fn dead_local_ids(&self, sync: &str) -> Result<std::collections::HashSet<i64>> {
        let mut c = self.reader().await?;
        let ids = on!(c.conn(), |c| {
            query_scalar::<_, i64>(
                "SELECT DISTINCT local_id FROM outbox WHERE sync = $1 AND status = 'dead'",
            )
            .bind(sync)
            .fetch_all(c)
            .await
        })?;
        Ok(ids.into_iter().collect())
    }

    /// How many entries a run queued are in flight or due now (not yet settled).
    pub async fn unsettled_in_run(
        &self,
        sync: &str,
        run_id: i64,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let mut c = self.reader().await?;
        let run_match = match self.backend {
            Backend::Sqlite { .. } => "json_extract(payload, '$.run_id') = $2",
            Backend::Postgres(_) => "(payload ->> 'run_id')::bigint = $2",
        };
        let sql = format!(
            "SELECT COUNT(*) FROM outbox WHERE sync = $1 AND {run_match}
             AND (status = 'inflight' OR (status = 'pending' AND next_attempt_at <= $3))"
        );
        Ok(on!(c.conn(), |c| query_scalar::<_, i64>(&sql)
            .bind(sync)
            .bind(run_id)
            .bind(now)
            .fetch_one(c)
            .await)?)
    }

    /// How many entries a run queued for a sync were delivered.
    pub async fn delivered_in_run(&self, sync: &str, run_id: i64) -> Result<i64> {
        let mut c = self.reader().await?;
        let sql = match self.backend {
            Backend::Sqlite { .. } => {
                "SELECT COUNT(*) FROM outbox WHERE sync = $1 AND status = 'done' AND json_extract(payload, '$.run_id') = $2"
            }
            Backend::Postgres(_) => {
                "SELECT COUNT(*) FROM outbox WHERE sync = $1 AND status = 'done' AND (payload ->> 'run_id')::bigint = $2"
            }
        };
        Ok(on!(c.conn(), |c| query_scalar::<_, i64>(sql)
            .bind(sync)
            .bind(run_id)
            .fetch_one(c)
            .await)?)
    }

    /// How many entries a run queued for a sync failed: dead-lettered, or waiting for a retry
    /// after a failed attempt.
    pub async fn failed_in_run(&self, sync: &str, run_id: i64) -> Result<i64> {
        let mut c = self.reader().await?;
        let sql = match self.backend {
            Backend::Sqlite { .. } => {
                "SELECT COUNT(*) FROM outbox WHERE sync = $1 AND json_extract(payload, '$.run_id') = $2
                 AND (status = 'dead' OR (status = 'pending' AND attempts > 0))"
            }
            Backend::Postgres(_) => {
                "SELECT COUNT(*) FROM outbox WHERE sync = $1 AND (payload ->> 'run_id')::bigint = $2
                 AND (status = 'dead' OR (status = 'pending' AND attempts > 0))"
            }
        };
        Ok(on!(c.conn(), |c| query_scalar::<_, i64>(sql)
            .bind(sync)
            .bind(run_id)
            .fetch_one(c)
            .await)?)
    }

    /// Records of a model with `id > after`, tombstones included, in id order.
    pub async fn records_after(&self, model: &str, after: i64, limit: i64) -> Result<Vec<Record>> {
        let mut c = self.reader().await?;
        let rows = on!(c.conn(), |c| query_as::<_, RecordRow>(
            "SELECT id, model, vals, version, created_at, updated_at, deleted_at FROM records
             WHERE model = $1 AND id > $2 ORDER BY id LIMIT $3"
        )
        .bind(model)
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await)?;
        Ok(rows.into_iter().map(Record::from).collect())
    }

    /// Claims up to `limit` due entries for `worker`, leasing them until `now + lease`. An
    /// entry is due when pending and its time has come, or when its lease ran out; it is never
    /// claimed while an earlier entry for the same record is undelivered.
    pub async fn claim_outbox(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        let until =
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        // Pending entries in id order; the (status, id) index walks them without a sort.
        let due = "o.status = 'pending' AND o.next_attempt_at <= $3";
        let earlier =
            "NOT EXISTS (SELECT 1 FROM outbox p WHERE p.sync = o.sync AND p.local_id = o.local_id
                        AND p.id < o.id AND p.status IN ('pending', 'inflight', 'dead'))";
        let ret = "RETURNING id, sync, local_id, action, payload, status, attempts, next_attempt_at, last_error, created_at";
        // SQLite's single writer makes the statement atomic; PostgreSQL skips rows other
        // instances hold.
        let lock = match self.backend {
            Backend::Sqlite { .. } => "",
            Backend::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE outbox SET status = 'inflight', claimed_by = $1, claimed_until = $2, attempts = attempts + 1, updated_at = $3
             WHERE id IN (SELECT o.id FROM outbox o WHERE ({due}) AND {earlier} ORDER BY o.id LIMIT $4 {lock}) {ret}"
        );
        let mut c = self.writer().await?;
        // Leases that ran out, and claims of instances that stopped renewing their heartbeat
        // (a process that died), put their entries back in line first.
        let alive_since = now - chrono::Duration::from_std(INSTANCE_DEAD_AFTER).expect("short");
        // A claimer is alive by definition: its heartbeat is renewed with every claim too.
        renew_heartbeat(c.conn(), worker, now).await?;
        on!(c.conn(), |c| query(
            "UPDATE outbox SET status = 'pending', claimed_by = NULL, claimed_until = NULL
             WHERE status = 'inflight' AND (claimed_until < $1 OR (claimed_by <> $2
               AND claimed_by NOT IN (SELECT name FROM instances WHERE heartbeat_at >= $3)))"
        )
        .bind(now)
        .bind(worker)
        .bind(alive_since)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        let rows = on!(c.conn(), |c| query_as::<_, OutboxRow>(&sql)
            .bind(worker)
            .bind(until)
            .bind(now)
            .bind(limit)
            .fetch_all(c)
            .await)?;
        let mut out: Vec<OutboxEntry> = rows.into_iter().map(OutboxEntry::from).collect();
        out.sort_by_key(|e| e.id);
        c.done(Ok(out)).await
    }

    /// Renews this instance's heartbeat (and registers it on first use).
    pub async fn heartbeat(&self, instance: &str, now: DateTime<Utc>) -> Result<()> {
        let mut c = self.writer().await?;
        renew_heartbeat(c.conn(), instance, now).await?;
        // Rows of instances long gone are of no use to anyone.
        on!(c.conn(), |c| query(
            "DELETE FROM instances WHERE heartbeat_at < $1"
        )
        .bind(now - chrono::Duration::days(1))
        .execute(c)
        .await
        .map(|_| ()))?;
        c.done(Ok(())).await
    }

    /// Puts back in line every in-flight delivery claimed by another process. Only for the
    /// process that owns the database (SQLite's server): at its start, whatever another
    /// process held belonged to one that is gone, so nothing waits for a lease to run out.
    pub async fn release_claims_of_others(&self, instance: &str) -> Result<u64> {
        let mut c = self.writer().await?;
        let out = Ok(on!(c.conn(), |c| query(
            "UPDATE outbox SET status = 'pending', claimed_by = NULL, claimed_until = NULL
             WHERE status = 'inflight' AND claimed_by <> $1"
        )
        .bind(instance)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?);
        c.done(out).await
    }

    /// Extends this instance's claims on `ids` until `until`: a batch still at work keeps its
    /// entries, so a lease that would run out meanwhile does not hand them to a second
    /// delivery.
    pub async fn extend_claims(
        &self,
        instance: &str,
        ids: &[i64],
        until: DateTime<Utc>,
    ) -> Result<()> {
        let mut c = self.writer().await?;
        for chunk in pieces(ids) {
            let mut ph = Ph::new(self.is_pg());
            let (u, me) = (ph.next(), ph.next());
            let sql = format!(
                "UPDATE outbox SET claimed_until = {u} WHERE status = 'inflight' AND claimed_by = {me} AND id IN ({})",
                ph.list(chunk.len())
            );
            on!(c.conn(), |c| {
                let mut q = query(&sql).bind(until).bind(instance);
                for id in chunk {
                    q = q.bind(id);
                }
                q.execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        c.done(Ok(())).await
    }

    /// Marks a delivered entry done.
    pub async fn outbox_done(&self, id: i64) -> Result<()> {
        self.set_outbox(id, OutboxStatus::Done, None, None).await
    }

    /// Puts an entry back to wait until `at`, noting why.
    pub async fn outbox_retry_at(&self, id: i64, at: DateTime<Utc>, error: &str) -> Result<()> {
        self.set_outbox(id, OutboxStatus::Pending, Some(at), Some(error))
            .await
    }

    /// Puts an entry back to wait until `at` without spending an attempt (the claim counted
    /// one): it was not tried, only deferred.
    pub async fn outbox_wait(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
        let now = Utc::now();
        let mut c = self.writer().await?;
        on!(c.conn(), |c| {
            query(
            "UPDATE outbox SET status = 'pending', next_attempt_at = $1, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
             claimed_by = NULL, claimed_until = NULL, updated_at = $2 WHERE id = $3"
        )
        .bind(at)
        .bind(now)
        .bind(id)
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        c.done(Ok(())).await
    }

    /// Dead-letters an entry after its retry budget.
    pub async fn outbox_dead(&self, id: i64, error: &str) -> Result<()> {
        self.set_outbox(id, OutboxStatus::Dead, None, Some(error))
            .await
    }

    /// Sends a dead or discarded entry again now (the operator's retry). Returns whether it existed.
    pub async fn outbox_requeue(&self, id: i64) -> Result<bool> {
        let now = Utc::now();
        let mut c = self.writer().await?;
        let n = on!(c.conn(), |c| {
            query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, claimed_by = NULL,
             claimed_until = NULL, updated_at = $1 WHERE id = $2 AND status IN ('dead', 'discarded')"
        )
        .bind(now)
        .bind(id)
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        c.done(Ok(n > 0)).await
    }

    /// Requeues every dead entry of a sync; returns how many.
    pub async fn outbox_requeue_all(&self, sync: &str) -> Result<u64> {
        let now = Utc::now();
        let mut c = self.writer().await?;
        let out = on!(c.conn(), |c| query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, claimed_by = NULL,
             claimed_until = NULL, updated_at = $1 WHERE sync = $2 AND status = 'dead'"
        )
        .bind(now)
        .bind(sync)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(Into::into);
        c.done(out).await
    }

    pub async fn outbox_entry(&self, id: i64) -> Result<Option<OutboxEntry>> {
        let mut c = self.reader().await?;
        let row = on!(c.conn(), |c| {
            query_as::<_, OutboxRow>(
            "SELECT id, sync, local_id, action, payload, status, attempts, next_attempt_at, last_error, created_at
             FROM outbox WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(c)
        .await
        })?;
        Ok(row.map(OutboxEntry::from))
    }

    /// Gives up on an entry by hand.
    pub async fn outbox_discard(&self, id: i64) -> Result<bool> {
        let mut c = self.writer().await?;
        let n = on!(c.conn(), |c| {
            query(
            "UPDATE outbox SET status = 'discarded', updated_at = $1 WHERE id = $2 AND status IN ('dead', 'pending')"
        )
        .bind(Utc::now())
        .bind(id)
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        c.done(Ok(n > 0)).await
    }

    async fn set_outbox(
        &self,
        id: i64,
        status: OutboxStatus,
        at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> Result<()> {
        let now = Utc::now();
        let mut c = self.writer().await?;
        on!(c.conn(), |c| {
            query(
                "UPDATE outbox SET status = $1, next_attempt_at = COALESCE($2, next_attempt_at),
             last_error = CASE WHEN $1 = 'done' THEN NULL ELSE COALESCE($3, last_error) END,
             claimed_by = NULL, claimed_until = NULL, updated_at = $4 WHERE id = $5",
            )
            .bind(status.as_str())
            .bind(at)
            .bind(error)
            .bind(now)
            .bind(id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        c.done(Ok(())).await
    }

    /// Outbox entries by status (and sync), newest last, keyset-paginated by id.
    pub async fn list_outbox(
        &self,
        status: Option<OutboxStatus>,
        sync: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        let mut c = self.reader().await?;
        let rows = on!(c.conn(), |c| {
            query_as::<_, OutboxRow>(
            "SELECT id, sync, local_id, action, payload, status, attempts, next_attempt_at, last_error, created_at FROM outbox
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR sync = $2) AND id > $3 ORDER BY id LIMIT $4"
        )
        .bind(status.map(OutboxStatus::as_str))
        .bind(sync)
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await
        })?;
        Ok(rows.into_iter().map(OutboxEntry::from).collect())
    }

    /// Outbox entries per sync and status (pending, inflight, dead), with the oldest entry's
    /// creation time.
    pub async fn outbox_stats(&self) -> Result<Vec<(String, String, i64, Option<DateTime<Utc>>)>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| query_as::<
            _,
            (String, String, i64, Option<DateTime<Utc>>),
        >(
            "SELECT sync, status, COUNT(*), MIN(created_at) FROM outbox
             WHERE status IN ('pending', 'inflight', 'dead') GROUP BY sync, status"
        )
        .fetch_all(c)
        .await)?)
    }

    /// Undelivered entries (pending or in flight) for a sync.
    pub async fn outbox_depth(&self, sync: &str) -> Result<i64> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM outbox WHERE sync = $1 AND status IN ('pending', 'inflight')"
        )
        .bind(sync)
        .fetch_one(c)
        .await)?)
    }
}

/// Which undelivered changes of a record [`Tx::supersede_undelivered`] gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Superseded {
    /// Every one: the record is gone from that system.
    All,
    /// Its updates: a delete of the record follows them.
    Updates,
}

impl Tx {
    /// Queues many changes for delivery.
    pub async fn enqueue_many(&mut self, entries: &[NewOutbox]) -> Result<()> {
        let now = Utc::now();
        for chunk in pieces(entries) {
            let mut ph = Ph::new(self.is_pg());
            let values = (0..chunk.len())
                .map(|_| {
                    format!(
                        "({}, {}, {}, {}, 'pending', {}, {}, {})",
                        ph.next(),
                        ph.next(),
                        ph.next(),
                        ph.next(),
                        ph.next(),
                        ph.next(),
                        ph.next()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO outbox (sync, local_id, action, payload, status, next_attempt_at, created_at, updated_at) VALUES {values}"
            );
            on!(self.conn(), |c| {
                let mut q = query(&sql);
                for e in chunk {
                    q = q
                        .bind(&e.sync)
                        .bind(e.local_id)
                        .bind(&e.action)
                        .bind(Json(&e.payload))
                        .bind(now)
                        .bind(now)
                        .bind(now);
                }
                q.execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }

    /// Marks many outbox entries done.
    pub async fn outbox_done_many(&mut self, ids: &[i64]) -> Result<()> {
        let now = Utc::now();
        for chunk in pieces(ids) {
            let mut ph = Ph::new(self.is_pg());
            let sql = format!(
                "UPDATE outbox SET status = 'done', last_error = NULL, claimed_by = NULL, claimed_until = NULL, updated_at = {} WHERE id IN ({})",
                ph.next(),
                ph.list(chunk.len())
            );
            on!(self.conn(), |c| {
                let mut q = query(&sql).bind(now);
                for id in chunk {
                    q = q.bind(id);
                }
                q.execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }

    /// Gives up, with `reason`, on changes of a record still waiting or dead-lettered for
    /// `sync` that nothing needs any more: all of them when its record there is gone
    /// (`Superseded::All`), its updates when a delete follows them (`Superseded::Updates`). An
    /// entry in flight settles by itself. Returns how many were given up.
    pub async fn supersede_undelivered(
        &mut self,
        sync: &str,
        local_id: i64,
        which: Superseded,
        reason: &str,
    ) -> Result<u64> {
        let only = match which {
            Superseded::All => "",
            Superseded::Updates => " AND action = 'update'",
        };
        let sql = format!(
            "UPDATE outbox SET status = 'discarded', last_error = $1, updated_at = $2
             WHERE sync = $3 AND local_id = $4 AND status IN ('pending', 'dead'){only}"
        );
        Ok(on!(self.conn(), |c| {
            query(&sql)
                .bind(reason)
                .bind(Utc::now())
                .bind(sync)
                .bind(local_id)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?)
    }

    /// Does `sync` still have a change of this record waiting, in flight or dead-lettered (and
    /// so possibly delivered later)?
    pub async fn has_undelivered(&mut self, sync: &str, local_id: i64) -> Result<bool> {
        let n = on!(self.conn(), |c| {
            query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM outbox WHERE sync = $1 AND local_id = $2 AND status IN ('pending', 'inflight', 'dead')"
        )
        .bind(sync)
        .bind(local_id)
        .fetch_one(c)
        .await
        })?;
        Ok(n > 0)
    }

    /// Queues a change for delivery.
    pub async fn enqueue(&mut self, e: &NewOutbox) -> Result<i64> {
        let now = Utc::now();
        Ok(on!(self.conn(), |c| {
            query_scalar::<_, i64>(
            "INSERT INTO outbox (sync, local_id, action, payload, status, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'pending', $5, $5, $5) RETURNING id"
        )
        .bind(&e.sync)
        .bind(e.local_id)
        .bind(&e.action)
        .bind(Json(&e.payload))
        .bind(now)
        .fetch_one(c)
        .await
        })?)
    }
}
