//! Links between local records and external ids, per binding: lookups, writes, and the start-up merge of per-sync links into bindings.

use super::*;

impl Store {
    /// The binding a scope names.
    pub async fn binding_of(&self, scope: &str) -> Result<String> {
        if is_binding_key(scope) {
            return Ok(scope.to_string());
        }
        let mut c = self.reader().await?;
        let found = on!(c.conn(), |c| query_scalar::<_, String>(
            "SELECT binding FROM sync_bindings WHERE sync = $1"
        )
        .bind(scope)
        .fetch_optional(c)
        .await)?;
        Ok(found.unwrap_or_else(|| scope.to_string()))
    }

    pub async fn link_by_local(&self, scope: &str, local_id: i64) -> Result<Option<Link>> {
        let binding = self.binding_of(scope).await?;
        link_by_local(self.reader().await?.conn(), &binding, local_id).await
    }

    pub async fn link_by_external(&self, scope: &str, external_id: &str) -> Result<Option<Link>> {
        let binding = self.binding_of(scope).await?;
        link_by_external(self.reader().await?.conn(), &binding, external_id).await
    }

    /// Records which binding each sync belongs to, and merges the links that an earlier
    /// release kept per sync into their binding. Where two syncs of one binding had linked the
    /// same local record or the same external id, the link of the sync first in code order is
    /// kept; the local ids whose link was dropped are returned, so they can be reported (they
    /// are the copies that per-sync links made).
    pub async fn register_bindings(
        &self,
        syncs: &[(String, String)],
    ) -> Result<Vec<(String, i64)>> {
        let mut sorted = syncs.to_vec();
        sorted.sort();
        let mut tx = self.begin().await?;
        let now = Utc::now();
        let mut dropped = Vec::new();
        for (code, binding) in &sorted {
            on!(tx.conn(), |c| {
                query(
                "INSERT INTO sync_bindings (sync, binding, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (sync) DO UPDATE SET binding = excluded.binding, updated_at = excluded.updated_at"
            )
            .bind(code)
            .bind(binding)
            .bind(now)
            .execute(c)
            .await
            .map(|_| ())
            })?;
            // Rows under the sync's own code are the earlier release's per-sync links. A pair
            // the binding holds already goes quietly; one that clashes with it is reported.
            on!(tx.conn(), |c| query(
                "DELETE FROM links WHERE binding = $1 AND EXISTS (
                   SELECT 1 FROM links o WHERE o.binding = $2 AND o.local_id = links.local_id
                     AND o.external_id IS NOT DISTINCT FROM links.external_id)"
            )
            .bind(code)
            .bind(binding)
            .execute(c)
            .await
            .map(|_| ()))?;
            let clash = on!(tx.conn(), |c| {
                query_scalar::<_, i64>(
                    "DELETE FROM links WHERE binding = $1 AND EXISTS (
                   SELECT 1 FROM links o WHERE o.binding = $2
                     AND (o.local_id = links.local_id
                          OR (links.external_id IS NOT NULL AND o.external_id = links.external_id)))
                 RETURNING local_id",
                )
                .bind(code)
                .bind(binding)
                .fetch_all(c)
                .await
            })?;
            let mut clash = clash;
            clash.sort_unstable();
            dropped.extend(clash.into_iter().map(|id| (code.clone(), id)));
            on!(tx.conn(), |c| query(
                "UPDATE links SET binding = $1 WHERE binding = $2"
            )
            .bind(binding)
            .bind(code)
            .execute(c)
            .await
            .map(|_| ()))?;
        }
        tx.commit().await?;
        Ok(dropped)
    }

    /// Every external id linked in a binding (or the binding of a sync).
    pub async fn linked_external_ids(&self, scope: &str) -> Result<Vec<String>> {
        let sync = self.binding_of(scope).await?;
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| query_scalar::<_, String>(
            "SELECT external_id FROM links WHERE binding = $1 AND external_id IS NOT NULL"
        )
        .bind(sync)
        .fetch_all(c)
        .await)?)
    }

    /// Links of a binding (or of a sync's binding) for these local ids, read outside a
    /// transaction.
    pub async fn links_by_local(&self, scope: &str, ids: &[i64]) -> Result<Vec<Link>> {
        let binding = self.binding_of(scope).await?;
        links_by_local_many(self.reader().await?.conn(), self.is_pg(), &binding, ids).await
    }
}

impl Tx {
    /// Links of `sync` for these external ids.
    pub async fn links_by_external(&mut self, sync: &str, ids: &[String]) -> Result<Vec<Link>> {
        let mut out = Vec::new();
        for chunk in pieces(ids) {
            let mut ph = Ph::new(self.is_pg());
            let sql = format!(
                "{LINK_SELECT} WHERE binding = {} AND external_id IN ({})",
                ph.next(),
                ph.list(chunk.len())
            );
            let rows = on!(self.conn(), |c| {
                let mut q = query_as::<_, LinkRow>(&sql).bind(sync);
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(c).await
            })?;
            out.extend(rows.into_iter().map(Link::from));
        }
        Ok(out)
    }

    /// Links of `sync` for these local ids.
    pub async fn links_by_local(&mut self, sync: &str, ids: &[i64]) -> Result<Vec<Link>> {
        let pg = self.is_pg();
        links_by_local_many(self.conn(), pg, sync, ids).await
    }

    /// Creates or replaces many links.
    pub async fn upsert_links(&mut self, links: &[Link]) -> Result<()> {
        let now = Utc::now();
        for chunk in pieces(links) {
            let values = values_clause(self.is_pg(), 8, chunk.len());
            let sql = format!(
                "INSERT INTO links (binding, local_id, external_id, base, synced_version, external_hash, left_syncs, updated_at)
                 VALUES {values}
                 ON CONFLICT (binding, local_id) DO UPDATE SET external_id = excluded.external_id, base = excluded.base,
                   synced_version = excluded.synced_version, external_hash = excluded.external_hash,
                   left_syncs = excluded.left_syncs, updated_at = excluded.updated_at"
            );
            on!(self.conn(), |c| {
                let mut q = query(&sql);
                for l in chunk {
                    q = q
                        .bind(&l.binding)
                        .bind(l.local_id)
                        .bind(l.external_id.as_deref())
                        .bind(Json(&l.base))
                        .bind(l.synced_version)
                        .bind(l.external_hash.as_deref())
                        .bind(Json(&l.left))
                        .bind(now);
                }
                q.execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }

    pub async fn link_by_local(&mut self, sync: &str, local_id: i64) -> Result<Option<Link>> {
        link_by_local(self.conn(), sync, local_id).await
    }

    pub async fn link_by_external(
        &mut self,
        sync: &str,
        external_id: &str,
    ) -> Result<Option<Link>> {
        link_by_external(self.conn(), sync, external_id).await
    }

    /// Creates or replaces the link of `(sync, local_id)`.
    pub async fn upsert_link(&mut self, l: &Link) -> Result<()> {
        on!(self.conn(), |c| {
            query(
            "INSERT INTO links (binding, local_id, external_id, base, synced_version, external_hash, left_syncs, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (binding, local_id) DO UPDATE SET external_id = excluded.external_id, base = excluded.base,
               synced_version = excluded.synced_version, external_hash = excluded.external_hash,
               left_syncs = excluded.left_syncs, updated_at = excluded.updated_at"
        )
        .bind(&l.binding)
        .bind(l.local_id)
        .bind(l.external_id.as_deref())
        .bind(Json(&l.base))
        .bind(l.synced_version)
        .bind(l.external_hash.as_deref())
        .bind(Json(&l.left))
        .bind(Utc::now())
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn delete_link(&mut self, sync: &str, local_id: i64) -> Result<bool> {
        let n = on!(self.conn(), |c| query(
            "DELETE FROM links WHERE binding = $1 AND local_id = $2"
        )
        .bind(sync)
        .bind(local_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }
}
