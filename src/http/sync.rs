//! Real-time inbound: `POST /sync/<CODE>/create`, `PUT` and `DELETE /sync/<CODE>/<id>`.
//! Every answer is the JSON-RPC envelope; every request that reaches a sync is logged.

use super::auth::authenticate;
use super::body::{BodyError, parse_values, read_limited};
use crate::app::AppState;
use crate::engine::{ApplyError, Ctx, InboundOp};
use crate::store::{LogAction, LogDirection, LogStatus, NewChange};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, post, put, web};
use serde_json::{Value, json};

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create).service(update).service(remove);
}

/// The success envelope, as serde_json writes it.
const SUCCESS_BODY: &str =
    r#"{"id":null,"jsonrpc":"2.0","result":{"error_message":"","status":"success"}}"#;

/// The JSON-RPC envelope every answer uses.
pub fn envelope(status: StatusCode, error: &str) -> HttpResponse {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "result": {"status": if status.is_success() { "success" } else { "failed" }, "error_message": error},
    });
    HttpResponse::build(status)
        .content_type("application/json")
        .body(body.to_string())
}

enum Kind {
    Create,
    Update(String),
    Delete(String),
}

/// An external system created a record: upsert it by its external id.
#[utoipa::path(
    params(("code" = String, Path, description = "The sync's code")),
    request_body(content = Object, description = "The record's external fields (JSON, JSON-RPC `params` or a form body)"),
    tag = "sync",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Applied (or nothing to do)", body = crate::http::openapi::SyncEnvelope),
        (status = 400, description = "Malformed body", body = crate::http::openapi::SyncEnvelope),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::SyncEnvelope),
        (status = 403, description = "The key may not use this sync", body = crate::http::openapi::SyncEnvelope),
        (status = 404, description = "Unknown sync or external id", body = crate::http::openapi::SyncEnvelope),
        (status = 413, description = "Body too large", body = crate::http::openapi::SyncEnvelope),
        (status = 429, description = "The key is over its `rate_limit`; see Retry-After", body = crate::http::openapi::SyncEnvelope),
        (status = 422, description = "A value does not fit its field", body = crate::http::openapi::SyncEnvelope),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::SyncEnvelope),
    )
)]
#[post("/sync/{code}/create")]
async fn create(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    handle(req, path.into_inner(), Kind::Create, body, state).await
}

/// An external system changed a record.
#[utoipa::path(
    params(
        ("code" = String, Path, description = "The sync's code"),
        ("external_id" = String, Path, description = "The record's id in the external system"),
    ),
    request_body(content = Object, description = "The changed external fields"),
    tag = "sync",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Applied (or nothing to do)", body = crate::http::openapi::SyncEnvelope),
        (status = 400, description = "Malformed body", body = crate::http::openapi::SyncEnvelope),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::SyncEnvelope),
        (status = 403, description = "The key may not use this sync", body = crate::http::openapi::SyncEnvelope),
        (status = 404, description = "Unknown sync or external id", body = crate::http::openapi::SyncEnvelope),
        (status = 413, description = "Body too large", body = crate::http::openapi::SyncEnvelope),
        (status = 429, description = "The key is over its `rate_limit`; see Retry-After", body = crate::http::openapi::SyncEnvelope),
        (status = 422, description = "A value does not fit its field", body = crate::http::openapi::SyncEnvelope),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::SyncEnvelope),
    )
)]
#[put("/sync/{code}/{external_id}")]
async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (code, id) = path.into_inner();
    handle(req, code, Kind::Update(id), body, state).await
}

/// An external system deleted a record.
#[utoipa::path(
    params(
        ("code" = String, Path, description = "The sync's code"),
        ("external_id" = String, Path, description = "The record's id in the external system"),
    ),
    tag = "sync",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Applied (or nothing to do)", body = crate::http::openapi::SyncEnvelope),
        (status = 400, description = "Malformed body", body = crate::http::openapi::SyncEnvelope),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::SyncEnvelope),
        (status = 403, description = "The key may not use this sync", body = crate::http::openapi::SyncEnvelope),
        (status = 404, description = "Unknown sync or external id", body = crate::http::openapi::SyncEnvelope),
        (status = 413, description = "Body too large", body = crate::http::openapi::SyncEnvelope),
        (status = 429, description = "The key is over its `rate_limit`; see Retry-After", body = crate::http::openapi::SyncEnvelope),
        (status = 422, description = "A value does not fit its field", body = crate::http::openapi::SyncEnvelope),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::SyncEnvelope),
    )
)]
#[delete("/sync/{code}/{external_id}")]
async fn remove(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (code, id) = path.into_inner();
    handle(req, code, Kind::Delete(id), body, state).await
}

/// A refused request: its status and the sentence saying why.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

async fn handle(
    req: HttpRequest,
    code: String,
    kind: Kind,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let engine = &state.engine;
    let plan = engine.plan();
    if plan.sync(&code).is_none() {
        return envelope(StatusCode::NOT_FOUND, &format!("unknown sync `{code}`"));
    }
    if let Kind::Update(id) | Kind::Delete(id) = &kind
        && id.contains('\0')
    {
        return envelope(
            StatusCode::BAD_REQUEST,
            "the external id contains a NUL character (U+0000)",
        );
    }
    let caller = match authenticate(&req, &state.settings.api_keys) {
        Ok(c) => c,
        Err(e) => {
            let r = Refusal::new(StatusCode::UNAUTHORIZED, e.message());
            log_refusal(&state, &code, &kind, "anonymous", &r, None).await;
            return envelope(r.status, &r.message);
        }
    };
    if !caller.can_sync(&code) {
        let r = Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "the key `{}` does not have scope `sync:{code}`",
                caller.name
            ),
        );
        log_refusal(&state, &code, &kind, &caller.name, &r, None).await;
        return envelope(r.status, &r.message);
    }
    // The key's request budget. Not written to the change-control log: a flood must not turn
    // into a flood of writes.
    if let Some(limiter) = &state.limiter
        && let Err(wait) = limiter.check_key(&caller.name)
    {
        use governor::clock::Clock;
        let after = wait
            .wait_time_from(governor::clock::DefaultClock::default().now())
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        let mut r = envelope(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "the key `{}` is over its limit of {} requests per second; retry after {after} s",
                caller.name, state.settings.rate_limit
            ),
        );
        r.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from(after),
        );
        return r;
    }
    // Idempotency: replay the first answer to the same key for 24 hours.
    let idem = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| {
            (
                format!("{}:{code}", caller.name),
                format!("{} {} {}", req.method(), req.path(), k.trim()),
            )
        });
    if let Some((scope, key)) = &idem {
        let since = chrono::Utc::now() - chrono::Duration::hours(24);
        match engine.store.idempotent_response(scope, key, since).await {
            Ok(Some((status, body))) => {
                return HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
                    .content_type("application/json")
                    .insert_header(("Idempotent-Replay", "true"))
                    .body(body);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "Failed to read an idempotency key");
                return envelope(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store is unavailable; try again",
                );
            }
        }
    }
    let bytes = match read_limited(&req, body, state.settings.body_limit).await {
        Ok(b) => b,
        Err(e) => {
            let r = body_refusal(e);
            log_refusal(&state, &code, &kind, &caller.name, &r, None).await;
            return envelope(r.status, &r.message);
        }
    };
    let op = match &kind {
        Kind::Delete(id) => InboundOp::Delete {
            external_id: id.clone(),
        },
        Kind::Create | Kind::Update(_) => {
            let values = match parse_values(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    let r = body_refusal(e);
                    log_refusal(&state, &code, &kind, &caller.name, &r, None).await;
                    return envelope(r.status, &r.message);
                }
            };
            match &kind {
                Kind::Update(id) => InboundOp::Upsert {
                    external_id: Some(id.clone()),
                    payload: Value::Object(values),
                    must_exist: true,
                },
                _ => InboundOp::Upsert {
                    external_id: None,
                    payload: Value::Object(values),
                    must_exist: false,
                },
            }
        }
    };
    let ctx = Ctx::actor(caller.name.clone());
    let result = engine.apply_inbound(&code, op, &ctx).await;
    if result.is_ok() {
        crate::crash::point("inbound.before_reply");
    }
    let (status, message) = match &result {
        Ok(_) => (StatusCode::OK, String::new()),
        Err(e) => {
            let status = apply_status(e);
            if status.is_server_error() {
                tracing::error!(sync = %code, error = ?e, "Failed to apply an inbound change");
            }
            (status, e.to_string())
        }
    };
    if result.is_err() {
        let r = Refusal {
            status,
            message: message.clone(),
        };
        // The body was read already; parse it again only for the failure's log row.
        let origin = parse_values(&bytes).ok().map(Value::Object);
        log_refusal(&state, &code, &kind, &caller.name, &r, origin).await;
    }
    let resp_body = if status.is_success() {
        SUCCESS_BODY.to_string()
    } else {
        json!({
            "jsonrpc": "2.0",
            "id": null,
            "result": {"status": "failed", "error_message": message},
        })
        .to_string()
    };
    if let Some((scope, key)) = idem
        && status.as_u16() < 500
        && let Ok(mut tx) = engine.store.begin().await
        && tx
            .put_idempotent(&scope, &key, status.as_u16(), &resp_body)
            .await
            .is_ok()
    {
        let _ = tx.commit().await;
    }
    HttpResponse::build(status)
        .content_type("application/json")
        .body(resp_body)
}

fn body_refusal(e: BodyError) -> Refusal {
    match e {
        BodyError::TooLarge(limit) => Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the limit of {limit} bytes"),
        ),
        BodyError::Unreadable(m) => Refusal::new(StatusCode::BAD_REQUEST, m),
    }
}

/// The HTTP status for each apply error; every variant is listed.
pub fn apply_status(e: &ApplyError) -> StatusCode {
    match e {
        ApplyError::UnknownSync(_)
        | ApplyError::UnknownExternalId(..)
        | ApplyError::UnknownRecord(..)
        | ApplyError::UnknownModel(_) => StatusCode::NOT_FOUND,
        ApplyError::NotInbound(_) => StatusCode::FORBIDDEN,
        ApplyError::Inactive(_) => StatusCode::CONFLICT,
        ApplyError::Invalid(_) | ApplyError::OutsideDomain(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApplyError::Store(s) if s.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        ApplyError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Writes the change-control row of a refused request (the only thing it writes).
async fn log_refusal(
    state: &AppState,
    code: &str,
    kind: &Kind,
    actor: &str,
    r: &Refusal,
    origin: Option<Value>,
) {
    let (action, external_id) = match kind {
        Kind::Create => (
            LogAction::Create,
            origin.as_ref().and_then(|o| {
                let sync = state.engine.plan();
                let ext_ref = sync
                    .sync(code)
                    .map(|s| s.external_ref.clone())
                    .unwrap_or_default();
                o.get(&ext_ref).and_then(crate::domain::mapping::id_text)
            }),
        ),
        Kind::Update(id) => (LogAction::Update, Some(id.clone())),
        Kind::Delete(id) => (LogAction::Delete, Some(id.clone())),
    };
    let message = if r.status.is_server_error() {
        "the change could not be stored".to_string()
    } else {
        r.message.clone()
    };
    let row = NewChange {
        sync: code.to_string(),
        direction: LogDirection::ExternalToLocal,
        action,
        external_id,
        local_id: None,
        name: format!("Refused {} call", action.as_str()),
        title: String::new(),
        origin_values: origin.unwrap_or(json!({})),
        destination_values: json!({}),
        modified_at: None,
        synced_at: None,
        status: LogStatus::Failed,
        error_message: format!("HTTP {}: {message}", r.status.as_u16()),
        run_id: None,
        actor: actor.to_string(),
    };
    if let Err(e) = state.engine.log_alone(row).await {
        tracing::error!(error = %e, "Failed to write the change-control row of a refused request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_success_body_is_the_envelope() {
        let built = json!({"jsonrpc": "2.0", "id": null, "result": {"status": "success", "error_message": ""}});
        assert_eq!(serde_json::from_str::<Value>(SUCCESS_BODY).unwrap(), built);
    }
}
