//! The fake Odoo over HTTP: `/web/version`, `version_info`, JSON-RPC (`/jsonrpc`), JSON-2
//! (`/json/2/<model>/<method>`), and the `/_fake/*` endpoints that seed, edit and fault it from
//! another process.

use super::*;

pub(super) fn version_value(opts: &OdooOptions) -> Value {
    let major: i64 = opts
        .version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(19);
    json!({
        "server_version": opts.version,
        "server_version_info": [major, 0, 0, "final", 0, ""],
        "server_serie": opts.version,
        "protocol_version": 1,
    })
}

pub(super) async fn web_version(state: web::Data<OdooState>) -> HttpResponse {
    let v = version_value(&state.opts);
    HttpResponse::Ok().json(json!({
        "version": v["server_version"],
        "version_info": v["server_version_info"],
    }))
}

pub(super) fn rpc_result(id: &Value, result: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

pub(super) fn rpc_error(id: &Value, e: &OdooError) -> HttpResponse {
    if let Some(r) = transport_fault(e) {
        return r;
    }
    HttpResponse::Ok().json(json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": 200, "message": "Odoo Server Error", "data": e.data()},
    }))
}

pub(super) async fn version_info(state: web::Data<OdooState>, body: web::Bytes) -> HttpResponse {
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    rpc_result(&id, version_value(&state.opts))
}

/// Checks a password or API key for the user.
pub(super) fn credentials_ok(state: &OdooState, i: &Inner, secret: &str) -> bool {
    !i.faults.key_expired && (secret == state.opts.password || secret == state.opts.api_key)
}

pub(super) fn check_db(state: &OdooState, db: &str) -> Result<(), OdooError> {
    if db == state.opts.database {
        Ok(())
    } else {
        Err(OdooError::new(
            "psycopg2.OperationalError",
            format!("connection to server failed: FATAL:  database \"{db}\" does not exist"),
        ))
    }
}

pub(super) async fn jsonrpc(state: web::Data<OdooState>, body: web::Bytes) -> HttpResponse {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest()
            .content_type("text/html")
            .body("<html><body>Bad Request: the body is not JSON</body></html>");
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let params = req.get("params").cloned().unwrap_or(json!({}));
    let service = params.get("service").and_then(Value::as_str).unwrap_or("");
    let method = params.get("method").and_then(Value::as_str).unwrap_or("");
    let args: Vec<Value> = params
        .get("args")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let arg_str = |n: usize| {
        args.get(n)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let result: Result<Value, OdooError> = match (service, method) {
        ("common", "version") => Ok(version_value(&state.opts)),
        ("common", "login" | "authenticate") => {
            let (db, login, secret) = (arg_str(0), arg_str(1), arg_str(2));
            check_db(&state, &db).map(|()| {
                let ok = state.with(|i| credentials_ok(&state, i, &secret));
                if ok && login == state.opts.login {
                    json!(UID)
                } else {
                    json!(false)
                }
            })
        }
        ("db", "list") => Ok(json!([state.opts.database])),
        ("db", "server_version") => Ok(version_value(&state.opts)["server_version"].clone()),
        ("object", "execute" | "execute_kw") => {
            let (db, secret) = (arg_str(0), arg_str(2));
            let uid = args.get(1).and_then(Value::as_i64).unwrap_or(0);
            let model = arg_str(3);
            let m = arg_str(4);
            let kw = if method == "execute_kw" {
                let positional = args
                    .get(5)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                named(&m, &positional, args.get(6).and_then(Value::as_object))
            } else {
                named(&m, args.get(5..).unwrap_or(&[]), None)
            };
            check_db(&state, &db).and_then(|()| {
                state.with(|i| {
                    if uid != UID || !credentials_ok(&state, i, &secret) {
                        return Err(OdooError::access_denied());
                    }
                    i.calls.push(("jsonrpc".into(), model.clone(), m.clone()));
                    if let Some(Err(e)) = fault(i) {
                        return Err(e);
                    }
                    let r = call(i, &model, &m, &kw);
                    answer_lost(i, &m, r)
                })
            })
        }
        (s, m) => Err(OdooError::new(
            "builtins.KeyError",
            format!("No such method {m} in service {s}"),
        )),
    };
    match result {
        Ok(v) => rpc_result(&id, v),
        Err(e) => rpc_error(&id, &e),
    }
}

pub(super) fn json2_error(e: &OdooError) -> HttpResponse {
    if let Some(r) = transport_fault(e) {
        return r;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(e.status()).expect("a valid status"))
        .json(e.data())
}

/// The bearer key of a JSON-2 call, checked, and the database it names.
pub(super) fn json2_auth(state: &OdooState, req: &HttpRequest) -> Result<(), OdooError> {
    let key = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| key.trim().to_string())
        })
        .unwrap_or_default();
    if !state.with(|i| !i.faults.key_expired && key == state.opts.api_key) {
        return Err(OdooError::access_denied());
    }
    if let Some(db) = req
        .headers()
        .get("X-Odoo-Database")
        .and_then(|v| v.to_str().ok())
    {
        check_db(state, db).map_err(|_| {
            OdooError::new(
                "werkzeug.exceptions.NotFound",
                format!("database {db:?} not found"),
            )
        })?;
    }
    Ok(())
}

pub(super) async fn json2(
    state: web::Data<OdooState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (model, method) = path.into_inner();
    if let Err(e) = json2_auth(&state, &req) {
        return json2_error(&e);
    }
    let kw = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(_) if body.is_empty() => Map::new(),
        _ => {
            return json2_error(&OdooError::user("the body must be a JSON object"));
        }
    };
    if model_fields(&model).is_none() {
        return json2_error(&OdooError::new(
            "werkzeug.exceptions.NotFound",
            format!("the model {model:?} does not exist"),
        ));
    }
    let result = state.with(|i| {
        i.calls
            .push(("json2".into(), model.clone(), method.clone()));
        if let Some(Err(e)) = fault(i) {
            return Err(e);
        }
        let r = call(i, &model, &method, &kw);
        answer_lost(i, &method, r)
    });
    match result {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => json2_error(&e),
    }
}

pub(super) async fn put_faults(
    state: web::Data<OdooState>,
    body: web::Json<OdooFaults>,
) -> HttpResponse {
    state.set_faults(body.into_inner());
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub(super) async fn get_calls(state: web::Data<OdooState>) -> HttpResponse {
    let calls: Vec<Value> = state
        .calls()
        .into_iter()
        .map(|(p, m, f)| json!({"protocol": p, "model": m, "method": f}))
        .collect();
    HttpResponse::Ok().json(calls)
}

pub(super) fn admin_error(e: String) -> HttpResponse {
    HttpResponse::UnprocessableEntity().json(json!({"error": e}))
}

pub(super) async fn get_records(
    state: web::Data<OdooState>,
    path: web::Path<String>,
) -> HttpResponse {
    let model = path.into_inner();
    if model_fields(&model).is_none() {
        return HttpResponse::NotFound().json(json!({"error": format!("no model {model}")}));
    }
    let records: Vec<Value> = state
        .records(&model)
        .into_values()
        .map(Value::Object)
        .collect();
    HttpResponse::Ok().json(records)
}

pub(super) async fn post_record(
    state: web::Data<OdooState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    match state.create(&path.into_inner(), body.into_inner()) {
        Ok(id) => HttpResponse::Created().json(json!({"id": id})),
        Err(e) => admin_error(e),
    }
}

pub(super) async fn patch_record(
    state: web::Data<OdooState>,
    path: web::Path<(String, i64)>,
    body: web::Json<Value>,
) -> HttpResponse {
    let (model, id) = path.into_inner();
    match state.write(&model, id, body.into_inner()) {
        Ok(()) => HttpResponse::Ok().json(json!({"id": id})),
        Err(e) => admin_error(e),
    }
}

pub(super) async fn delete_record(
    state: web::Data<OdooState>,
    path: web::Path<(String, i64)>,
) -> HttpResponse {
    let (model, id) = path.into_inner();
    match state.unlink(&model, id) {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => admin_error(e),
    }
}

/// The method signatures of a model, as `/doc-bearer/<model>.json` lists them.
pub(super) async fn doc_bearer(
    state: web::Data<OdooState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = json2_auth(&state, &req) {
        return json2_error(&e);
    }
    let model = path.into_inner();
    if model_fields(&model).is_none() {
        return HttpResponse::NotFound().finish();
    }
    let mut methods = Map::new();
    for m in [
        "fields_get",
        "search",
        "search_count",
        "search_read",
        "read",
        "create",
        "write",
        "unlink",
        "context_get",
        "default_get",
    ] {
        let params: Map<String, Value> = parameters(m)
            .iter()
            .filter(|p| **p != "ids")
            .map(|p| (p.to_string(), json!({})))
            .collect();
        let on_records = matches!(m, "read" | "write" | "unlink");
        methods.insert(
            m.into(),
            json!({
                "parameters": params,
                "api": if on_records { json!([]) } else { json!(["model"]) },
            }),
        );
    }
    HttpResponse::Ok().json(json!({"model": model, "methods": methods}))
}
