//! The compiled settings of a database (`kind = "sql"`) and of one of its tables.

use crate::connectors::transport::location;
use crate::domain::plan::{ConfigStr, ModelSettings, ServiceSettings};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Which database speaks behind the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    /// MySQL and MariaDB.
    MySql,
    Sqlite,
}

impl Dialect {
    /// The dialect of a database URL, by its scheme.
    pub fn of_url(url: &str) -> Option<Dialect> {
        let scheme = url.split_once("://")?.0;
        match scheme {
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            "sqlite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }

    /// An identifier quoted for the dialect. Identifiers come only from the configuration,
    /// checked to be plain names when it was compiled; quoting keeps reserved words and case.
    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql => format!("`{}`", ident.replace('`', "``")),
            _ => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    /// The `n`-th bind parameter (from 1).
    pub fn param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql => "?".to_string(),
            Dialect::Sqlite => format!("?{n}"),
        }
    }
}

/// A database reached through its URL.
#[derive(Debug, Clone)]
pub struct SqlService {
    /// The database URL (`postgres://`, `mysql://`, `sqlite://`); its password is a secret.
    pub url: ConfigStr,
    pub dialect: Dialect,
    /// Connections to the database, all syncs together.
    pub max_concurrency: usize,
    /// How long one statement may take.
    pub timeout: Duration,
}

/// How a table's changes are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// A watermark on `cursor` (or the whole table without one), read by keyset pages.
    Poll,
    /// PostgreSQL's logical decoding: a replication slot of recsync's own.
    Logical,
}

impl Capture {
    pub fn parse(s: &str) -> Option<Capture> {
        match s {
            "poll" => Some(Capture::Poll),
            "logical" => Some(Capture::Logical),
            _ => None,
        }
    }
}

/// A table as an external model.
#[derive(Debug, Clone)]
pub struct SqlTable {
    /// The schema, when the table is written `schema.table`.
    pub schema: Option<String>,
    pub table: String,
    /// The primary key column: the external id.
    pub key: String,
    /// The watermark column: a timestamp or an always-increasing number.
    pub cursor: Option<String>,
    /// Whether the watermark is a timestamp (else a number).
    pub cursor_is_time: bool,
    /// How far behind the watermark each pull reads again (timestamps only).
    pub overlap: Duration,
    /// A soft delete: a non-null value in this column means the row is deleted.
    pub deleted: Option<String>,
    pub capture: Capture,
    /// The declared columns, in order (the key among them).
    pub columns: Vec<String>,
}

impl SqlTable {
    /// The table's name as the dialect writes it, quoted.
    pub fn qualified(&self, dialect: Dialect) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", dialect.quote(s), dialect.quote(&self.table)),
            None => dialect.quote(&self.table),
        }
    }

    /// `schema.table` or `table`, for messages.
    pub fn shown(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

impl ModelSettings for SqlTable {}

impl ServiceSettings for SqlService {
    fn secrets(&self) -> Vec<String> {
        let mut values = Vec::new();
        if self.url.is_secret() {
            values.push(self.url.expose().to_string());
        }
        if let Ok(u) = url::Url::parse(self.url.expose())
            && let Some(p) = u.password()
        {
            values.push(p.to_string());
        }
        values
    }

    fn shown(&self) -> Map<String, Value> {
        let shown = json!({
            "url": location(&self.url),
            "dialect": self.dialect.as_str(),
            "max_concurrency": self.max_concurrency,
            "timeout_ms": self.timeout.as_millis() as u64,
        });
        shown.as_object().cloned().unwrap_or_default()
    }
}

/// Whether a name may be a table, schema or column: a letter or `_`, then letters, digits and
/// `_`, at most 63 characters (PostgreSQL's limit). Nothing else reaches SQL text.
pub fn plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_identifiers() {
        for ok in ["customers", "_x", "Cust_ID2"] {
            assert!(plain_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a b",
            "a;drop table x",
            "a\"b",
            "é",
            "x.y",
            &"a".repeat(64),
        ] {
            assert!(!plain_identifier(bad), "{bad}");
        }
        assert_eq!(Dialect::Postgres.quote("order"), "\"order\"");
        assert_eq!(
            Dialect::of_url("postgresql://h/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(Dialect::of_url("sqlite://x.db"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::of_url("mariadb://h/db"), Some(Dialect::MySql));
        assert_eq!(Dialect::MySql.quote("order"), "`order`");
        assert_eq!(Dialect::of_url("http://x"), None);
    }
}
