//! `recsync discover <web_service> <resource>` for an `http` web service: one sample page,
//! read through a configured resource's `list` or from a path, printed as an
//! `external_models` block with the fields and the types their values suggest. Where the
//! page's shape says how records and pages are found, the block says so too.

use super::call::Caller;
use super::paging;
use super::spec::HttpResource;
use crate::connectors::PullError;
use crate::domain::Plan;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Records read for the sample.
const SAMPLE: usize = 20;

pub(super) async fn describe(
    caller: &Caller,
    plan: &Plan,
    resource: Option<&str>,
) -> Result<String, PullError> {
    let fail = |e: String| PullError::Service(format!("web service `{}`: {e}", caller.name));
    let Some(resource) = resource else {
        return Err(fail(
            "name a resource: a path such as `/tickets`, or an external model of this web service"
                .into(),
        ));
    };
    let base = caller.service.base_url.expose();
    let configured = plan
        .external_models
        .get(resource)
        .and_then(|e| e.settings::<HttpResource>())
        .and_then(|r| r.list.as_ref());
    let (name, url, records_path) = match configured {
        Some(list) => (
            resource.to_string(),
            paging::first_url(base, list, SAMPLE, list.cursor_start.as_deref()).map_err(fail)?,
            Some(list.records.clone()),
        ),
        None if resource.starts_with('/') => (
            name_of(resource),
            paging::join(base, resource).map_err(fail)?,
            None,
        ),
        None => {
            return Err(fail(format!(
                "`{resource}` is neither a path (start it with `/`) nor an external model of kind `http`"
            )));
        }
    };
    let fetched = super::fetch(caller, url.clone())
        .await
        .map_err(|e| fail(format!("{}: {e}", url.path())))?;
    let body = fetched.body.clone();
    let (records_text, items) = match records_path {
        Some(p) => {
            let mut b = body.clone();
            let list = plan
                .external_models
                .get(resource)
                .and_then(|e| e.settings::<HttpResource>())
                .and_then(|r| r.list.as_ref())
                .expect("configured");
            let items =
                paging::records(list, &mut b).map_err(|e| fail(format!("{}: {e}", url.path())))?;
            (p.as_str().to_string(), items)
        }
        None => guess_records(&body).ok_or_else(|| {
            fail(format!(
                "{}: the page holds no list of objects to take as records",
                url.path()
            ))
        })?,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# read from {} ({} records in the sample)",
        url.path(),
        items.len()
    );
    let _ = writeln!(out, "[external_models.{name}]");
    let _ = writeln!(out, "kind = \"http\"");
    if configured.is_none() {
        let _ = writeln!(out, "[external_models.{name}.list]");
        let _ = writeln!(out, "path = \"{}\"", url.path());
        let _ = writeln!(out, "records = \"{records_text}\"");
        match guess_paginate(&body, fetched.link.as_deref()) {
            Some(p) => {
                let _ = writeln!(out, "{p}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "# paginate = {{ style = \"...\" }}   # no next page was named in the sample"
                );
            }
        }
    }
    let (fields, nested) = infer(&items);
    let _ = writeln!(out, "[external_models.{name}.fields]");
    let width = fields.keys().map(|k| k.len()).max().unwrap_or(0);
    for (k, ty) in &fields {
        let _ = writeln!(out, "{k:width$} = \"{ty}\"");
    }
    if !nested.is_empty() {
        let _ = writeln!(
            out,
            "# Nested values, read and sent with a JSONPath as a pair's `external`:"
        );
        for (path, ty) in &nested {
            let _ = writeln!(out, "#   external = \"$.{path}\"   ({ty})");
        }
    }
    Ok(out)
}

/// An external model name from a path: `/api/v2/tickets.json` gives `tickets`.
fn name_of(path: &str) -> String {
    let last = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("resource");
    let stem = last.split('.').next().unwrap_or(last);
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("resource_{name}")
    } else {
        name
    }
}

/// The records of a page whose shape is not configured: the page itself if it is a list, else
/// its first member that is a list of objects.
fn guess_records(body: &Value) -> Option<(String, Vec<Value>)> {
    let objects = |v: &Value| {
        v.as_array()
            .filter(|a| a.iter().all(Value::is_object))
            .cloned()
    };
    if let Some(items) = objects(body) {
        return Some(("$[*]".into(), items));
    }
    let map = body.as_object()?;
    map.iter()
        .find_map(|(k, v)| {
            objects(v)
                .filter(|a| !a.is_empty())
                .map(|a| (format!("$.{k}[*]"), a))
        })
        .or_else(|| {
            map.iter()
                .find_map(|(k, v)| objects(v).map(|a| (format!("$.{k}[*]"), a)))
        })
}

/// The pagination a page suggests, as a `paginate = ...` line.
fn guess_paginate(body: &Value, link: Option<&str>) -> Option<String> {
    if link.and_then(paging::link_next).is_some() {
        return Some("paginate = { style = \"link_header\" }".into());
    }
    let is_url = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.starts_with("http") || s.starts_with('/'))
    };
    for path in ["next_page", "next", "links.next", "_links.next.href"] {
        let v = path.split('.').try_fold(body, |cur, k| cur.get(k));
        if v.is_some_and(is_url) {
            return Some(format!(
                "paginate = {{ style = \"next_url\", next = \"$.{path}\" }}"
            ));
        }
    }
    for (path, param) in [
        ("paging.next.after", "after"),
        ("meta.next_cursor", "cursor"),
        ("next_cursor", "cursor"),
        ("response_metadata.next_cursor", "cursor"),
    ] {
        let v = path.split('.').try_fold(body, |cur, k| cur.get(k));
        if v.is_some_and(|v| v.is_string()) {
            return Some(format!(
                "paginate = {{ style = \"cursor\", param = \"{param}\", next = \"$.{path}\" }}"
            ));
        }
    }
    None
}

/// The type a value suggests, in recsync's field types.
fn type_of(v: &Value) -> Option<&'static str> {
    Some(match v {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "float",
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => "datetime",
        Value::String(s) if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => "date",
        Value::String(_) => "char",
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    })
}

/// Two types seen for one field: the wider.
fn widen(a: &'static str, b: &'static str) -> &'static str {
    match (a, b) {
        _ if a == b => a,
        ("integer", "float") | ("float", "integer") => "float",
        _ => "char",
    }
}

/// The fields of the sample (top-level scalars) and the nested scalars (one level into
/// objects), with their types.
fn infer(
    items: &[Value],
) -> (
    BTreeMap<String, &'static str>,
    BTreeMap<String, &'static str>,
) {
    let mut fields: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut nested: BTreeMap<String, &'static str> = BTreeMap::new();
    let note = |map: &mut BTreeMap<String, &'static str>, k: String, v: &Value| {
        if let Some(t) = type_of(v) {
            map.entry(k)
                .and_modify(|old| *old = widen(old, t))
                .or_insert(t);
        }
    };
    for item in items {
        let Some(obj) = item.as_object() else {
            continue;
        };
        for (k, v) in obj {
            match v {
                Value::Object(inner) => {
                    for (ik, iv) in inner {
                        note(&mut nested, format!("{k}.{ik}"), iv);
                    }
                }
                // A field null in the whole sample still exists: `char` until a value says more.
                Value::Null => {
                    fields.entry(k.clone()).or_insert("char");
                }
                _ => note(&mut fields, k.clone(), v),
            }
        }
    }
    (fields, nested)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sample_gives_fields_types_records_and_pagination() {
        let body = json!({
            "results": [
                {"id": "51", "properties": {"email": "a@x.io", "lastmodifieddate": "2024-05-01T10:00:00Z"}, "archived": false, "createdAt": "2024-05-01T10:00:00.000Z"},
                {"id": "52", "properties": {"email": null}, "archived": true, "createdAt": "2024-05-02T10:00:00.000Z"}
            ],
            "paging": {"next": {"after": "NTI=", "link": "?after=NTI="}}
        });
        let (path, items) = guess_records(&body).unwrap();
        assert_eq!(path, "$.results[*]");
        let (fields, nested) = infer(&items);
        assert_eq!(fields["id"], "char");
        assert_eq!(fields["archived"], "boolean");
        assert_eq!(fields["createdAt"], "datetime");
        assert_eq!(nested["properties.email"], "char");
        assert_eq!(nested["properties.lastmodifieddate"], "datetime");
        assert_eq!(
            guess_paginate(&body, None).unwrap(),
            r#"paginate = { style = "cursor", param = "after", next = "$.paging.next.after" }"#
        );
        let z = json!({"tickets": [{"id": 1, "score": 1}, {"id": 2, "score": 2.5}], "next_page": "https://x.zendesk.com/api/v2/incremental/tickets.json?start_time=5"});
        let (path, items) = guess_records(&z).unwrap();
        assert_eq!(path, "$.tickets[*]");
        assert_eq!(infer(&items).0["score"], "float");
        assert!(guess_paginate(&z, None).unwrap().contains("next_url"));
        assert!(
            guess_paginate(&json!([]), Some("<https://a/x?page=2>; rel=\"next\""))
                .unwrap()
                .contains("link_header")
        );
        assert_eq!(name_of("/api/v2/incremental/tickets.json"), "tickets");
    }
}
