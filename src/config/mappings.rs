//! Compiles mapping files (`models`, `external_models`, `web_services`, `syncs`, merged
//! across files) into a validated [`Plan`], collecting every error with its position.

use super::diag::{Diagnostic, Diagnostics, Span};
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
pub const EXT_MODEL_KEYS: [&str; 7] = [
    "name",
    "kind",
    "description",
    "fields",
    "root",
    "recursive",
    "pattern",
];
pub const REST_KEYS: [&str; 9] = [
    "kind",
    "description",
    "url",
    "confirmation_url",
    "shipping_url",
    "auth",
    "timeout",
    "max_concurrency",
    "active",
];
pub const DROPBOX_KEYS: [&str; 8] = [
    "kind",
    "description",
    "app_key",
    "app_secret",
    "refresh_token",
    "access_token",
    "api_url",
    "active",
];
pub const AUTH_KEYS: [&str; 7] = [
    "mode",
    "header",
    "key",
    "user",
    "password",
    "token",
    "description",
];
pub const SYNC_KEYS: [&str; 18] = [
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
];
pub const PAIR_KEYS: [&str; 6] = [
    "local",
    "external",
    "direction",
    "ref_field",
    "ref_sync",
    "map",
];
pub const ENDPOINT_KEYS: [&str; 6] = [
    "action",
    "method",
    "url",
    "response_id",
    "active",
    "description",
];
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
/// The largest page or batch a sync may ask for.
pub const MAX_LIMIT: i64 = 10_000;

/// One declaration: its name key and its table.
struct Decl<'t> {
    key: &'t Key,
    item: &'t Item,
}

/// Compiles the parsed mapping files. Returns `None` if any error was found.
pub fn compile(files: &[Table], diags: &mut Diagnostics) -> Option<Plan> {
    let before = diags.len();
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
        if let Some(ws) = compile_web_service(d, diags) {
            plan.web_services.insert(ws.name.clone(), ws);
        }
    }
    for d in &decls["external_models"] {
        if let Some(em) = compile_external_model(d, diags) {
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
        if let Some(s) = compile_sync(d, &plan, &all, diags) {
            plan.syncs.insert(s.code.to_string(), s);
        }
    }
    (diags.len() == before).then_some(plan)
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

fn compile_model(d: &Decl<'_>, models: &[&str], diags: &mut Diagnostics) -> Option<Model> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "model", diags);
    let t = as_table(&name, d.item, diags)?;
    check_keys(t, &MODEL_KEYS, diags);
    let mut fields = BTreeMap::new();
    match table_of(t, "fields", diags) {
        Some((ft, _)) => {
            for (k, item) in ft {
                match compile_field(k, item, models, diags) {
                    Some(f) => {
                        fields.insert(f.name.clone(), f);
                    }
                    None => diags.mark_broken(&name, &k.name),
                }
            }
        }
        None if entry(t, "fields").is_none() => diags.push(Diagnostic::error(
            format!("model `{name}` has no `fields`"),
            d.key.span.clone(),
            "declare at least one field",
        )),
        None => {}
    }
    let display = str_of(t, "display", diags).and_then(|s| {
        if fields.contains_key(s.value) || s.value == "id" {
            Some(s.value.to_string())
        } else if diags.is_broken(&name, s.value) {
            None
        } else {
            let names: Vec<&str> = fields.keys().map(String::as_str).collect();
            diags.push(with_choices(
                Diagnostic::error(
                    format!("unknown field `{}` on model `{name}`", s.value),
                    s.span,
                    "not a field of this model",
                ),
                s.value,
                &names,
            ));
            None
        }
    });
    ok_name.then_some(Model {
        name,
        display,
        fields,
    })
}

fn compile_field(k: &Key, item: &Item, models: &[&str], diags: &mut Diagnostics) -> Option<Field> {
    if !check_ident(k, "field", diags) {
        return None;
    }
    if RECORD_META_FIELDS.contains(&k.name.as_str()) {
        diags.push(Diagnostic::error(
            format!("field name `{}` is reserved", k.name),
            k.span.clone(),
            "every record has this field already",
        ));
        return None;
    }
    let empty = Table::new();
    let (ty_str, t) = match &item.node {
        Node::Str { .. } => (as_str(&k.name, item, diags)?, &empty),
        Node::Table(t) => {
            check_keys(t, &FIELD_KEYS, diags);
            (
                required_str(t, "type", &k.span, &format!("field `{}`", k.name), diags)?,
                t,
            )
        }
        _ => {
            diags.push(wrong_type(&k.name, item, "a type name or a table"));
            return None;
        }
    };
    let required = bool_of(t, "required", diags).unwrap_or(false);
    let secret = bool_of(t, "secret", diags).unwrap_or(false);
    let related = str_of(t, "model", diags);
    let values = array_of(t, "values", diags);
    let needs_model = matches!(ty_str.value, "many2one" | "one2many" | "many2many");
    if let Some(m) = &related
        && !needs_model
    {
        diags.push(Diagnostic::error(
            format!(
                "`model` only applies to relational fields, but `{}` is {}",
                k.name, ty_str.value
            ),
            m.span.clone(),
            "not a relational field",
        ));
    }
    if let Some((_, span)) = &values
        && ty_str.value != "selection"
    {
        diags.push(Diagnostic::error(
            format!(
                "`values` only applies to selection fields, but `{}` is {}",
                k.name, ty_str.value
            ),
            span.clone(),
            "not a selection field",
        ));
    }
    let mut related_model = || -> Option<String> {
        match &related {
            None => {
                diags.push(Diagnostic::error(
                    format!("{} field `{}` needs `model`", ty_str.value, k.name),
                    ty_str.span.clone(),
                    "relational type",
                ));
                None
            }
            Some(m) if !models.contains(&m.value) => {
                diags.push(unknown_name("model", m.value, m.span.clone(), models));
                None
            }
            Some(m) => Some(m.value.to_string()),
        }
    };
    let ty = match ty_str.value {
        "char" => FieldType::Char,
        "text" => FieldType::Text,
        "integer" => FieldType::Integer,
        "float" => FieldType::Float,
        "boolean" => FieldType::Boolean,
        "date" => FieldType::Date,
        "datetime" => FieldType::Datetime,
        "binary" => FieldType::Binary,
        "json" => FieldType::Json,
        "many2one" => FieldType::Many2one(related_model()?),
        "one2many" => FieldType::One2many(related_model()?),
        "many2many" => FieldType::Many2many(related_model()?),
        "selection" => {
            let Some((items, span)) = values else {
                if entry(t, "values").is_none() {
                    diags.push(Diagnostic::error(
                        format!("selection field `{}` needs `values`", k.name),
                        ty_str.span.clone(),
                        "selection type",
                    ));
                }
                return None;
            };
            let mut vs = Vec::new();
            for it in items {
                let s = as_str("values", it, diags)?;
                if vs.iter().any(|v: &String| v == s.value) {
                    diags.push(Diagnostic::error(
                        format!("selection value `{}` is listed twice", s.value),
                        s.span,
                        "repeated",
                    ));
                    return None;
                }
                vs.push(s.value.to_string());
            }
            if vs.is_empty() {
                diags.push(Diagnostic::error(
                    format!("selection field `{}` has no values", k.name),
                    span,
                    "empty list",
                ));
                return None;
            }
            FieldType::Selection(vs)
        }
        other => {
            diags.push(unknown_name(
                "field type",
                other,
                ty_str.span.clone(),
                &FIELD_TYPE_NAMES,
            ));
            return None;
        }
    };
    Some(Field {
        name: k.name.clone(),
        ty,
        required,
        secret,
    })
}

fn secret(s: &Str<'_>) -> SecretString {
    SecretString::from(s.value.to_string())
}

fn cfg_str(s: &Str<'_>) -> ConfigStr {
    ConfigStr::new(s.value.to_string(), s.secret)
}

fn check_url(key: &str, s: &Str<'_>, diags: &mut Diagnostics) -> Option<ConfigStr> {
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

fn duration_of(t: &Table, key: &str, diags: &mut Diagnostics) -> Option<Duration> {
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

fn kind_of(t: &Table, diags: &mut Diagnostics) -> Option<ServiceKind> {
    match str_of(t, "kind", diags) {
        None => Some(ServiceKind::Rest),
        Some(s) => match s.value {
            "rest" => Some(ServiceKind::Rest),
            "dropbox" => Some(ServiceKind::Dropbox),
            other => {
                diags.push(unknown_name("kind", other, s.span, &["rest", "dropbox"]));
                None
            }
        },
    }
}

fn compile_web_service(d: &Decl<'_>, diags: &mut Diagnostics) -> Option<WebService> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "web service", diags);
    let t = as_table(&name, d.item, diags)?;
    let kind = kind_of(t, diags)?;
    let active = bool_of(t, "active", diags).unwrap_or(true);
    let what = format!("web service `{name}`");
    let spec = match kind {
        ServiceKind::Rest => {
            check_keys(t, &REST_KEYS, diags);
            let url = str_of(t, "url", diags).and_then(|s| check_url("url", &s, diags));
            let confirmation_url = str_of(t, "confirmation_url", diags)
                .and_then(|s| check_url("confirmation_url", &s, diags));
            let shipping_url =
                str_of(t, "shipping_url", diags).and_then(|s| check_url("shipping_url", &s, diags));
            if let (Some((k, _)), None) = (entry(t, "confirmation_url"), entry(t, "url")) {
                diags.push(Diagnostic::error(
                    "`confirmation_url` is set but `url` is not",
                    k.span.clone(),
                    "confirmations follow pulls from `url`",
                ));
            }
            let auth = match table_of(t, "auth", diags) {
                None => Auth::None,
                Some((at, span)) => compile_auth(at, &span, diags)?,
            };
            let timeout = duration_of(t, "timeout", diags).unwrap_or(Duration::from_secs(30));
            let max_concurrency = match int_of(t, "max_concurrency", diags) {
                None => 8,
                Some((n, _)) if (1..=1024).contains(&n) => n as usize,
                Some((_, span)) => {
                    diags.push(Diagnostic::error(
                        "`max_concurrency` must be between 1 and 1024",
                        span,
                        "out of range",
                    ));
                    8
                }
            };
            ServiceSpec::Rest(RestService {
                url,
                confirmation_url,
                shipping_url,
                auth,
                timeout,
                max_concurrency,
            })
        }
        ServiceKind::Dropbox => {
            check_keys(t, &DROPBOX_KEYS, diags);
            let app_key = required_str(t, "app_key", &d.key.span, &what, diags);
            let app_secret = required_str(t, "app_secret", &d.key.span, &what, diags);
            let refresh_token = str_of(t, "refresh_token", diags).map(|s| secret(&s));
            let access_token = str_of(t, "access_token", diags).map(|s| secret(&s));
            if entry(t, "refresh_token").is_none() && entry(t, "access_token").is_none() {
                diags.push(Diagnostic::error(
                    format!("{what} needs `refresh_token` (or `access_token`)"),
                    d.key.span.clone(),
                    "no credentials",
                ));
            }
            let api_url = str_of(t, "api_url", diags).and_then(|s| check_url("api_url", &s, diags));
            ServiceSpec::Dropbox(DropboxService {
                app_key: secret(&app_key?),
                app_secret: secret(&app_secret?),
                refresh_token,
                access_token,
                api_url,
            })
        }
    };
    ok_name.then_some(WebService { name, spec, active })
}

fn compile_auth(t: &Table, span: &Span, diags: &mut Diagnostics) -> Option<Auth> {
    let Some(mode) = required_str(t, "mode", span, "`auth`", diags) else {
        check_keys(t, &AUTH_KEYS, diags);
        return None;
    };
    let allowed: &[&str] = match mode.value {
        "none" => &["mode"],
        "api_key" => &["mode", "header", "key"],
        "basic" => &["mode", "user", "password"],
        "bearer" => &["mode", "token"],
        _ => &[],
    };
    // A key no mode knows is suggested from the keys of the mode chosen.
    let choices: Vec<&str> = if allowed.is_empty() {
        AUTH_KEYS.to_vec()
    } else {
        allowed.iter().copied().chain(["description"]).collect()
    };
    for (k, _) in t {
        if !AUTH_KEYS.contains(&k.name.as_str()) {
            diags.push(unknown_name("field", &k.name, k.span.clone(), &choices));
        }
    }
    let mut need = |key: &str| {
        required_str(
            t,
            key,
            span,
            &format!("`auth` with mode `{}`", mode.value),
            diags,
        )
        .map(|s| secret(&s))
    };
    let auth = match mode.value {
        "none" => Some(Auth::None),
        "api_key" => {
            let key = need("key");
            let header = str_of(t, "header", diags)
                .map(|s| s.value.to_string())
                .unwrap_or_else(|| "api_key".into());
            key.map(|key| Auth::ApiKey { header, key })
        }
        "basic" => {
            let password = need("password");
            let user = required_str(t, "user", span, "`auth` with mode `basic`", diags)
                .map(|s| s.value.to_string());
            Some(Auth::Basic {
                user: user?,
                password: password?,
            })
        }
        "bearer" => need("token").map(|token| Auth::Bearer { token }),
        other => {
            diags.push(unknown_name(
                "auth mode",
                other,
                mode.span.clone(),
                &["none", "api_key", "basic", "bearer"],
            ));
            return None;
        }
    };
    for (k, _) in t {
        if AUTH_KEYS.contains(&k.name.as_str())
            && !allowed.contains(&k.name.as_str())
            && k.name != "description"
        {
            diags.push(Diagnostic::error(
                format!("`{}` does not apply to auth mode `{}`", k.name, mode.value),
                k.span.clone(),
                "not used by this mode",
            ));
        }
    }
    auth
}

fn compile_external_model(d: &Decl<'_>, diags: &mut Diagnostics) -> Option<ExternalModel> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "external model", diags);
    let t = as_table(&name, d.item, diags)?;
    check_keys(t, &EXT_MODEL_KEYS, diags);
    let kind = kind_of(t, diags)?;
    let label = str_of(t, "name", diags).map(|s| s.value.to_string());
    let mut fields = BTreeMap::new();
    if let Some((ft, _)) = table_of(t, "fields", diags) {
        for (k, item) in ft {
            let Some(f) = compile_field(k, item, &[], diags) else {
                continue;
            };
            if f.ty.is_relational() {
                diags.push(Diagnostic::error(
                    format!("external field `{}` cannot be relational", f.name),
                    item.span.clone(),
                    "relations are declared on the local side",
                ));
                continue;
            }
            fields.insert(f.name, f.ty);
        }
    }
    let mut dropbox = None;
    match kind {
        ServiceKind::Rest => {
            for key in ["root", "recursive", "pattern"] {
                if let Some((k, _)) = entry(t, key) {
                    diags.push(Diagnostic::error(
                        format!("`{key}` only applies to Dropbox external models"),
                        k.span.clone(),
                        "this external model is rest",
                    ));
                }
            }
            if entry(t, "fields").is_none() {
                diags.push(Diagnostic::error(
                    format!("external model `{name}` has no `fields`"),
                    d.key.span.clone(),
                    "declare the external system's fields",
                ));
            }
        }
        ServiceKind::Dropbox => {
            let root = match str_of(t, "root", diags) {
                None => String::new(),
                Some(s)
                    if s.value.is_empty()
                        || (s.value.starts_with('/') && !s.value.ends_with('/')) =>
                {
                    s.value.to_string()
                }
                Some(s) => {
                    diags.push(
                        Diagnostic::error(format!("invalid Dropbox root {}", s.shown()), s.span, "not a folder path")
                            .with_help("use `\"\"` for the whole account, or a path like `/DMS/Students` (no trailing `/`)"),
                    );
                    String::new()
                }
            };
            let recursive = bool_of(t, "recursive", diags).unwrap_or(false);
            let pattern =
                str_of(t, "pattern", diags).and_then(|s| match PathPattern::parse(s.value) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        diags.push(Diagnostic::error(
                            format!("invalid path pattern: {e}"),
                            s.span,
                            "bad pattern",
                        ));
                        None
                    }
                });
            if let Some(p) = &pattern {
                if p.segments.len() > 1 && !recursive {
                    let (k, _) = entry(t, "pattern").expect("read above");
                    diags.push(
                        Diagnostic::error(
                            "a pattern with several segments needs `recursive = true`",
                            k.span.clone(),
                            "nested pattern",
                        )
                        .with_help("without it only the root's direct entries are listed"),
                    );
                }
                for c in p.captures() {
                    fields.entry(c.to_string()).or_insert(FieldType::Char);
                }
            }
            for (f, ty) in DROPBOX_ENTRY_FIELDS.iter() {
                fields.insert(f.to_string(), ty.clone());
            }
            fields.insert("content".into(), FieldType::Binary);
            dropbox = Some(DropboxFolder {
                root,
                recursive,
                pattern,
            });
        }
    }
    ok_name.then_some(ExternalModel {
        name,
        label,
        kind,
        fields,
        dropbox,
    })
}

fn enum_of<T>(
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

fn compile_sync(
    d: &Decl<'_>,
    plan: &Plan,
    names: &Names<'_>,
    diags: &mut Diagnostics,
) -> Option<Sync> {
    let before = diags.len();
    let code = match SyncCode::parse(&d.key.name) {
        Ok(c) => Some(c),
        Err(e) => {
            diags.push(Diagnostic::error(
                format!("invalid sync code `{}`: {e}", d.key.name),
                d.key.span.clone(),
                "invalid code",
            ));
            None
        }
    };
    let t = as_table(&d.key.name, d.item, diags)?;
    check_keys(t, &SYNC_KEYS, diags);
    let what = format!("sync `{}`", d.key.name);
    let owner = &d.key.span;

    let model_s = required_str(t, "model", owner, &what, diags);
    let ext_s = required_str(t, "external_model", owner, &what, diags);
    let ws_s = required_str(t, "web_service", owner, &what, diags);
    let model = model_s.as_ref().and_then(|s| {
        let m = plan.models.get(s.value);
        if m.is_none() && !names.models.contains(&s.value) {
            diags.push(unknown_name("model", s.value, s.span.clone(), names.models));
        }
        m
    });
    let ext = ext_s.as_ref().and_then(|s| {
        let m = plan.external_models.get(s.value);
        if m.is_none() && !names.ext_models.contains(&s.value) {
            diags.push(unknown_name(
                "external model",
                s.value,
                s.span.clone(),
                &names.ext_models,
            ));
        }
        m
    });
    let ws = ws_s.as_ref().and_then(|s| {
        let w = plan.web_services.get(s.value);
        if w.is_none() && !names.services.contains(&s.value) {
            diags.push(unknown_name(
                "web service",
                s.value,
                s.span.clone(),
                &names.services,
            ));
        }
        w
    });
    if let (Some(e), Some(w), Some(s)) = (ext, ws, &ws_s)
        && e.kind != w.kind()
    {
        diags.push(Diagnostic::error(
            format!(
                "web service `{}` is {} but external model `{}` is {}",
                w.name,
                w.kind().as_str(),
                e.name,
                e.kind.as_str()
            ),
            s.span.clone(),
            "kinds differ",
        ));
    }

    let direction_item = entry(t, "direction");
    let direction = match enum_of(
        t,
        "direction",
        Direction::parse,
        &["to_external", "to_local", "bidirectional"],
        diags,
    ) {
        Some(Some(d)) => Some(d),
        Some(None) => {
            diags.push(
                Diagnostic::error(
                    format!("missing field `direction` in {what}"),
                    owner.clone(),
                    "`direction` is required",
                )
                .with_help("use \"to_external\", \"to_local\" or \"bidirectional\""),
            );
            None
        }
        None => None,
    };
    let mode = enum_of(t, "mode", Mode::parse, &["cron", "realtime"], diags)
        .map(|m| m.unwrap_or(Mode::Cron));
    let priority = enum_of(
        t,
        "priority",
        Priority::parse,
        &["local", "external", "newest"],
        diags,
    )
    .map(|p| p.unwrap_or(Priority::External));
    let timezone = match str_of(t, "timezone", diags) {
        None => chrono_tz::UTC,
        Some(s) => s.value.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
            diags.push(
                Diagnostic::error(
                    format!("unknown time zone `{}`", s.value),
                    s.span.clone(),
                    "not an IANA time zone",
                )
                .with_help("use a name such as `UTC` or `Europe/Madrid`"),
            );
            chrono_tz::UTC
        }),
    };
    let cron = str_of(t, "schedule", diags).and_then(|s| match CronSpec::parse(s.value) {
        Ok(c) => Some(c),
        Err(e) => {
            diags.push(
                Diagnostic::error(
                    format!("invalid cron expression {}: {e}", s.shown()),
                    s.span.clone(),
                    "bad schedule",
                )
                .with_help("use six fields with seconds, such as \"0 */15 * * * *\""),
            );
            None
        }
    });
    let every = duration_of(t, "every", diags);
    let schedule = match (cron, every) {
        (Some(c), None) => Some(Schedule::Cron(Box::new(c))),
        (None, Some(e)) => Some(Schedule::Every(e)),
        (Some(_), Some(_)) => {
            let (k, _) = entry(t, "every").expect("read above");
            diags.push(Diagnostic::error(
                "`schedule` and `every` are mutually exclusive",
                k.span.clone(),
                "remove one of the two",
            ));
            None
        }
        (None, None) => None,
    };
    if mode == Some(Mode::Cron) && entry(t, "schedule").is_none() && entry(t, "every").is_none() {
        let span = entry(t, "mode")
            .map(|(_, i)| i.span.clone())
            .unwrap_or_else(|| owner.clone());
        diags.push(
            Diagnostic::error(
                format!("cron {what} needs `schedule` or `every`"),
                span,
                "no schedule",
            )
            .with_help(
                "add schedule = \"0 */15 * * * *\" or every = \"15m\", or use mode = \"realtime\"",
            ),
        );
    }
    let propagate_deletes = bool_of(t, "propagate_deletes", diags).unwrap_or(false);
    let active = bool_of(t, "active", diags).unwrap_or(true);
    let limit = match int_of(t, "limit", diags) {
        None => 100,
        Some((n, _)) if (1..=MAX_LIMIT).contains(&n) => n as usize,
        Some((_, span)) => {
            diags.push(Diagnostic::error(
                format!("`limit` must be between 1 and {MAX_LIMIT}"),
                span,
                "out of range",
            ));
            100
        }
    };
    let name = str_of(t, "name", diags)
        .map(|s| s.value.to_string())
        .unwrap_or_else(|| d.key.name.clone());

    let external_ref = match (str_of(t, "external_ref", diags), ext) {
        (Some(s), Some(e)) => {
            if !e.fields.contains_key(s.value) {
                let names: Vec<&str> = e.fields.keys().map(String::as_str).collect();
                diags.push(with_choices(
                    Diagnostic::error(
                        format!("unknown field `{}` on external model `{}`", s.value, e.name),
                        s.span.clone(),
                        "not an external field",
                    ),
                    s.value,
                    &names,
                ));
            }
            Some(s.value.to_string())
        }
        (None, Some(e)) if e.kind == ServiceKind::Dropbox => Some("id".to_string()),
        (None, _) if entry(t, "external_ref").is_none() => {
            diags.push(
                Diagnostic::error(
                    format!("missing field `external_ref` in {what}"),
                    owner.clone(),
                    "`external_ref` is required",
                )
                .with_help("name the external field that holds the record's id"),
            );
            None
        }
        (s, _) => s.map(|s| s.value.to_string()),
    };

    let domain = match (entry(t, "domain"), model) {
        (Some((_, item)), Some(m)) => compile_domain(item, m, diags),
        _ => Domain::All,
    };

    let mut fields = Vec::new();
    if let Some((items, _)) = array_of(t, "fields", diags) {
        for it in items {
            if let (Some(m), Some(e), Some(dir)) = (model, ext, direction)
                && let Some(p) = compile_pair(it, m, e, dir, plan, names, diags)
            {
                fields.push(p);
            } else if let Node::Table(pt) = &it.node {
                check_keys(pt, &PAIR_KEYS, diags);
            } else {
                diags.push(wrong_type("fields", it, "a table"));
            }
        }
    }

    let endpoints = match array_of(t, "endpoints", diags) {
        None => Vec::new(),
        Some((items, span)) => {
            if ext.is_some_and(|e| e.kind == ServiceKind::Dropbox) {
                diags.push(Diagnostic::error(
                    "`endpoints` only apply to REST web services",
                    span,
                    "Dropbox syncs write through the Dropbox API",
                ));
                Vec::new()
            } else {
                compile_endpoints(items, diags)
            }
        }
    };

    // What the sync has to do must be possible with what its web service offers.
    if let (Some(dir), Some(mode), Some(w)) = (direction, mode, ws)
        && let Some(rest) = w.rest()
    {
        let dir_span = direction_item
            .map(|(_, i)| i.span.clone())
            .unwrap_or_else(|| owner.clone());
        if dir.to_external() && rest.shipping_url.is_none() && endpoints.iter().all(|e| !e.active) {
            diags.push(
                Diagnostic::error(
                    format!("{what} sends changes, but web service `{}` has no `shipping_url` and the sync has no `endpoints`", w.name),
                    dir_span.clone(),
                    "direction includes to_external",
                )
                .with_help("set `shipping_url` on the web service, add `[[syncs.<CODE>.endpoints]]`, or use direction = \"to_local\""),
            );
        }
        if mode == Mode::Cron && dir == Direction::ToLocal && rest.url.is_none() {
            diags.push(
                Diagnostic::error(
                    format!("cron {what} has nothing to do: it only receives, and web service `{}` has no `url` to pull from", w.name),
                    dir_span,
                    "nothing to pull",
                )
                .with_help("set `url` on the web service, or use mode = \"realtime\" for a sync that only receives /sync calls"),
            );
        }
    }

    if diags.len() != before {
        return None;
    }
    Some(Sync {
        code: code?,
        name,
        model: model?.name.clone(),
        external_model: ext?.name.clone(),
        web_service: ws?.name.clone(),
        direction: direction?,
        mode: mode?,
        schedule,
        timezone,
        priority: priority?,
        propagate_deletes,
        domain,
        limit,
        external_ref: external_ref?,
        active,
        fields,
        endpoints,
    })
}

fn compile_domain(item: &Item, model: &Model, diags: &mut Diagnostics) -> Domain {
    let Node::Array(items) = &item.node else {
        diags.push(wrong_type("domain", item, "an array"));
        return Domain::All;
    };
    let before = diags.len();
    let mut tokens = Vec::new();
    let mut spans = Vec::new();
    let field_names: Vec<&str> = model
        .fields
        .keys()
        .map(String::as_str)
        .chain(["id"])
        .collect();
    for it in items {
        spans.push(it.span.clone());
        match &it.node {
            Node::Str { value, .. } => match value.as_str() {
                "&" => tokens.push(Token::And),
                "|" => tokens.push(Token::Or),
                "!" => tokens.push(Token::Not),
                other => diags.push(
                    Diagnostic::error(
                        format!("invalid domain element `{other}`"),
                        it.span.clone(),
                        "expected `&`, `|`, `!` or a condition",
                    )
                    .with_help("a condition is [field, operator, value]"),
                ),
            },
            Node::Array(parts) if parts.len() == 3 => {
                let Some(field) = as_str("domain field", &parts[0], diags) else {
                    continue;
                };
                let Some(op_s) = as_str("domain operator", &parts[1], diags) else {
                    continue;
                };
                let Some(ty) = model.field_type(field.value) else {
                    if diags.is_broken(&model.name, field.value) {
                        continue;
                    }
                    diags.push(with_choices(
                        Diagnostic::error(
                            format!("unknown field `{}` on model `{}`", field.value, model.name),
                            field.span.clone(),
                            "not a field of this model",
                        ),
                        field.value,
                        &field_names,
                    ));
                    continue;
                };
                let Some(op) = Op::parse(op_s.value) else {
                    diags.push(unknown_name(
                        "domain operator",
                        op_s.value,
                        op_s.span.clone(),
                        &OPERATORS,
                    ));
                    continue;
                };
                match Condition::new(field.value, &ty, op, &to_json(&parts[2])) {
                    Ok(c) => tokens.push(Token::Cond(c)),
                    Err(e) => {
                        let (span, label) = if matches!(
                            e,
                            crate::domain::filter::ConditionError::OperatorType { .. }
                        ) {
                            (
                                op_s.span.clone(),
                                format!("does not fit a {} field", ty.name()),
                            )
                        } else {
                            (parts[2].span.clone(), "invalid value".to_string())
                        };
                        diags.push(Diagnostic::error(
                            format!("invalid domain condition on `{}`: {e}", field.value),
                            span,
                            label,
                        ));
                    }
                }
            }
            Node::Array(parts) => diags.push(Diagnostic::error(
                format!("a domain condition has 3 elements, found {}", parts.len()),
                it.span.clone(),
                "expected [field, operator, value]",
            )),
            _ => diags.push(wrong_type(
                "domain",
                it,
                "a condition array or `&`, `|`, `!`",
            )),
        }
    }
    if diags.len() != before {
        return Domain::All;
    }
    match Domain::from_tokens(tokens) {
        Ok(d) => d,
        Err(e) => {
            diags.push(Diagnostic::error(
                format!("invalid domain: {e}"),
                spans[e.index].clone(),
                "missing operand",
            ));
            Domain::All
        }
    }
}

fn compile_pair(
    item: &Item,
    model: &Model,
    ext: &ExternalModel,
    sync_dir: Direction,
    plan: &Plan,
    names: &Names<'_>,
    diags: &mut Diagnostics,
) -> Option<FieldPair> {
    let t = as_table("fields", item, diags)?;
    let before = diags.len();
    check_keys(t, &PAIR_KEYS, diags);
    let local_s = required_str(t, "local", &item.span, "field pair", diags);
    let ext_s = required_str(t, "external", &item.span, "field pair", diags);
    let local_names: Vec<&str> = model.fields.keys().map(String::as_str).collect();
    let local = local_s.as_ref().and_then(|s| {
        let f = model.fields.get(s.value);
        if f.is_none() && !diags.is_broken(&model.name, s.value) {
            diags.push(with_choices(
                Diagnostic::error(
                    format!("unknown field `{}` on model `{}`", s.value, model.name),
                    s.span.clone(),
                    "not a field of this model",
                ),
                s.value,
                &local_names,
            ));
        }
        f
    });
    let direction = match enum_of(
        t,
        "direction",
        Direction::parse,
        &["to_external", "to_local", "bidirectional"],
        diags,
    ) {
        Some(Some(d)) => {
            if !d.within(sync_dir) {
                let (_, i) = entry(t, "direction").expect("read above");
                diags.push(Diagnostic::error(
                    format!(
                        "field direction `{}` is wider than the sync's direction `{}`",
                        d.as_str(),
                        sync_dir.as_str()
                    ),
                    i.span.clone(),
                    "a field pair may narrow the direction, never widen it",
                ));
            }
            d
        }
        _ => sync_dir,
    };
    let (external, external_type) = match &ext_s {
        None => (None, None),
        Some(s) if s.value.starts_with('$') => match JsonPath::parse(s.value) {
            Ok(p) => {
                if direction.to_external() && !p.is_buildable() {
                    diags.push(
                        Diagnostic::error(
                            format!("JSONPath `{}` cannot be built when sending", s.value),
                            s.span.clone(),
                            "not a plain member path",
                        )
                        .with_help("only paths like `$.address.city` can be sent; add direction = \"to_local\" to this pair"),
                    );
                }
                (Some(ExternalField::Path(p)), None)
            }
            Err(e) => {
                let _ = e;
                diags.push(Diagnostic::error(
                    format!("invalid JSONPath `{}`", s.value),
                    s.span.clone(),
                    "not a valid RFC 9535 JSONPath",
                ));
                (None, None)
            }
        },
        Some(s) => match ext.fields.get(s.value) {
            Some(ty) => (
                Some(ExternalField::Name(s.value.to_string())),
                Some(ty.clone()),
            ),
            None => {
                let names: Vec<&str> = ext.fields.keys().map(String::as_str).collect();
                diags.push(with_choices(
                    Diagnostic::error(
                        format!(
                            "unknown field `{}` on external model `{}`",
                            s.value, ext.name
                        ),
                        s.span.clone(),
                        "not an external field",
                    ),
                    s.value,
                    &names,
                ));
                (None, None)
            }
        },
    };

    let ref_field = str_of(t, "ref_field", diags);
    let ref_sync = str_of(t, "ref_sync", diags);
    let mut reference = Reference::None;
    if let (Some(_), Some(rs)) = (&ref_field, &ref_sync) {
        diags.push(Diagnostic::error(
            "`ref_field` and `ref_sync` are mutually exclusive",
            rs.span.clone(),
            "remove one of the two",
        ));
    } else if let Some(lf) = local {
        let related = lf.ty.related_model();
        for r in ref_field.iter().chain(ref_sync.iter()) {
            if related.is_none() {
                let key = if ref_field.is_some() {
                    "ref_field"
                } else {
                    "ref_sync"
                };
                diags.push(Diagnostic::error(
                    format!(
                        "`{key}` needs a relational field, but `{}` is {}",
                        lf.name,
                        lf.ty.name()
                    ),
                    r.span.clone(),
                    "not a relational field",
                ));
            }
        }
        if let Some(related) = related {
            if let Some(rf) = &ref_field {
                match plan.models.get(related) {
                    Some(rm) if rm.field_type(rf.value).is_some() => {
                        reference = Reference::Field(rf.value.to_string())
                    }
                    Some(rm) => {
                        let names: Vec<&str> = rm.fields.keys().map(String::as_str).collect();
                        diags.push(with_choices(
                            Diagnostic::error(
                                format!("unknown field `{}` on model `{related}`", rf.value),
                                rf.span.clone(),
                                "not a field of the related model",
                            ),
                            rf.value,
                            &names,
                        ));
                    }
                    None => {}
                }
            }
            if let Some(rs) = &ref_sync {
                match names.syncs.get(rs.value) {
                    None => {
                        let codes: Vec<&str> = names.syncs.keys().copied().collect();
                        diags.push(unknown_name("sync", rs.value, rs.span.clone(), &codes));
                    }
                    Some(Some(m)) if *m != related => diags.push(Diagnostic::error(
                        format!(
                            "sync `{}` syncs model `{m}`, but `{}` relates to model `{related}`",
                            rs.value, lf.name
                        ),
                        rs.span.clone(),
                        "wrong model",
                    )),
                    Some(_) => {
                        if let Ok(code) = SyncCode::parse(rs.value) {
                            reference = Reference::Sync(code);
                        }
                    }
                }
            }
        }
    }

    let map = match (table_of(t, "map", diags), local) {
        (Some((mt, _)), Some(lf)) => compile_map(mt, lf, diags),
        _ => None,
    };
    if diags.len() != before {
        return None;
    }
    let lf = local?;
    Some(FieldPair {
        local: lf.name.clone(),
        local_type: lf.ty.clone(),
        external: external?,
        external_type,
        direction,
        reference,
        map,
    })
}

fn compile_map(t: &Table, field: &Field, diags: &mut Diagnostics) -> Option<ValueMap> {
    let mut pairs = Vec::new();
    let mut spans = Vec::new();
    for (k, v) in t {
        let local = match coerce(&field.ty, &serde_json::Value::String(k.name.clone())) {
            Ok(l) => l,
            Err(e) => {
                diags.push(Diagnostic::error(
                    format!(
                        "map key `{}` is not a valid value of `{}`: {e}",
                        k.name, field.name
                    ),
                    k.span.clone(),
                    "invalid local value",
                ));
                continue;
            }
        };
        pairs.push((local, to_json(v)));
        spans.push((k.name.clone(), v.span.clone()));
    }
    match ValueMap::new(pairs.clone()) {
        Ok(m) => Some(m),
        Err(i) => {
            let first = pairs[..i]
                .iter()
                .position(|(_, e)| *e == pairs[i].1)
                .expect("a repeat");
            diags.push(
                Diagnostic::error(
                    format!(
                        "`map` is not one-to-one: `{}` and `{}` both map to {}",
                        spans[first].0, spans[i].0, pairs[i].1
                    ),
                    spans[i].1.clone(),
                    "repeated external value",
                )
                .with_related(spans[first].1.clone(), "first used here"),
            );
            None
        }
    }
}

fn compile_endpoints(items: &[Item], diags: &mut Diagnostics) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for it in items {
        let Some(t) = as_table("endpoints", it, diags) else {
            continue;
        };
        check_keys(t, &ENDPOINT_KEYS, diags);
        let action = required_str(t, "action", &it.span, "endpoint", diags).and_then(|s| {
            EndpointAction::parse(s.value)
                .map(|a| (a, s.span.clone()))
                .or_else(|| {
                    diags.push(unknown_name(
                        "endpoint action",
                        s.value,
                        s.span.clone(),
                        &["create", "write", "unlink"],
                    ));
                    None
                })
        });
        let method = required_str(t, "method", &it.span, "endpoint", diags).and_then(|s| {
            let m = s.value.to_ascii_uppercase();
            if METHODS.contains(&m.as_str()) {
                Some(m)
            } else {
                diags.push(unknown_name(
                    "HTTP method",
                    s.value,
                    s.span.clone(),
                    &METHODS,
                ));
                None
            }
        });
        let url = required_str(t, "url", &it.span, "endpoint", diags).and_then(|s| {
            let filled = s.value.replace("{external_id}", "x");
            if let Some(pos) = filled.find('{') {
                let end = filled[pos..]
                    .find('}')
                    .map(|e| pos + e + 1)
                    .unwrap_or(filled.len());
                diags.push(
                    Diagnostic::error(
                        format!(
                            "unknown placeholder `{}` in endpoint URL",
                            &filled[pos..end]
                        ),
                        s.span.clone(),
                        "unknown placeholder",
                    )
                    .with_help("only `{external_id}` is filled in"),
                );
                return None;
            }
            check_url(
                "url",
                &Str {
                    value: &filled,
                    secret: s.secret,
                    span: s.span.clone(),
                },
                diags,
            )
            .map(|_| cfg_str(&s))
        });
        let response_id =
            str_of(t, "response_id", diags).and_then(|s| match JsonPath::parse(s.value) {
                Ok(p) if s.value.starts_with('$') => Some(p),
                Ok(_) | Err(_) => {
                    diags.push(Diagnostic::error(
                        format!("invalid JSONPath `{}`", s.value),
                        s.span.clone(),
                        "not a JSONPath",
                    ));
                    None
                }
            });
        let active = bool_of(t, "active", diags).unwrap_or(true);
        let (Some((action, span)), Some(method), Some(url)) = (action, method, url) else {
            continue;
        };
        if active && out.iter().any(|e| e.active && e.action == action) {
            diags.push(Diagnostic::error(
                format!(
                    "two active endpoints for action `{}`",
                    format!("{action:?}").to_lowercase()
                ),
                span,
                "repeated action",
            ));
            continue;
        }
        out.push(Endpoint {
            action,
            method,
            url,
            response_id,
            active,
        });
    }
    out
}
