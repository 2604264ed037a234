//! The configuration of the `http` kind: any HTTP JSON API, a web service (base URL,
//! authentication, rate limit, headers) and resources described by their operations
//! (`list`, `create`, `update`, `delete`, `read`, `search`).

use super::spec::*;
use crate::config::kit::*;
use crate::domain::mapping::{Direction, JsonPath};
use crate::domain::plan::{Auth, ExternalModel, ServiceSettings, WebService};
use std::sync::Arc;
use std::time::Duration;

/// The keys of an `http` resource's `list`.
pub const HTTP_LIST_KEYS: [&str; 9] = [
    "path",
    "records",
    "query",
    "cursor_field",
    "cursor_start",
    "paginate",
    "deleted",
    "max_pages",
    "description",
];
/// The keys of `paginate`.
pub const PAGINATE_KEYS: [&str; 5] = ["style", "next", "param", "start", "done"];
/// The keys of an `http` resource's `create`, `update` and `delete`.
pub const HTTP_OP_KEYS: [&str; 6] = [
    "method",
    "path",
    "body",
    "response_id",
    "exists",
    "description",
];
/// The keys of an `http` resource's `read`.
pub const HTTP_READ_KEYS: [&str; 4] = ["path", "query", "record", "description"];
/// The keys of an `http` resource's `search`.
pub const HTTP_SEARCH_KEYS: [&str; 4] = ["path", "query", "records", "description"];
pub const HTTP_KEYS: [&str; 11] = [
    "kind",
    "description",
    "base_url",
    "auth",
    "rate_limit",
    "timeout",
    "max_concurrency",
    "retries",
    "headers",
    "signing_secret",
    "active",
];
/// The keys of an `http` external model.
pub const HTTP_MODEL_KEYS: [&str; 6] = ["list", "create", "update", "delete", "read", "search"];

/// The `http` kind.
pub struct Http;

impl Kind for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn label(&self) -> &'static str {
        "HTTP"
    }

    fn models_called(&self) -> &'static str {
        "external models of kind `http`"
    }

    fn service_keys(&self) -> &'static [&'static str] {
        &HTTP_KEYS
    }

    fn compile_service(
        &self,
        d: &Declared<'_>,
        diags: &mut Diagnostics,
    ) -> Option<Arc<dyn ServiceSettings>> {
        let t = d.table;
        let what = &d.what;
        let base_url = required_str(t, "base_url", &d.key.span, what, diags)
            .and_then(|s| check_url("base_url", &s, diags));
        let auth = match table_of(t, "auth", diags) {
            None => Auth::None,
            Some((at, span)) => compile_auth(at, &span, true, diags)?,
        };
        let rate_limit = str_of(t, "rate_limit", diags).and_then(|s| {
            let parsed = RateLimit::parse(s.value);
            if parsed.is_none() {
                diags.push(
                    Diagnostic::error(
                        format!("invalid `rate_limit` {}", s.shown()),
                        s.span.clone(),
                        "not a rate",
                    )
                    .with_help("write requests per unit, such as `10/s`, `600/min` or `5000/h`"),
                );
            }
            parsed
        });
        let timeout = duration_of(t, "timeout", diags).unwrap_or(Duration::from_secs(30));
        let max_concurrency = max_concurrency_of(t, 8, diags);
        let retries = match int_of(t, "retries", diags) {
            None => 3,
            Some((n, _)) if (0..=20).contains(&n) => n as u32,
            Some((_, span)) => {
                diags.push(Diagnostic::error(
                    "`retries` must be between 0 and 20",
                    span,
                    "out of range",
                ));
                3
            }
        };
        let mut headers = Vec::new();
        if let Some((ht, _)) = table_of(t, "headers", diags) {
            for (k, item) in ht {
                if reqwest::header::HeaderName::from_bytes(k.name.as_bytes()).is_err() {
                    diags.push(Diagnostic::error(
                        format!("`{}` is not a valid HTTP header name", k.name),
                        k.span.clone(),
                        "invalid header name",
                    ));
                    continue;
                }
                if let Some(v) = as_str(&k.name, item, diags) {
                    headers.push((k.name.clone(), cfg_str(&v)));
                }
            }
        }
        let signing = signing_of(t, "signing_secret", diags);
        Some(Arc::new(HttpService {
            base_url: base_url?,
            auth,
            rate_limit,
            timeout,
            max_concurrency,
            retries,
            headers,
            signing,
        }))
    }

    fn model_keys(&self) -> &'static [&'static str] {
        &HTTP_MODEL_KEYS
    }

    fn compile_model(&self, d: &Declared<'_>, diags: &mut Diagnostics) -> Option<CompiledModel> {
        let t = d.table;
        let name = d.name();
        let fields = compile_plain_fields(t, diags);
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
        let list = table_of(t, "list", diags).and_then(|(lt, span)| http_list(lt, &span, diags));
        let op = |key: &str, diags: &mut Diagnostics| {
            table_of(t, key, diags).and_then(|(ot, span)| http_op(key, ot, &span, diags))
        };
        let create = op("create", diags);
        let update = op("update", diags);
        let delete = op("delete", diags);
        let read = table_of(t, "read", diags).and_then(|(rt, span)| http_read(rt, &span, diags));
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
        Some(CompiledModel {
            fields,
            settings: Arc::new(HttpResource {
                list,
                create,
                update,
                delete,
                read,
                search,
            }),
        })
    }

    /// Most HTTP APIs name it `id`.
    fn identity(&self, _: &ExternalModel) -> Identity {
        Identity::DefaultIfDeclared("id".into())
    }

    fn takes_endpoints(&self) -> bool {
        false
    }

    fn can_archive(&self, _: Option<&ExternalModel>) -> bool {
        false
    }

    fn cannot_reconcile(&self, _: &WebService, e: &ExternalModel) -> Option<(String, String)> {
        e.settings::<HttpResource>()
            .is_some_and(|r| r.list.is_none())
            .then(|| {
                (
                    format!(
                        "resource `{}` has no `list`, so this sync cannot reconcile",
                        e.name
                    ),
                    "add `[external_models.<name>.list]`, or remove `reconcile`".to_string(),
                )
            })
    }

    fn undeclared_name(&self, _: &ExternalModel, _: &Str<'_>, _: &mut Diagnostics) -> Option<bool> {
        None
    }

    /// Its records are JSON documents read by path; their members are not declared.
    fn reads_any_member(&self) -> bool {
        true
    }

    fn check_sync(&self, s: &SyncCheck<'_>, diags: &mut Diagnostics) {
        if let Some(e) = s.external {
            check_http_operations(
                s.what,
                s.direction,
                s.propagate_deletes,
                e,
                s.span.clone(),
                diags,
            );
        }
    }
}

/// An `http` resource must offer what the sync's direction asks of it: `list` to receive,
/// `create` and `update` to send, `delete` to send deletes.
fn check_http_operations(
    what: &str,
    dir: Direction,
    propagate_deletes: bool,
    e: &ExternalModel,
    dir_span: Span,
    diags: &mut Diagnostics,
) {
    let Some(r) = e.settings::<HttpResource>() else {
        return;
    };
    let mut missing = Vec::new();
    if dir.to_local() && r.list.is_none() {
        missing.push(("list", "receives"));
    }
    if dir.to_external() {
        if r.create.is_none() {
            missing.push(("create", "sends new records"));
        }
        if r.update.is_none() {
            missing.push(("update", "sends changes"));
        }
        if propagate_deletes && r.delete.is_none() {
            missing.push(("delete", "sends deletes (propagate_deletes = true)"));
        }
    }
    for (op, why) in missing {
        diags.push(
            Diagnostic::error(
                format!(
                    "{what} {why}, but resource `{}` has no `{op}` operation",
                    e.name
                ),
                dir_span.clone(),
                format!("needs `[external_models.{}.{op}]`", e.name),
            )
            .with_help(match op {
                "list" => {
                    "add a `list` with `path` and `records`, or use direction = \"to_external\""
                }
                "delete" => {
                    "add a `delete` with `method` and `path`, or set propagate_deletes = false"
                }
                _ => "add the operation with `method` and `path`, or use direction = \"to_local\"",
            }),
        );
    }
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
        named.extend(placeholders(p));
    }
    for (_, v) in &query {
        named.extend(placeholders(v));
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
