//! Dropbox mirrors: the entries of each Dropbox sync's folder, written together with its cursor.

use super::*;
use crate::domain::mirror::MirrorEntry;

/// A mirror row, in `DBX_COLUMNS`' order.
#[derive(sqlx::FromRow)]
struct MirrorRow {
    id: String,
    tag: String,
    name: String,
    path_lower: String,
    path_display: String,
    rev: Option<String>,
    size: Option<i64>,
    content_hash: Option<String>,
    server_modified: Option<String>,
}

impl From<MirrorRow> for MirrorEntry {
    fn from(r: MirrorRow) -> Self {
        MirrorEntry {
            id: r.id,
            tag: r.tag,
            name: r.name,
            path_lower: r.path_lower,
            path_display: r.path_display,
            rev: r.rev,
            size: r.size,
            content_hash: r.content_hash,
            server_modified: r.server_modified,
        }
    }
}

impl Store {
    /// Every entry of a Dropbox sync's mirror.
    pub async fn dbx_entries(&self, sync: &str) -> Result<Vec<MirrorEntry>> {
        let mut c = self.reader().await?;
        let rows = on!(c.conn(), |c| {
            query_as::<_, MirrorRow>(&format!(
                "SELECT {DBX_COLUMNS} FROM dropbox_entries WHERE sync = $1 ORDER BY path_lower"
            ))
            .bind(sync)
            .fetch_all(c)
            .await
        })?;
        Ok(rows.into_iter().map(MirrorEntry::from).collect())
    }

    /// One entry of a Dropbox sync's mirror, by id.
    pub async fn dbx_entry(&self, sync: &str, id: &str) -> Result<Option<MirrorEntry>> {
        let mut c = self.reader().await?;
        let row = on!(c.conn(), |c| {
            query_as::<_, MirrorRow>(&format!(
                "SELECT {DBX_COLUMNS} FROM dropbox_entries WHERE sync = $1 AND id = $2"
            ))
            .bind(sync)
            .bind(id)
            .fetch_optional(c)
            .await
        })?;
        Ok(row.map(MirrorEntry::from))
    }

    /// Writes changes to a Dropbox mirror, and the sync's cursor when one is given, in one
    /// transaction: the cursor never moves past entries the mirror has not taken in.
    pub async fn dbx_apply(
        &self,
        sync: &str,
        upserts: &[MirrorEntry],
        deletes: &[String],
        cursor: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        for id in deletes {
            on!(tx.conn(), |c| query(
                "DELETE FROM dropbox_entries WHERE sync = $1 AND id = $2"
            )
            .bind(sync)
            .bind(id)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        }
        for e in upserts {
            on!(tx.conn(), |c| {
                query(
                "INSERT INTO dropbox_entries
                    (sync, id, tag, name, path_lower, path_display, rev, size, content_hash, server_modified)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (sync, id) DO UPDATE SET tag = $3, name = $4, path_lower = $5,
                    path_display = $6, rev = $7, size = $8, content_hash = $9, server_modified = $10"
            )
            .bind(sync)
            .bind(&e.id)
            .bind(&e.tag)
            .bind(&e.name)
            .bind(&e.path_lower)
            .bind(&e.path_display)
            .bind(&e.rev)
            .bind(e.size)
            .bind(&e.content_hash)
            .bind(&e.server_modified)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
            })?;
        }
        if let Some(cursor) = cursor {
            let now = Utc::now();
            on!(tx.conn(), |c| query(
                "INSERT INTO sync_state (sync, cursor, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (sync) DO UPDATE SET cursor = $2, updated_at = $3"
            )
            .bind(sync)
            .bind(cursor)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        }
        tx.commit().await
    }
}
