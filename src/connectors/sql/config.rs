//! The configuration of the `sql` kind: a database reached by its URL, and external models
//! that are one of its tables (`table`, `key`, `cursor`, `overlap`, `deleted`, `capture`).
//! Table and column names must be plain identifiers: they are the only text of the
//! configuration that reaches SQL, quoted, and nothing else does.

use super::spec::{Capture, Dialect, SqlService, SqlTable, plain_identifier};
use crate::config::kit::*;
use crate::domain::plan::{ConfigStr, ExternalModel, ServiceSettings, WebService};
use crate::domain::value::FieldType;
use std::sync::Arc;
use std::time::Duration;

pub const SQL_KEYS: [&str; 6] = [
    "kind",
    "description",
    "url",
    "max_concurrency",
    "timeout",
    "active",
];
/// The keys of an `sql` external model.
pub const SQL_MODEL_KEYS: [&str; 6] = ["table", "key", "cursor", "overlap", "deleted", "capture"];
/// The keys of `deleted`.
pub const SQL_DELETED_KEYS: [&str; 1] = ["column"];

/// The `sql` kind.
pub struct Sql;

/// A database URL: `postgres://`, `postgresql://`, `mysql://`, `mariadb://` or `sqlite://`.
fn database_url(s: &Str<'_>, diags: &mut Diagnostics) -> Option<(ConfigStr, Dialect)> {
    match Dialect::of_url(s.value) {
        Some(d) => Some((cfg_str(s), d)),
        None => {
            diags.push(
                Diagnostic::error(
                    format!(
                        "invalid database URL for `url`: {} is not a postgres://, mysql:// or sqlite:// URL",
                        s.shown()
                    ),
                    s.span.clone(),
                    "not a database URL",
                )
                .with_help(
                    "for example postgres://user:${DB_PASSWORD}@host:5432/db, \
                     mysql://user:${DB_PASSWORD}@host:3306/db or sqlite://legacy.db",
                ),
            );
            None
        }
    }
}

/// A table, schema or column name: a plain identifier, or an error naming it.
fn identifier(what: &str, name: &str, span: &Span, diags: &mut Diagnostics) -> bool {
    if plain_identifier(name) {
        return true;
    }
    diags.push(
        Diagnostic::error(
            format!("`{name}` is not a plain {what} name"),
            span.clone(),
            "not an identifier",
        )
        .with_help(
            "use letters, digits and `_`, starting with a letter or `_` (at most 63); \
             names are quoted when sent, so reserved words and capitals are fine",
        ),
    );
    false
}

impl Kind for Sql {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn label(&self) -> &'static str {
        "SQL"
    }

    fn models_called(&self) -> &'static str {
        "external models of kind `sql`"
    }

    fn service_keys(&self) -> &'static [&'static str] {
        &SQL_KEYS
    }

    fn compile_service(
        &self,
        d: &Declared<'_>,
        diags: &mut Diagnostics,
    ) -> Option<Arc<dyn ServiceSettings>> {
        let t = d.table;
        let url = required_str(t, "url", &d.key.span, &d.what, diags)
            .and_then(|s| database_url(&s, diags));
        let max_concurrency = max_concurrency_of(t, 4, diags);
        let timeout = duration_of(t, "timeout", diags).unwrap_or(Duration::from_secs(30));
        let (url, dialect) = url?;
        Some(Arc::new(SqlService {
            url,
            dialect,
            max_concurrency,
            timeout,
        }))
    }

    fn model_keys(&self) -> &'static [&'static str] {
        &SQL_MODEL_KEYS
    }

    fn compile_model(&self, d: &Declared<'_>, diags: &mut Diagnostics) -> Option<CompiledModel> {
        let t = d.table;
        let fields = compile_plain_fields(t, diags);
        let mut ok = true;
        if entry(t, "fields").is_none() {
            diags.push(
                Diagnostic::error(
                    format!("external model `{}` has no `fields`", d.name()),
                    d.key.span.clone(),
                    "declare the table's columns",
                )
                .with_help("`recsync discover <web_service> <table>` prints them"),
            );
            ok = false;
        }
        if let Some((ft, _)) = table_of(t, "fields", diags) {
            for (k, _) in ft {
                ok &= identifier("column", &k.name, &k.span, diags);
            }
        }
        let table = required_str(t, "table", &d.key.span, &d.what, diags);
        let (schema, table) = match table {
            None => (None, None),
            Some(s) => {
                let (schema, name) = match s.value.split_once('.') {
                    Some((a, b)) => (Some(a), b),
                    None => (None, s.value),
                };
                let good = schema.is_none_or(|a| identifier("schema", a, &s.span, diags))
                    && identifier("table", name, &s.span, diags);
                ok &= good;
                (schema.map(str::to_string), Some(name.to_string()))
            }
        };
        // A column the table's own keys name must be declared, so its type is known.
        let mut column = |key: &str, diags: &mut Diagnostics| -> Option<(String, FieldType)> {
            let s = str_of(t, key, diags)?;
            match fields.get(s.value) {
                Some(ty) => Some((s.value.to_string(), ty.clone())),
                None => {
                    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                    diags.push(with_choices(
                        Diagnostic::error(
                            format!(
                                "`{key}` names `{}`, which is not one of the fields",
                                s.value
                            ),
                            s.span.clone(),
                            "not a declared column",
                        ),
                        s.value,
                        &names,
                    ));
                    ok = false;
                    None
                }
            }
        };
        let key = match column("key", diags) {
            Some((k, FieldType::Integer | FieldType::Char | FieldType::Text)) => Some(k),
            Some((k, ty)) => {
                let (_, item) = entry(t, "key").expect("read above");
                diags.push(Diagnostic::error(
                    format!("the key `{k}` is a {ty} field; a key is an integer or a text"),
                    item.span.clone(),
                    "not a key type",
                ));
                None
            }
            None => {
                if entry(t, "key").is_none() {
                    diags.push(
                        Diagnostic::error(
                            format!("{} needs `key`", d.what),
                            d.key.span.clone(),
                            "no key",
                        )
                        .with_help("name the primary key column: it is the external id"),
                    );
                }
                None
            }
        };
        let cursor = match column("cursor", diags) {
            Some((c, FieldType::Datetime)) => Some((c, true)),
            Some((c, FieldType::Integer)) => Some((c, false)),
            Some((c, ty)) => {
                let (_, item) = entry(t, "cursor").expect("read above");
                diags.push(Diagnostic::error(
                    format!(
                        "the cursor `{c}` is a {ty} field; a cursor is a datetime or an integer"
                    ),
                    item.span.clone(),
                    "not a watermark",
                ));
                None
            }
            None => None,
        };
        let overlap = duration_of(t, "overlap", diags).unwrap_or(Duration::from_secs(300));
        let deleted = table_of(t, "deleted", diags).and_then(|(dt, span)| {
            check_keys(dt, &SQL_DELETED_KEYS, diags);
            let c = required_str(dt, "column", &span, "`deleted`", diags)?;
            identifier("column", c.value, &c.span, diags).then(|| c.value.to_string())
        });
        let capture = enum_of(t, "capture", Capture::parse, &["poll", "logical"], diags)
            .flatten()
            .unwrap_or(Capture::Poll);
        let columns: Vec<String> = fields.keys().cloned().collect();
        if !ok {
            return None;
        }
        let (cursor, cursor_is_time) = match cursor {
            Some((c, time)) => (Some(c), time),
            None => (None, false),
        };
        Some(CompiledModel {
            fields,
            settings: Arc::new(SqlTable {
                schema,
                table: table?,
                key: key?,
                cursor,
                cursor_is_time,
                overlap,
                deleted,
                capture,
                columns,
            }),
        })
    }

    /// The key column.
    fn identity(&self, ext: &ExternalModel) -> Identity {
        match ext.settings::<SqlTable>() {
            Some(t) => Identity::Fixed(t.key.clone()),
            None => Identity::Required,
        }
    }

    fn takes_endpoints(&self) -> bool {
        false
    }

    /// A table with a `deleted` column archives by setting it.
    fn can_archive(&self, ext: Option<&ExternalModel>) -> bool {
        match ext {
            None => true,
            Some(e) => e
                .settings::<SqlTable>()
                .is_some_and(|t| t.deleted.is_some()),
        }
    }

    /// Keys are listed by keyset: every table can reconcile.
    fn cannot_reconcile(&self, _: &WebService, _: &ExternalModel) -> Option<(String, String)> {
        None
    }

    fn undeclared_name(&self, _: &ExternalModel, _: &Str<'_>, _: &mut Diagnostics) -> Option<bool> {
        None
    }

    fn reads_any_member(&self) -> bool {
        false
    }

    /// Logical capture needs PostgreSQL.
    fn check_sync(&self, s: &SyncCheck<'_>, diags: &mut Diagnostics) {
        let logical = s
            .external
            .and_then(|e| e.settings::<SqlTable>())
            .is_some_and(|t| t.capture == Capture::Logical);
        let dialect = s.web_service.settings::<SqlService>().map(|w| w.dialect);
        if logical && dialect.is_some_and(|d| d != Dialect::Postgres) {
            diags.push(
                Diagnostic::error(
                    format!(
                        "{} reads `{}` with capture = \"logical\", which needs PostgreSQL; web service `{}` is {}",
                        s.what,
                        s.external.map(|e| e.name.as_str()).unwrap_or(""),
                        s.web_service.name,
                        dialect.map(Dialect::as_str).unwrap_or("")
                    ),
                    s.span.clone(),
                    "not PostgreSQL",
                )
                .with_help("use capture = \"poll\" with a `cursor` column"),
            );
        }
    }
}
