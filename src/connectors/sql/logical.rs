//! `capture = "logical"` on PostgreSQL: a logical replication slot of recsync's own, one per
//! sync, read through PostgreSQL's SQL functions with the `test_decoding` plugin. The slot
//! says which rows of the table changed, in commit order (inserts, updates, hard deletes,
//! late commits included); the rows are then read as they are now, by key, so no value is
//! parsed from the plugin's text. The slot is peeked, never consumed, while a page is applied,
//! and advanced past it only after the engine confirmed it: a crash in between reads the same
//! changes again, which change nothing the second time.
//!
//! Why `test_decoding` and the SQL functions rather than `pgoutput` and the replication
//! protocol: both ship with PostgreSQL; the SQL functions work over an ordinary connection
//! (through a pooler too) and need no publication, and recsync needs only the table, the
//! action and the key of each change, which `test_decoding` prints plainly.

use super::db::Pool;
use super::spec::SqlTable;
use super::{SqlPull, id_text};
use crate::connectors::{Confirmation, Memory, Page, PullAction, PullError, PullStart, Pulled};
use crate::domain::plan::Sync;
use serde_json::{Map, Value};
use sqlx::{PgPool, Row};

/// Pages of the slot read in one run, at most: a table written faster than it is read still
/// lets runs end (the next run goes on).
const MAX_PAGES: usize = 200;

/// A logical capture in progress.
pub(super) struct Stream {
    pool: PgPool,
    slot: String,
    /// The table as `test_decoding` names it.
    printed: String,
    /// The table is being read whole first (a new slot, or a full run).
    pub(super) snapshot: bool,
    /// The snapshot's last page was read: its confirmation records it.
    pub(super) snapshot_done: bool,
    /// Where the batch peeked last ends, to advance the slot to when its last page is
    /// confirmed.
    batch_lsn: Option<String>,
    /// The lines the batch read.
    batch_lines: usize,
    /// The rows of the batch not handed out yet, with whether their last change deleted them.
    pub(super) pending: std::collections::VecDeque<(String, bool)>,
    pages: usize,
    /// A plan reads and never advances the slot.
    preview: bool,
}

/// What the engine keeps for a logical capture.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    slot: String,
    /// The table was read whole after the slot was made.
    snapshot: bool,
}

impl SqlPull {
    /// Makes the slot if it is not there, and decides whether the table is read whole first:
    /// when the slot is new (changes before it were never seen) or the run is a full one.
    pub(super) async fn open_stream(
        &mut self,
        sync: &Sync,
        start: &PullStart,
        memory: &dyn Memory,
    ) -> Result<(), PullError> {
        let who = self.conn.who(&self.shape.table);
        let fail =
            |e: sqlx::Error| PullError::Service(format!("{who}: {}", super::db::describe(&e)));
        let pool = match self.conn.pool().map_err(PullError::Service)? {
            Pool::Pg(p) => p.clone(),
            _ => {
                return Err(PullError::Service(format!(
                    "{who}: capture = \"logical\" needs PostgreSQL"
                )));
            }
        };
        let slot = slot_of(&pool, sync.code.as_str()).await.map_err(fail)?;
        let created = ensure_slot(&pool, &slot).await.map_err(|e| {
            PullError::Service(format!(
                "{who}: the replication slot `{slot}` could not be made ({}); logical capture \
                 needs wal_level = logical and a user with the REPLICATION attribute",
                super::db::describe(&e)
            ))
        })?;
        if let Some(held) = held_bytes(&pool, &slot).await.map_err(fail)?
            && held > HELD_WARNING
        {
            tracing::warn!(
                sync = %sync.code,
                slot = %slot,
                held_mib = held >> 20,
                "The replication slot holds back more than 1 GiB of WAL: run the sync more often, or drop the slot if the sync is gone"
            );
        }
        let saved: Option<Saved> = memory
            .cursor()
            .await?
            .and_then(|c| serde_json::from_str(&c).ok());
        let snapshot_taken = saved.is_some_and(|s| s.slot == slot && s.snapshot);
        let printed = printed_name(&pool, &self.shape.table).await.map_err(fail)?;
        let snapshot = created || !snapshot_taken || start.full;
        self.whole = true;
        self.stream = Some(Stream {
            pool,
            slot,
            printed,
            snapshot,
            snapshot_done: false,
            batch_lsn: None,
            batch_lines: 0,
            pending: Default::default(),
            pages: 0,
            preview: start.preview,
        });
        Ok(())
    }

    /// One page of the slot: the rows its changes name, as they are now, in commit order of
    /// their last change; a row that is no longer there is a delete.
    pub(super) async fn stream_page(&mut self) -> Result<Page, PullError> {
        let who = self.conn.who(&self.shape.table);
        let key = self.shape.table.key.clone();
        let s = self.stream.as_mut().expect("a stream");
        // A batch of whole transactions is peeked once and handed out `limit` rows a page; the
        // slot moves past it when its last page is confirmed.
        if s.pending.is_empty() {
            let lines = peek(&s.pool, &s.slot, self.limit)
                .await
                .map_err(|e| PullError::Service(format!("{who}: {}", super::db::describe(&e))))?;
            s.pages += 1;
            let Some((last, _)) = lines.last() else {
                self.more = false;
                return Ok(Page::default());
            };
            s.batch_lsn = Some(last.clone());
            s.batch_lines = lines.len();
            // The last change of each row, in the order of those last changes.
            let mut latest: std::collections::HashMap<String, (usize, bool)> = Default::default();
            let mut n = 0;
            for (_, data) in &lines {
                for change in parse(data, &s.printed, &key) {
                    let (k, deleted) = match change {
                        Change::Upsert(k) => (k, false),
                        Change::Delete(k) => (k, true),
                    };
                    latest.insert(k, (n, deleted));
                    n += 1;
                }
            }
            let mut order: Vec<(String, (usize, bool))> = latest.into_iter().collect();
            order.sort_by_key(|(_, (at, _))| *at);
            s.pending = order.into_iter().map(|(k, (_, d))| (k, d)).collect();
        }
        let take = s.pending.len().min(self.limit);
        let part: Vec<(String, bool)> = s.pending.drain(..take).collect();
        let read = if s.pending.is_empty() {
            s.batch_lines
        } else {
            0
        };
        self.more = !s.pending.is_empty() || s.pages < MAX_PAGES;
        let wanted: Vec<String> = part
            .iter()
            .filter(|(_, deleted)| !deleted)
            .map(|(k, _)| k.clone())
            .collect();
        let rows = self
            .conn
            .rows_by_keys(&self.shape, &self.cols, &wanted)
            .await
            .map_err(PullError::Service)?;
        let mut found: std::collections::HashMap<String, Map<String, Value>> = rows
            .into_iter()
            .map(|r| (id_text(r.get(&key)), r))
            .collect();
        let records = part
            .into_iter()
            .map(|(k, _)| match found.remove(&k) {
                Some(values) => Pulled {
                    action: PullAction::Update,
                    external_id: Some(k),
                    values,
                    modified_at: None,
                    label: None,
                },
                // Deleted there (or soft-deleted since).
                None => Pulled {
                    action: PullAction::Delete,
                    values: Map::from_iter([(key.clone(), Value::String(k.clone()))]),
                    external_id: Some(k),
                    modified_at: None,
                    label: None,
                },
            })
            .collect();
        Ok(Page {
            read,
            skipped: 0,
            more: self.more,
            records,
        })
    }

    /// After a page was applied: the slot moves past it (unless a record failed: then the
    /// same changes are read again by the next run); the snapshot's end is recorded.
    pub(super) async fn stream_confirm(
        &mut self,
        memory: &dyn Memory,
        outcomes: &[Confirmation],
    ) -> Result<(), PullError> {
        let who = self.conn.who(&self.shape.table);
        let s = self.stream.as_mut().expect("a stream");
        if s.preview {
            return Ok(());
        }
        if outcomes.iter().any(|o| o.error.is_some()) {
            // The slot stays where it was: the next run reads the batch again.
            self.more = false;
            s.batch_lsn = None;
            s.pending.clear();
            return Ok(());
        }
        if s.snapshot_done {
            s.snapshot = false;
            s.snapshot_done = false;
            let saved = Saved {
                slot: s.slot.clone(),
                snapshot: true,
            };
            let text = serde_json::to_string(&saved).expect("serializes");
            memory.save(&[], &[], Some(&text)).await?;
        }
        if s.pending.is_empty()
            && let Some(lsn) = s.batch_lsn.take()
        {
            crate::crash::point("sql.before_advance");
            advance(&s.pool, &s.slot, &lsn)
                .await
                .map_err(|e| PullError::Service(format!("{who}: {}", super::db::describe(&e))))?;
        }
        Ok(())
    }
}

/// The slot of a sync: `recsync_<code>_<database>`, in the characters a slot name allows
/// (slots are the cluster's, each bound to one database), at most 63.
pub(super) fn slot_name(code: &str, database: &str) -> String {
    let clean = |s: &str| -> String {
        s.to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut name = format!("recsync_{}_{}", clean(code), clean(database));
    name.truncate(63);
    name
}

/// The slot of a sync on the database a pool connects to.
pub(super) async fn slot_of(p: &PgPool, code: &str) -> Result<String, sqlx::Error> {
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(p)
        .await?;
    Ok(slot_name(code, &database))
}

/// Creates the slot if it is not there; true when it was created now.
pub(super) async fn ensure_slot(p: &PgPool, slot: &str) -> Result<bool, sqlx::Error> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(slot)
    .fetch_one(p)
    .await?;
    if exists {
        return Ok(false);
    }
    match sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
        .bind(slot)
        .execute(p)
        .await
    {
        Ok(_) => Ok(true),
        // Another instance made it meanwhile.
        Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42710") => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many bytes of WAL the slot holds back.
pub(super) async fn held_bytes(p: &PgPool, slot: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(p)
    .await
    .map(Option::flatten)
}

/// A slot holding more WAL than this is reported (`validate --online`, a warning per run).
pub(super) const HELD_WARNING: i64 = 1 << 30;

/// The next changes after the slot's position, whole transactions, about `n` of them.
pub(super) async fn peek(
    p: &PgPool,
    slot: &str,
    n: usize,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2, \
         'include-xids', '0', 'skip-empty-xacts', '1')",
    )
    .bind(slot)
    .bind(n as i32)
    .fetch_all(p)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Moves the slot past `lsn` (a position `peek` gave): the changes up to it are applied.
pub(super) async fn advance(p: &PgPool, slot: &str, lsn: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
        .bind(slot)
        .bind(lsn)
        .execute(p)
        .await?;
    Ok(())
}

/// The table's name as `test_decoding` prints it (`schema.table`, each part quoted if needed).
pub(super) async fn printed_name(p: &PgPool, t: &SqlTable) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(t.qualified(super::spec::Dialect::Postgres))
    .fetch_one(p)
    .await
}

/// What one change says of the table's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// Inserted or updated: read the row with this key.
    Upsert(String),
    /// Deleted.
    Delete(String),
}

/// The changes of one line of `test_decoding`'s output to `table` (as [`printed_name`]
/// gives it), keyed by `key`: an update that moved the key is a delete of the old key too.
pub(super) fn parse(line: &str, table: &str, key: &str) -> Vec<Change> {
    let Some(rest) = line
        .strip_prefix("table ")
        .and_then(|r| r.strip_prefix(table))
        .and_then(|r| r.strip_prefix(": "))
    else {
        return Vec::new();
    };
    let (action, tuple) = rest.split_once(": ").unwrap_or((rest, ""));
    let mut out = Vec::new();
    match action {
        "INSERT" => out.extend(key_of(tuple, key).map(Change::Upsert)),
        "UPDATE" => match tuple.strip_prefix("old-key: ") {
            Some(both) => {
                let (old, new) = both.split_once(" new-tuple: ").unwrap_or((both, ""));
                out.extend(key_of(old, key).map(Change::Delete));
                out.extend(key_of(new, key).map(Change::Upsert));
            }
            None => out.extend(key_of(tuple, key).map(Change::Upsert)),
        },
        "DELETE" => out.extend(key_of(tuple, key).map(Change::Delete)),
        _ => {}
    }
    out
}

/// The key's value in a tuple printed as `name[type]:value ...`: a number or word as it is,
/// a quoted string unquoted (`''` is one quote); `None` for null or when it is not there.
fn key_of(tuple: &str, key: &str) -> Option<String> {
    let plain = format!("{key}[");
    let quoted = format!("\"{key}\"[");
    let mut at = None;
    for needle in [&plain, &quoted] {
        let mut from = 0;
        while let Some(i) = tuple[from..].find(needle.as_str()) {
            let i = from + i;
            if i == 0 || tuple.as_bytes()[i - 1] == b' ' {
                at = Some(i + needle.len());
                break;
            }
            from = i + 1;
        }
        if at.is_some() {
            break;
        }
    }
    let rest = &tuple[at?..];
    // Past the type, which may itself hold brackets (`character varying[]`).
    let value = &rest[rest.find("]:")? + 2..];
    if let Some(q) = value.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = q.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let v: String = value.chars().take_while(|c| *c != ' ').collect();
        (v != "null" && !v.is_empty()).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_read_from_test_decoding_lines() {
        let t = "public.customers";
        assert_eq!(
            parse(
                "table public.customers: INSERT: cust_id[bigint]:1 name[text]:'it''s'",
                t,
                "cust_id"
            ),
            vec![Change::Upsert("1".into())]
        );
        assert_eq!(
            parse(
                "table public.customers: UPDATE: code[text]:'a b''c' cust_id[bigint]:7",
                t,
                "code"
            ),
            vec![Change::Upsert("a b'c".into())]
        );
        assert_eq!(
            parse(
                "table public.customers: UPDATE: old-key: cust_id[bigint]:1 new-tuple: cust_id[bigint]:5 name[text]:'x'",
                t,
                "cust_id"
            ),
            vec![Change::Delete("1".into()), Change::Upsert("5".into())]
        );
        assert_eq!(
            parse(
                "table public.customers: DELETE: cust_id[bigint]:2",
                t,
                "cust_id"
            ),
            vec![Change::Delete("2".into())]
        );
        // Another table, a column whose name ends like the key, a quoted column name.
        assert!(
            parse(
                "table public.other: INSERT: cust_id[bigint]:1",
                t,
                "cust_id"
            )
            .is_empty()
        );
        assert_eq!(
            parse(
                "table public.customers: INSERT: old_cust_id[bigint]:9 cust_id[bigint]:3",
                t,
                "cust_id"
            ),
            vec![Change::Upsert("3".into())]
        );
        assert_eq!(
            parse(
                "table public.customers: INSERT: \"Key\"[integer]:4",
                t,
                "Key"
            ),
            vec![Change::Upsert("4".into())]
        );
        assert!(parse("BEGIN", t, "cust_id").is_empty());
        assert_eq!(slot_name("LEGACY-1", "crm"), "recsync_legacy_1_crm");
        assert_eq!(slot_name("A", &"d".repeat(80)).len(), 63);
    }
}
