//! The store: one `Store` over two native sqlx backends, SQLite (the embedded default, WAL,
//! one writer connection) and PostgreSQL (for several instances sharing one database),
//! chosen by the URL scheme. Both run the same SQL; migrations live per backend.

mod types;

pub use holds::{Hold, HoldItem};
pub use outbox::Superseded;
pub use paused::Kept;
pub use types::*;
pub use view::ReadView;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// A connection pooler refused what sqlx asks of a direct connection.
    #[error(
        "database error: {0}; behind a transaction-pooling PgBouncer, add ?pgbouncer=true to database_url"
    )]
    Pooler(sqlx::Error),
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

/// Whether statements are prepared once per connection and kept (sqlx's default), or sent
/// unnamed each time. Behind a transaction-pooling PgBouncer a connection is a different server
/// connection from one transaction to the next, so a kept statement is missing there, or
/// clashes with one another client kept: `?pgbouncer=true` turns keeping off for the process.
static KEEP_STATEMENTS: AtomicBool = AtomicBool::new(true);

fn keep_statements() -> bool {
    KEEP_STATEMENTS.load(Ordering::Relaxed)
}

/// `sqlx::query`, prepared as [`KEEP_STATEMENTS`] says.
fn query<DB: sqlx::Database + sqlx::database::HasStatementCache>(
    sql: &str,
) -> sqlx::query::Query<'_, DB, DB::Arguments<'_>> {
    sqlx::query(sql).persistent(keep_statements())
}

/// `sqlx::query_as`, prepared as [`KEEP_STATEMENTS`] says.
fn query_as<'q, DB, O>(sql: &'q str) -> sqlx::query::QueryAs<'q, DB, O, DB::Arguments<'q>>
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    O: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    sqlx::query_as(sql).persistent(keep_statements())
}

/// `sqlx::query_scalar`, prepared as [`KEEP_STATEMENTS`] says.
fn query_scalar<'q, DB, O>(sql: &'q str) -> sqlx::query::QueryScalar<'q, DB, O, DB::Arguments<'q>>
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    (O,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    sqlx::query_scalar(sql).persistent(keep_statements())
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite { write: SqlitePool, read: SqlitePool },
    Postgres(PgPool),
}

/// The database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// PostgreSQL behind a transaction-pooling PgBouncer (`?pgbouncer=true`): every statement
    /// runs inside a transaction, so that its prepare and its execution reach the same server
    /// connection.
    pooled: bool,
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

// The table families; `on!` is defined above so that they can use it.
mod changes;
mod holds;
mod idempotency;
mod links;
mod mirror;
mod outbox;
mod paused;
mod records;
mod runs;
mod view;

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

    /// Ends the transaction without writing anything of it.
    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
        }
        Ok(())
    }
}

/// A pooled connection for reads.
pub enum Pooled {
    Sqlite(sqlx::pool::PoolConnection<Sqlite>),
    Postgres(sqlx::pool::PoolConnection<Postgres>),
    /// Behind a transaction-pooling PgBouncer: a transaction, committed by
    /// [`Pooled::done`] (a reader's is rolled back when dropped).
    Pooled(Transaction<'static, Postgres>),
}

impl Pooled {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Sqlite(c) => Conn::Sqlite(&mut *c),
            Pooled::Postgres(c) => Conn::Postgres(&mut *c),
            Pooled::Pooled(t) => Conn::Postgres(&mut *t),
        }
    }

    /// Ends a writer's work with its result `out`: behind a pooler, where it ran in a
    /// transaction, commits it if it succeeded; the other connections wrote as they went.
    async fn done<T>(self, out: Result<T>) -> Result<T> {
        let v = out?;
        if let Pooled::Pooled(t) = self {
            t.commit().await?;
        }
        Ok(v)
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
            match query("PRAGMA wal_checkpoint(PASSIVE)")
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

/// Applies the PostgreSQL migrations through a transaction-pooling PgBouncer as sqlx's migrator
/// does (the same `_sqlx_migrations` table and checks, so either may run next), with what such
/// a pooler allows: statements unnamed, each in a transaction, and a transaction-level
/// advisory lock in each migration's transaction instead of the migrator's session lock (which
/// the pooler would leave held on whichever server connection took it).
async fn migrate_pooled(pool: &PgPool) -> Result<()> {
    use sqlx::migrate::MigrateError;
    /// The lock's key, the same for every instance ("recsync").
    const LOCK: i64 = 0x0072_6563_7379_6e63;
    let mut tx = pool.begin().await?;
    // Two instances creating the table at once collide even with IF NOT EXISTS.
    query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::Executor::execute(
        &mut *tx,
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
            success BOOLEAN NOT NULL,
            checksum BYTEA NOT NULL,
            execution_time BIGINT NOT NULL
        )",
    )
    .await?;
    tx.commit().await?;
    let known: Vec<i64> = POSTGRES_MIGRATIONS.iter().map(|m| m.version).collect();
    for m in POSTGRES_MIGRATIONS.iter() {
        if m.migration_type.is_down_migration() {
            continue;
        }
        let mut tx = pool.begin().await?;
        query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK)
            .execute(&mut *tx)
            .await?;
        let applied: Option<(Vec<u8>, bool)> =
            query_as("SELECT checksum, success FROM _sqlx_migrations WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await?;
        match applied {
            Some((_, false)) => return Err(MigrateError::Dirty(m.version).into()),
            Some((sum, true)) if sum[..] != m.checksum[..] => {
                return Err(MigrateError::VersionMismatch(m.version).into());
            }
            Some(_) => continue,
            None => {}
        }
        let started = std::time::Instant::now();
        // The migration's statements at once, as a plain text query (as sqlx's migrator
        // sends them; `raw_sql(..).execute` would do the same, but its future is `Send` only
        // for a higher-ranked lifetime that callers' futures cannot prove).
        sqlx::Executor::execute(&mut *tx, m.sql.as_ref()).await?;
        query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ($1, $2, TRUE, $3, $4)",
        )
        .bind(m.version)
        .bind(m.description.as_ref())
        .bind(m.checksum.as_ref())
        .bind(started.elapsed().as_nanos() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let mut c = pool.begin().await?;
    let applied: Vec<i64> = query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut *c)
        .await?;
    if let Some(v) = applied.into_iter().find(|v| !known.contains(v)) {
        return Err(MigrateError::VersionMissing(v).into());
    }
    Ok(())
}

/// Takes recsync's own `pgbouncer` parameter out of a PostgreSQL URL: the URL sqlx is given,
/// and whether the database is reached through a transaction-pooling PgBouncer.
fn pgbouncer_param(url: &str) -> Result<(String, bool)> {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // sqlx says what is wrong with it.
        return Ok((url.to_string(), false));
    };
    let mut pooled = false;
    let mut kept = Vec::new();
    for (k, v) in parsed.query_pairs() {
        if k == "pgbouncer" {
            pooled = match v.as_ref() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(StoreError::Database(sqlx::Error::Configuration(
                        format!("`pgbouncer` in database_url is `true` or `false`, not `{other}`")
                            .into(),
                    )));
                }
            };
        } else {
            kept.push((k.into_owned(), v.into_owned()));
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), pooled))
}

/// The columns of a Dropbox mirror entry, in `MirrorEntry`'s order.
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
                pooled: false,
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (url, pooled) = pgbouncer_param(url)?;
            let mut opts = PgConnectOptions::from_str(&url)?;
            if pooled {
                // PgBouncer refuses startup parameters it does not know (1.18:
                // `unsupported startup parameter: extra_float_digits`), and statements kept
                // on a connection are not there in the next transaction.
                opts = opts.extra_float_digits(None).statement_cache_capacity(0);
                KEEP_STATEMENTS.store(false, Ordering::Relaxed);
            }
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(d)
                        if !pooled && d.message().contains("unsupported startup parameter") =>
                    {
                        StoreError::Pooler(e)
                    }
                    _ => e.into(),
                })?;
            Ok(Store {
                backend: Backend::Postgres(pool),
                pooled,
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
            Backend::Postgres(pool) if self.pooled => migrate_pooled(pool).await?,
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.reader().await?;
        on!(c.conn(), |c| query("SELECT 1")
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
    ///
    /// On SQLite the transaction takes the database's write lock at once (`BEGIN IMMEDIATE`),
    /// waiting up to the busy timeout for another process (a CLI command beside `serve`) to
    /// let go of it. A deferred transaction that read first would fail at its first write,
    /// without waiting, whenever the other process had written since its read (`database is
    /// locked`, code 517).
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match &self.backend {
            Backend::Sqlite { write, .. } => match write.begin_with("BEGIN IMMEDIATE").await {
                // SQLite rolls a transaction back itself on some failures (a full disk), and
                // sqlx's count of open transactions on that connection stays at one: it then
                // refuses a new BEGIN. That connection is closed and a fresh one begins.
                Err(sqlx::Error::InvalidSavePointStatement) => {
                    let _ = write.acquire().await?.close().await;
                    Tx::Sqlite(write.begin_with("BEGIN IMMEDIATE").await?)
                }
                r => Tx::Sqlite(r?),
            },
            Backend::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// A connection for reads.
    pub async fn reader(&self) -> Result<Pooled> {
        Ok(match &self.backend {
            Backend::Sqlite { read, .. } => Pooled::Sqlite(read.acquire().await?),
            Backend::Postgres(p) if self.pooled => Pooled::Pooled(p.begin().await?),
            Backend::Postgres(p) => Pooled::Postgres(p.acquire().await?),
        })
    }

    /// A connection for single-statement writes outside a transaction; [`Pooled::finish`]
    /// ends its work.
    async fn writer(&self) -> Result<Pooled> {
        Ok(match &self.backend {
            Backend::Sqlite { write, .. } => Pooled::Sqlite(write.acquire().await?),
            Backend::Postgres(p) if self.pooled => Pooled::Pooled(p.begin().await?),
            Backend::Postgres(p) => Pooled::Postgres(p.acquire().await?),
        })
    }

    //
    // Links belong to a binding (local model, external model, web service). The readers below
    // take a `scope`: a binding key, or the code of a sync, which is looked up in
    // `sync_bindings` (a code nobody registered is its own binding, as rows written by an
    // earlier release are until the engine merges them).
}

// ---- functions over a connection, shared by `Store` reads and `Tx` writes ----

async fn get_record(c: Conn<'_>, model: &str, id: i64) -> Result<Option<Record>> {
    let row = on!(c, |c| {
        query_as::<_, RecordRow>(
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
    Ok(on!(c, |c| query_as::<_, LinkRow>(&format!(
        "{LINK_SELECT} WHERE binding = $1 AND local_id = $2"
    ))
    .bind(binding)
    .bind(local_id)
    .fetch_optional(c)
    .await)?
    .map(Link::from))
}

async fn link_by_external(c: Conn<'_>, binding: &str, external_id: &str) -> Result<Option<Link>> {
    Ok(on!(c, |c| query_as::<_, LinkRow>(&format!(
        "{LINK_SELECT} WHERE binding = $1 AND external_id = $2"
    ))
    .bind(binding)
    .bind(external_id)
    .fetch_optional(c)
    .await)?
    .map(Link::from))
}

async fn renew_heartbeat(c: Conn<'_>, instance: &str, now: DateTime<Utc>) -> Result<()> {
    on!(c, |c| query(
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
        query(
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
    status: RunStatus,
    counts: &RunCounts,
    error: Option<&str>,
) -> Result<()> {
    on!(c, |c| {
        query(
            "UPDATE runs SET finished_at = $1, status = $2, error = $3, pulled = $4, created = $5, updated = $6, deleted = $7,
             unlinked = $8, skipped = $9, failed = $10, conflicts = $11, pushed = $12,
             held = $13, missing = $14, extra = $15, different = $16, ambiguous = $17 WHERE id = $18"
        )
        .bind(Utc::now())
        .bind(status.as_str())
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
        .bind(counts.held)
        .bind(counts.missing)
        .bind(counts.extra)
        .bind(counts.different)
        .bind(counts.ambiguous)
        .bind(id)
        .execute(c).await.map(|r| r.rows_affected())
    })?;
    Ok(())
}

async fn log_change(c: Conn<'_>, r: &NewChange) -> Result<i64> {
    Ok(on!(c, |c| {
        query_scalar::<_, i64>(
        "INSERT INTO change_log (sync, direction, action, external_id, local_id, name, title, origin_values,
             destination_values, before_values, modified_at, synced_at, status, error_message, run_id, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING id"
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
    .bind(Json(changes::before(&r.before_values)))
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
/// statement texts recur and stay in the prepared-statement cache. The widest statement (a
/// change-control row, 15 columns) takes 3,840 parameters at 256 rows: far below SQLite's
/// 32,766 and PostgreSQL's 65,535.
const SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// The lengths [`pieces`] cuts `n` items into.
fn piece_sizes(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = n;
    while rest > 0 {
        let size = SIZES.iter().copied().find(|s| *s <= rest).unwrap_or(1);
        out.push(size);
        rest -= size;
    }
    out
}

/// `(…), (…)`: `rows` tuples of `cols` parameters, numbered in order (`$n` on PostgreSQL,
/// `?` on SQLite, whose numbered parameters sqlx binds by a lookup that grows with their
/// count). Kept once made: multi-row statements come in the few sizes of [`SIZES`].
fn values_clause(pg: bool, cols: usize, rows: usize) -> std::sync::Arc<str> {
    type Made = HashMap<(bool, usize, usize), std::sync::Arc<str>>;
    static MADE: std::sync::LazyLock<std::sync::Mutex<Made>> =
        std::sync::LazyLock::new(Default::default);
    let key = (pg, cols, rows);
    if let Some(text) = MADE.lock().expect("values clause lock").get(&key) {
        return text.clone();
    }
    let mut ph = Ph::new(pg);
    let text: std::sync::Arc<str> = (0..rows)
        .map(|_| ph.tuple(cols))
        .collect::<Vec<_>>()
        .join(", ")
        .into();
    MADE.lock()
        .expect("values clause lock")
        .insert(key, text.clone());
    text
}

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
impl Tx {}

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
            let mut q = query_as::<_, R>(&sql).bind(key);
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
}

impl Tx {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pgbouncer_parameter_is_recsyncs_own() {
        let (url, pooled) =
            pgbouncer_param("postgres://u:p@db:6432/app?pgbouncer=true&sslmode=require").unwrap();
        assert_eq!(
            (url.as_str(), pooled),
            ("postgres://u:p@db:6432/app?sslmode=require", true)
        );
        let (url, pooled) = pgbouncer_param("postgres://u:p@db/app?pgbouncer=false").unwrap();
        assert_eq!((url.as_str(), pooled), ("postgres://u:p@db/app", false));
        let (url, pooled) = pgbouncer_param("postgres://u:p@db/app").unwrap();
        assert_eq!((url.as_str(), pooled), ("postgres://u:p@db/app", false));
        let e = pgbouncer_param("postgres://db/app?pgbouncer=yes").unwrap_err();
        assert!(
            e.to_string()
                .contains("`pgbouncer` in database_url is `true` or `false`, not `yes`"),
            "{e}"
        );
    }
}
