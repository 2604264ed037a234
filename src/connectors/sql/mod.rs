//! Database tables as external systems (`kind = "sql"`, `connectors.md` §3b): PostgreSQL and
//! SQLite through sqlx. A table is read by keyset pages on (`cursor`, `key`) from the watermark
//! minus `overlap` (or whole, without a cursor), written with `INSERT ... RETURNING`, an
//! `UPDATE` of the changed columns after the row was locked, and `DELETE` (or the soft-delete
//! column). Every value is bound; the SQL text holds only the configuration's identifiers.

mod catalog;
pub mod config;
mod db;
mod group;
mod logical;
mod poll;
pub mod spec;

use super::{
    Connector, ConnectorKind, Failure, Memory, Page, PullAction, PullError, PullStart, Pulled,
    Puller, SendAction, Sent, Target, plain_field,
};
use crate::domain::Plan;
use crate::domain::plan::{DeleteMode, Sync, WebService};
use crate::domain::value::FieldType;
use async_trait::async_trait;
use db::{Bind, Binder, Column, Pool, Raw};
use poll::{SqlPull, Watermark};
use serde_json::{Map, Value, json};
use spec::{Dialect, SqlService, SqlTable};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Rows listed per page when reconciling.
const LIST_PAGE: usize = 1000;

/// The connector of an `sql` web service: one pool, the catalog of its tables.
pub struct SqlConnector {
    name: String,
    service: SqlService,
    pool: Result<Pool, String>,
    catalog: Mutex<HashMap<String, Arc<BTreeMap<String, Column>>>>,
    /// Inserts and deletes of concurrent sends, committed together.
    groups: Arc<group::Groups>,
}

impl ConnectorKind for config::Sql {
    fn connector(&self, service: &WebService, _http: &reqwest::Client) -> Arc<dyn Connector> {
        let settings = service
            .settings::<SqlService>()
            .expect("an sql web service has SQL settings");
        Arc::new(SqlConnector {
            name: service.name.clone(),
            service: settings.clone(),
            pool: Pool::new(settings),
            catalog: Mutex::new(HashMap::new()),
            groups: Arc::default(),
        })
    }
}

/// What a sync reads and writes: its table and the external model's fields.
struct Shape {
    table: SqlTable,
    fields: BTreeMap<String, FieldType>,
}

fn shape(plan: &Plan, sync: &Sync) -> Result<Shape, String> {
    let ext = plan
        .external_models
        .get(&sync.external_model)
        .ok_or_else(|| format!("no external model `{}`", sync.external_model))?;
    let table = ext
        .settings::<SqlTable>()
        .ok_or_else(|| format!("external model `{}` is not a table", ext.name))?;
    Ok(Shape {
        table: table.clone(),
        fields: ext.fields.clone(),
    })
}

impl SqlConnector {
    fn pool(&self) -> Result<&Pool, String> {
        self.pool
            .as_ref()
            .map_err(|e| format!("web service `{}`: {e}", self.name))
    }

    /// "web service `legacy`, table `public.customers`", for messages.
    fn who(&self, t: &SqlTable) -> String {
        format!("web service `{}`, table `{}`", self.name, t.shown())
    }

    /// The table's columns, from the catalog once; a table that is not there is an error.
    async fn columns(&self, t: &SqlTable) -> Result<Arc<BTreeMap<String, Column>>, String> {
        let key = t.shown();
        if let Some(c) = self.catalog.lock().expect("catalog").get(&key) {
            return Ok(c.clone());
        }
        let pool = self.pool()?;
        let cols = db::columns(pool, t)
            .await
            .map_err(|e| format!("{}: {}", self.who(t), db::describe(&e)))?;
        if cols.is_empty() {
            return Err(format!("{}: the table does not exist", self.who(t)));
        }
        // Every name sent must be a column of the table (SQLite would take an unknown quoted
        // name for a string).
        let missing: Vec<String> = t
            .columns
            .iter()
            .chain(t.deleted.iter())
            .filter(|c| !cols.contains_key(*c))
            .map(|c| format!("`{c}`"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{}: the table has no column {}",
                self.who(t),
                missing.join(", ")
            ));
        }
        let cols = Arc::new(cols);
        self.catalog
            .lock()
            .expect("catalog")
            .insert(key, cols.clone());
        Ok(cols)
    }

    /// Runs a query that returns rows, each made into the declared fields' values.
    async fn rows(
        &self,
        sql: &str,
        binds: Vec<Bind>,
        names: &[&str],
        fields: &BTreeMap<String, FieldType>,
    ) -> Result<Vec<Map<String, Value>>, sqlx::Error> {
        let pool = self.pool().map_err(unconfigured)?;
        let mut out = Vec::new();
        match pool {
            Pool::Pg(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.put(b);
                }
                for row in q.fetch_all(p).await? {
                    let raws = (0..names.len())
                        .map(|i| db::pg_raw(&row, i))
                        .collect::<Result<Vec<Raw>, _>>()?;
                    out.push(db::record(names, fields, raws));
                }
            }
            Pool::My(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.put(b);
                }
                for row in q.fetch_all(p).await? {
                    let raws = (0..names.len())
                        .map(|i| db::my_raw(&row, i))
                        .collect::<Result<Vec<Raw>, _>>()?;
                    out.push(db::record(names, fields, raws));
                }
            }
            Pool::Lite(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.put(b);
                }
                for row in q.fetch_all(p).await? {
                    let raws = (0..names.len())
                        .map(|i| db::lite_raw(&row, i))
                        .collect::<Result<Vec<Raw>, _>>()?;
                    out.push(db::record(names, fields, raws));
                }
            }
        }
        Ok(out)
    }

    /// The select list of the declared columns.
    fn select_list(&self, d: Dialect, t: &SqlTable, cols: &BTreeMap<String, Column>) -> String {
        t.columns
            .iter()
            .map(|c| db::select_expr(d, c, cols.get(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The condition that leaves soft-deleted rows out, when the table has one.
    fn alive(d: Dialect, t: &SqlTable) -> String {
        match &t.deleted {
            Some(c) => format!(" AND {} IS NULL", d.quote(c)),
            None => String::new(),
        }
    }
}

/// A pool that could not be made (a URL sqlx refuses), as sqlx's error.
fn unconfigured(e: String) -> sqlx::Error {
    sqlx::Error::Configuration(e.into())
}

/// An id as text: numbers and strings as they are.
fn id_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[async_trait]
impl Connector for SqlConnector {
    fn kind(&self) -> &'static str {
        "sql"
    }

    async fn open_pull(
        &self,
        sync: &Sync,
        plan: &Plan,
        start: PullStart,
        memory: &dyn Memory,
    ) -> Result<Box<dyn Puller>, PullError> {
        let shape = shape(plan, sync).map_err(PullError::Service)?;
        let cols = self
            .columns(&shape.table)
            .await
            .map_err(PullError::Service)?;
        let t = &shape.table;
        // From the watermark minus the overlap; a full run reads the whole table.
        let saved: Option<Watermark> = match memory.cursor().await? {
            Some(text) if !start.full && t.cursor.is_some() => serde_json::from_str(&text).ok(),
            _ => None,
        };
        let from = saved.map(|mut w| {
            if t.cursor_is_time
                && let Some(at) = w.at.as_str()
                && let Ok(d) = crate::domain::value::parse_datetime(at)
            {
                let back = chrono::Duration::from_std(t.overlap).unwrap_or_default();
                w.at = Value::String(crate::domain::value::format_datetime(&(d - back)));
            }
            w
        });
        let mut pull = SqlPull {
            conn: self.arc(),
            cols,
            limit: sync.limit.max(1),
            first: from.is_some(),
            from,
            last: Default::default(),
            held: false,
            more: true,
            reached: None,
            unsaved: false,
            saved_at: None,
            whole: false,
            stream: None,
            shape: Arc::new(shape),
            ahead: None,
        };
        if pull.shape.table.capture == spec::Capture::Logical {
            pull.open_stream(sync, &start, memory).await?;
        }
        Ok(Box::new(pull))
    }

    async fn send(
        &self,
        sync: &Sync,
        plan: &Plan,
        _memory: &dyn Memory,
        action: SendAction,
        target: Target<'_>,
        values: &Map<String, Value>,
    ) -> Result<Sent, Failure> {
        let shape = shape(plan, sync).map_err(Failure::permanent)?;
        let t = &shape.table;
        let cols = self.columns(t).await.map_err(Failure::transient)?;
        let pool = self.pool().map_err(Failure::permanent)?;
        let d = pool.dialect();
        let key = d.quote(&t.key);
        let key_col = cols.get(&t.key);
        let key_ty = shape.fields.get(&t.key);
        // Only declared columns are written; the key only on a create that names it.
        let writable = |name: &str| t.columns.iter().any(|c| c == name);
        let changed = |name: &str| target.changed.is_none_or(|c| c.iter().any(|x| x == name));
        let id = target.external_id.map(|s| Value::String(s.to_string()));
        let table = t.qualified(d);
        match action {
            SendAction::Create => {
                let names: Vec<&String> = values
                    .keys()
                    .filter(|k| writable(k) && !(k.as_str() == t.key && values[*k].is_null()))
                    .collect();
                let mut binds = Vec::new();
                let mut params = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    binds.push(db::bind_of(d, shape.fields.get(*n), &values[*n]));
                    params.push(db::param_expr(d, i + 1, cols.get(*n)));
                }
                let columns = names
                    .iter()
                    .map(|n| d.quote(n))
                    .collect::<Vec<_>>()
                    .join(", ");
                let insert = match (names.is_empty(), d) {
                    (true, Dialect::MySql) => format!("INSERT INTO {table} () VALUES ()"),
                    (true, _) => format!("INSERT INTO {table} DEFAULT VALUES"),
                    (false, _) => format!(
                        "INSERT INTO {table} ({columns}) VALUES ({})",
                        params.join(", ")
                    ),
                };
                let fail =
                    |e: sqlx::Error| db::failure(&e).reworded(|m| format!("{}: {m}", self.who(t)));
                let (sql, answer) = match d {
                    // MySQL has no RETURNING: the key given, or the one the database made.
                    Dialect::MySql => (insert, group::Answer::InsertId),
                    _ => (
                        format!("{insert} RETURNING {}", db::select_expr(d, &t.key, key_col)),
                        group::Answer::Key {
                            ty: key_ty.cloned(),
                        },
                    ),
                };
                let made = self
                    .write(group::Write { sql, binds, answer })
                    .await
                    .map_err(fail)?;
                let given = values.get(&t.key).filter(|v| !v.is_null());
                let new_id = match (d, given) {
                    (Dialect::MySql, Some(given)) => Some(id_text(Some(given))),
                    _ => made,
                };
                Ok(Sent {
                    external_id: new_id.clone(),
                    request: json!({"insert": t.shown(), "columns": names, "key": new_id}),
                    label: None,
                })
            }
            SendAction::Update => {
                let id = id.ok_or_else(|| Failure::permanent("an update needs the row's key"))?;
                let names: Vec<&String> = values
                    .keys()
                    .filter(|k| writable(k) && k.as_str() != t.key && changed(k))
                    .collect();
                if names.is_empty() {
                    return Ok(Sent {
                        external_id: None,
                        request: json!({"update": t.shown(), "columns": []}),
                        label: None,
                    });
                }
                let mut binds = Vec::new();
                let mut sets = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    binds.push(db::bind_of(d, shape.fields.get(*n), &values[*n]));
                    sets.push(format!(
                        "{} = {}",
                        d.quote(n),
                        db::param_expr(d, i + 1, cols.get(*n))
                    ));
                }
                binds.push(db::bind_of(d, key_ty, &id));
                let where_key = format!("{key} = {}", db::param_expr(d, names.len() + 1, key_col));
                let update = format!("UPDATE {table} SET {} WHERE {where_key}", sets.join(", "));
                let lock = format!(
                    "SELECT {} FROM {table} WHERE {key} = {} FOR UPDATE",
                    db::select_expr(d, &t.key, key_col),
                    db::param_expr(d, 1, key_col)
                );
                let found = self
                    .update_locked(&lock, &update, db::bind_of(d, key_ty, &id), binds)
                    .await
                    .map_err(|e| db::failure(&e).reworded(|m| format!("{}: {m}", self.who(t))))?;
                if !found {
                    return Err(Failure::NotFound {
                        message: format!("{}: no row with key {id}", self.who(t)),
                    });
                }
                Ok(Sent {
                    external_id: None,
                    request: json!({"update": t.shown(), "key": id, "columns": names}),
                    label: None,
                })
            }
            SendAction::Delete => {
                let id = id.ok_or_else(|| Failure::permanent("a delete needs the row's key"))?;
                let (sql, verb) = match (&t.deleted, sync.delete_mode) {
                    (Some(c), DeleteMode::Archive) => {
                        let now = match d {
                            Dialect::Postgres => "now()",
                            Dialect::MySql => "UTC_TIMESTAMP(6)",
                            Dialect::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                        };
                        (
                            format!(
                                "UPDATE {table} SET {} = {now} WHERE {key} = {}",
                                d.quote(c),
                                db::param_expr(d, 1, key_col)
                            ),
                            "archive",
                        )
                    }
                    _ => (
                        format!(
                            "DELETE FROM {table} WHERE {key} = {}",
                            db::param_expr(d, 1, key_col)
                        ),
                        "delete",
                    ),
                };
                self.write(group::Write {
                    sql,
                    binds: vec![db::bind_of(d, key_ty, &id)],
                    answer: group::Answer::Nothing,
                })
                .await
                .map_err(|e| db::failure(&e).reworded(|m| format!("{}: {m}", self.who(t))))?;
                // A row already gone is what a delete wanted.
                Ok(Sent {
                    external_id: None,
                    request: json!({verb: t.shown(), "key": id}),
                    label: None,
                })
            }
        }
    }

    fn can_list(&self, _sync: &Sync) -> bool {
        true
    }

    async fn list_ids(
        &self,
        sync: &Sync,
        plan: &Plan,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), PullError> {
        let shape = shape(plan, sync).map_err(PullError::Service)?;
        let t = &shape.table;
        let cols = self.columns(t).await.map_err(PullError::Service)?;
        let pool = self.pool().map_err(PullError::Service)?;
        let d = pool.dialect();
        let key = d.quote(&t.key);
        let key_col = cols.get(&t.key);
        let key_ty = shape.fields.get(&t.key);
        let mut binds = Vec::new();
        let mut cond = String::from("1 = 1");
        if let Some(a) = &after {
            let v: Value =
                serde_json::from_str(a).map_err(|e| PullError::Service(e.to_string()))?;
            binds.push(db::bind_of(d, key_ty, &v));
            cond = format!("{key} > {}", db::param_expr(d, 1, key_col));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {cond}{} ORDER BY {key} LIMIT {LIST_PAGE}",
            db::select_expr(d, &t.key, key_col),
            t.qualified(d),
            Self::alive(d, t)
        );
        let names = [t.key.as_str()];
        let rows = self
            .rows(&sql, binds, &names, &shape.fields)
            .await
            .map_err(|e| PullError::Service(format!("{}: {}", self.who(t), db::describe(&e))))?;
        let next = (rows.len() == LIST_PAGE)
            .then(|| {
                rows.last()
                    .and_then(|r| r.get(&t.key))
                    .map(Value::to_string)
            })
            .flatten();
        let ids = rows.iter().map(|r| id_text(r.get(&t.key))).collect();
        Ok((ids, next))
    }

    async fn read_records(
        &self,
        sync: &Sync,
        plan: &Plan,
        _memory: &dyn Memory,
        external_ids: &[String],
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        let shape = shape(plan, sync).map_err(PullError::Service)?;
        let cols = self
            .columns(&shape.table)
            .await
            .map_err(PullError::Service)?;
        let rows = self
            .rows_by_keys(&shape, &cols, external_ids)
            .await
            .map_err(PullError::Service)?;
        let t = &shape.table;
        let out = rows
            .into_iter()
            .map(|values| Pulled {
                action: PullAction::Update,
                external_id: Some(id_text(values.get(&t.key))),
                values,
                modified_at: None,
                label: None,
            })
            .collect();
        Ok(Some(out))
    }

    async fn search(
        &self,
        sync: &Sync,
        plan: &Plan,
        _memory: &dyn Memory,
        criteria: &Map<String, Value>,
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        let shape = shape(plan, sync).map_err(PullError::Service)?;
        let t = &shape.table;
        let mut columns = Vec::new();
        for (local, v) in criteria {
            match plain_field(sync, local).filter(|c| t.columns.iter().any(|x| x == c)) {
                Some(c) => columns.push((c.to_string(), v.clone())),
                None => return Ok(None),
            }
        }
        if columns.is_empty() {
            return Ok(None);
        }
        let cols = self.columns(t).await.map_err(PullError::Service)?;
        let pool = self.pool().map_err(PullError::Service)?;
        let d = pool.dialect();
        let mut binds = Vec::new();
        let mut conds = Vec::new();
        for (i, (c, v)) in columns.iter().enumerate() {
            binds.push(db::bind_of(d, shape.fields.get(c), v));
            conds.push(format!(
                "{} = {}",
                d.quote(c),
                db::param_expr(d, i + 1, cols.get(c))
            ));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {}{} LIMIT 10",
            self.select_list(d, t, &cols),
            t.qualified(d),
            conds.join(" AND "),
            Self::alive(d, t)
        );
        let names: Vec<&str> = t.columns.iter().map(String::as_str).collect();
        let rows = self
            .rows(&sql, binds, &names, &shape.fields)
            .await
            .map_err(|e| PullError::Service(format!("{}: {}", self.who(t), db::describe(&e))))?;
        Ok(Some(
            rows.into_iter()
                .map(|values| Pulled {
                    action: PullAction::Update,
                    external_id: Some(id_text(values.get(&t.key))),
                    values,
                    modified_at: None,
                    label: None,
                })
                .collect(),
        ))
    }

    /// The database answers, and each table a sync of this web service uses is there with
    /// its declared columns, of types that fit, with the privileges the sync needs.
    async fn check(&self, plan: &Plan) -> Result<String, String> {
        catalog::check(self, plan).await
    }

    /// A table's `external_models` block, from the catalog.
    async fn describe(&self, _plan: &Plan, resource: Option<&str>) -> Result<String, PullError> {
        catalog::describe(self, resource).await
    }
}

impl SqlConnector {
    /// The rows with these keys as they are now (soft-deleted ones left out).
    async fn rows_by_keys(
        &self,
        shape: &Shape,
        cols: &BTreeMap<String, Column>,
        keys: &[String],
    ) -> Result<Vec<Map<String, Value>>, String> {
        let t = &shape.table;
        let pool = self.pool()?;
        let d = pool.dialect();
        let key_ty = shape.fields.get(&t.key);
        let names: Vec<&str> = t.columns.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        if let (Pool::Pg(p), Some(kt)) = (pool, cols.get(&t.key).map(|c| &c.sql_type))
            && db::castable(kt)
        {
            // One statement per 5,000 keys: the keys as a text array cast to the key's type.
            for chunk in keys.chunks(5000) {
                let sql = format!(
                    "SELECT {} FROM {} WHERE {} = ANY(CAST($1::text[] AS {kt}[])){}",
                    self.select_list(d, t, cols),
                    t.qualified(d),
                    d.quote(&t.key),
                    Self::alive(d, t)
                );
                let q = sqlx::query(&sql).bind(chunk.to_vec());
                let rows = q
                    .fetch_all(p)
                    .await
                    .map_err(|e| format!("{}: {}", self.who(t), db::describe(&e)))?;
                for row in rows {
                    let raws = (0..names.len())
                        .map(|i| db::pg_raw(&row, i))
                        .collect::<Result<Vec<Raw>, _>>()
                        .map_err(|e| format!("{}: {}", self.who(t), db::describe(&e)))?;
                    out.push(db::record(&names, &shape.fields, raws));
                }
            }
            return Ok(out);
        }
        for chunk in keys.chunks(500) {
            let binds: Vec<Bind> = chunk
                .iter()
                .map(|id| db::bind_of(d, key_ty, &Value::String(id.clone())))
                .collect();
            let params: Vec<String> = (1..=chunk.len())
                .map(|i| db::param_expr(d, i, cols.get(&t.key)))
                .collect();
            let sql = format!(
                "SELECT {} FROM {} WHERE {} IN ({}){}",
                self.select_list(d, t, cols),
                t.qualified(d),
                d.quote(&t.key),
                params.join(", "),
                Self::alive(d, t)
            );
            let rows = self
                .rows(&sql, binds, &names, &shape.fields)
                .await
                .map_err(|e| format!("{}: {}", self.who(t), db::describe(&e)))?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Runs a statement that returns no rows.
    async fn execute(&self, sql: &str, binds: Vec<Bind>) -> Result<u64, sqlx::Error> {
        let pool = self.pool().map_err(unconfigured)?;
        Ok(match pool {
            Pool::Pg(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.put(b);
                }
                q.execute(p).await?.rows_affected()
            }
            Pool::My(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.put(b);
                }
                q.execute(p).await?.rows_affected()
            }
            Pool::Lite(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.put(b);
                }
                q.execute(p).await?.rows_affected()
            }
        })
    }

    /// An insert or a delete, committed with those of concurrent sends (`group.rs`).
    async fn write(&self, w: group::Write) -> Result<Option<String>, sqlx::Error> {
        let pool = self.pool().map_err(unconfigured)?;
        self.groups.run(pool, self.service.max_concurrency, w).await
    }

    /// An update of one row in a transaction that first locks it (`FOR UPDATE` on
    /// PostgreSQL; SQLite's write transaction takes the database). False when the row is gone.
    async fn update_locked(
        &self,
        lock: &str,
        update: &str,
        key: Bind,
        binds: Vec<Bind>,
    ) -> Result<bool, sqlx::Error> {
        let pool = self.pool().map_err(unconfigured)?;
        match pool {
            Pool::Pg(p) => {
                let mut tx = p.begin().await?;
                let found = sqlx::query(lock).put(key).fetch_optional(&mut *tx).await?;
                if found.is_none() {
                    return Ok(false);
                }
                let mut q = sqlx::query(update);
                for b in binds {
                    q = q.put(b);
                }
                q.execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(true)
            }
            Pool::My(p) => {
                let mut tx = p.begin().await?;
                let found = sqlx::query(lock).put(key).fetch_optional(&mut *tx).await?;
                if found.is_none() {
                    return Ok(false);
                }
                let mut q = sqlx::query(update);
                for b in binds {
                    q = q.put(b);
                }
                q.execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(true)
            }
            Pool::Lite(p) => {
                let mut q = sqlx::query(update);
                for b in binds {
                    q = q.put(b);
                }
                Ok(q.execute(p).await?.rows_affected() > 0)
            }
        }
    }
}
