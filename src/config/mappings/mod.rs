use super::diag::{Diagnostic, Diagnostics, Span};
use super::kinds::{self, Declared, Identity, Kind, Kinds, SyncCheck};
use super::reader::*;
use super::source::{Item, Key, Node, Table};
use crate::domain::filter::{Condition, Domain, OPERATORS, Op, Token};
use crate::domain::mapping::{Direction, ExternalField, FieldPair, JsonPath, Reference, ValueMap};
use crate::domain::merge::Priority;
use crate::domain::names::{Ident, SyncCode};
use crate::domain::plan::*;
use crate::domain::value::{FIELD_TYPE_NAMES, FieldType, coerce};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::time::Duration;

mod domains;
mod external;
mod models;
mod pairs;
mod services;
mod syncs;
mod transforms;

use domains::compile_domain;
use external::compile_external_model;
pub use external::compile_plain_fields;
use models::{compile_field, compile_model};
use pairs::{compile_endpoints, compile_pair};
use services::compile_web_service;
pub use services::{compile_auth, max_concurrency_of};
use syncs::compile_sync;

pub const SECTIONS: [&str; 4] = ["models", "external_models", "web_services", "syncs"];
pub const MODEL_KEYS: [&str; 3] = ["display", "description", "fields"];
pub const FIELD_KEYS: [&str; 6] = [
    "type",
    "required",
    "model",
    "values",
    "description",
    "secret",
];
/// The keys every external model takes; each kind adds its own ([`Kind::model_keys`]).
pub const EXT_MODEL_KEYS: [&str; 4] = ["name", "kind", "description", "fields"];
pub const AUTH_KEYS: [&str; 12] = [
    "mode",
    "header",
    "key",
    "user",
    "password",
    "token",
    "token_url",
    "client_id",
    "client_secret",
    "scopes",
    "client_auth",
    "description",
];
pub const SYNC_KEYS: [&str; 23] = [
    "name",
    "description",
    "model",
    "external_model",
    "web_service",
    "direction",
    "mode",
    "schedule",
    "every",
    "timezone",
    "priority",
    "propagate_deletes",
    "domain",
    "limit",
    "external_ref",
    "active",
    "fields",
    "endpoints",
    "delete_mode",
    "reconcile",
    "delete_guard",
    "match_on",
    "inbound_signing_secret",
];
pub const DELETE_GUARD_KEYS: [&str; 3] = ["max", "max_ratio", "min"];
pub const PAIR_KEYS: [&str; 8] = [
    "local",
    "external",
    "direction",
    "ref_field",
    "ref_sync",
    "map",
    "to_local",
    "to_external",
];
pub const ENDPOINT_KEYS: [&str; 6] = [
    "action",
    "method",
    "url",
    "response_id",
    "active",
    "description",
];
/// The HTTP methods a configured call may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
/// The largest page or batch a sync may ask for.
pub const MAX_LIMIT: i64 = 10_000;

/// One declaration: its name key and its table.
struct Decl<'t> {
    key: &'t Key,
    item: &'t Item,
}

/// Compiles the parsed mapping files. Returns `None` if any error was found.
pub fn compile(files: &[Table], kinds: &Kinds, diags: &mut Diagnostics) -> Option<Plan> {
    let before = diags.len();
    let (plan, _) = compile_lenient(files, kinds, diags);
    (diags.len() == before).then_some(plan)
}

/// Compiles every declaration that it can: the plan holds what compiled, the mistakes go to
/// `diags` (commands that need one part, such as `discover`, go on when that part is sound).
/// Also the web services that compiled with a mistake of their own.
pub fn compile_lenient(
    files: &[Table],
    kinds: &Kinds,
    diags: &mut Diagnostics,
) -> (Plan, Vec<String>) {
    let mut unsound = Vec::new();
    let mut decls: BTreeMap<&str, Vec<Decl<'_>>> =
        SECTIONS.iter().map(|s| (*s, Vec::new())).collect();
    for file in files {
        check_keys(file, &SECTIONS, diags);
        for (k, item) in file {
            let Some(list) = decls.get_mut(k.name.as_str()) else {
                continue;
            };
            let Some(table) = as_table(&k.name, item, diags) else {
                continue;
            };
            for (name, body) in table {
                list.push(Decl {
                    key: name,
                    item: body,
                });
            }
        }
    }
    // Names are global across files: a second declaration is an error pointing at both.
    let singular = |s: &str| match s {
        "models" => "model",
        "external_models" => "external model",
        "web_services" => "web service",
        _ => "sync",
    };
    for (section, list) in &decls {
        let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
        // Duplicates are reported and still compiled, so their own mistakes show up too;
        // a load with any error yields no plan.
        list.iter()
            .for_each(|d| match seen.get(d.key.name.as_str()) {
                Some(first) => {
                    diags.push(
                        Diagnostic::error(
                            format!("duplicate {} `{}`", singular(section), d.key.name),
                            d.key.span.clone(),
                            "declared again here",
                        )
                        .with_related(first.clone(), "first declared here"),
                    );
                }
                None => {
                    seen.insert(d.key.name.as_str(), d.key.span.clone());
                }
            });
    }

    let model_names: Vec<&str> = decls["models"]
        .iter()
        .map(|d| d.key.name.as_str())
        .collect();
    let mut plan = Plan::default();
    for d in &decls["models"] {
        if let Some(m) = compile_model(d, &model_names, diags) {
            plan.models.insert(m.name.clone(), m);
        }
    }
    for d in &decls["web_services"] {
        let before = diags.len();
        if let Some(ws) = compile_web_service(d, kinds, diags) {
            plan.web_services.insert(ws.name.clone(), ws);
        }
        if diags.len() > before {
            unsound.push(d.key.name.clone());
        }
    }
    for d in &decls["external_models"] {
        if let Some(em) = compile_external_model(d, kinds, diags) {
            plan.external_models.insert(em.name.clone(), em);
        }
    }
    // Sync codes and models first, for `ref_sync` checks.
    let sync_models: BTreeMap<&str, Option<&str>> = decls["syncs"]
        .iter()
        .map(|d| {
            let model = match &d.item.node {
                Node::Table(t) => entry(t, "model").and_then(|(_, i)| match &i.node {
                    Node::Str { value, .. } => Some(value.as_str()),
                    _ => None,
                }),
                _ => None,
            };
            (d.key.name.as_str(), model)
        })
        .collect();
    let all = Names {
        models: &model_names,
        syncs: &sync_models,
        ext_models: decls["external_models"]
            .iter()
            .map(|d| d.key.name.as_str())
            .collect(),
        services: decls["web_services"]
            .iter()
            .map(|d| d.key.name.as_str())
            .collect(),
    };
    for d in &decls["syncs"] {
        if let Some(s) = compile_sync(d, &plan, &all, kinds, diags) {
            plan.syncs.insert(s.code.to_string(), s);
        }
    }
    (plan, unsound)
}

struct Names<'a> {
    models: &'a [&'a str],
    syncs: &'a BTreeMap<&'a str, Option<&'a str>>,
    ext_models: Vec<&'a str>,
    services: Vec<&'a str>,
}

fn check_ident(key: &Key, what: &str, diags: &mut Diagnostics) -> bool {
    match Ident::parse(&key.name) {
        Ok(_) => true,
        Err(e) => {
            diags.push(Diagnostic::error(
                format!("invalid {what} name `{}`: {e}", key.name),
                key.span.clone(),
                "invalid name",
            ));
            false
        }
    }
}

pub fn secret(s: &Str<'_>) -> SecretString {
    SecretString::from(s.value.to_string())
}

pub fn cfg_str(s: &Str<'_>) -> ConfigStr {
    ConfigStr::new(s.value.to_string(), s.secret)
}

pub fn check_url(key: &str, s: &Str<'_>, diags: &mut Diagnostics) -> Option<ConfigStr> {
    match url::Url::parse(s.value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(cfg_str(s)),
        _ => {
            diags.push(Diagnostic::error(
                format!(
                    "invalid URL for `{key}`: {} is not an http(s) URL",
                    s.shown()
                ),
                s.span.clone(),
                "expected http:// or https://",
            ));
            None
        }
    }
}

/// A Standard Webhooks secret (`signing_secret`, `inbound_signing_secret`): `whsec_` and a
/// base64 key, best given as `${VAR}`. Its value is never shown in a message.
pub fn signing_of(
    t: &Table,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<crate::domain::auth::Signing> {
    let s = str_of(t, key, diags)?;
    match crate::domain::auth::Signing::parse(s.value) {
        Ok(signing) => Some(signing),
        Err(e) => {
            diags.push(Diagnostic::error(
                format!("invalid `{key}`: {e}"),
                s.span.clone(),
                "not a Standard Webhooks secret",
            ));
            None
        }
    }
}

/// A JSONPath (`$...`), compiled.
pub fn jsonpath_of(t: &Table, key: &str, diags: &mut Diagnostics) -> Option<JsonPath> {
    let s = str_of(t, key, diags)?;
    match JsonPath::parse(s.value) {
        Ok(p) if s.value.starts_with('$') => Some(p),
        Ok(_) | Err(_) => {
            diags.push(Diagnostic::error(
                format!("invalid JSONPath `{}`", s.value),
                s.span.clone(),
                "not a JSONPath",
            ));
            None
        }
    }
}

pub fn duration_of(t: &Table, key: &str, diags: &mut Diagnostics) -> Option<Duration> {
    let s = str_of(t, key, diags)?;
    match parse_duration(s.value) {
        Some(d) if !d.is_zero() => Some(d),
        _ => {
            diags.push(
                Diagnostic::error(
                    format!("invalid duration {} for `{key}`", s.shown()),
                    s.span,
                    "not a duration",
                )
                .with_help("use a number and a unit, such as `500ms`, `30s`, `15m`, `2h` or `1d`"),
            );
            None
        }
    }
}

/// The kind a declaration names (`kind = "..."`), the registry's first when left out.
fn kind_of(t: &Table, kinds: &Kinds, diags: &mut Diagnostics) -> Option<&'static dyn Kind> {
    match str_of(t, "kind", diags) {
        None => kinds.first().copied(),
        Some(s) => kinds::find(kinds, s.value).or_else(|| {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            diags.push(unknown_name("kind", s.value, s.span, &names));
            None
        }),
    }
}

pub fn enum_of<T>(
    t: &Table,
    key: &str,
    parse: fn(&str) -> Option<T>,
    choices: &[&str],
    diags: &mut Diagnostics,
) -> Option<Option<T>> {
    match str_of(t, key, diags) {
        None => Some(None).filter(|_| entry(t, key).is_none()),
        Some(s) => match parse(s.value) {
            Some(v) => Some(Some(v)),
            None => {
                diags.push(with_choices(
                    Diagnostic::error(
                        format!("invalid `{key}` value `{}`", s.value),
                        s.span.clone(),
                        format!("not a {key}"),
                    ),
                    s.value,
                    choices,
                ));
                None
            }
        },
    }
}
