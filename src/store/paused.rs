//! Records an operator paused for one sync.

use super::*;
use std::collections::HashSet;

/// What arrived for a paused record while it was paused, kept for its resume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kept {
    /// The external id the change came for.
    pub external_id: Option<String>,
    /// The external values, later ones merged over earlier ones.
    pub values: Option<Map<String, Value>>,
    /// The external side deleted it.
    pub delete: bool,
}

/// A resumed pause's row, as kept.
fn kept((pending, external_id, delete): (Option<String>, Option<String>, bool)) -> Kept {
    Kept {
        external_id,
        values: pending.and_then(|p| serde_json::from_str::<Map<String, Value>>(&p).ok()),
        delete,
    }
}

impl Store {
    /// Pauses a record for a sync; false when it was paused already.
    pub async fn pause_record(&self, sync: &str, local_id: i64, by: &str) -> Result<bool> {
        let mut c = self.writer().await?;
        let n = on!(c.conn(), |c| {
            query(
            "INSERT INTO paused_records (sync, local_id, paused_at, paused_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sync, local_id) DO NOTHING"
        )
        .bind(sync)
        .bind(local_id)
        .bind(Utc::now())
        .bind(by)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?;
        c.done(Ok(n == 1)).await
    }

    /// Resumes a paused record: `None` when it was not paused, else what arrived for it
    /// meanwhile and was kept.
    pub async fn resume_record(&self, sync: &str, local_id: i64) -> Result<Option<Kept>> {
        let mut tx = self.begin().await?;
        let kept = tx.resume_record(sync, local_id).await?;
        tx.commit().await?;
        Ok(kept)
    }

    /// The discarded hold that left this record detached for the sync, if it is.
    pub async fn detached_hold(&self, sync: &str, local_id: i64) -> Result<Option<i64>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| query_scalar::<_, Option<i64>>(
            "SELECT detached_hold FROM paused_records WHERE sync = $1 AND local_id = $2"
        )
        .bind(sync)
        .bind(local_id)
        .fetch_optional(c)
        .await)?
        .flatten())
    }

    /// Which of these records are paused for the sync.
    pub async fn paused_among(&self, sync: &str, ids: &[i64]) -> Result<HashSet<i64>> {
        paused_among(self.reader().await?.conn(), self.is_pg(), sync, ids).await
    }

    /// Every record paused for the sync.
    pub async fn paused_ids(&self, sync: &str) -> Result<HashSet<i64>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| query_scalar::<_, i64>(
            "SELECT local_id FROM paused_records WHERE sync = $1"
        )
        .bind(sync)
        .fetch_all(c)
        .await)?
        .into_iter()
        .collect())
    }
}

impl Tx {
    /// Leaves a record detached for the sync by a discarded hold (see migration 0007).
    pub async fn detach_record(
        &mut self,
        sync: &str,
        local_id: i64,
        by: &str,
        hold: i64,
    ) -> Result<()> {
        on!(self.conn(), |c| query(
            "INSERT INTO paused_records (sync, local_id, paused_at, paused_by, detached_hold)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sync, local_id) DO UPDATE SET detached_hold = excluded.detached_hold"
        )
        .bind(sync)
        .bind(local_id)
        .bind(Utc::now())
        .bind(by)
        .bind(hold)
        .execute(c)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Ends a record's detachment (and any pause) for the sync; false when it was not detached.
    pub async fn end_detachment(&mut self, sync: &str, local_id: i64) -> Result<bool> {
        let n = on!(self.conn(), |c| {
            query(
            "DELETE FROM paused_records WHERE sync = $1 AND local_id = $2 AND detached_hold IS NOT NULL"
        )
        .bind(sync)
        .bind(local_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// [`Store::resume_record`], inside the transaction.
    pub async fn resume_record(&mut self, sync: &str, local_id: i64) -> Result<Option<Kept>> {
        let row = on!(self.conn(), |c| {
            query_as::<_, (Option<String>, Option<String>, bool)>(
                "DELETE FROM paused_records WHERE sync = $1 AND local_id = $2 AND detached_hold IS NULL
                 RETURNING pending, pending_external_id, pending_delete",
            )
            .bind(sync)
            .bind(local_id)
            .fetch_optional(c)
            .await
        })?;
        Ok(row.map(kept))
    }

    /// Keeps a change that arrived for a paused record: its external values merged over any
    /// kept before (a delete is kept as one).
    pub async fn keep_paused_change(
        &mut self,
        sync: &str,
        local_id: i64,
        external_id: &str,
        values: Option<&Map<String, Value>>,
    ) -> Result<()> {
        let before = on!(self.conn(), |c| query_scalar::<_, Option<String>>(
            "SELECT pending FROM paused_records WHERE sync = $1 AND local_id = $2"
        )
        .bind(sync)
        .bind(local_id)
        .fetch_optional(c)
        .await)?
        .flatten();
        let (pending, delete) = match values {
            Some(v) => {
                let mut merged: Map<String, Value> = before
                    .and_then(|b| serde_json::from_str(&b).ok())
                    .unwrap_or_default();
                merged.extend(v.iter().map(|(k, v)| (k.clone(), v.clone())));
                (Some(Value::Object(merged).to_string()), false)
            }
            None => (None, true),
        };
        on!(self.conn(), |c| query(
            "UPDATE paused_records SET pending = $1, pending_external_id = $2, pending_delete = $3
             WHERE sync = $4 AND local_id = $5"
        )
        .bind(&pending)
        .bind(external_id)
        .bind(delete)
        .bind(sync)
        .bind(local_id)
        .execute(c)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Which of these records are paused for the sync, inside the transaction.
    pub async fn paused_among(&mut self, sync: &str, ids: &[i64]) -> Result<HashSet<i64>> {
        let pg = self.is_pg();
        paused_among(self.conn(), pg, sync, ids).await
    }
}

#[derive(sqlx::FromRow)]
struct PausedRow {
    local_id: i64,
}

async fn paused_among(c: Conn<'_>, pg: bool, sync: &str, ids: &[i64]) -> Result<HashSet<i64>> {
    let rows: Vec<PausedRow> = select_by_ids(
        c,
        pg,
        "SELECT local_id FROM paused_records",
        "sync",
        sync,
        "local_id",
        ids,
    )
    .await?;
    Ok(rows.into_iter().map(|r| r.local_id).collect())
}
