//! The database under an `sql` web service: one pool per web service, the table's columns from
//! the catalog, and values to and from SQL. Every value is a bound parameter; the only names
//! in SQL text are the configuration's identifiers, quoted, and type names the catalog gave.
//!
//! PostgreSQL values travel as text both ways: read with `::text` (exact for numerics, big
//! integers and timestamps), written as text cast to the column's own type
//! (`CAST($1 AS numeric(12,2))`). SQLite values keep their storage class.

use super::spec::{Dialect, SqlService, SqlTable};
use crate::connectors::Failure;
use crate::domain::value::{FieldType, format_datetime, parse_datetime};
use base64::Engine as _;
use serde_json::{Map, Value};
use sqlx::{Row, TypeInfo, ValueRef};
use std::collections::BTreeMap;
use std::time::Duration;

/// A pool per web service.
#[derive(Clone)]
pub(super) enum Pool {
    Pg(sqlx::PgPool),
    My(sqlx::MySqlPool),
    Lite(sqlx::SqlitePool),
}

impl Pool {
    /// Connects lazily: the first statement opens a connection.
    pub(super) fn new(service: &SqlService) -> Result<Pool, String> {
        let url = service.url.expose();
        Ok(match service.dialect {
            Dialect::Postgres => {
                let o: sqlx::postgres::PgConnectOptions =
                    url.parse().map_err(|e: sqlx::Error| describe(&e))?;
                let o = o.statement_cache_capacity(64).options([(
                    "statement_timeout",
                    &service.timeout.as_millis().to_string(),
                )]);
                Pool::Pg(options(service).connect_lazy_with(o))
            }
            Dialect::MySql => {
                // `mariadb://` is MySQL's protocol.
                let url = url.replacen("mariadb://", "mysql://", 1);
                let o: sqlx::mysql::MySqlConnectOptions =
                    url.parse().map_err(|e: sqlx::Error| describe(&e))?;
                // Timestamps are read and written at UTC.
                let o = o.timezone(Some("+00:00".to_string()));
                Pool::My(options(service).connect_lazy_with(o))
            }
            Dialect::Sqlite => {
                let o: sqlx::sqlite::SqliteConnectOptions =
                    url.parse().map_err(|e: sqlx::Error| describe(&e))?;
                let o = o.busy_timeout(service.timeout);
                Pool::Lite(options(service).connect_lazy_with(o))
            }
        })
    }

    pub(super) fn dialect(&self) -> Dialect {
        match self {
            Pool::Pg(_) => Dialect::Postgres,
            Pool::My(_) => Dialect::MySql,
            Pool::Lite(_) => Dialect::Sqlite,
        }
    }
}

/// The pool's limits, for either database.
fn options<DB: sqlx::Database>(service: &SqlService) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(service.max_concurrency as u32)
        .acquire_timeout(service.timeout)
        .idle_timeout(Some(Duration::from_secs(60)))
}

/// An error of the database, in one sentence without secrets (sqlx never prints the URL's
/// password; the text is the server's).
pub(super) fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::PoolTimedOut => "no connection to the database in time".into(),
        sqlx::Error::Io(io) => format!("the database could not be reached: {io}"),
        other => other.to_string(),
    }
}

/// A failure of a statement, typed for the engine: a constraint the row breaks is the row's
/// problem (`Invalid`, naming the column where the server does), a lost connection or a
/// serialization failure is `Transient`.
pub(super) fn failure(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.to_string()).unwrap_or_default();
            let message = d.message().to_string();
            // PostgreSQL's class 23 (integrity) and 22 (data); SQLite's constraint codes.
            if code.starts_with("23") || code.starts_with("22") || d.is_unique_violation() {
                Failure::Invalid {
                    field: d.constraint().map(str::to_string),
                    message,
                }
            } else if ["40001", "40P01", "5", "517"].contains(&code.as_str()) {
                Failure::transient(message)
            } else {
                Failure::permanent(message)
            }
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            Failure::transient(describe(e))
        }
        other => Failure::permanent(other.to_string()),
    }
}

/// One column of a table, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Column {
    /// PostgreSQL: `format_type` (`numeric(12,2)`, `timestamp with time zone`); SQLite: the
    /// declared type (`INTEGER`, `TEXT`, ...).
    pub sql_type: String,
    pub not_null: bool,
    /// Its place in the table, from 0.
    pub position: usize,
}

/// The columns of a table, by name; empty when the table does not exist.
pub(super) async fn columns(
    pool: &Pool,
    t: &SqlTable,
) -> Result<BTreeMap<String, Column>, sqlx::Error> {
    let mut out = BTreeMap::new();
    match pool {
        Pool::Pg(p) => {
            let name = t.qualified(Dialect::Postgres);
            let rows = sqlx::query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            )
            .bind(name)
            .fetch_all(p)
            .await?;
            for (position, r) in rows.iter().enumerate() {
                out.insert(
                    r.try_get::<String, _>(0)?,
                    Column {
                        sql_type: r.try_get(1)?,
                        not_null: r.try_get(2)?,
                        position,
                    },
                );
            }
        }
        Pool::My(p) => {
            let rows = sqlx::query(
                "SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR), \
                 CAST(is_nullable = 'NO' AS SIGNED) FROM information_schema.columns \
                 WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? \
                 ORDER BY ordinal_position",
            )
            .bind(t.schema.as_deref())
            .bind(&t.table)
            .fetch_all(p)
            .await?;
            for (position, r) in rows.iter().enumerate() {
                out.insert(
                    r.try_get::<String, _>(0)?,
                    Column {
                        sql_type: r.try_get(1)?,
                        not_null: r.try_get::<i64, _>(2)? != 0,
                        position,
                    },
                );
            }
        }
        Pool::Lite(p) => {
            let rows = sqlx::query(
                "SELECT name, type, \"notnull\" FROM pragma_table_info(?1, ?2) ORDER BY cid",
            )
            .bind(&t.table)
            .bind(t.schema.as_deref().unwrap_or("main"))
            .fetch_all(p)
            .await?;
            for (position, r) in rows.iter().enumerate() {
                out.insert(
                    r.try_get::<String, _>(0)?,
                    Column {
                        sql_type: r.try_get(1)?,
                        not_null: r.try_get::<i64, _>(2)? != 0,
                        position,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// Whether a catalog type name may be written in a cast: the catalog's own words and
/// modifiers, nothing that could end the expression.
pub(super) fn castable(sql_type: &str) -> bool {
    !sql_type.is_empty()
        && sql_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _(),[]".contains(c))
}

/// The select expression of a column: PostgreSQL reads it as text (timestamps with a time zone
/// at UTC), SQLite as it is stored.
pub(super) fn select_expr(d: Dialect, name: &str, col: Option<&Column>) -> String {
    let q = d.quote(name);
    match d {
        Dialect::Postgres => match col.map(|c| c.sql_type.as_str()) {
            Some("timestamp with time zone") => format!("({q} AT TIME ZONE 'UTC')::text"),
            _ => format!("{q}::text"),
        },
        // Bytes as PostgreSQL's hex form, everything else as MySQL prints it.
        Dialect::MySql => match col.map(|c| c.sql_type.to_ascii_lowercase()) {
            Some(t) if t.contains("blob") || t.contains("binary") => {
                format!("CONCAT('\\\\x', HEX({q}))")
            }
            _ => format!("CAST({q} AS CHAR)"),
        },
        Dialect::Sqlite => q,
    }
}

/// A bound parameter, cast to the column's type where the dialect needs it.
pub(super) fn param_expr(d: Dialect, n: usize, col: Option<&Column>) -> String {
    let p = d.param(n);
    match (d, col) {
        (Dialect::Postgres, Some(c)) if castable(&c.sql_type) => {
            format!("CAST({p} AS {})", c.sql_type)
        }
        (Dialect::Postgres, _) => format!("{p}::text"),
        (Dialect::MySql | Dialect::Sqlite, _) => p,
    }
}

/// A value ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bind {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// How a value of a field is bound: PostgreSQL takes text (cast in SQL), SQLite the storage
/// class the field's type suggests.
pub(super) fn bind_of(d: Dialect, ty: Option<&FieldType>, v: &Value) -> Bind {
    match (d, v) {
        (_, Value::Null) => Bind::Null,
        (Dialect::Postgres, Value::String(s)) => match ty {
            Some(FieldType::Binary) => match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(bytes) => Bind::Text(format!("\\x{}", hex::encode(bytes))),
                Err(_) => Bind::Text(s.clone()),
            },
            _ => Bind::Text(s.clone()),
        },
        (Dialect::Postgres, other) => Bind::Text(other.to_string()),
        (Dialect::MySql, Value::Bool(b)) => Bind::Int(*b as i64),
        (Dialect::MySql, Value::Number(n)) => match n.as_i64() {
            Some(i) => Bind::Int(i),
            None => Bind::Text(n.to_string()),
        },
        // MySQL's DATETIME takes `YYYY-MM-DD HH:MM:SS.ffffff`, at UTC here.
        (Dialect::MySql, Value::String(s)) => match ty {
            Some(FieldType::Datetime) => match parse_datetime(s) {
                Ok(d) => Bind::Text(d.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
                Err(_) => Bind::Text(s.clone()),
            },
            Some(FieldType::Binary) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bind::Bytes)
                .unwrap_or(Bind::Text(s.clone())),
            _ => Bind::Text(s.clone()),
        },
        (Dialect::MySql, other) => Bind::Text(other.to_string()),
        (Dialect::Sqlite, Value::Bool(b)) => Bind::Int(*b as i64),
        (Dialect::Sqlite, Value::Number(n)) => match n.as_i64() {
            Some(i) => Bind::Int(i),
            None => Bind::Float(n.as_f64().unwrap_or(0.0)),
        },
        (Dialect::Sqlite, Value::String(s)) => match ty {
            Some(FieldType::Integer) => s.parse().map(Bind::Int).unwrap_or(Bind::Text(s.clone())),
            Some(FieldType::Binary) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bind::Bytes)
                .unwrap_or(Bind::Text(s.clone())),
            _ => Bind::Text(s.clone()),
        },
        (Dialect::Sqlite, other) => Bind::Text(other.to_string()),
    }
}

/// Binds one value onto a query of either dialect.
pub(super) trait Binder: Sized {
    fn put(self, b: Bind) -> Self;
}

impl<'q> Binder for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn put(self, b: Bind) -> Self {
        match b {
            Bind::Null => self.bind(None::<String>),
            Bind::Int(i) => self.bind(i.to_string()),
            Bind::Float(f) => self.bind(f.to_string()),
            Bind::Text(s) => self.bind(s),
            Bind::Bytes(b) => self.bind(format!("\\x{}", hex::encode(b))),
        }
    }
}

impl<'q> Binder for sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    fn put(self, b: Bind) -> Self {
        match b {
            Bind::Null => self.bind(None::<String>),
            Bind::Int(i) => self.bind(i),
            Bind::Float(f) => self.bind(f),
            Bind::Text(s) => self.bind(s),
            Bind::Bytes(b) => self.bind(b),
        }
    }
}

impl<'q> Binder for sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    fn put(self, b: Bind) -> Self {
        match b {
            Bind::Null => self.bind(None::<String>),
            Bind::Int(i) => self.bind(i),
            Bind::Float(f) => self.bind(f),
            Bind::Text(s) => self.bind(s),
            Bind::Bytes(b) => self.bind(b),
        }
    }
}

/// A value as read, made into the field's JSON: integers exactly (a number beyond 64 bits
/// stays a string), datetimes in RFC 3339 at UTC, JSON parsed, bytes in base64.
pub(super) fn to_json(ty: Option<&FieldType>, raw: Raw) -> Value {
    match raw {
        Raw::Null => Value::Null,
        Raw::Int(i) => match ty {
            Some(FieldType::Boolean) => Value::Bool(i != 0),
            Some(FieldType::Char | FieldType::Text) => Value::String(i.to_string()),
            _ => Value::from(i),
        },
        Raw::Float(f) => match ty {
            Some(FieldType::Char | FieldType::Text) => Value::String(f.to_string()),
            _ => Value::from(f),
        },
        Raw::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Raw::Text(s) => match ty {
            Some(FieldType::Integer) => match s.parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => Value::String(s),
            },
            Some(FieldType::Float) => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::from)
                .unwrap_or(Value::String(s)),
            Some(FieldType::Boolean) => match s.as_str() {
                "true" | "t" | "1" => Value::Bool(true),
                "false" | "f" | "0" => Value::Bool(false),
                _ => Value::String(s),
            },
            Some(FieldType::Datetime) => Value::String(datetime_text(&s).unwrap_or(s)),
            Some(FieldType::Json) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
            Some(FieldType::Binary) => match s.strip_prefix("\\x").map(hex::decode) {
                Some(Ok(bytes)) => {
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                _ => Value::String(s),
            },
            _ => Value::String(s),
        },
    }
}

/// A timestamp as a database writes it (`2026-01-02 03:04:05.678`, with or without a zone,
/// or RFC 3339), in RFC 3339 at UTC; a timestamp without a zone is taken as UTC.
pub(super) fn datetime_text(s: &str) -> Option<String> {
    if let Ok(d) = parse_datetime(s) {
        return Some(format_datetime(&d));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(s, f) {
            return Some(format_datetime(&d.with_timezone(&chrono::Utc)));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d"] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(format_datetime(&d.and_utc()));
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| format_datetime(&d.and_utc()))
}

/// A value as the driver gave it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Raw {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// The values of a PostgreSQL row read as text.
pub(super) fn pg_raw(row: &sqlx::postgres::PgRow, i: usize) -> Result<Raw, sqlx::Error> {
    Ok(match row.try_get::<Option<String>, _>(i)? {
        None => Raw::Null,
        Some(s) => Raw::Text(s),
    })
}

/// The values of a MySQL row read as text.
pub(super) fn my_raw(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<Raw, sqlx::Error> {
    Ok(match row.try_get::<Option<String>, _>(i)? {
        None => Raw::Null,
        Some(s) => Raw::Text(s),
    })
}

/// The values of a SQLite row, by storage class.
pub(super) fn lite_raw(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Raw, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Raw::Null);
    }
    let class = raw.type_info().name().to_string();
    Ok(match class.as_str() {
        "INTEGER" => Raw::Int(row.try_get(i)?),
        "REAL" => Raw::Float(row.try_get(i)?),
        "BLOB" => Raw::Bytes(row.try_get(i)?),
        _ => Raw::Text(row.try_get(i)?),
    })
}

/// A row made into the record's values, by the declared fields.
pub(super) fn record(
    names: &[&str],
    fields: &BTreeMap<String, FieldType>,
    raws: Vec<Raw>,
) -> Map<String, Value> {
    names
        .iter()
        .zip(raws)
        .map(|(n, r)| (n.to_string(), to_json(fields.get(*n), r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_exactly() {
        let big = Raw::Text("123456789012345678901234".into());
        assert_eq!(
            to_json(Some(&FieldType::Integer), big),
            Value::String("123456789012345678901234".into())
        );
        assert_eq!(
            to_json(
                Some(&FieldType::Integer),
                Raw::Text("9223372036854775807".into())
            ),
            Value::from(i64::MAX)
        );
        assert_eq!(
            to_json(Some(&FieldType::Char), Raw::Text("12.3400".into())),
            Value::String("12.3400".into())
        );
        assert_eq!(
            to_json(Some(&FieldType::Boolean), Raw::Int(1)),
            Value::Bool(true)
        );
        assert_eq!(
            datetime_text("2026-01-02 03:04:05.678").as_deref(),
            Some("2026-01-02T03:04:05.678Z")
        );
        assert_eq!(
            datetime_text("2026-01-02 03:04:05+02").as_deref(),
            Some("2026-01-02T01:04:05Z")
        );
        assert!(castable("numeric(12,2)"));
        assert!(castable("timestamp with time zone"));
        assert!(!castable("int); drop table x; --"));
    }
}
