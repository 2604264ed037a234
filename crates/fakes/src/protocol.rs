//! The protocol endpoints the peer serves: the cron and send protocol (`/api/<collection>/fetch`,
//! `/confirm`, `/ship`, listings) and the real-time style (`POST`, `PUT` and `DELETE` on
//! `/api/<collection>`).

use super::*;

#[derive(Deserialize)]
pub(super) struct FetchBody {
    limit: Option<usize>,
}

#[derive(Deserialize)]
pub(super) struct ListBody {
    limit: Option<usize>,
    after: Option<String>,
}

/// `POST /api/<coll>/list`: every record that exists, by id, a page at a time from `after`
/// (protocol.md §2, List).
pub(super) async fn list(
    req: HttpRequest,
    state: web::Data<PeerState>,
    path: web::Path<String>,
    body: web::Json<ListBody>,
) -> HttpResponse {
    if let Some(r) = state.fault(&req, "list").await {
        return r;
    }
    let limit = body.limit.unwrap_or(1000).clamp(1, 10_000);
    if let Some(total) = state.opts.synthetic.get(path.as_str()).copied() {
        return HttpResponse::Ok().json(synthetic_listing(
            &state.opts.id_field,
            total,
            body.after.as_deref(),
            limit as u64,
        ));
    }
    state.note_call(
        "list",
        &path,
        json!({"limit": body.limit, "after": body.after}),
    );
    let (content, next) = state.with(|inner| {
        let step = match inner.faults.list_share {
            Some(share) if share > 0.0 && share < 1.0 => (1.0 / share).round() as usize,
            _ => 1,
        };
        let c = inner.collections.entry(path.to_string()).or_default();
        // Every `step`-th record, by id order (all of them when the share is whole).
        let shown = c
            .records
            .iter()
            .enumerate()
            .filter(move |(i, _)| i % step == 0)
            .map(|(_, kv)| kv);
        let range: Box<dyn Iterator<Item = (&String, &Map<String, Value>)>> = match &body.after {
            Some(a) if step > 1 => Box::new(shown.filter(move |(id, _)| id.as_str() > a.as_str())),
            Some(a) => Box::new(
                c.records
                    .range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None if step > 1 => Box::new(shown),
            None => Box::new(c.records.iter()),
        };
        let page: Vec<(&String, &Map<String, Value>)> = range.take(limit + 1).collect();
        let more = page.len() > limit;
        let page = &page[..page.len().min(limit)];
        let content: Vec<Value> = page
            .iter()
            .map(|(id, values)| json!({"external_id": id, "values": values}))
            .collect();
        let next = more
            .then(|| page.last().map(|(id, _)| (*id).clone()))
            .flatten();
        (content, next)
    });
    HttpResponse::Ok().json(json!({
        "status": "success", "error_message": "", "content": content, "next": next
    }))
}

/// The listing of a synthetic collection, as it stands after changes its fetches never
/// reported (for reconciliation benchmarks): every 100th record edited (1 %), every 200th gone
/// (0.5 %), and 0.5 % more records than were ever fetched. `after` is the position reached.
pub(super) fn synthetic_listing(
    id_field: &str,
    total: u64,
    after: Option<&str>,
    limit: u64,
) -> Value {
    let start: u64 = after.and_then(|a| a.parse().ok()).unwrap_or(0);
    let end_all = total + total / 200;
    let end = end_all.min(start + limit);
    let content: Vec<Value> = (start..end)
        .filter(|n| *n >= total || n % 200 != 1)
        .map(|n| {
            let name = if n < total && n % 100 == 2 {
                format!("Synthetic {n} (edited)")
            } else {
                format!("Synthetic {n}")
            };
            json!({"external_id": format!("S{n}"), "values": {
                id_field: format!("S{n}"), "name": name, "email": format!("s{n}@example.com")
            }})
        })
        .collect();
    let next = (end < end_all).then(|| end.to_string());
    json!({"status": "success", "error_message": "", "content": content, "next": next})
}

pub(super) async fn fetch(
    req: HttpRequest,
    state: web::Data<PeerState>,
    path: web::Path<String>,
    body: web::Json<FetchBody>,
) -> HttpResponse {
    if let Some(r) = state.fault(&req, "fetch").await {
        return r;
    }
    let limit = body.limit.unwrap_or(100).max(1);
    if let Some(total) = state.opts.synthetic.get(path.as_str()).copied() {
        let start = state.with(|inner| {
            inner
                .collections
                .entry(path.to_string())
                .or_default()
                .confirmed
        });
        let id_field = state.opts.id_field.clone();
        let content: Vec<Value> = (start..total.min(start + limit as u64))
            .map(|n| {
                json!({"action": "insert", "values": {
                    id_field.clone(): format!("S{n}"), "name": format!("Synthetic {n}"), "email": format!("s{n}@example.com")
                }})
            })
            .collect();
        return HttpResponse::Ok()
            .json(json!({"status": "success", "error_message": "", "content": content}));
    }
    state.note_call("fetch", &path, json!({"limit": body.limit}));
    let content: Vec<Value> = state.with(|inner| {
        let c = inner.collections.entry(path.to_string()).or_default();
        c.changes
            .iter()
            .take(limit)
            .map(|p| {
                let values = match p.action {
                    "delete" => json!({ state.opts.id_field.clone(): p.id }),
                    _ => Value::Object(c.records.get(&p.id).cloned().unwrap_or_default()),
                };
                json!({"action": p.action, "values": values, "external_id": p.id,
                       "modified_at": p.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)})
            })
            .collect()
    });
    let content = if state.with(|i| i.faults.duplicate_records) {
        content.iter().chain(content.iter()).cloned().collect()
    } else {
        content
    };
    HttpResponse::Ok().json(json!({"status": "success", "error_message": "", "content": content}))
}

pub(super) async fn confirm(
    req: HttpRequest,
    state: web::Data<PeerState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(r) = state.fault(&req, "confirm").await {
        return r;
    }
    let body = body.into_inner();
    if state.opts.synthetic.contains_key(path.as_str()) {
        let n = body
            .get("content")
            .and_then(Value::as_array)
            .map(|a| a.len() as u64)
            .unwrap_or(0);
        state.with(|inner| {
            inner
                .collections
                .entry(path.to_string())
                .or_default()
                .confirmed += n
        });
        return HttpResponse::Ok().json(json!({"status": "success", "error_message": false}));
    }
    let ids: Vec<String> = body
        .get("content")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("external_id").and_then(id_text))
                .collect()
        })
        .unwrap_or_default();
    state.note_call("confirm", &path, body);
    state.with(|inner| {
        if inner.faults.repeat_page {
            return;
        }
        let c = inner.collections.entry(path.to_string()).or_default();
        // A confirmed change (success or failed) leaves the queue; the first match per id.
        for id in &ids {
            if let Some(pos) = c.changes.iter().position(|p| &p.id == id) {
                c.changes.remove(pos);
            }
        }
    });
    HttpResponse::Ok().json(json!({"status": "success", "error_message": false}))
}

#[derive(Deserialize)]
pub(super) struct ShipBody {
    action: String,
    #[serde(default)]
    values: Map<String, Value>,
    external_id: Option<Value>,
}

pub(super) async fn ship(
    req: HttpRequest,
    state: web::Data<PeerState>,
    path: web::Path<String>,
    raw: web::Bytes,
) -> HttpResponse {
    if let Some(secret) = &state.opts.signing_secret
        && !super::signing::verified(secret, &req, &raw)
    {
        return HttpResponse::Unauthorized()
            .json(json!({"status": "failed", "error_message": "bad or missing signature"}));
    }
    let body: ShipBody = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => return HttpResponse::BadRequest().body(format!("Json deserialize error: {e}")),
    };
    // Noted on arrival, before any injected latency: a test can tell a send is in flight.
    state.note_call(
        "ship",
        path.as_str(),
        json!({"action": body.action, "external_id": body.external_id}),
    );
    if let Some(r) = state.fault(&req, "ship").await {
        return r;
    }
    let coll = path.into_inner();
    if let Some(r) = state.replay(&req, &coll) {
        return r;
    }
    let b = body;
    let ext = b.external_id.as_ref().and_then(id_text);
    if state.opts.synthetic.contains_key(&coll) {
        let n = state.with(|inner| {
            let c = inner.collections.entry(coll.clone()).or_default();
            c.shipped += 1;
            c.shipped
        });
        let id = if b.action == "create" {
            Some(format!("X{n}"))
        } else {
            ext
        };
        return HttpResponse::Ok()
            .json(json!({"status": "success", "error_message": false, "external_id": id}));
    }
    let (answer, id) = match b.action.as_str() {
        "create" => {
            let id = state.store_sent(&coll, None, &b.values, true);
            (
                json!({"status": "success", "error_message": false, "external_id": id}),
                id,
            )
        }
        "update" => match state.store_sent(&coll, ext.as_deref(), &b.values, false) {
            Some(id) => (
                json!({"status": "success", "error_message": false}),
                Some(id),
            ),
            None => (
                json!({"status": "failed", "error_message": "unknown external_id"}),
                ext.clone(),
            ),
        },
        "delete" => {
            let existed = ext.as_deref().is_some_and(|id| {
                state.with(|i| {
                    i.collections
                        .entry(coll.clone())
                        .or_default()
                        .records
                        .remove(id)
                        .is_some()
                })
            });
            if existed {
                (
                    json!({"status": "success", "error_message": false}),
                    ext.clone(),
                )
            } else {
                (
                    json!({"status": "failed", "error_message": "unknown external_id"}),
                    ext.clone(),
                )
            }
        }
        other => (
            json!({"status": "failed", "error_message": format!("unknown action {other}")}),
            None,
        ),
    };
    let ok = answer["status"] == "success";
    state.receive(
        &coll,
        Received {
            via: "ship",
            action: b.action,
            id,
            values: Value::Object(b.values),
            status: if ok { 200 } else { 422 },
        },
    );
    state.remember(&req, &coll, 200, &answer);
    HttpResponse::Ok().json(answer)
}

pub(super) async fn rt_create(
    req: HttpRequest,
    state: web::Data<PeerState>,
    path: web::Path<String>,
    body: web::Json<Map<String, Value>>,
) -> HttpResponse {
    if let Some(r) = state.fault(&req, "endpoint").await {
        return r;
    }
    let coll = path.into_inner();
    if let Some(r) = state.replay(&req, &coll) {
        return r;
    }
    let values = body.into_inner();
    let id = state
        .store_sent(&coll, None, &values, true)
        .expect("create always has an id");
    state.receive(
        &coll,
        Received {
            via: "endpoint",
            action: "create".into(),
            id: Some(id.clone()),
            values: Value::Object(values),
            status: 201,
        },
    );
    let answer = json!({"id": id});
    state.remember(&req, &coll, 201, &answer);
    HttpResponse::Created().json(answer)
}

pub(super) async fn rt_update(
    req: HttpRequest,
    state: web::Data<PeerState>,
    path: web::Path<(String, String)>,
    body: web::Json<Map<String, Value>>,
) -> HttpResponse {
    if let Some(r) = state.fault(&req, "endpoint").await {
        return r;
    }
    let (coll, id) = path.into_inner();
    let values = body.into_inner();
    let found = state.store_sent(&coll, Some(&id), &values, false).is_some();
    let status = if found { 200 } else { 404 };
    state.receive(
        &coll,
        Received {
            via: "endpoint",
            action: "write".into(),
            id: Some(id.clone()),
            values: Value::Object(values),
            status,
        },
    );
    if found {
        HttpResponse::Ok().json(json!({"id": id}))
    } else {
        HttpResponse::NotFound().json(json!({"error": "not_found"}))
    }
}

pub(super) async fn rt_delete(
    req: HttpRequest,
    state: web::Data<PeerState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    if let Some(r) = state.fault(&req, "endpoint").await {
        return r;
    }
    let (coll, id) = path.into_inner();
    let found = state.with(|i| {
        i.collections
            .entry(coll.clone())
            .or_default()
            .records
            .remove(&id)
            .is_some()
    });
    state.receive(
        &coll,
        Received {
            via: "endpoint",
            action: "unlink".into(),
            id: Some(id.clone()),
            values: json!({}),
            status: if found { 200 } else { 404 },
        },
    );
    if found {
        HttpResponse::Ok().json(json!({"id": id, "deleted": true}))
    } else {
        HttpResponse::NotFound().json(json!({"error": "not_found"}))
    }
}
