//! Group commit of the writes that need no read first (inserts and deletes): the statements
//! of concurrent sends share one transaction per connection, so a batch of the outbox costs a
//! commit (a WAL flush) per connection instead of one per row.
//!
//! A send queues its statement and waits for its answer. While fewer than `max_concurrency`
//! groups are at work, the send that queued leads a group itself: it takes its share of what is
//! queued (up to `GROUP` statements), runs them in one transaction, answers each, and takes
//! another share until nothing waits. A statement the
//! database refuses (a constraint, a wrong value) rolls the group back, and its statements are
//! then run one by one, each in its own transaction, so each is answered for itself and no
//! statement is lost or applied twice. A lost connection or a failed commit answers every
//! statement of the group with that error (its outcome is unknown, as for a single write).

use super::db::{self, Bind, Binder, Pool};
use crate::domain::value::FieldType;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Statements a group takes at most.
const GROUP: usize = 256;

/// What a statement answers.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    /// The key of the row inserted (`RETURNING` on PostgreSQL and SQLite), as text.
    Key { ty: Option<FieldType> },
    /// The key MySQL made (`LAST_INSERT_ID()`).
    InsertId,
    /// Nothing (a delete).
    Nothing,
}

/// One statement to run.
pub(super) struct Write {
    pub sql: String,
    pub binds: Vec<Bind>,
    pub answer: Answer,
}

type Reply = oneshot::Sender<Result<Option<String>, sqlx::Error>>;

/// The queue of one web service's writes.
#[derive(Default)]
pub(super) struct Groups {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<(Write, Reply)>,
    leaders: usize,
}

/// Counts a leader out when its group ends, however it ends (a cancelled send too).
struct Leading<'a>(&'a Groups);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("groups").leaders -= 1;
    }
}

impl Groups {
    /// Runs `write` in a group, at most `lanes` groups at a time; answers what it returned
    /// (a key as text, or MySQL's insert id).
    pub(super) async fn run(
        &self,
        pool: &Pool,
        lanes: usize,
        write: Write,
    ) -> Result<Option<String>, sqlx::Error> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut q = self.state.lock().expect("groups");
            q.waiting.push_back((write, tx));
            let lead = q.leaders < lanes.max(1);
            if lead {
                q.leaders += 1;
            }
            lead
        };
        if lead {
            let _leading = Leading(self);
            loop {
                // A share of what waits, so the other groups at work take the rest on their
                // connections at the same time (one group taking all would write them one
                // after the other on one connection).
                let group: Vec<(Write, Reply)> = {
                    let mut q = self.state.lock().expect("groups");
                    let n = q.waiting.len().div_ceil(lanes.max(1)).min(GROUP);
                    q.waiting.drain(..n).collect()
                };
                if group.is_empty() {
                    break;
                }
                run_group(pool, group).await;
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::other(
                "the write was cut short (its group was cancelled); its outcome is unknown",
            )))
        })
    }
}

/// Runs a group in one transaction; on a refusal, each statement alone.
async fn run_group(pool: &Pool, group: Vec<(Write, Reply)>) {
    if group.len() == 1 {
        let (w, reply) = group.into_iter().next().expect("one");
        let _ = reply.send(alone(pool, &w).await);
        return;
    }
    let writes: Vec<&Write> = group.iter().map(|(w, _)| w).collect();
    match together(pool, &writes).await {
        Ok(answers) => {
            for ((_, reply), a) in group.into_iter().zip(answers) {
                let _ = reply.send(Ok(a));
            }
        }
        Err(e) if refused(&e) => {
            for (w, reply) in group {
                let _ = reply.send(alone(pool, &w).await);
            }
        }
        Err(e) => {
            let text = db::describe(&e);
            for (_, reply) in group {
                let _ = reply.send(Err(sqlx::Error::Io(std::io::Error::other(text.clone()))));
            }
        }
    }
}

/// The database refused a statement (it ran, and said no): worth running the group's
/// statements one by one.
fn refused(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(_))
}

/// Runs each statement on `$conn` and collects the answers.
macro_rules! each {
    ($conn:expr, $writes:expr, $raw:path, $insert_id:expr) => {{
        let mut out = Vec::with_capacity($writes.len());
        for w in $writes {
            let mut q = sqlx::query(&w.sql);
            for b in w.binds.iter().cloned() {
                q = q.put(b);
            }
            out.push(match &w.answer {
                Answer::Key { ty, .. } => match q.fetch_optional(&mut *$conn).await? {
                    Some(row) => Some(super::id_text(Some(&db::to_json(
                        ty.as_ref(),
                        $raw(&row, 0)?,
                    )))),
                    None => None,
                },
                Answer::InsertId => {
                    $insert_id(&q.execute(&mut *$conn).await?).map(|n: u64| n.to_string())
                }
                Answer::Nothing => {
                    q.execute(&mut *$conn).await?;
                    None
                }
            });
        }
        out
    }};
}

/// Only MySQL answers the key it made outside the statement.
fn no_insert_id<T>(_: &T) -> Option<u64> {
    None
}

/// Every statement in one transaction.
async fn together(pool: &Pool, writes: &[&Write]) -> Result<Vec<Option<String>>, sqlx::Error> {
    Ok(match pool {
        Pool::Pg(p) => {
            let mut tx = p.begin().await?;
            let out = each!(tx, writes, db::pg_raw, no_insert_id);
            tx.commit().await?;
            out
        }
        Pool::My(p) => {
            let mut tx = p.begin().await?;
            let out = each!(
                tx,
                writes,
                db::my_raw,
                |r: &sqlx::mysql::MySqlQueryResult| Some(r.last_insert_id())
            );
            tx.commit().await?;
            out
        }
        Pool::Lite(p) => {
            let mut tx = p.begin().await?;
            let out = each!(tx, writes, db::lite_raw, no_insert_id);
            tx.commit().await?;
            out
        }
    })
}

/// One statement in its own transaction.
async fn alone(pool: &Pool, w: &Write) -> Result<Option<String>, sqlx::Error> {
    Ok(together(pool, &[w]).await?.pop().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nine inserts queued while one group is at work make the next group; the one the table
    /// refuses fails alone with the database's reason, and the other eight are each written
    /// once.
    #[tokio::test]
    async fn a_refused_insert_fails_alone_and_its_group_is_written_once() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        let pool = Pool::Lite(pool);
        let groups = Groups::default();
        let insert = |name: Option<&str>| Write {
            sql: "INSERT INTO t (name) VALUES (?) RETURNING id".into(),
            binds: vec![name.map_or(Bind::Null, |n| Bind::Text(n.into()))],
            answer: Answer::Key {
                ty: Some(FieldType::Integer),
            },
        };
        let names = [
            None,
            Some("a"),
            Some("b"),
            Some("c"),
            None,
            Some("d"),
            Some("e"),
            Some("f"),
            Some("g"),
            Some("h"),
        ];
        let answers =
            futures_util::future::join_all(names.iter().map(|n| groups.run(&pool, 1, insert(*n))))
                .await;
        for (n, a) in names.iter().zip(&answers) {
            match (n, a) {
                (None, Err(e)) => assert!(db::describe(e).contains("NOT NULL"), "{e}"),
                (Some(_), Ok(Some(id))) => assert!(id.parse::<i64>().is_ok(), "{id}"),
                other => panic!("{other:?}"),
            }
        }
        let Pool::Lite(p) = &pool else { unreachable!() };
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM t ORDER BY name")
            .fetch_all(p)
            .await
            .unwrap();
        let written: Vec<&str> = rows.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(written, ["a", "b", "c", "d", "e", "f", "g", "h"]);
        // Each answered key is its own row's.
        for (n, a) in names.iter().zip(&answers) {
            if let (Some(n), Ok(Some(id))) = (n, a) {
                assert!(rows.iter().any(|(i, m)| i.to_string() == *id && m == n));
            }
        }
        assert_eq!(groups.state.lock().unwrap().leaders, 0);
    }
}
