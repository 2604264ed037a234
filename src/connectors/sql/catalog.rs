//! What the database's catalog says of a table: `validate --online` (the table, its columns,
//! their types and the privileges a sync needs) and `recsync discover <web_service> <table>`.

use super::db::{self, Column, Pool};
use super::spec::{Capture, Dialect, SqlTable, plain_identifier};
use super::{SqlConnector, shape};
use crate::connectors::PullError;
use crate::domain::Plan;
use crate::domain::value::FieldType;
use sqlx::Row;
use std::collections::BTreeMap;

/// The recsync type a column's SQL type reads as, and a note for the block.
pub(super) fn suggested(d: Dialect, sql_type: &str) -> (&'static str, Option<&'static str>) {
    let t = sql_type.to_ascii_lowercase();
    let has = |w: &str| t.contains(w);
    match d {
        Dialect::Postgres => match t.as_str() {
            "smallint" | "integer" | "bigint" => ("integer", None),
            "real" | "double precision" => ("float", None),
            "boolean" => ("boolean", None),
            "date" => ("date", None),
            "json" | "jsonb" => ("json", None),
            "bytea" => ("binary", None),
            "text" => ("text", None),
            _ if has("timestamp") => ("datetime", None),
            _ if has("numeric") || has("decimal") || t == "money" => {
                ("char", Some("exact: a numeric is kept as text"))
            }
            _ => ("char", None),
        },
        Dialect::MySql => {
            if t == "tinyint(1)" || t.starts_with("bool") {
                ("boolean", None)
            } else if has("int") {
                ("integer", None)
            } else if has("decimal") || has("numeric") {
                ("char", Some("exact: a decimal is kept as text"))
            } else if has("float") || has("double") || has("real") {
                ("float", None)
            } else if has("datetime") || has("timestamp") {
                ("datetime", None)
            } else if t == "date" {
                ("date", None)
            } else if t == "json" {
                ("json", None)
            } else if has("blob") || has("binary") {
                ("binary", None)
            } else if has("text") {
                ("text", None)
            } else {
                ("char", None)
            }
        }
        // SQLite's type affinity rules.
        Dialect::Sqlite => {
            if has("int") {
                ("integer", None)
            } else if has("bool") {
                ("boolean", None)
            } else if has("char") || has("clob") || has("text") {
                ("char", None)
            } else if has("blob") || t.is_empty() {
                ("binary", None)
            } else if has("real") || has("floa") || has("doub") {
                ("float", None)
            } else if has("datetime") || has("timestamp") {
                ("datetime", None)
            } else if has("date") {
                ("date", None)
            } else if has("json") {
                ("json", None)
            } else {
                ("char", Some("exact: a numeric is kept as text"))
            }
        }
    }
}

/// Whether a declared field can hold a column's values. Text holds anything (read as text);
/// SQLite's types are only advice, so only PostgreSQL's are held to it.
pub(super) fn fits(d: Dialect, ty: &FieldType, sql_type: &str) -> bool {
    if d == Dialect::Sqlite {
        return true;
    }
    let (suggested, _) = suggested(d, sql_type);
    match ty {
        FieldType::Char | FieldType::Text | FieldType::Selection(_) => true,
        FieldType::Integer => suggested == "integer",
        FieldType::Float => {
            matches!(suggested, "float" | "integer") || sql_type.contains("numeric")
        }
        FieldType::Boolean => suggested == "boolean",
        FieldType::Date => matches!(suggested, "date" | "datetime"),
        FieldType::Datetime => matches!(suggested, "datetime" | "date"),
        // MariaDB's JSON is a LONGTEXT with a check.
        FieldType::Json => {
            suggested == "json" || (d == Dialect::MySql && matches!(suggested, "text" | "char"))
        }
        FieldType::Binary => suggested == "binary",
        FieldType::Many2one(_) | FieldType::One2many(_) | FieldType::Many2many(_) => false,
    }
}

/// The primary key's columns.
async fn primary_key(pool: &Pool, t: &SqlTable) -> Result<Vec<String>, sqlx::Error> {
    Ok(match pool {
        Pool::Pg(p) => sqlx::query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
        )
        .bind(t.qualified(Dialect::Postgres))
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect(),
        Pool::My(p) => sqlx::query(
            "SELECT CAST(column_name AS CHAR) FROM information_schema.key_column_usage \
             WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? \
             AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
        )
        .bind(t.schema.as_deref())
        .bind(&t.table)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect(),
        Pool::Lite(p) => {
            sqlx::query("SELECT name FROM pragma_table_info(?1, ?2) WHERE pk > 0 ORDER BY pk")
                .bind(&t.table)
                .bind(t.schema.as_deref().unwrap_or("main"))
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect()
        }
    })
}

/// The privileges on the table a sync needs and the connection's user lacks (PostgreSQL,
/// MySQL and MariaDB; a SQLite file has no users).
async fn missing_privileges(
    pool: &Pool,
    t: &SqlTable,
    needed: &[&'static str],
) -> Result<Vec<&'static str>, sqlx::Error> {
    let mut missing = Vec::new();
    match pool {
        Pool::Pg(p) => {
            for privilege in needed {
                let has: bool =
                    sqlx::query_scalar("SELECT has_table_privilege(to_regclass($1), $2)")
                        .bind(t.qualified(Dialect::Postgres))
                        .bind(*privilege)
                        .fetch_one(p)
                        .await?;
                if !has {
                    missing.push(*privilege);
                }
            }
        }
        Pool::My(p) => {
            // What the user holds on every database, on the table's database and on the
            // table; information_schema names the user `'name'@'host'`.
            let user: String = sqlx::query_scalar("SELECT CAST(CURRENT_USER() AS CHAR)")
                .fetch_one(p)
                .await?;
            let grantee = match user.rsplit_once('@') {
                Some((name, host)) => format!("'{name}'@'{host}'"),
                None => format!("'{user}'"),
            };
            let held: Vec<String> = sqlx::query_scalar(
                "SELECT CAST(PRIVILEGE_TYPE AS CHAR) FROM information_schema.USER_PRIVILEGES \
                  WHERE GRANTEE = ? \
                 UNION SELECT CAST(PRIVILEGE_TYPE AS CHAR) FROM information_schema.SCHEMA_PRIVILEGES \
                  WHERE GRANTEE = ? AND TABLE_SCHEMA = COALESCE(?, DATABASE()) \
                 UNION SELECT CAST(PRIVILEGE_TYPE AS CHAR) FROM information_schema.TABLE_PRIVILEGES \
                  WHERE GRANTEE = ? AND TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
            )
            .bind(&grantee)
            .bind(&grantee)
            .bind(t.schema.as_deref())
            .bind(&grantee)
            .bind(t.schema.as_deref())
            .bind(&t.table)
            .fetch_all(p)
            .await?;
            missing.extend(
                needed
                    .iter()
                    .filter(|n| !held.iter().any(|h| h.eq_ignore_ascii_case(n))),
            );
        }
        Pool::Lite(_) => {}
    }
    Ok(missing)
}

/// What stands in the way of a logical capture: `wal_level`, the REPLICATION attribute, a
/// slot holding back too much WAL.
async fn logical_problems(p: &sqlx::PgPool, slot: &str) -> Result<Vec<String>, sqlx::Error> {
    let mut out = Vec::new();
    let level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(p)
        .await?;
    if level != "logical" {
        out.push(format!(
            "wal_level is `{level}`; capture = \"logical\" needs wal_level = logical (postgresql.conf, then a restart)"
        ));
    }
    let may: bool = sqlx::query_scalar(
        "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(p)
    .await?;
    if !may {
        out.push(
            "the database's user lacks the REPLICATION attribute a logical capture's slot needs (ALTER ROLE ... REPLICATION)"
                .into(),
        );
    }
    if let Some(held) = super::logical::held_bytes(p, slot).await?
        && held > super::logical::HELD_WARNING
    {
        out.push(format!(
            "the replication slot `{slot}` holds back {} MiB of WAL: run the sync more often, or drop the slot if the sync is gone",
            held >> 20
        ));
    }
    Ok(out)
}

/// `validate --online` for an `sql` web service.
pub(super) async fn check(conn: &SqlConnector, plan: &Plan) -> Result<String, String> {
    let started = std::time::Instant::now();
    let pool = conn.pool()?;
    let d = pool.dialect();
    let origin = crate::connectors::transport::location(&conn.service.url);
    conn.execute("SELECT 1", Vec::new())
        .await
        .map_err(|e| format!("{origin}: {}", db::describe(&e)))?;
    let mut problems = Vec::new();
    let mut tables = Vec::new();
    for sync in plan.syncs.values().filter(|s| s.web_service == conn.name) {
        let Ok(shape) = shape(plan, sync) else {
            continue;
        };
        let t = &shape.table;
        let cols: BTreeMap<String, Column> = match db::columns(pool, t).await {
            Err(e) => {
                problems.push(format!("table `{}`: {}", t.shown(), db::describe(&e)));
                continue;
            }
            Ok(c) if c.is_empty() => {
                problems.push(format!("table `{}` does not exist", t.shown()));
                continue;
            }
            Ok(c) => c,
        };
        for c in t.columns.iter().chain(t.deleted.iter()) {
            match cols.get(c) {
                None => problems.push(format!("table `{}` has no column `{c}`", t.shown())),
                Some(col) => {
                    if let Some(ty) = shape.fields.get(c)
                        && !fits(d, ty, &col.sql_type)
                    {
                        problems.push(format!(
                            "column `{c}` of `{}` is {}, which a field of type {ty} cannot hold (declare it \"{}\")",
                            t.shown(),
                            col.sql_type,
                            suggested(d, &col.sql_type).0
                        ));
                    }
                }
            }
        }
        let mut needed = Vec::new();
        if sync.direction.to_local() {
            needed.push("SELECT");
        }
        if sync.direction.to_external() {
            needed.extend(["SELECT", "INSERT", "UPDATE"]);
            if sync.propagate_deletes && t.deleted.is_none() {
                needed.push("DELETE");
            }
        }
        needed.dedup();
        if t.capture == Capture::Logical
            && let Pool::Pg(p) = pool
        {
            let slot = super::logical::slot_of(p, sync.code.as_str()).await;
            match async { logical_problems(p, &slot?).await }.await {
                Ok(found) => problems.extend(found),
                Err(e) => problems.push(format!("table `{}`: {}", t.shown(), db::describe(&e))),
            }
        }
        match missing_privileges(pool, t, &needed).await {
            Ok(m) if !m.is_empty() => problems.push(format!(
                "sync `{}` needs {} on `{}`, which the database's user lacks",
                sync.code,
                m.join(", "),
                t.shown()
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("table `{}`: {}", t.shown(), db::describe(&e))),
        }
        tables.push(t.shown());
    }
    problems.dedup();
    if !problems.is_empty() {
        return Err(format!("{origin}: {}", problems.join("; ")));
    }
    tables.sort();
    tables.dedup();
    Ok(format!(
        "{origin} answered ({}{}) in {} ms",
        d.as_str(),
        if tables.is_empty() {
            String::new()
        } else {
            format!("; tables {} checked", tables.join(", "))
        },
        started.elapsed().as_millis()
    ))
}

/// `recsync discover <web_service> <table>`: the table's block, from the catalog.
pub(super) async fn describe(
    conn: &SqlConnector,
    resource: Option<&str>,
) -> Result<String, PullError> {
    let Some(name) = resource else {
        return Err(PullError::Service(
            "name the table to describe, such as `customers` or `crm.customers`".into(),
        ));
    };
    let (schema, table) = match name.split_once('.') {
        Some((a, b)) => (Some(a), b),
        None => (None, name),
    };
    if !schema.is_none_or(plain_identifier) || !plain_identifier(table) {
        return Err(PullError::Service(format!(
            "`{name}` is not a plain table name (letters, digits and `_`)"
        )));
    }
    let t = SqlTable {
        schema: schema.map(str::to_string),
        table: table.to_string(),
        key: String::new(),
        cursor: None,
        cursor_is_time: false,
        overlap: std::time::Duration::ZERO,
        deleted: None,
        capture: Capture::Poll,
        columns: Vec::new(),
    };
    let pool = conn.pool().map_err(PullError::Service)?;
    let d = pool.dialect();
    let fail =
        |e: sqlx::Error| PullError::Service(format!("{}: {}", conn.who(&t), db::describe(&e)));
    let cols = db::columns(pool, &t).await.map_err(fail)?;
    if cols.is_empty() {
        return Err(PullError::Service(format!(
            "{}: the table does not exist",
            conn.who(&t)
        )));
    }
    let key = primary_key(pool, &t).await.map_err(fail)?;
    let mut ordered: Vec<&String> = cols.keys().collect();
    ordered.sort_by_key(|c| cols[*c].position);
    let model: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut out = format!("[external_models.{model}]\nkind = \"sql\"\ntable = \"{name}\"\n");
    match key.as_slice() {
        [k] => out.push_str(&format!("key = \"{k}\"\n")),
        [] => {
            out.push_str("# key = \"...\"   # the table has no primary key: name a unique column\n")
        }
        _ => out.push_str(&format!(
            "# key = \"...\"   # the primary key has several columns ({}): name a unique one\n",
            key.join(", ")
        )),
    }
    // The names a cursor column usually has.
    let cursor_name = |c: &str| {
        matches!(
            c,
            "updated_at" | "modified_at" | "write_date" | "last_modified" | "updated" | "modified"
        )
    };
    // SQLite has no time type: an application keeps its times as text (ISO 8601), so a text
    // column named as a time is offered as one (and as the cursor).
    let of = |c: &str| {
        let (ty, note) = suggested(d, &cols[c].sql_type);
        if d == Dialect::Sqlite && ty == "char" && (cursor_name(c) || c.ends_with("_at")) {
            (
                "datetime",
                Some("SQLite keeps times as text; read as ISO 8601 date-times"),
            )
        } else {
            (ty, note)
        }
    };
    let cursor = ordered
        .iter()
        .copied()
        .find(|c| cursor_name(c) && of(c).0 == "datetime");
    match cursor {
        Some(c) => out.push_str(&format!("cursor = \"{c}\"\n")),
        None => out.push_str(
            "# cursor = \"...\"   # a column every change moves forward; without one, every run reads the whole table\n",
        ),
    }
    out.push_str(&format!("\n[external_models.{model}.fields]\n"));
    for c in ordered {
        let (ty, note) = of(c);
        match note {
            Some(n) => out.push_str(&format!("{c} = \"{ty}\"   # {}: {n}\n", cols[c].sql_type)),
            None => out.push_str(&format!("{c} = \"{ty}\"\n")),
        }
    }
    Ok(out)
}
