//! Local records: reads by id and page, and the writes of one transaction (single and batched).

use super::*;
use chrono::SubsecRound;

impl Store {
    pub async fn get_record(&self, model: &str, id: i64) -> Result<Option<Record>> {
        get_record(self.reader().await?.conn(), model, id).await
    }

    /// Live records of a model with `id > after`, in id order (keyset pagination).
    pub async fn list_records(&self, model: &str, after: i64, limit: i64) -> Result<Vec<Record>> {
        let mut c = self.reader().await?;
        let rows = on!(c.conn(), |c| query_as::<_, RecordRow>(
            "SELECT id, model, vals, version, created_at, updated_at, deleted_at FROM records
             WHERE model = $1 AND id > $2 AND deleted_at IS NULL ORDER BY id LIMIT $3"
        )
        .bind(model)
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await)?;
        Ok(rows.into_iter().map(Record::from).collect())
    }

    pub async fn count_records(&self, model: &str) -> Result<i64> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM records WHERE model = $1 AND deleted_at IS NULL"
        )
        .bind(model)
        .fetch_one(c)
        .await)?)
    }

    /// Records of `model` with these ids (tombstones included), read outside a transaction.
    pub async fn records_by_ids(&self, model: &str, ids: &[i64]) -> Result<Vec<Record>> {
        records_by_ids(self.reader().await?.conn(), self.is_pg(), model, ids).await
    }
}

impl Tx {
    /// Records of `model` with these ids (tombstones included).
    pub async fn records_by_ids(&mut self, model: &str, ids: &[i64]) -> Result<Vec<Record>> {
        let pg = self.is_pg();
        records_by_ids(self.conn(), pg, model, ids).await
    }

    /// Inserts records at version 1; the result is in the order of `rows`, each record
    /// holding its values.
    pub async fn insert_records(
        &mut self,
        model: &str,
        rows: Vec<Map<String, Value>>,
    ) -> Result<Vec<Record>> {
        // What the database stores (microseconds), so the records returned are as read back.
        let now = Utc::now().trunc_subsecs(6);
        let mut out = Vec::with_capacity(rows.len());
        let mut rows = rows.into_iter();
        for size in piece_sizes(rows.len()) {
            let chunk: Vec<Map<String, Value>> = rows.by_ref().take(size).collect();
            let values = values_clause(self.is_pg(), 4, size);
            let sql = format!(
                "INSERT INTO records (model, vals, created_at, updated_at) VALUES {values}"
            );
            let ids: Vec<i64> = match self.conn() {
                // SQLite gives one statement's rows consecutive ids in VALUES order (the table is
                // AUTOINCREMENT, nothing else writes while this transaction holds the write
                // lock): the last one is enough. `RETURNING` would send each id from the
                // connection's thread to this one as a message of its own.
                Conn::Sqlite(c) => {
                    let mut q = query(&sql);
                    for v in &chunk {
                        q = q.bind(model).bind(Json(v)).bind(now).bind(now);
                    }
                    let done = q.execute(c).await?;
                    let last = done.last_insert_rowid();
                    if done.rows_affected() != size as u64 {
                        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                            "{} records inserted instead of {size}",
                            done.rows_affected()
                        ))));
                    }
                    (last - size as i64 + 1..=last).collect()
                }
                Conn::Postgres(c) => {
                    let sql = format!("{sql} RETURNING id");
                    let mut q = query_scalar::<_, i64>(&sql);
                    for v in &chunk {
                        q = q.bind(model).bind(Json(v)).bind(now).bind(now);
                    }
                    let mut ids = q.fetch_all(c).await?;
                    // Ids are assigned in VALUES order; RETURNING order is not promised.
                    ids.sort_unstable();
                    ids
                }
            };
            out.extend(ids.into_iter().zip(chunk).map(|(id, values)| Record {
                id,
                model: model.to_string(),
                values,
                version: 1,
                created_at: now,
                updated_at: now,
                deleted: false,
            }));
        }
        Ok(out)
    }

    /// Replaces the values of live records and bumps their versions; returns them by id.
    pub async fn update_records(
        &mut self,
        model: &str,
        rows: &[(i64, Map<String, Value>)],
    ) -> Result<Vec<Record>> {
        let now = Utc::now();
        let mut out = Vec::with_capacity(rows.len());
        for chunk in pieces(rows) {
            let mut ph = Ph::new(self.is_pg());
            let values = (0..chunk.len())
                .map(|_| ph.tuple(5))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO records (id, model, vals, created_at, updated_at) VALUES {values}
                 ON CONFLICT (id) DO UPDATE SET vals = excluded.vals, version = records.version + 1,
                   updated_at = excluded.updated_at
                 RETURNING id, version, created_at, updated_at"
            );
            let meta = on!(self.conn(), |c| {
                let mut q = query_as::<_, (i64, i64, DateTime<Utc>, DateTime<Utc>)>(&sql);
                for (id, v) in chunk {
                    q = q.bind(id).bind(model).bind(Json(v)).bind(now).bind(now);
                }
                q.fetch_all(c).await
            })?;
            let given: std::collections::HashMap<i64, &Map<String, Value>> =
                chunk.iter().map(|(id, v)| (*id, v)).collect();
            out.extend(
                meta.into_iter()
                    .filter_map(|(id, version, created_at, updated_at)| {
                        Some(Record {
                            id,
                            model: model.to_string(),
                            values: (*given.get(&id)?).clone(),
                            version,
                            created_at,
                            updated_at,
                            deleted: false,
                        })
                    }),
            );
        }
        Ok(out)
    }

    pub async fn get_record(&mut self, model: &str, id: i64) -> Result<Option<Record>> {
        get_record(self.conn(), model, id).await
    }

    /// Inserts a new record at version 1.
    pub async fn insert_record(
        &mut self,
        model: &str,
        vals: &Map<String, Value>,
    ) -> Result<Record> {
        let now = Utc::now();
        let row = on!(self.conn(), |c| {
            query_as::<_, RecordRow>(
            "INSERT INTO records (model, vals, version, created_at, updated_at) VALUES ($1, $2, 1, $3, $3)
             RETURNING id, model, vals, version, created_at, updated_at, deleted_at"
        )
        .bind(model)
        .bind(Json(vals))
        .bind(now)
        .fetch_one(c)
        .await
        })?;
        Ok(row.into())
    }

    /// Replaces a live record's values and bumps its version. `None` if there is no live record.
    pub async fn update_record(
        &mut self,
        model: &str,
        id: i64,
        vals: &Map<String, Value>,
    ) -> Result<Option<Record>> {
        let row = on!(self.conn(), |c| {
            query_as::<_, RecordRow>(
            "UPDATE records SET vals = $1, version = version + 1, updated_at = $2 WHERE model = $3 AND id = $4 AND deleted_at IS NULL
             RETURNING id, model, vals, version, created_at, updated_at, deleted_at"
        )
        .bind(Json(vals))
        .bind(Utc::now())
        .bind(model)
        .bind(id)
        .fetch_optional(c)
        .await
        })?;
        Ok(row.map(Record::from))
    }

    /// Tombstones a record (kept so the deletion can be carried across) and bumps its version.
    pub async fn delete_record(&mut self, model: &str, id: i64) -> Result<Option<Record>> {
        let now = Utc::now();
        let row = on!(self.conn(), |c| {
            query_as::<_, RecordRow>(
            "UPDATE records SET deleted_at = $1, version = version + 1, updated_at = $1 WHERE model = $2 AND id = $3 AND deleted_at IS NULL
             RETURNING id, model, vals, version, created_at, updated_at, deleted_at"
        )
        .bind(now)
        .bind(model)
        .bind(id)
        .fetch_optional(c)
        .await
        })?;
        Ok(row.map(Record::from))
    }

    /// The live record of `model` whose `field` holds `key` (compared as text), if exactly
    /// one does; used to resolve `ref_field` references.
    pub async fn find_by_field(&mut self, model: &str, field: &str, key: &str) -> Result<Vec<i64>> {
        Ok(match self.conn() {
            Conn::Sqlite(c) => {
                let path = format!("$.\"{}\"", field.replace('"', ""));
                query_scalar::<_, i64>(
                    "SELECT id FROM records WHERE model = $1 AND deleted_at IS NULL
                     AND CAST(json_extract(vals, $2) AS TEXT) = $3 LIMIT 2",
                )
                .bind(model)
                .bind(path)
                .bind(key)
                .fetch_all(c)
                .await?
            }
            Conn::Postgres(c) => {
                query_scalar::<_, i64>(
                    "SELECT id FROM records WHERE model = $1 AND deleted_at IS NULL AND vals ->> $2 = $3 LIMIT 2",
                )
                .bind(model)
                .bind(field)
                .bind(key)
                .fetch_all(c)
                .await?
            }
        })
    }
}
