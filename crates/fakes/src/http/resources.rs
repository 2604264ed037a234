//! The resources as the fake answers them: contacts (HubSpot style), tickets (Zendesk style, with
//! the incremental export) and items in each pagination style: list, read, write, delete.

use super::*;

/// The origin next-page links use: the fake's own, or the one a fault names.
pub(super) fn link_origin(state: &HttpState, host: &str) -> String {
    state
        .with(|i| i.faults.next_host.clone())
        .unwrap_or_else(|| host.to_string())
}

pub(super) fn maybe_without_id(state: &HttpState, mut v: Value, key: &str) -> Value {
    if state.with(|i| i.faults.drop_ids)
        && let Some(o) = v.as_object_mut()
    {
        o.remove(key);
    }
    v
}

/// A numeric query parameter; the error is the 400 answer's message.
pub(super) fn number(q: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, String> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("`{key}` must be a number, not `{v}`")),
    }
}

pub(super) fn bad_request(message: String) -> HttpResponse {
    status(400).json(json!({"message": message}))
}

pub(super) fn list_contacts(
    state: &HttpState,
    host: &str,
    q: &HashMap<String, String>,
) -> HttpResponse {
    let limit = match number(q, "limit", 10) {
        Ok(n) => n.clamp(1, 100) as usize,
        Err(m) => return bad_request(m),
    };
    let after: u64 = match q.get("after") {
        None => 0,
        Some(a) => match base64::engine::general_purpose::STANDARD
            .decode(a)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
        {
            Some(n) => n,
            None => {
                return hubspot_error(
                    400,
                    "VALIDATION_ERROR",
                    "Invalid input: `after` is not a valid paging cursor",
                );
            }
        },
    };
    let archived = q
        .get("archived")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let repeat = state.with(|i| i.faults.repeat_pages);
    let (page, more) = state.with(|i| {
        let mut it = i
            .contacts
            .records
            .range(after..)
            .filter(|(_, r)| r.values.get("archived") == Some(&json!(archived)));
        let page: Vec<(u64, Value)> = it
            .by_ref()
            .take(limit)
            .map(|(id, r)| (*id, Value::Object(r.values.clone())))
            .collect();
        let more = it.next().map(|(id, _)| *id);
        (page, more)
    });
    let results: Vec<Value> = page
        .iter()
        .map(|(_, v)| maybe_without_id(state, v.clone(), "id"))
        .collect();
    let mut out = json!({"results": results});
    if let Some(next) = more {
        let token_of = if repeat { after } else { next };
        let token = base64::engine::general_purpose::STANDARD.encode(token_of.to_string());
        let origin = link_origin(state, host);
        out["paging"] = json!({"next": {
            "after": token,
            "link": format!("{origin}/crm/v3/objects/contacts?after={}&limit={limit}", urlencode(&token)),
        }});
    }
    HttpResponse::Ok().json(out)
}

pub(super) fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(super) fn read_one(state: &HttpState, resource: &str, id: &str) -> HttpResponse {
    let found = id.parse::<u64>().ok().and_then(|n| {
        state.with(|i| {
            i.collection(resource)
                .records
                .get(&n)
                .map(|r| Value::Object(r.values.clone()))
        })
    });
    match (found, resource) {
        (Some(v), "tickets") => HttpResponse::Ok().json(json!({"ticket": v})),
        (Some(v), _) => HttpResponse::Ok().json(v),
        (None, "contacts") => hubspot_error(404, "OBJECT_NOT_FOUND", "resource not found"),
        (None, "tickets") => {
            status(404).json(json!({"error": "RecordNotFound", "description": "Not found"}))
        }
        (None, _) => status(404).json(json!({"message": "no such item"})),
    }
}

pub(super) fn delete_one(state: &HttpState, resource: &str, id: &str) -> HttpResponse {
    match id.parse::<u64>() {
        Ok(n) if state.remove(resource, n) => HttpResponse::NoContent().finish(),
        _ => read_one(state, resource, id),
    }
}

pub(super) fn write_contact(
    state: &HttpState,
    id: Option<u64>,
    body: Option<&Value>,
) -> HttpResponse {
    let Some(props) = body
        .and_then(|b| b.get("properties"))
        .and_then(Value::as_object)
    else {
        return hubspot_error(
            400,
            "VALIDATION_ERROR",
            "Invalid input JSON: `properties` is required",
        );
    };
    if let Some(email) = props.get("email").and_then(Value::as_str) {
        if !email.contains('@') {
            return hubspot_error(
                400,
                "VALIDATION_ERROR",
                &format!(
                    "Property values were not valid: [{{\"isValid\":false,\"message\":\"Email address {email} is invalid\",\"error\":\"INVALID_EMAIL\",\"name\":\"email\"}}]"
                ),
            );
        }
        let taken = state.with(|i| {
            i.contacts.records.iter().find_map(|(other, r)| {
                (Some(*other) != id
                    && r.values.get("archived") != Some(&json!(true))
                    && r.values["properties"].get("email").and_then(Value::as_str) == Some(email))
                .then_some(*other)
            })
        });
        if let Some(other) = taken {
            return hubspot_error(
                409,
                "CONFLICT",
                &format!("Contact already exists. Existing ID: {other}"),
            );
        }
    }
    if let Some(n) = id
        && !state.with(|i| i.contacts.records.contains_key(&n))
    {
        return hubspot_error(404, "OBJECT_NOT_FOUND", "resource not found");
    }
    let v = state.upsert("contacts", id, Value::Object(props.clone()));
    if id.is_some() {
        HttpResponse::Ok().json(v)
    } else {
        HttpResponse::Created().json(v)
    }
}

pub(super) fn write_ticket(
    state: &HttpState,
    id: Option<u64>,
    body: Option<&Value>,
) -> HttpResponse {
    let Some(t) = body
        .and_then(|b| b.get("ticket"))
        .and_then(Value::as_object)
    else {
        return status(400).json(
            json!({"error": "InvalidEndpoint", "description": "Expected a `ticket` object"}),
        );
    };
    let blank = |k: &str| {
        t.get(k)
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
    };
    if id.is_none() && blank("subject") {
        return status(422).json(json!({
            "error": "RecordInvalid",
            "description": "Record validation errors",
            "details": {"subject": [{"description": "Subject: cannot be blank", "error": "BlankValue"}]}
        }));
    }
    if let Some(n) = id
        && !state.with(|i| i.tickets.records.contains_key(&n))
    {
        return status(404).json(json!({"error": "RecordNotFound", "description": "Not found"}));
    }
    let v = state.upsert("tickets", id, Value::Object(t.clone()));
    let out = json!({"ticket": v});
    if id.is_some() {
        HttpResponse::Ok().json(out)
    } else {
        HttpResponse::Created().json(out)
    }
}

pub(super) fn write_item(state: &HttpState, id: Option<u64>, body: Option<&Value>) -> HttpResponse {
    let Some(v) = body.filter(|b| b.is_object()) else {
        return status(400).json(json!({"message": "expected a JSON object"}));
    };
    if let Some(n) = id
        && !state.with(|i| i.items.records.contains_key(&n))
    {
        return status(404).json(json!({"message": "no such item"}));
    }
    let out = state.upsert("items", id, v.clone());
    if id.is_some() {
        HttpResponse::Ok().json(out)
    } else {
        HttpResponse::Created().json(out)
    }
}

/// Zendesk's time-based incremental export.
pub(super) fn export_tickets(
    state: &HttpState,
    host: &str,
    q: &HashMap<String, String>,
) -> HttpResponse {
    let Some(start) = q.get("start_time") else {
        return status(400)
            .json(json!({"error": "InvalidValue", "description": "start_time is required"}));
    };
    let Ok(start) = start.parse::<i64>() else {
        return status(400).json(
            json!({"error": "InvalidValue", "description": "start_time must be a Unix epoch time"}),
        );
    };
    let per_page = match number(q, "per_page", 1000) {
        Ok(n) => n.clamp(1, 1000) as usize,
        Err(m) => return bad_request(m),
    };
    let repeat = state.with(|i| i.faults.repeat_pages);
    let (tickets, more) = state.with(|i| {
        let mut it = i.tickets.by_stamp.range((start, 0)..);
        let ids: Vec<(i64, u64)> = it.by_ref().take(per_page).copied().collect();
        let more = it.next().is_some();
        let tickets: Vec<(i64, Value)> = ids
            .iter()
            .map(|(s, id)| (*s, Value::Object(i.tickets.records[id].values.clone())))
            .collect();
        (tickets, more)
    });
    let end_time = if repeat {
        start
    } else {
        tickets.last().map(|(s, _)| *s).unwrap_or(start)
    };
    let origin = link_origin(state, host);
    let count = tickets.len();
    let tickets: Vec<Value> = tickets
        .into_iter()
        .map(|(_, v)| maybe_without_id(state, v, "id"))
        .collect();
    HttpResponse::Ok().json(json!({
        "tickets": tickets,
        "count": count,
        "end_time": end_time,
        "next_page": format!("{origin}/api/v2/incremental/tickets.json?per_page={per_page}&start_time={end_time}"),
        "end_of_stream": !more,
    }))
}

/// Zendesk's offset pagination of `/api/v2/tickets`.
pub(super) fn list_tickets(
    state: &HttpState,
    host: &str,
    q: &HashMap<String, String>,
) -> HttpResponse {
    let (page, per_page) = match (number(q, "page", 1), number(q, "per_page", 100)) {
        (Ok(p), Ok(n)) => (p.max(1), n.clamp(1, 100)),
        (Err(m), _) | (_, Err(m)) => return bad_request(m),
    };
    let (tickets, total) = state.with(|i| {
        let live: Vec<Value> = i
            .tickets
            .records
            .values()
            .filter(|r| r.values.get("status") != Some(&json!("deleted")))
            .skip(((page - 1) * per_page) as usize)
            .take(per_page as usize)
            .map(|r| Value::Object(r.values.clone()))
            .collect();
        let total = i
            .tickets
            .records
            .values()
            .filter(|r| r.values.get("status") != Some(&json!("deleted")))
            .count();
        (live, total)
    });
    let origin = link_origin(state, host);
    let at = |p: u64| format!("{origin}/api/v2/tickets.json?page={p}&per_page={per_page}");
    let next = ((page * per_page) < total as u64).then(|| at(page + 1));
    let tickets: Vec<Value> = tickets
        .into_iter()
        .map(|v| maybe_without_id(state, v, "id"))
        .collect();
    HttpResponse::Ok().json(json!({
        "tickets": tickets,
        "next_page": next,
        "previous_page": (page > 1).then(|| at(page - 1)),
        "count": total,
    }))
}

/// The generic items, in one of five pagination styles.
pub(super) fn list_items(
    state: &HttpState,
    host: &str,
    style: &str,
    q: &HashMap<String, String>,
) -> HttpResponse {
    let limit_key = if matches!(style, "page" | "link_header") {
        "per_page"
    } else {
        "limit"
    };
    let limit = match number(q, limit_key, 50) {
        Ok(n) => n.clamp(1, 1000) as usize,
        Err(m) => return bad_request(m),
    };
    let since: Option<i64> = match q.get("updated_since") {
        None => None,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.timestamp()),
            Err(_) => {
                return status(400).json(
                    json!({"message": format!("`updated_since` is not an RFC 3339 time: {s}")}),
                );
            }
        },
    };
    // Where this page starts: a keyset position (after (stamp, id)) or a count to skip.
    let (position, skip): (Option<(i64, u64)>, usize) = match style {
        "next_url" => (q.get("page_token").and_then(|t| parse_position(t)), 0),
        "cursor" => (q.get("cursor").and_then(|t| parse_position(t)), 0),
        "offset" => match number(q, "offset", 0) {
            Ok(n) => (None, n as usize),
            Err(m) => return bad_request(m),
        },
        "page" | "link_header" => match number(q, "page", 1) {
            Ok(p) => (None, (p.max(1) as usize - 1) * limit),
            Err(m) => return bad_request(m),
        },
        _ => return status(404).json(json!({"message": format!("no pagination style `{style}`")})),
    };
    let repeat = state.with(|i| i.faults.repeat_pages);
    let (page, more, total) = state.with(|i| {
        let c = &i.items;
        // Ordered by (updated_at, id) when reading since a time, else by id; a keyset
        // position starts just after itself.
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let mut keys: Box<dyn Iterator<Item = (i64, u64)> + '_> = match (since, position) {
            (Some(_), Some(p)) => Box::new(c.by_stamp.range((Excluded(p), Unbounded)).copied()),
            (Some(t), None) => Box::new(c.by_stamp.range((Included((t, 0)), Unbounded)).copied()),
            (None, Some(p)) => Box::new(
                c.records
                    .range((Excluded(p.1), Unbounded))
                    .map(|(id, _)| (0, *id)),
            ),
            (None, None) => Box::new(c.records.keys().map(|id| (0, *id))),
        };
        let page: Vec<((i64, u64), Value)> = keys
            .by_ref()
            .skip(skip)
            .take(limit)
            .map(|k| (k, Value::Object(c.records[&k.1].values.clone())))
            .collect();
        let more = keys.next().is_some();
        (page, more, c.records.len())
    });
    let origin = link_origin(state, host);
    let last = page.last().map(|(k, _)| *k);
    let position_text = |k: (i64, u64)| format!("{}.{}", k.0, k.1);
    let keep = |extra: &[(&str, String)]| {
        let mut pairs: Vec<(String, String)> = q
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        pairs.sort();
        pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("{origin}/v1/{style}/items?{query}")
    };
    let items: Vec<Value> = page
        .into_iter()
        .map(|(_, v)| maybe_without_id(state, v, "id"))
        .collect();
    match style {
        "next_url" => {
            let next = if repeat {
                Some(keep(&[]))
            } else {
                more.then(|| last.map(|k| keep(&[("page_token", position_text(k))])))
                    .flatten()
            };
            HttpResponse::Ok().json(json!({"items": items, "next": next}))
        }
        "cursor" => {
            let next = if repeat {
                q.get("cursor").cloned().or(Some("0.0".into()))
            } else {
                more.then(|| last.map(position_text)).flatten()
            };
            HttpResponse::Ok()
                .json(json!({"data": items, "meta": {"next_cursor": next, "count": items.len()}}))
        }
        "offset" => HttpResponse::Ok().json(json!({"items": items, "total": total})),
        "page" => HttpResponse::Ok()
            .json(json!({"items": items, "page": q.get("page").cloned().unwrap_or("1".into())})),
        _ => {
            let p = number(q, "page", 1).unwrap_or(1).max(1);
            let mut r = HttpResponse::Ok();
            if more || repeat {
                let next = if repeat { p } else { p + 1 };
                let link = format!(
                    "<{}>; rel=\"next\", <{}>; rel=\"first\"",
                    keep(&[("page", next.to_string())]),
                    keep(&[("page", "1".into())])
                );
                r.insert_header(("Link", link));
            }
            r.json(items)
        }
    }
}

pub(super) fn parse_position(t: &str) -> Option<(i64, u64)> {
    let (s, id) = t.split_once('.')?;
    Some((s.parse().ok()?, id.parse().ok()?))
}
