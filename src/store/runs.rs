//! Sync state (cursor, schedule, run claim) and the runs table.

use super::*;

impl Store {
    pub async fn sync_state(&self, sync: &str) -> Result<Option<SyncState>> {
        let mut c = self.reader().await?;
        let row = on!(c.conn(), |c| {
            query_as::<_, SyncState>(
            "SELECT sync, cursor, next_run_at, schedule, running_run, running_by, running_since FROM sync_state WHERE sync = $1"
        )
        .bind(sync)
        .fetch_optional(c)
        .await
        })?;
        Ok(row)
    }

    pub(super) async fn ensure_state(&self, c: Conn<'_>, sync: &str) -> Result<()> {
        on!(c, |c| {
            query("INSERT INTO sync_state (sync, updated_at) VALUES ($1, $2) ON CONFLICT (sync) DO NOTHING")
            .bind(sync)
            .bind(Utc::now())
            .execute(c).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn set_cursor(&self, sync: &str, cursor: Option<&str>) -> Result<()> {
        let mut c = self.writer().await?;
        self.ensure_state(c.conn(), sync).await?;
        on!(c.conn(), |c| query(
            "UPDATE sync_state SET cursor = $1, updated_at = $2 WHERE sync = $3"
        )
        .bind(cursor)
        .bind(Utc::now())
        .bind(sync)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        c.done(Ok(())).await
    }

    /// Stores when the sync is next due, and the schedule text that computed it.
    pub async fn set_next_run(
        &self,
        sync: &str,
        at: Option<DateTime<Utc>>,
        schedule: Option<&str>,
    ) -> Result<()> {
        let mut c = self.writer().await?;
        self.ensure_state(c.conn(), sync).await?;
        on!(c.conn(), |c| query(
            "UPDATE sync_state SET next_run_at = $1, schedule = $2, updated_at = $3 WHERE sync = $4"
        )
        .bind(at)
        .bind(schedule)
        .bind(Utc::now())
        .bind(sync)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        c.done(Ok(())).await
    }

    /// Moves a due time on, only if it is still `due`: of several instances ticking at once,
    /// exactly one gets `true` and runs it.
    pub async fn advance_next_run(
        &self,
        sync: &str,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let mut c = self.writer().await?;
        let n = on!(c.conn(), |c| {
            query(
            "UPDATE sync_state SET next_run_at = $1, updated_at = $2 WHERE sync = $3 AND next_run_at = $4"
        )
        .bind(next)
        .bind(Utc::now())
        .bind(sync)
        .bind(due)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?;
        c.done(Ok(n == 1)).await
    }

    /// Claims the sync's run slot with a conditional update: true for exactly one caller,
    /// across every instance sharing the database, until `release_run`. A claim older than
    /// `stale_after` (an instance that died mid-run) may be taken over.
    pub async fn claim_run(
        &self,
        sync: &str,
        instance: &str,
        now: DateTime<Utc>,
        stale_after: Duration,
    ) -> Result<bool> {
        let stale =
            now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::hours(1));
        let mut c = self.begin().await?;
        self.ensure_state(c.conn(), sync).await?;
        // A claim left by an instance that died: its run ends as failed, so none stays
        // `running` for ever.
        on!(c.conn(), |c| {
            query(
                "UPDATE runs SET status = 'failed', finished_at = $1,
                 error = 'the instance running it stopped without finishing (its claim expired)'
             WHERE sync = $2 AND finished_at IS NULL AND instance = (SELECT running_by FROM sync_state
                 WHERE sync = $2 AND running_by IS NOT NULL AND running_since < $3)",
            )
            .bind(now)
            .bind(sync)
            .bind(stale)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        let n = on!(c.conn(), |c| {
            query(
            "UPDATE sync_state SET running_by = $1, running_since = $2, running_run = NULL, updated_at = $2
             WHERE sync = $3 AND (running_by IS NULL OR running_since < $4)"
        )
        .bind(instance)
        .bind(now)
        .bind(sync)
        .bind(stale)
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        c.commit().await?;
        Ok(n == 1)
    }

    /// Renews this instance's claim on a sync's run slot.
    pub async fn renew_run_claim(
        &self,
        sync: &str,
        instance: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut c = self.writer().await?;
        on!(c.conn(), |c| query(
            "UPDATE sync_state SET running_since = $1 WHERE sync = $2 AND running_by = $3"
        )
        .bind(now)
        .bind(sync)
        .bind(instance)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        c.done(Ok(())).await
    }

    /// Notes which run holds the claim.
    pub async fn set_running_run(&self, sync: &str, instance: &str, run_id: i64) -> Result<()> {
        let mut c = self.writer().await?;
        on!(c.conn(), |c| query(
            "UPDATE sync_state SET running_run = $1 WHERE sync = $2 AND running_by = $3"
        )
        .bind(run_id)
        .bind(sync)
        .bind(instance)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        c.done(Ok(())).await
    }

    /// Gives the run slot back (only if this instance holds it).
    pub async fn release_run(&self, sync: &str, instance: &str) -> Result<()> {
        let mut c = self.writer().await?;
        let out = release_run(c.conn(), sync, instance).await;
        c.done(out).await
    }

    pub async fn start_run(
        &self,
        sync: &str,
        trigger: &str,
        instance: &str,
        status: RunStatus,
    ) -> Result<i64> {
        let mut c = self.writer().await?;
        let out = Ok(on!(c.conn(), |c| {
            query_scalar::<_, i64>(
            "INSERT INTO runs (sync, trigger, started_at, status, instance) VALUES ($1, $2, $3, $4, $5) RETURNING id"
        )
        .bind(sync)
        .bind(trigger)
        .bind(Utc::now())
        .bind(status.as_str())
        .bind(instance)
        .fetch_one(c)
        .await
        })?);
        c.done(out).await
    }

    /// Records a run that was skipped, started and finished in one statement (so a crash
    /// cannot leave it open).
    pub async fn skipped_run(
        &self,
        sync: &str,
        trigger: &str,
        instance: &str,
        why: &str,
    ) -> Result<i64> {
        let mut c = self.writer().await?;
        let now = Utc::now();
        let out = Ok(on!(c.conn(), |c| {
            query_scalar::<_, i64>(
                "INSERT INTO runs (sync, trigger, started_at, finished_at, status, error, instance)
             VALUES ($1, $2, $3, $3, $6, $4, $5) RETURNING id",
            )
            .bind(sync)
            .bind(trigger)
            .bind(now)
            .bind(why)
            .bind(instance)
            .bind(RunStatus::Skipped.as_str())
            .fetch_one(c)
            .await
        })?);
        c.done(out).await
    }

    pub async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        counts: &RunCounts,
        error: Option<&str>,
    ) -> Result<()> {
        let mut c = self.writer().await?;
        let out = finish_run(c.conn(), id, status, counts, error).await;
        c.done(out).await
    }

    /// Records the end of a run and releases the sync's run slot in one transaction, so no
    /// caller sees the run finished while its slot is still held (or the reverse).
    pub async fn end_run(
        &self,
        id: i64,
        status: RunStatus,
        counts: &RunCounts,
        error: Option<&str>,
        sync: &str,
        instance: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        finish_run(tx.conn(), id, status, counts, error).await?;
        release_run(tx.conn(), sync, instance).await?;
        tx.commit().await
    }

    /// Whether the sync has finished a run that read the other side (`success` or `partial`).
    pub async fn has_finished_run(&self, sync: &str) -> Result<bool> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE sync = $1 AND status IN ('success', 'partial') LIMIT 1) t"
        )
        .bind(sync)
        .fetch_one(c)
        .await
        })? > 0)
    }

    /// Run history, newest first.
    pub async fn runs(
        &self,
        sync: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Run>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            query_as::<_, Run>(
            "SELECT id, sync, trigger, started_at, finished_at, status, error, instance, pulled, created, updated, deleted,
                    unlinked, skipped, failed, conflicts, pushed, held, missing, extra, different, ambiguous FROM runs
             WHERE ($1 IS NULL OR sync = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        )
        .bind(sync)
        .bind(before)
        .bind(limit)
        .fetch_all(c)
        .await
        })?)
    }
}
