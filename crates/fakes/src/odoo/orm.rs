//! ORM calls as the fake answers them (`fields_get`, `search_read`, `read`, `create`,
//! `write`, `unlink`, ...), with their arguments by position or name, and the faults that
//! fail them.

use super::*;

/// One ORM call with its arguments by name (JSON-2), or positional ones mapped to names
/// (JSON-RPC `execute_kw`, whose `kwargs` are named already).
pub(super) fn call(
    i: &mut Inner,
    model: &str,
    method: &str,
    kw: &Map<String, Value>,
) -> Result<Value, OdooError> {
    let context = kw.get("context").cloned().unwrap_or(json!({}));
    let domain: Vec<Value> = kw
        .get("domain")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let offset = kw.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let limit = kw
        .get("limit")
        .and_then(Value::as_u64)
        .map(|l| l as usize)
        .filter(|l| *l > 0);
    let order = kw.get("order").and_then(Value::as_str);
    let fields = strings(kw.get("fields"));
    let classic = kw.get("load").and_then(Value::as_str) == Some("_classic_write");
    match method {
        "fields_get" => {
            let defs = defs(model)?;
            let wanted = strings(kw.get("allfields"));
            let attrs = strings(kw.get("attributes"));
            let mut out = Map::new();
            for (name, d) in defs {
                if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
                    continue;
                }
                let mut f = Map::new();
                f.insert("type".into(), json!(d.ttype));
                f.insert("string".into(), json!(d.string));
                f.insert("required".into(), json!(d.required));
                f.insert("readonly".into(), json!(d.readonly));
                f.insert("store".into(), json!(*name != "display_name"));
                if let Some(r) = d.relation {
                    f.insert("relation".into(), json!(r));
                }
                if d.ttype == "selection" {
                    f.insert(
                        "selection".into(),
                        json!([
                            ["contact", "Contact"],
                            ["invoice", "Invoice Address"],
                            ["delivery", "Delivery Address"],
                            ["other", "Other Address"]
                        ]),
                    );
                }
                if !attrs.is_empty() {
                    f.retain(|k, _| attrs.iter().any(|a| a == k));
                }
                out.insert(name.to_string(), Value::Object(f));
            }
            Ok(Value::Object(out))
        }
        "search" => Ok(json!(search(
            i, model, &domain, offset, limit, order, &context
        )?)),
        "search_count" => Ok(json!(
            search(i, model, &domain, 0, limit, None, &context)?.len()
        )),
        "search_read" => {
            let ids = search(i, model, &domain, offset, limit, order, &context)?;
            read(i, model, &ids, &fields, classic)
        }
        "read" => read(i, model, &ids_of(kw.get("ids")), &fields, classic),
        "create" => match kw.get("vals_list").or_else(|| kw.get("vals")) {
            Some(Value::Array(list)) => {
                let mut ids = Vec::new();
                for v in list {
                    ids.push(create(i, model, v)?);
                }
                Ok(json!(ids))
            }
            Some(v) => Ok(json!(create(i, model, v)?)),
            None => Err(OdooError::user("create: no values given")),
        },
        "write" => {
            write(
                i,
                model,
                &ids_of(kw.get("ids")),
                kw.get("vals").unwrap_or(&json!({})),
            )?;
            Ok(json!(true))
        }
        "unlink" => {
            unlink(i, model, &ids_of(kw.get("ids")))?;
            Ok(json!(true))
        }
        "context_get" => Ok(json!({"lang": "en_US", "tz": "Europe/Brussels", "uid": UID})),
        "default_get" => {
            let defs = defs(model)?;
            let wanted = strings(kw.get("fields_list"));
            let mut out = Map::new();
            if defs.iter().any(|(n, _)| *n == "active")
                && (wanted.is_empty() || wanted.iter().any(|w| w == "active"))
            {
                out.insert("active".into(), json!(true));
            }
            Ok(Value::Object(out))
        }
        other => Err(OdooError::new(
            "builtins.AttributeError",
            format!("The method '{other}' does not exist on the model '{model}'"),
        )),
    }
}

/// The parameter names of each method, in order, for positional arguments.
pub(super) fn parameters(method: &str) -> &'static [&'static str] {
    match method {
        "fields_get" => &["allfields", "attributes"],
        "search" => &["domain", "offset", "limit", "order"],
        "search_count" => &["domain", "limit"],
        "search_read" => &["domain", "fields", "offset", "limit", "order"],
        "read" => &["ids", "fields"],
        "create" => &["vals_list"],
        "write" => &["ids", "vals"],
        "unlink" => &["ids"],
        "default_get" => &["fields_list"],
        _ => &[],
    }
}

/// Positional arguments and keyword arguments, as `execute_kw` receives them, by name.
pub(super) fn named(
    method: &str,
    args: &[Value],
    kwargs: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut kw = kwargs.cloned().unwrap_or_default();
    for (name, v) in parameters(method).iter().zip(args) {
        kw.entry(name.to_string()).or_insert_with(|| v.clone());
    }
    kw
}

/// The fault due now, if any, as (HTTP status, body, content type).
pub(super) fn fault(i: &mut Inner) -> Option<Result<(), OdooError>> {
    let f = &mut i.faults;
    if f.rate_limit > 0 {
        f.rate_limit -= 1;
        return Some(Err(OdooError::new("fake.RateLimited", "429")));
    }
    if f.html_errors > 0 {
        f.html_errors -= 1;
        return Some(Err(OdooError::new("fake.Html", "502")));
    }
    if f.server_errors > 0 {
        f.server_errors -= 1;
        return Some(Err(OdooError::new(
            "builtins.RuntimeError",
            "The server is busy; try again",
        )));
    }
    if f.serialization_failures > 0 {
        f.serialization_failures -= 1;
        return Some(Err(OdooError::new(
            "psycopg2.errors.SerializationFailure",
            "could not serialize access due to concurrent update",
        )));
    }
    None
}

/// A create made whose answer is lost, when `lose_create_answers` says so.
pub(super) fn answer_lost(
    i: &mut Inner,
    method: &str,
    r: Result<Value, OdooError>,
) -> Result<Value, OdooError> {
    if r.is_ok() && method == "create" && i.faults.lose_create_answers > 0 {
        i.faults.lose_create_answers -= 1;
        return Err(OdooError::new("fake.Html", "502"));
    }
    r
}

/// Answers a transport-level fault (429, an HTML page), or `None` for an Odoo error.
pub(super) fn transport_fault(e: &OdooError) -> Option<HttpResponse> {
    match e.name {
        "fake.RateLimited" => Some(
            HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", "1"))
                .content_type("text/html")
                .body("<html><body><h1>429 Too Many Requests</h1></body></html>"),
        ),
        "fake.Html" => Some(
            HttpResponse::BadGateway()
                .content_type("text/html")
                .body("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"),
        ),
        _ => None,
    }
}
