//! External models: fields, the Dropbox folder of a Dropbox model, and the Odoo model, domain
//! and fields of an Odoo one.

use super::*;
use serde_json::Value;

pub(super) fn compile_external_model(
    d: &Decl<'_>,
    diags: &mut Diagnostics,
) -> Option<ExternalModel> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "external model", diags);
    let t = as_table(&name, d.item, diags)?;
    check_keys(t, &EXT_MODEL_KEYS, diags);
    let kind = kind_of(t, diags)?;
    let label = str_of(t, "name", diags).map(|s| s.value.to_string());
    let mut fields = BTreeMap::new();
    let mut odoo_fields = BTreeMap::new();
    if kind == ServiceKind::Odoo {
        if let Some((ft, _)) = table_of(t, "fields", diags) {
            for (k, item) in ft {
                if let Some(f) = compile_odoo_field(k, item, diags) {
                    fields.insert(k.name.clone(), recsync_type(&f.ttype));
                    odoo_fields.insert(k.name.clone(), f);
                }
            }
        }
    } else if let Some((ft, _)) = table_of(t, "fields", diags) {
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
    let mut odoo = None;
    let mut http = None;
    if kind != ServiceKind::Http {
        for key in ["list", "create", "update", "delete", "read", "search"] {
            if let Some((k, _)) = entry(t, key) {
                diags.push(Diagnostic::error(
                    format!("`{key}` only applies to external models of kind `http`"),
                    k.span.clone(),
                    format!("this external model is {}", kind.as_str()),
                ));
            }
        }
    }
    if kind != ServiceKind::Odoo {
        for key in ["odoo_model", "domain", "archived"] {
            if let Some((k, _)) = entry(t, key) {
                diags.push(Diagnostic::error(
                    format!("`{key}` only applies to Odoo external models"),
                    k.span.clone(),
                    format!("this external model is {}", kind.as_str()),
                ));
            }
        }
    }
    if kind != ServiceKind::Dropbox {
        for key in ["root", "recursive", "pattern"] {
            if let Some((k, _)) = entry(t, key) {
                diags.push(Diagnostic::error(
                    format!("`{key}` only applies to Dropbox external models"),
                    k.span.clone(),
                    format!("this external model is {}", kind.as_str()),
                ));
            }
        }
    }
    match kind {
        ServiceKind::Odoo => {
            let what = format!("external model `{name}`");
            let model = required_str(t, "odoo_model", &d.key.span, &what, diags);
            if entry(t, "fields").is_none() {
                diags.push(
                    Diagnostic::error(
                        format!("external model `{name}` has no `fields`"),
                        d.key.span.clone(),
                        "declare the Odoo fields the sync reads",
                    )
                    .with_help("`recsync discover <web_service> <odoo model>` prints them"),
                );
            }
            let domain = match entry(t, "domain") {
                None => Vec::new(),
                Some((_, item)) => odoo_domain(item, diags),
            };
            let archived = enum_of(
                t,
                "archived",
                Archived::parse,
                &["unlink", "delete", "keep"],
                diags,
            )
            .flatten()
            .unwrap_or(Archived::Unlink);
            // Records are identified by `id`, and pulls follow `write_date`.
            for (f, ty) in [("id", "integer"), ("write_date", "datetime")] {
                fields
                    .entry(f.to_string())
                    .or_insert_with(|| recsync_type(ty));
                odoo_fields.entry(f.to_string()).or_insert(OdooField {
                    ttype: ty.into(),
                    relation: None,
                });
            }
            odoo = model.map(|m| OdooModel {
                model: m.value.to_string(),
                domain,
                archived,
                fields: odoo_fields,
            });
        }
        ServiceKind::Http => {
            if entry(t, "fields").is_none() {
                diags.push(
                    Diagnostic::error(
                        format!("external model `{name}` has no `fields`"),
                        d.key.span.clone(),
                        "declare the resource's fields",
                    )
                    .with_help(
                        "`recsync discover <web_service> <path>` prints them from a sample page",
                    ),
                );
            }
            let list =
                table_of(t, "list", diags).and_then(|(lt, span)| http_list(lt, &span, diags));
            let op = |key: &str, diags: &mut Diagnostics| {
                table_of(t, key, diags).and_then(|(ot, span)| http_op(key, ot, &span, diags))
            };
            let create = op("create", diags);
            let update = op("update", diags);
            let delete = op("delete", diags);
            let read =
                table_of(t, "read", diags).and_then(|(rt, span)| http_read(rt, &span, diags));
            let search =
                table_of(t, "search", diags).and_then(|(st, span)| http_search(st, &span, diags));
            if let Some(l) = &list
                && let Some(f) = &l.cursor_field
                && !fields.is_empty()
                && !fields.contains_key(f)
            {
                let (k, _) = entry(t, "list").expect("read above");
                diags.push(Diagnostic::error(
                    format!("`cursor_field` names `{f}`, which is not one of the fields of external model `{name}`"),
                    k.span.clone(),
                    "unknown cursor field",
                ));
            }
            http = Some(HttpResource {
                list,
                create,
                update,
                delete,
                read,
                search,
            });
        }
        ServiceKind::Rest => {
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
        odoo,
        http,
    })
}

/// `[external_models.X.list]`: how an `http` resource is read, a page at a time.
fn http_list(t: &Table, span: &Span, diags: &mut Diagnostics) -> Option<HttpList> {
    check_keys(t, &HTTP_LIST_KEYS, diags);
    let path = required_str(t, "path", span, "`list`", diags).and_then(|s| http_path(&s, diags));
    let records = match entry(t, "records") {
        None => {
            diags.push(
                Diagnostic::error(
                    "missing field `records` in `list`",
                    span.clone(),
                    "where are the records of a page?",
                )
                .with_help(
                    "a JSONPath such as `$.tickets[*]`, or `$[*]` for a page that is a list",
                ),
            );
            None
        }
        Some(_) => jsonpath_of(t, "records", diags),
    };
    let mut query = Vec::new();
    if let Some((qt, _)) = table_of(t, "query", diags) {
        for (k, item) in qt {
            let value = match &item.node {
                Node::Str { value, .. } => value.clone(),
                Node::Int(n) => n.to_string(),
                Node::Bool(b) => b.to_string(),
                _ => {
                    diags.push(wrong_type(&k.name, item, "a string or a number"));
                    continue;
                }
            };
            query.push((k.name.clone(), value));
        }
    }
    let cursor_field = str_of(t, "cursor_field", diags).map(|s| s.value.to_string());
    let cursor_start = match entry(t, "cursor_start") {
        None => None,
        Some((k, item)) => match &item.node {
            Node::Str { value, .. } => Some(value.clone()),
            Node::Int(n) => Some(n.to_string()),
            _ => {
                diags.push(wrong_type(&k.name, item, "a string or a number"));
                None
            }
        },
    };
    let names_cursor = query.iter().any(|(_, v)| v.contains("{cursor}"));
    match (&cursor_field, names_cursor) {
        (Some(_), false) => {
            let (k, _) = entry(t, "cursor_field").expect("read above");
            diags.push(
                Diagnostic::error(
                    "`cursor_field` is set but no `query` parameter uses `{cursor}`",
                    k.span.clone(),
                    "the cursor would never be sent",
                )
                .with_help("add one, such as `query = { updated_since = \"{cursor}\" }`"),
            );
        }
        (None, true) => {
            let (k, _) = entry(t, "query").expect("read above");
            diags.push(Diagnostic::error(
                "a `query` parameter uses `{cursor}` but `cursor_field` is not set",
                k.span.clone(),
                "nothing fills the cursor",
            ));
        }
        _ => {}
    }
    let paginate = match table_of(t, "paginate", diags) {
        None => Paginate::None,
        Some((pt, pspan)) => paginate(pt, &pspan, diags)?,
    };
    let deleted = table_of(t, "deleted", diags).and_then(|(dt, dspan)| {
        check_keys(dt, &["field", "equals"], diags);
        let field = required_str(dt, "field", &dspan, "`deleted`", diags).and_then(|s| {
            let text = if s.value.starts_with('$') {
                s.value.to_string()
            } else {
                format!("$.{}", s.value)
            };
            match JsonPath::parse(&text) {
                Ok(p) => Some(p),
                Err(e) => {
                    diags.push(Diagnostic::error(
                        format!("invalid field `{}`: {e}", s.value),
                        s.span.clone(),
                        "not a field name or JSONPath",
                    ));
                    None
                }
            }
        });
        let Some((_, item)) = entry(dt, "equals") else {
            diags.push(Diagnostic::error(
                "missing field `equals` in `deleted`",
                dspan.clone(),
                "which value marks a deleted record?",
            ));
            return None;
        };
        Some(Deleted {
            field: field?,
            equals: to_json(item),
        })
    });
    let max_pages = match int_of(t, "max_pages", diags) {
        None => 100_000,
        Some((n, _)) if n >= 1 => n as usize,
        Some((_, span)) => {
            diags.push(Diagnostic::error(
                "`max_pages` must be at least 1",
                span,
                "out of range",
            ));
            100_000
        }
    };
    Some(HttpList {
        path: path?,
        records: records?,
        query,
        cursor_field,
        cursor_start,
        paginate,
        deleted,
        max_pages,
    })
}

/// `paginate = { style = ... }`.
fn paginate(t: &Table, span: &Span, diags: &mut Diagnostics) -> Option<Paginate> {
    check_keys(t, &PAGINATE_KEYS, diags);
    const STYLES: [&str; 6] = [
        "next_url",
        "cursor",
        "offset",
        "page",
        "link_header",
        "none",
    ];
    let style = required_str(t, "style", span, "`paginate`", diags)?;
    let allowed: &[&str] = match style.value {
        "next_url" => &["style", "next", "done"],
        "cursor" => &["style", "param", "next", "done"],
        "offset" | "page" => &["style", "param", "start"],
        "link_header" | "none" => &["style"],
        other => {
            diags.push(unknown_name(
                "pagination style",
                other,
                style.span.clone(),
                &STYLES,
            ));
            return None;
        }
    };
    for (k, _) in t {
        if PAGINATE_KEYS.contains(&k.name.as_str()) && !allowed.contains(&k.name.as_str()) {
            diags.push(Diagnostic::error(
                format!(
                    "`{}` does not apply to pagination style `{}`",
                    k.name, style.value
                ),
                k.span.clone(),
                "not used by this style",
            ));
        }
    }
    let what = format!("`paginate` with style `{}`", style.value);
    let need_path = |key: &str, diags: &mut Diagnostics| {
        if entry(t, key).is_none() {
            diags.push(Diagnostic::error(
                format!("missing field `{key}` in {what}"),
                span.clone(),
                format!("`{key}` is required"),
            ));
            return None;
        }
        jsonpath_of(t, key, diags)
    };
    let param = |diags: &mut Diagnostics| {
        required_str(t, "param", span, &what, diags).map(|s| s.value.to_string())
    };
    let start = |default: u64, diags: &mut Diagnostics| match int_of(t, "start", diags) {
        None => default,
        Some((n, _)) if n >= 0 => n as u64,
        Some((_, span)) => {
            diags.push(Diagnostic::error(
                "`start` cannot be negative",
                span,
                "out of range",
            ));
            default
        }
    };
    Some(match style.value {
        "next_url" => {
            let next = need_path("next", diags);
            let done = jsonpath_of(t, "done", diags);
            Paginate::NextUrl { next: next?, done }
        }
        "cursor" => {
            let p = param(diags);
            let next = need_path("next", diags);
            let done = jsonpath_of(t, "done", diags);
            Paginate::Cursor {
                param: p?,
                next: next?,
                done,
            }
        }
        "offset" => {
            let p = param(diags);
            Paginate::Offset {
                param: p?,
                start: start(0, diags),
            }
        }
        "page" => {
            let p = param(diags);
            Paginate::Page {
                param: p?,
                start: start(1, diags),
            }
        }
        "link_header" => Paginate::LinkHeader,
        _ => Paginate::None,
    })
}

/// A path joined to `base_url`: it starts with `/`, and `{id}` is the only placeholder.
fn http_path(s: &Str<'_>, diags: &mut Diagnostics) -> Option<String> {
    if !s.value.starts_with('/') || s.value.contains("://") {
        diags.push(
            Diagnostic::error(
                format!("invalid path {}: it must start with `/`", s.shown()),
                s.span.clone(),
                "not a path",
            )
            .with_help("paths are joined to the web service's `base_url`"),
        );
        return None;
    }
    Some(s.value.to_string())
}

/// `create`, `update` or `delete` of an `http` resource.
fn http_op(key: &str, t: &Table, span: &Span, diags: &mut Diagnostics) -> Option<HttpOp> {
    check_keys(t, &HTTP_OP_KEYS, diags);
    let default = match key {
        "create" => "POST",
        "update" => "PUT",
        _ => "DELETE",
    };
    let method = match str_of(t, "method", diags) {
        None => default.to_string(),
        Some(s) if METHODS.contains(&s.value.to_ascii_uppercase().as_str()) => {
            s.value.to_ascii_uppercase()
        }
        Some(s) => {
            diags.push(unknown_name("method", s.value, s.span.clone(), &METHODS));
            return None;
        }
    };
    let path = required_str(t, "path", span, &format!("`{key}`"), diags).and_then(|s| {
        let p = http_path(&s, diags)?;
        if key != "create" && !p.contains("{id}") {
            diags.push(
                Diagnostic::error(
                    format!("the `{key}` path {} does not name `{{id}}`", s.shown()),
                    s.span.clone(),
                    "which record?",
                )
                .with_help("write it like `/tickets/{id}`"),
            );
            return None;
        }
        Some(p)
    });
    let body = str_of(t, "body", diags).map(|s| s.value.to_string());
    let response_id = jsonpath_of(t, "response_id", diags);
    let exists = match table_of(t, "exists", diags) {
        None => None,
        Some((_, espan)) if key != "create" => {
            diags.push(Diagnostic::error(
                format!("`exists` only applies to `create`, not `{key}`"),
                espan,
                "only a create can find the record already there",
            ));
            None
        }
        Some((et, espan)) => exists(et, &espan, diags),
    };
    Some(HttpOp {
        method,
        path: path?,
        body,
        response_id,
        exists,
    })
}

/// `create.exists = { status, id, pattern }`.
fn exists(t: &Table, span: &Span, diags: &mut Diagnostics) -> Option<Exists> {
    check_keys(t, &["status", "id", "pattern"], diags);
    let status = match int_of(t, "status", diags) {
        Some((n, _)) if (400..500).contains(&n) => Some(n as u16),
        Some((_, s)) => {
            diags.push(Diagnostic::error(
                "`status` must be an HTTP client error (400 to 499)",
                s,
                "out of range",
            ));
            None
        }
        None => {
            diags.push(
                Diagnostic::error(
                    "missing field `status` in `exists`",
                    span.clone(),
                    "which answer means the record exists?",
                )
                .with_help("usually `status = 409`"),
            );
            None
        }
    };
    if entry(t, "id").is_none() {
        diags.push(
            Diagnostic::error(
                "missing field `id` in `exists`",
                span.clone(),
                "where does the answer name the existing record?",
            )
            .with_help("a JSONPath such as `$.existing_id`, or `$.message` with a `pattern`"),
        );
    }
    let id = jsonpath_of(t, "id", diags);
    let pattern = match str_of(t, "pattern", diags) {
        None => None,
        Some(p) => match regex::Regex::new(p.value) {
            Ok(re) if re.captures_len() >= 2 => Some(re),
            Ok(_) => {
                diags.push(Diagnostic::error(
                    format!("`pattern` {} has no group for the id", p.shown()),
                    p.span.clone(),
                    "add one, like `Existing ID: (\\d+)`",
                ));
                return None;
            }
            Err(e) => {
                diags.push(Diagnostic::error(
                    format!("invalid `pattern` {}: {e}", p.shown()),
                    p.span.clone(),
                    "not a regular expression",
                ));
                return None;
            }
        },
    };
    Some(Exists {
        status: status?,
        id: id?,
        pattern,
    })
}

/// `read`: one record by id.
fn http_read(t: &Table, span: &Span, diags: &mut Diagnostics) -> Option<HttpRead> {
    check_keys(t, &HTTP_READ_KEYS, diags);
    let path = required_str(t, "path", span, "`read`", diags).and_then(|s| {
        let p = http_path(&s, diags)?;
        if !p.contains("{id}") {
            diags.push(
                Diagnostic::error(
                    format!("the `read` path {} does not name `{{id}}`", s.shown()),
                    s.span.clone(),
                    "which record?",
                )
                .with_help("write it like `/tickets/{id}`"),
            );
            return None;
        }
        Some(p)
    });
    let record = match entry(t, "record") {
        None => Some(JsonPath::parse("$").expect("the root")),
        Some(_) => jsonpath_of(t, "record", diags),
    };
    let query = string_query(t, diags);
    Some(HttpRead {
        path: path?,
        query,
        record: record?,
    })
}

/// A `query` table of strings.
fn string_query(t: &Table, diags: &mut Diagnostics) -> Vec<(String, String)> {
    let mut query = Vec::new();
    if let Some((qt, _)) = table_of(t, "query", diags) {
        for (k, item) in qt {
            match &item.node {
                Node::Str { value, .. } => query.push((k.name.clone(), value.clone())),
                _ => diags.push(wrong_type(&k.name, item, "a string")),
            }
        }
    }
    query
}

/// `search`: records by the values of fields, named `{field}` in the path or the query.
fn http_search(t: &Table, span: &Span, diags: &mut Diagnostics) -> Option<HttpSearch> {
    check_keys(t, &HTTP_SEARCH_KEYS, diags);
    let path = required_str(t, "path", span, "`search`", diags).and_then(|s| http_path(&s, diags));
    let query = string_query(t, diags);
    let records = match entry(t, "records") {
        None => {
            diags.push(
                Diagnostic::error(
                    "missing field `records` in `search`",
                    span.clone(),
                    "where are the records found?",
                )
                .with_help("a JSONPath such as `$.results[*]`, or `$` for an answer that is the one record"),
            );
            None
        }
        Some(_) => jsonpath_of(t, "records", diags),
    };
    let mut named = Vec::new();
    if let Some(p) = &path {
        named.extend(crate::domain::http::placeholders(p));
    }
    for (_, v) in &query {
        named.extend(crate::domain::http::placeholders(v));
    }
    if named.is_empty() && path.is_some() {
        diags.push(
            Diagnostic::error(
                "`search` names no field to search by",
                span.clone(),
                "nothing would narrow the search",
            )
            .with_help("name the `match_on` field's external name, as in `query = { email = \"{email}\" }`"),
        );
        return None;
    }
    Some(HttpSearch {
        path: path?,
        query,
        records: records?,
    })
}

/// An Odoo field: its Odoo type (`char`, `many2one` ...), with `relation` for relational ones.
fn compile_odoo_field(k: &Key, item: &Item, diags: &mut Diagnostics) -> Option<OdooField> {
    let empty = Table::new();
    let (ty, t) = match &item.node {
        Node::Str { .. } => (as_str(&k.name, item, diags)?, &empty),
        Node::Table(t) => {
            check_keys(t, &ODOO_FIELD_KEYS, diags);
            (
                required_str(t, "type", &k.span, &format!("field `{}`", k.name), diags)?,
                t,
            )
        }
        _ => {
            diags.push(wrong_type(&k.name, item, "an Odoo type name or a table"));
            return None;
        }
    };
    if !ODOO_TYPES.contains(&ty.value) {
        diags.push(unknown_name(
            "Odoo field type",
            ty.value,
            ty.span.clone(),
            &ODOO_TYPES,
        ));
        return None;
    }
    let relational = matches!(ty.value, "many2one" | "one2many" | "many2many");
    let relation = str_of(t, "relation", diags);
    match (&relation, relational) {
        (None, true) => {
            diags.push(
                Diagnostic::error(
                    format!("{} field `{}` needs `relation`", ty.value, k.name),
                    ty.span.clone(),
                    "relational type",
                )
                .with_help(
                    "name the Odoo model it points to, such as `relation = \"res.country\"`",
                ),
            );
            return None;
        }
        (Some(r), false) => {
            diags.push(Diagnostic::error(
                format!(
                    "`relation` only applies to relational fields, but `{}` is {}",
                    k.name, ty.value
                ),
                r.span.clone(),
                "not a relational field",
            ));
            return None;
        }
        _ => {}
    }
    bool_of(t, "required", diags);
    bool_of(t, "readonly", diags);
    Some(OdooField {
        ttype: ty.value.to_string(),
        relation: relation.map(|r| r.value.to_string()),
    })
}

/// How recsync holds an Odoo type's values: a many2one is its id, x2many fields are id lists.
fn recsync_type(ttype: &str) -> FieldType {
    match ttype {
        "text" | "html" => FieldType::Text,
        "integer" | "many2one" => FieldType::Integer,
        "float" | "monetary" => FieldType::Float,
        "boolean" => FieldType::Boolean,
        "date" => FieldType::Date,
        "datetime" => FieldType::Datetime,
        "binary" => FieldType::Binary,
        "one2many" | "many2many" | "json" | "properties" => FieldType::Json,
        _ => FieldType::Char,
    }
}

/// Odoo's domain operators.
const ODOO_OPERATORS: [&str; 18] = [
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "not in",
    "like",
    "not like",
    "ilike",
    "not ilike",
    "=like",
    "=ilike",
    "=?",
    "child_of",
    "parent_of",
];

/// An Odoo domain in prefix notation, checked for shape (terms are `[field, operator, value]`,
/// `&` and `|` take two operands and `!` one) and kept as JSON.
fn odoo_domain(item: &Item, diags: &mut Diagnostics) -> Vec<Value> {
    let Node::Array(items) = &item.node else {
        diags.push(wrong_type("domain", item, "a list of conditions"));
        return Vec::new();
    };
    let mut out = Vec::new();
    // Operands available, read from the end as Odoo's normalisation does.
    let mut operands = 0usize;
    let mut ok = true;
    for it in items.iter().rev() {
        match &it.node {
            Node::Str { value, .. } => {
                let need = match value.as_str() {
                    "!" => 1,
                    "&" | "|" => 2,
                    other => {
                        diags.push(unknown_name(
                            "domain operator",
                            other,
                            it.span.clone(),
                            &["&", "|", "!"],
                        ));
                        ok = false;
                        continue;
                    }
                };
                if operands < need {
                    diags.push(Diagnostic::error(
                        format!("`{value}` needs {need} condition(s) after it"),
                        it.span.clone(),
                        "too few operands",
                    ));
                    ok = false;
                }
                operands = operands.saturating_sub(need) + 1;
            }
            Node::Array(term) => {
                let op = term.get(1).map(|o| &o.node);
                let field_ok = matches!(term.first().map(|f| &f.node), Some(Node::Str { .. }));
                match (term.len(), op) {
                    (3, Some(Node::Str { value, .. }))
                        if field_ok && ODOO_OPERATORS.contains(&value.as_str()) => {}
                    (3, Some(Node::Str { value, .. })) if field_ok => {
                        diags.push(unknown_name(
                            "Odoo operator",
                            value,
                            term[1].span.clone(),
                            &ODOO_OPERATORS,
                        ));
                        ok = false;
                    }
                    _ => {
                        diags.push(
                            Diagnostic::error(
                                "an Odoo domain condition is `[field, operator, value]`",
                                it.span.clone(),
                                "not a condition",
                            )
                            .with_help("for example [\"type\", \"=\", \"contact\"]"),
                        );
                        ok = false;
                    }
                }
                operands += 1;
            }
            _ => {
                diags.push(wrong_type(
                    "domain",
                    it,
                    "a condition or \"&\", \"|\", \"!\"",
                ));
                ok = false;
            }
        }
    }
    if ok {
        out.extend(items.iter().map(to_json));
    }
    out
}
