//! The store: one `Store` over two native sqlx backends, SQLite (the embedded default, WAL,
//! one writer connection) and PostgreSQL (for several instances sharing one database),
//! chosen by the URL scheme. Both run the same SQL; migrations live per backend.

mod types;

pub use types::*;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Store failures. The message of `Database` is for logs only, never for API output.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL: expected sqlite: or postgres://")]
    UnsupportedUrl,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Is the database unreachable or overloaded (as opposed to a bad request)?
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
            )
        ) || self.refuses_writes()
            || self.is_restarting()
    }

    /// Does the database refuse writes: read-only, or full (SQLite), or read-only or out of
    /// disk (PostgreSQL)? Nothing was written; the caller answers 503.
    pub fn refuses_writes(&self) -> bool {
        let StoreError::Database(sqlx::Error::Database(e)) = self else {
            return false;
        };
        let code = e.code().unwrap_or_default();
        let msg = e.message().to_ascii_lowercase();
        matches!(code.as_ref(), "25006" | "53100" | "53200")
            || msg.contains("readonly database")
            || msg.contains("read-only")
            || msg.contains("database or disk is full")
    }

    /// Is PostgreSQL restarting or shutting down (the connection was terminated)?
    fn is_restarting(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => matches!(
                e.code().unwrap_or_default().as_ref(),
                "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006"
            ),
            _ => false,
        }
    }

    /// Did a unique constraint refuse the write?
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }

    /// A concurrent writer got there first (a unique violation, a serialization failure or a
    /// deadlock): the transaction was rolled back and running it again sees the other
    /// writer's result.
    pub fn is_race(&self) -> bool {
        self.is_unique_violation()
            || matches!(self, StoreError::Database(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("40001" | "40P01")))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone, Debug)]
enum Backend {
    Sqlite { write: SqlitePool, read: SqlitePool },
    Postgres(PgPool),
}

/// The database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

/// A connection borrowed for one query, from a pool or a transaction.
pub enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// Runs the same query text on whichever backend the connection belongs to.
macro_rules! on {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            Conn::Sqlite($c) => $body,
            Conn::Postgres($c) => $body,
        }
    };
}

/// A write transaction. Dropped without `commit`, it rolls back.
pub enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(t) => Conn::Sqlite(&mut *t),
            Tx::Postgres(t) => Conn::Postgres(&mut *t),
        }
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// A pooled connection for reads.
pub enum Pooled {
    Sqlite(sqlx::pool::PoolConnection<Sqlite>),
    Postgres(sqlx::pool::PoolConnection<Postgres>),
}

impl Pooled {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Sqlite(c) => Conn::Sqlite(&mut *c),
            Pooled::Postgres(c) => Conn::Postgres(&mut *c),
        }
    }
}

/// How often the background task checkpoints the SQLite WAL.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Checkpoints the WAL from its own connection, alongside the writer (a passive checkpoint
/// neither blocks nor waits for writers and readers), until the writer's pool is closed.
async fn spawn_checkpointer(write: SqlitePool, opts: SqliteConnectOptions) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    tokio::spawn(async move {
        // Reported once when checkpoints start failing, and once when they work again.
        let mut failing = false;
        loop {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            if write.is_closed() {
                break;
            }
            match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut conn)
                .await
            {
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "WAL checkpoints fail; retrying every 200 ms, quietly until they work again");
                }
                Err(_) => {}
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("WAL checkpoints work again");
                }
                Ok(_) => {}
            }
        }
        let _ = conn.close().await;
    });
    Ok(())
}

/// The columns of a Dropbox mirror entry, in `DbxEntry`'s order.
const DBX_COLUMNS: &str =
    "id, tag, name, path_lower, path_display, rev, size, content_hash, server_modified";

impl Store {
    /// Connects by URL scheme: `sqlite:` (file created if missing) or `postgres://`.
    pub async fn connect(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            let mut opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .pragma("temp_store", "memory")
                .foreign_keys(true);
            // A cap on the database's size in pages (a test knob): past it, writes fail as
            // "full".
            if let Some(pages) = crate::crash::sqlite_max_page_count() {
                opts = opts.pragma("max_page_count", pages.to_string());
            }
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            // One writer serialises writes in-process; readers use WAL snapshots alongside it.
            // The writer never checkpoints the WAL itself (a checkpoint inside a commit stalls
            // every write behind it for tens of milliseconds); a background task does it.
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
                .connect_with(if memory {
                    opts.clone()
                } else {
                    opts.clone().pragma("wal_autocheckpoint", "0")
                })
                .await?;
            if !memory {
                spawn_checkpointer(write.clone(), opts.clone()).await?;
            }
            let read = if memory {
                write.clone()
            } else {
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(30))
                    .test_before_acquire(false)
                    .connect_with(opts.read_only(true))
                    .await?
            };
            Ok(Store {
                backend: Backend::Sqlite { write, read },
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Store {
                backend: Backend::Postgres(pool),
            })
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite { write, .. } => SQLITE_MIGRATIONS.run(write).await?,
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.reader().await?;
        on!(c.conn(), |c| sqlx::query("SELECT 1")
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { write, read } => {
                write.close().await;
                read.close().await;
            }
            Backend::Postgres(p) => p.close().await,
        }
    }

    /// Starts a write transaction (on SQLite, on the single writer connection).
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match &self.backend {
            Backend::Sqlite { write, .. } => Tx::Sqlite(write.begin().await?),
            Backend::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// A connection for reads.
    pub async fn reader(&self) -> Result<Pooled> {
        Ok(match &self.backend {
            Backend::Sqlite { read, .. } => Pooled::Sqlite(read.acquire().await?),
            Backend::Postgres(p) => Pooled::Postgres(p.acquire().await?),
        })
    }

    /// A connection for single-statement writes outside a transaction.
    async fn writer(&self) -> Result<Pooled> {
        Ok(match &self.backend {
            Backend::Sqlite { write, .. } => Pooled::Sqlite(write.acquire().await?),
            Backend::Postgres(p) => Pooled::Postgres(p.acquire().await?),
        })
    }

    // ---- records ----

    pub async fn get_record(&self, model: &str, id: i64) -> Result<Option<Record>> {
        get_record(self.reader().await?.conn(), model, id).await
    }

    /// Live records of a model with `id > after`, in id order (keyset pagination).
    pub async fn list_records(&self, model: &str, after: i64, limit: i64) -> Result<Vec<Record>> {
        let mut c = self.reader().await?;
        let rows = on!(c.conn(), |c| sqlx::query_as::<_, RecordRow>(
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
        Ok(on!(c.conn(), |c| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM records WHERE model = $1 AND deleted_at IS NULL"
        )
        .bind(model)
        .fetch_one(c)
        .await)?)
    }

    // ---- links ----
    //
    // Links belong to a binding (local model, external model, web service). The readers below
    // take a `scope`: a binding key, or the code of a sync, which is looked up in
    // `sync_bindings` (a code nobody registered is its own binding, as rows written by an
    // earlier release are until the engine merges them).

    /// The binding a scope names.
    pub async fn binding_of(&self, scope: &str) -> Result<String> {
        if is_binding_key(scope) {
            return Ok(scope.to_string());
        }
        let mut c = self.reader().await?;
        let found = on!(c.conn(), |c| sqlx::query_scalar::<_, String>(
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
                sqlx::query(
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
            on!(tx.conn(), |c| sqlx::query(
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
                sqlx::query_scalar::<_, i64>(
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
            on!(tx.conn(), |c| sqlx::query(
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

    // ---- outbox ----

    /// Local ids of a sync with an undelivered entry (pending, in flight or dead).
    pub async fn undelivered_local_ids(
        &self,
        sync: &str,
    ) -> Result<std::collections::HashSet<i64>> {
        let mut c = self.reader().await?;
        let ids = on!(c.conn(), |c| {
            sqlx::query_scalar::<_, i64>(
            "SELECT DISTINCT local_id FROM outbox WHERE sync = $1 AND status IN ('pending', 'inflight', 'dead')"
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
        Ok(on!(c.conn(), |c| sqlx::query_scalar::<_, i64>(&sql)
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
        Ok(on!(c.conn(), |c| sqlx::query_scalar::<_, i64>(sql)
            .bind(sync)
            .bind(run_id)
            .fetch_one(c)
            .await)?)
    }

    /// Records of a model with `id > after`, tombstones included, in id order.
    pub async fn records_after(&self, model: &str, after: i64, limit: i64) -> Result<Vec<Record>> {
        let mut c = self.reader().await?;
        let rows = on!(c.conn(), |c| sqlx::query_as::<_, RecordRow>(
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
        on!(c.conn(), |c| sqlx::query(
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
        let rows = on!(c.conn(), |c| sqlx::query_as::<_, OutboxRow>(&sql)
            .bind(worker)
            .bind(until)
            .bind(now)
            .bind(limit)
            .fetch_all(c)
            .await)?;
        let mut out: Vec<OutboxEntry> = rows.into_iter().map(OutboxEntry::from).collect();
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Renews this instance's heartbeat (and registers it on first use).
    pub async fn heartbeat(&self, instance: &str, now: DateTime<Utc>) -> Result<()> {
        let mut c = self.writer().await?;
        renew_heartbeat(c.conn(), instance, now).await?;
        // Rows of instances long gone are of no use to anyone.
        on!(c.conn(), |c| sqlx::query(
            "DELETE FROM instances WHERE heartbeat_at < $1"
        )
        .bind(now - chrono::Duration::days(1))
        .execute(c)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Puts back in line every in-flight delivery claimed by another process. Only for the
    /// process that owns the database (SQLite's server): at its start, whatever another
    /// process held belonged to one that is gone, so nothing waits for a lease to run out.
    pub async fn release_claims_of_others(&self, instance: &str) -> Result<u64> {
        let mut c = self.writer().await?;
        Ok(on!(c.conn(), |c| sqlx::query(
            "UPDATE outbox SET status = 'pending', claimed_by = NULL, claimed_until = NULL
             WHERE status = 'inflight' AND claimed_by <> $1"
        )
        .bind(instance)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?)
    }

    /// Marks a delivered entry done.
    pub async fn outbox_done(&self, id: i64) -> Result<()> {
        self.set_outbox(id, "done", None, None).await
    }

    /// Puts an entry back to wait until `at`, noting why.
    pub async fn outbox_retry_at(&self, id: i64, at: DateTime<Utc>, error: &str) -> Result<()> {
        self.set_outbox(id, "pending", Some(at), Some(error)).await
    }

    /// Dead-letters an entry after its retry budget.
    pub async fn outbox_dead(&self, id: i64, error: &str) -> Result<()> {
        self.set_outbox(id, "dead", None, Some(error)).await
    }

    /// Sends a dead or discarded entry again now (the operator's retry). Returns whether it existed.
    pub async fn outbox_requeue(&self, id: i64) -> Result<bool> {
        let now = Utc::now();
        let mut c = self.writer().await?;
        let n = on!(c.conn(), |c| {
            sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, claimed_by = NULL,
             claimed_until = NULL, updated_at = $1 WHERE id = $2 AND status IN ('dead', 'discarded')"
        )
        .bind(now)
        .bind(id)
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        Ok(n > 0)
    }

    /// Requeues every dead entry of a sync; returns how many.
    pub async fn outbox_requeue_all(&self, sync: &str) -> Result<u64> {
        let now = Utc::now();
        let mut c = self.writer().await?;
        on!(c.conn(), |c| sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, claimed_by = NULL,
             claimed_until = NULL, updated_at = $1 WHERE sync = $2 AND status = 'dead'"
        )
        .bind(now)
        .bind(sync)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(Into::into)
    }

    pub async fn outbox_entry(&self, id: i64) -> Result<Option<OutboxEntry>> {
        let mut c = self.reader().await?;
        let row = on!(c.conn(), |c| {
            sqlx::query_as::<_, OutboxRow>(
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
            sqlx::query(
            "UPDATE outbox SET status = 'discarded', updated_at = $1 WHERE id = $2 AND status IN ('dead', 'pending')"
        )
        .bind(Utc::now())
        .bind(id)
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        Ok(n > 0)
    }

    async fn set_outbox(
        &self,
        id: i64,
        status: &str,
        at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> Result<()> {
        let now = Utc::now();
        let mut c = self.writer().await?;
        on!(c.conn(), |c| {
            sqlx::query(
            "UPDATE outbox SET status = $1, next_attempt_at = COALESCE($2, next_attempt_at), last_error = COALESCE($3, last_error),
             claimed_by = NULL, claimed_until = NULL, updated_at = $4 WHERE id = $5"
        )
        .bind(status)
        .bind(at)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(c).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Outbox entries by status (and sync), newest last, keyset-paginated by id.
    pub async fn list_outbox(
        &self,
        status: Option<&str>,
        sync: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        let mut c = self.reader().await?;
        let rows = on!(c.conn(), |c| {
            sqlx::query_as::<_, OutboxRow>(
            "SELECT id, sync, local_id, action, payload, status, attempts, next_attempt_at, last_error, created_at FROM outbox
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR sync = $2) AND id > $3 ORDER BY id LIMIT $4"
        )
        .bind(status)
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
        Ok(on!(c.conn(), |c| sqlx::query_as::<
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
        Ok(on!(c.conn(), |c| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM outbox WHERE sync = $1 AND status IN ('pending', 'inflight')"
        )
        .bind(sync)
        .fetch_one(c)
        .await)?)
    }

    // ---- change-control log ----

    /// Writes a change-control row on its own (for requests that wrote nothing else).
    pub async fn log_change(&self, row: &NewChange) -> Result<i64> {
        let mut c = self.writer().await?;
        log_change(c.conn(), row).await
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
                    modified_at, synced_at, status, error_message, run_id, actor FROM change_log
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
            let mut q = sqlx::query_as::<_, ChangeRow>(&sql);
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
    pub async fn change(&self, id: i64) -> Result<Option<Change>> {
        let mut c = self.reader().await?;
        let row = on!(c.conn(), |c| {
            sqlx::query_as::<_, ChangeRow>(
                "SELECT id, sync, direction, action, external_id, local_id, name, title, origin_values,
                        destination_values, modified_at, synced_at, status, error_message, run_id, actor
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
    ) -> Result<Vec<(String, String, i64, i64)>> {
        let hour = match &self.backend {
            Backend::Sqlite { .. } => "substr(synced_at, 1, 13)",
            Backend::Postgres(_) => "to_char(synced_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')",
        };
        let sql = format!(
            "SELECT sync, {hour} AS hour, COUNT(*) AS n,
                    CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed
             FROM change_log WHERE synced_at >= $1 GROUP BY sync, {hour} ORDER BY sync, hour"
        );
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            sqlx::query_as::<_, (String, String, i64, i64)>(&sql)
                .bind(since)
                .fetch_all(c)
                .await
        })?)
    }

    /// Deletes up to `batch` of the oldest rows synced before `cutoff`; returns how many.
    pub async fn prune_changes(&self, cutoff: DateTime<Utc>, batch: i64) -> Result<u64> {
        let mut c = self.writer().await?;
        Ok(on!(c.conn(), |c| {
            sqlx::query(
                "DELETE FROM change_log WHERE id IN
                   (SELECT id FROM change_log WHERE synced_at < $1 ORDER BY synced_at, id LIMIT $2)",
            )
            .bind(cutoff)
            .bind(batch)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?)
    }

    // ---- Dropbox mirrors ----

    /// Every entry of a Dropbox sync's mirror.
    pub async fn dbx_entries(&self, sync: &str) -> Result<Vec<DbxEntry>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            sqlx::query_as::<_, DbxEntry>(&format!(
                "SELECT {DBX_COLUMNS} FROM dropbox_entries WHERE sync = $1 ORDER BY path_lower"
            ))
            .bind(sync)
            .fetch_all(c)
            .await
        })?)
    }

    /// Every external id linked in a binding (or the binding of a sync).
    pub async fn linked_external_ids(&self, scope: &str) -> Result<Vec<String>> {
        let sync = self.binding_of(scope).await?;
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| sqlx::query_scalar::<_, String>(
            "SELECT external_id FROM links WHERE binding = $1 AND external_id IS NOT NULL"
        )
        .bind(sync)
        .fetch_all(c)
        .await)?)
    }

    /// One entry of a Dropbox sync's mirror, by id.
    pub async fn dbx_entry(&self, sync: &str, id: &str) -> Result<Option<DbxEntry>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            sqlx::query_as::<_, DbxEntry>(&format!(
                "SELECT {DBX_COLUMNS} FROM dropbox_entries WHERE sync = $1 AND id = $2"
            ))
            .bind(sync)
            .bind(id)
            .fetch_optional(c)
            .await
        })?)
    }

    /// Writes changes to a Dropbox mirror, and the sync's cursor when one is given, in one
    /// transaction: the cursor never moves past entries the mirror has not taken in.
    pub async fn dbx_apply(
        &self,
        sync: &str,
        upserts: &[DbxEntry],
        deletes: &[String],
        cursor: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        for id in deletes {
            on!(tx.conn(), |c| sqlx::query(
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
                sqlx::query(
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
            on!(tx.conn(), |c| sqlx::query(
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

    // ---- sync state and runs ----

    pub async fn sync_state(&self, sync: &str) -> Result<Option<SyncState>> {
        let mut c = self.reader().await?;
        let row = on!(c.conn(), |c| {
            sqlx::query_as::<_, SyncState>(
            "SELECT sync, cursor, next_run_at, schedule, running_run, running_by, running_since FROM sync_state WHERE sync = $1"
        )
        .bind(sync)
        .fetch_optional(c)
        .await
        })?;
        Ok(row)
    }

    async fn ensure_state(&self, c: Conn<'_>, sync: &str) -> Result<()> {
        on!(c, |c| {
            sqlx::query("INSERT INTO sync_state (sync, updated_at) VALUES ($1, $2) ON CONFLICT (sync) DO NOTHING")
            .bind(sync)
            .bind(Utc::now())
            .execute(c).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn set_cursor(&self, sync: &str, cursor: Option<&str>) -> Result<()> {
        let mut c = self.writer().await?;
        self.ensure_state(c.conn(), sync).await?;
        on!(c.conn(), |c| sqlx::query(
            "UPDATE sync_state SET cursor = $1, updated_at = $2 WHERE sync = $3"
        )
        .bind(cursor)
        .bind(Utc::now())
        .bind(sync)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
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
        on!(c.conn(), |c| sqlx::query(
            "UPDATE sync_state SET next_run_at = $1, schedule = $2, updated_at = $3 WHERE sync = $4"
        )
        .bind(at)
        .bind(schedule)
        .bind(Utc::now())
        .bind(sync)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
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
            sqlx::query(
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
        Ok(n == 1)
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
            sqlx::query(
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
            sqlx::query(
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
        on!(c.conn(), |c| sqlx::query(
            "UPDATE sync_state SET running_since = $1 WHERE sync = $2 AND running_by = $3"
        )
        .bind(now)
        .bind(sync)
        .bind(instance)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Notes which run holds the claim.
    pub async fn set_running_run(&self, sync: &str, instance: &str, run_id: i64) -> Result<()> {
        let mut c = self.writer().await?;
        on!(c.conn(), |c| sqlx::query(
            "UPDATE sync_state SET running_run = $1 WHERE sync = $2 AND running_by = $3"
        )
        .bind(run_id)
        .bind(sync)
        .bind(instance)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Gives the run slot back (only if this instance holds it).
    pub async fn release_run(&self, sync: &str, instance: &str) -> Result<()> {
        let mut c = self.writer().await?;
        release_run(c.conn(), sync, instance).await
    }

    pub async fn start_run(
        &self,
        sync: &str,
        trigger: &str,
        instance: &str,
        status: &str,
    ) -> Result<i64> {
        let mut c = self.writer().await?;
        Ok(on!(c.conn(), |c| {
            sqlx::query_scalar::<_, i64>(
            "INSERT INTO runs (sync, trigger, started_at, status, instance) VALUES ($1, $2, $3, $4, $5) RETURNING id"
        )
        .bind(sync)
        .bind(trigger)
        .bind(Utc::now())
        .bind(status)
        .bind(instance)
        .fetch_one(c)
        .await
        })?)
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
        Ok(on!(c.conn(), |c| {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO runs (sync, trigger, started_at, finished_at, status, error, instance)
             VALUES ($1, $2, $3, $3, 'skipped', $4, $5) RETURNING id",
            )
            .bind(sync)
            .bind(trigger)
            .bind(now)
            .bind(why)
            .bind(instance)
            .fetch_one(c)
            .await
        })?)
    }

    pub async fn finish_run(
        &self,
        id: i64,
        status: &str,
        counts: &RunCounts,
        error: Option<&str>,
    ) -> Result<()> {
        let mut c = self.writer().await?;
        finish_run(c.conn(), id, status, counts, error).await
    }

    /// Records the end of a run and releases the sync's run slot in one transaction, so no
    /// caller sees the run finished while its slot is still held (or the reverse).
    pub async fn end_run(
        &self,
        id: i64,
        status: &str,
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

    /// Run history, newest first.
    pub async fn runs(
        &self,
        sync: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Run>> {
        let mut c = self.reader().await?;
        Ok(on!(c.conn(), |c| {
            sqlx::query_as::<_, Run>(
            "SELECT id, sync, trigger, started_at, finished_at, status, error, instance, pulled, created, updated, deleted,
                    unlinked, skipped, failed, conflicts, pushed FROM runs
             WHERE ($1 IS NULL OR sync = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        )
        .bind(sync)
        .bind(before)
        .bind(limit)
        .fetch_all(c)
        .await
        })?)
    }

    // ---- idempotency keys ----

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
            sqlx::query_as::<_, (i64, String, Option<String>)>(
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
        Ok(on!(c.conn(), |c| sqlx::query(
            "DELETE FROM idempotency_keys WHERE created_at < $1"
        )
        .bind(before)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?)
    }
}

// ---- functions over a connection, shared by `Store` reads and `Tx` writes ----

async fn get_record(c: Conn<'_>, model: &str, id: i64) -> Result<Option<Record>> {
    let row = on!(c, |c| {
        sqlx::query_as::<_, RecordRow>(
        "SELECT id, model, vals, version, created_at, updated_at, deleted_at FROM records WHERE model = $1 AND id = $2"
    )
    .bind(model)
    .bind(id)
    .fetch_optional(c)
    .await
    })?;
    Ok(row.map(Record::from))
}

async fn link_by_local(c: Conn<'_>, binding: &str, local_id: i64) -> Result<Option<Link>> {
    Ok(on!(c, |c| sqlx::query_as::<_, LinkRow>(&format!(
        "{LINK_SELECT} WHERE binding = $1 AND local_id = $2"
    ))
    .bind(binding)
    .bind(local_id)
    .fetch_optional(c)
    .await)?
    .map(Link::from))
}

async fn link_by_external(c: Conn<'_>, binding: &str, external_id: &str) -> Result<Option<Link>> {
    Ok(on!(c, |c| sqlx::query_as::<_, LinkRow>(&format!(
        "{LINK_SELECT} WHERE binding = $1 AND external_id = $2"
    ))
    .bind(binding)
    .bind(external_id)
    .fetch_optional(c)
    .await)?
    .map(Link::from))
}

async fn renew_heartbeat(c: Conn<'_>, instance: &str, now: DateTime<Utc>) -> Result<()> {
    on!(c, |c| sqlx::query(
        "INSERT INTO instances (name, started_at, heartbeat_at) VALUES ($1, $2, $2)
         ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
    )
    .bind(instance)
    .bind(now)
    .execute(c)
    .await
    .map(|_| ()))?;
    Ok(())
}

async fn release_run(c: Conn<'_>, sync: &str, instance: &str) -> Result<()> {
    on!(c, |c| {
        sqlx::query(
            "UPDATE sync_state SET running_by = NULL, running_since = NULL, running_run = NULL, updated_at = $1
             WHERE sync = $2 AND running_by = $3"
        )
        .bind(Utc::now())
        .bind(sync)
        .bind(instance)
        .execute(c).await.map(|r| r.rows_affected())
    })?;
    Ok(())
}

async fn finish_run(
    c: Conn<'_>,
    id: i64,
    status: &str,
    counts: &RunCounts,
    error: Option<&str>,
) -> Result<()> {
    on!(c, |c| {
        sqlx::query(
            "UPDATE runs SET finished_at = $1, status = $2, error = $3, pulled = $4, created = $5, updated = $6, deleted = $7,
             unlinked = $8, skipped = $9, failed = $10, conflicts = $11, pushed = $12 WHERE id = $13"
        )
        .bind(Utc::now())
        .bind(status)
        .bind(error)
        .bind(counts.pulled)
        .bind(counts.created)
        .bind(counts.updated)
        .bind(counts.deleted)
        .bind(counts.unlinked)
        .bind(counts.skipped)
        .bind(counts.failed)
        .bind(counts.conflicts)
        .bind(counts.pushed)
        .bind(id)
        .execute(c).await.map(|r| r.rows_affected())
    })?;
    Ok(())
}

async fn log_change(c: Conn<'_>, r: &NewChange) -> Result<i64> {
    Ok(on!(c, |c| {
        sqlx::query_scalar::<_, i64>(
        "INSERT INTO change_log (sync, direction, action, external_id, local_id, name, title, origin_values,
             destination_values, modified_at, synced_at, status, error_message, run_id, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id"
    )
    .bind(&r.sync)
    .bind(r.direction.as_str())
    .bind(r.action.as_str())
    .bind(r.external_id.as_deref())
    .bind(r.local_id)
    .bind(&r.name)
    .bind(&r.title)
    .bind(Json(&r.origin_values))
    .bind(Json(&r.destination_values))
    .bind(r.modified_at)
    .bind(r.synced_at.unwrap_or_else(Utc::now))
    .bind(r.status.as_str())
    .bind(&r.error_message)
    .bind(r.run_id)
    .bind(&r.actor)
    .fetch_one(c)
    .await
    })?)
}

/// Sizes of multi-row statements. A batch is cut into pieces of these sizes, so the same few
/// statement texts recur and stay in the prepared-statement cache.
const SIZES: [usize; 4] = [64, 16, 4, 1];

/// Cuts `items` into slices whose lengths are in [`SIZES`].
fn pieces<T>(items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let size = SIZES
            .iter()
            .copied()
            .find(|s| *s <= rest.len())
            .unwrap_or(1);
        let (head, tail) = rest.split_at(size);
        out.push(head);
        rest = tail;
    }
    out
}

/// Placeholders in binding order: `?` for SQLite (named ones make SQLite's parameter lookup
/// linear per parameter), `$n` for PostgreSQL.
struct Ph {
    pg: bool,
    n: usize,
}

impl Ph {
    fn new(pg: bool) -> Self {
        Ph { pg, n: 0 }
    }

    fn next(&mut self) -> String {
        self.n += 1;
        if self.pg {
            format!("${}", self.n)
        } else {
            "?".to_string()
        }
    }

    /// `(p, p, ...)` with `cols` placeholders.
    fn tuple(&mut self, cols: usize) -> String {
        format!(
            "({})",
            (0..cols)
                .map(|_| self.next())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// `p, p, ...` with `n` placeholders.
    fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.next()).collect::<Vec<_>>().join(", ")
    }
}

impl Tx {
    fn is_pg(&self) -> bool {
        matches!(self, Tx::Postgres(_))
    }
}

/// Batched statements, for group commits: each takes many rows in one round trip.
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
                let mut q = sqlx::query_as::<_, LinkRow>(&sql).bind(sync);
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

    /// Records of `model` with these ids (tombstones included).
    pub async fn records_by_ids(&mut self, model: &str, ids: &[i64]) -> Result<Vec<Record>> {
        let pg = self.is_pg();
        records_by_ids(self.conn(), pg, model, ids).await
    }

    /// Inserts records at version 1; the result is in the order of `rows`.
    pub async fn insert_records(
        &mut self,
        model: &str,
        rows: &[Map<String, Value>],
    ) -> Result<Vec<Record>> {
        let now = Utc::now();
        let mut out = Vec::with_capacity(rows.len());
        for chunk in pieces(rows) {
            let mut ph = Ph::new(self.is_pg());
            let values = (0..chunk.len())
                .map(|_| ph.tuple(4))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO records (model, vals, created_at, updated_at) VALUES {values}
                 RETURNING id, version, created_at, updated_at"
            );
            // Only the assigned columns come back; the values are the ones just written.
            let mut meta = on!(self.conn(), |c| {
                let mut q = sqlx::query_as::<_, (i64, i64, DateTime<Utc>, DateTime<Utc>)>(&sql);
                for v in chunk {
                    q = q.bind(model).bind(Json(v)).bind(now).bind(now);
                }
                q.fetch_all(c).await
            })?;
            // Ids are assigned in VALUES order; RETURNING order is not promised.
            meta.sort_by_key(|m| m.0);
            out.extend(meta.into_iter().zip(chunk).map(
                |((id, version, created_at, updated_at), v)| Record {
                    id,
                    model: model.to_string(),
                    values: v.clone(),
                    version,
                    created_at,
                    updated_at,
                    deleted: false,
                },
            ));
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
                let mut q = sqlx::query_as::<_, (i64, i64, DateTime<Utc>, DateTime<Utc>)>(&sql);
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

    /// Creates or replaces many links.
    pub async fn upsert_links(&mut self, links: &[Link]) -> Result<()> {
        let now = Utc::now();
        for chunk in pieces(links) {
            let mut ph = Ph::new(self.is_pg());
            let values = (0..chunk.len())
                .map(|_| ph.tuple(8))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO links (binding, local_id, external_id, base, synced_version, external_hash, left_syncs, updated_at)
                 VALUES {values}
                 ON CONFLICT (binding, local_id) DO UPDATE SET external_id = excluded.external_id, base = excluded.base,
                   synced_version = excluded.synced_version, external_hash = excluded.external_hash,
                   left_syncs = excluded.left_syncs, updated_at = excluded.updated_at"
            );
            on!(self.conn(), |c| {
                let mut q = sqlx::query(&sql);
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

    /// Writes many change-control rows.
    pub async fn log_changes(&mut self, rows: &[NewChange]) -> Result<()> {
        let now = Utc::now();
        for chunk in pieces(rows) {
            let mut ph = Ph::new(self.is_pg());
            let values = (0..chunk.len())
                .map(|_| ph.tuple(15))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO change_log (sync, direction, action, external_id, local_id, name, title, origin_values,
                     destination_values, modified_at, synced_at, status, error_message, run_id, actor)
                 VALUES {values}"
            );
            on!(self.conn(), |c| {
                let mut q = sqlx::query(&sql);
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
                let mut q = sqlx::query(&sql);
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
                "UPDATE outbox SET status = 'done', claimed_by = NULL, claimed_until = NULL, updated_at = {} WHERE id IN ({})",
                ph.next(),
                ph.list(chunk.len())
            );
            on!(self.conn(), |c| {
                let mut q = sqlx::query(&sql).bind(now);
                for id in chunk {
                    q = q.bind(id);
                }
                q.execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }
}

/// `SELECT {columns} FROM {table} WHERE {key_col} = ? AND {id_col} IN (...)`, in pieces.
/// Table and column names are the store's own constants, never configuration text.
async fn select_by_ids<R>(
    mut c: Conn<'_>,
    pg: bool,
    select: &str,
    key_col: &str,
    key: &str,
    id_col: &str,
    ids: &[i64],
) -> Result<Vec<R>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin,
{
    let mut out = Vec::new();
    for chunk in pieces(ids) {
        let mut ph = Ph::new(pg);
        let sql = format!(
            "{select} WHERE {key_col} = {} AND {id_col} IN ({})",
            ph.next(),
            ph.list(chunk.len())
        );
        let rows = on!(&mut c, |c| {
            let mut q = sqlx::query_as::<_, R>(&sql).bind(key);
            for id in chunk {
                q = q.bind(id);
            }
            q.fetch_all(&mut **c).await
        })?;
        out.extend(rows);
    }
    Ok(out)
}

/// How long an instance may go without renewing its heartbeat before its in-flight
/// deliveries pass to another (it renews every [`INSTANCE_HEARTBEAT`]).
pub const INSTANCE_DEAD_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a running instance renews its heartbeat.
pub const INSTANCE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// Binding keys join the model names with `|`, which no sync code may hold.
pub fn is_binding_key(scope: &str) -> bool {
    scope.contains('|')
}

const RECORD_SELECT: &str =
    "SELECT id, model, vals, version, created_at, updated_at, deleted_at FROM records";
const LINK_SELECT: &str = "SELECT binding, local_id, external_id, base, synced_version, external_hash, left_syncs FROM links";

async fn records_by_ids(c: Conn<'_>, pg: bool, model: &str, ids: &[i64]) -> Result<Vec<Record>> {
    let rows: Vec<RecordRow> =
        select_by_ids(c, pg, RECORD_SELECT, "model", model, "id", ids).await?;
    Ok(rows.into_iter().map(Record::from).collect())
}

async fn links_by_local_many(
    c: Conn<'_>,
    pg: bool,
    binding: &str,
    ids: &[i64],
) -> Result<Vec<Link>> {
    let rows: Vec<LinkRow> =
        select_by_ids(c, pg, LINK_SELECT, "binding", binding, "local_id", ids).await?;
    Ok(rows.into_iter().map(Link::from).collect())
}

impl Store {
    fn is_pg(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Records of `model` with these ids (tombstones included), read outside a transaction.
    pub async fn records_by_ids(&self, model: &str, ids: &[i64]) -> Result<Vec<Record>> {
        records_by_ids(self.reader().await?.conn(), self.is_pg(), model, ids).await
    }

    /// Links of a binding (or of a sync's binding) for these local ids, read outside a
    /// transaction.
    pub async fn links_by_local(&self, scope: &str, ids: &[i64]) -> Result<Vec<Link>> {
        let binding = self.binding_of(scope).await?;
        links_by_local_many(self.reader().await?.conn(), self.is_pg(), &binding, ids).await
    }
}

impl Tx {
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
            sqlx::query_as::<_, RecordRow>(
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
            sqlx::query_as::<_, RecordRow>(
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
            sqlx::query_as::<_, RecordRow>(
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
                sqlx::query_scalar::<_, i64>(
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
                sqlx::query_scalar::<_, i64>(
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
            sqlx::query(
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
        let n = on!(self.conn(), |c| sqlx::query(
            "DELETE FROM links WHERE binding = $1 AND local_id = $2"
        )
        .bind(sync)
        .bind(local_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Queues a change for delivery.
    pub async fn enqueue(&mut self, e: &NewOutbox) -> Result<i64> {
        let now = Utc::now();
        Ok(on!(self.conn(), |c| {
            sqlx::query_scalar::<_, i64>(
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

    pub async fn log_change(&mut self, row: &NewChange) -> Result<i64> {
        log_change(self.conn(), row).await
    }

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
            sqlx::query(
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
