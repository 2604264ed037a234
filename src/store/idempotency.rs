//! Idempotency keys: the first answer given to a key, kept for replays.

use super::*;

impl Store {
    /// The first answer given to an idempotency key since `since`, with the fingerprint of
    /// the request it answered.
    pub async fn idempotent_response(
        &self,
        scope: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<Idempotent>> {
        let mut c = self.reader().await?;
        let row = on!(c.conn(), |c| {
            query_as::<_, (i64, String, Option<String>)>(
            "SELECT status_code, body, fingerprint FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at >= $3"
        )
        .bind(scope)
        .bind(key)
        .bind(since)
        .fetch_optional(c)
        .await
        })?;
        Ok(row.map(|(s, body, fingerprint)| Idempotent {
            status: s as u16,
            body,
            fingerprint,
        }))
    }

    /// Deletes idempotency keys stored before `before`.
    pub async fn prune_idempotency(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut c = self.writer().await?;
        let out = Ok(on!(c.conn(), |c| query(
            "DELETE FROM idempotency_keys WHERE created_at < $1"
        )
        .bind(before)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?);
        c.done(out).await
    }
}

impl Tx {
    /// Remembers a response for an `Idempotency-Key`; a key already stored is left alone.
    pub async fn put_idempotent(
        &mut self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        on!(self.conn(), |c| {
            query(
            "INSERT INTO idempotency_keys (scope, key, status_code, body, created_at, fingerprint) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (scope, key) DO NOTHING"
        )
        .bind(scope)
        .bind(key)
        .bind(status as i64)
        .bind(body)
        .bind(Utc::now())
        .bind(fingerprint)
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }
}
