//! Real-time inbound: `POST /sync/<CODE>/create`, `PUT` and `DELETE /sync/<CODE>/<id>`.
//! Every answer is the JSON-RPC envelope; every request that reaches a sync is logged.

use super::AppState;
use super::auth::authenticate;
use super::body::{BodyError, parse_values, read_limited};
use crate::engine::{ApplyError, Ctx, InboundOp};
use crate::store::{LogAction, LogStatus, NewChange};
use crate::telemetry::Bounded;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, post, put, web};
use serde_json::{Value, json};

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create).service(update).service(remove);
    // Anything else under /sync/ answers in the envelope too: 405 with `Allow` for a wrong
    // method on a route, 404 for a path that is not one.
    cfg.route("/sync/{tail:.*}", web::route().to(not_a_route));
    cfg.route("/sync", web::route().to(not_a_route));
}

/// The JSON-RPC envelope, with its keys in the documented order (a struct serializes its
/// fields in declaration order; a JSON map would sort them).
#[derive(serde::Serialize)]
struct Envelope<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: Outcome<'a>,
}

#[derive(serde::Serialize)]
struct Outcome<'a> {
    status: &'static str,
    error_message: &'a str,
}

/// The envelope's text for an answer with this status, echoing the request's JSON-RPC `id`.
pub fn envelope_body(status: StatusCode, error: &str, id: &Value) -> String {
    serde_json::to_string(&Envelope {
        jsonrpc: "2.0",
        id,
        result: Outcome {
            status: if status.is_success() {
                "success"
            } else {
                "failed"
            },
            error_message: error,
        },
    })
    .expect("the envelope serializes")
}

/// The JSON-RPC envelope every answer uses.
pub fn envelope(status: StatusCode, error: &str) -> HttpResponse {
    envelope_with_id(status, error, &Value::Null)
}

fn envelope_with_id(status: StatusCode, error: &str, id: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(envelope_body(status, error, id))
}

/// A request under /sync/ that no route takes.
async fn not_a_route(req: HttpRequest) -> HttpResponse {
    let segments: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
    let allow = match segments.as_slice() {
        ["sync", code, "create"] if !code.is_empty() => Some("POST, PUT, DELETE"),
        ["sync", code, id] if !code.is_empty() && !id.is_empty() => Some("PUT, DELETE"),
        _ => None,
    };
    match allow {
        Some(allow) => {
            let mut r = envelope(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(
                    "{} is not taken here; this route takes {allow}",
                    req.method()
                ),
            );
            r.headers_mut().insert(
                actix_web::http::header::ALLOW,
                actix_web::http::header::HeaderValue::from_static(allow),
            );
            r
        }
        None => envelope(
            StatusCode::NOT_FOUND,
            &format!(
                "no route at {}; the routes are POST /sync/<CODE>/create, PUT and DELETE /sync/<CODE>/<external_id>",
                req.path()
            ),
        ),
    }
}

enum Kind {
    Create,
    Update(String),
    Delete(String),
}

impl Kind {
    /// The route template, for the request's span.
    fn route(&self) -> &'static str {
        match self {
            Kind::Create => "/sync/{code}/create",
            Kind::Update(_) | Kind::Delete(_) => "/sync/{code}/{external_id}",
        }
    }

    fn external_id(&self) -> Option<&str> {
        match self {
            Kind::Create => None,
            Kind::Update(id) | Kind::Delete(id) => Some(id),
        }
    }
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

#[tracing::instrument(
    name = "inbound",
    skip_all,
    fields(route = kind.route(), sync = %code, external_id = tracing::field::Empty)
)]
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
    if let Some(id) = kind.external_id() {
        tracing::Span::current().record("external_id", id);
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
            // Counted and logged in bounded form, never written to the change-control log:
            // anonymous traffic must not grow it, nor count as a failure of the sync.
            let reason = match e {
                super::auth::AuthError::Missing => "missing",
                super::auth::AuthError::Unknown => "unknown",
            };
            crate::metrics::refused_key("sync", reason);
            refused_key_logged(&code, reason);
            return envelope(StatusCode::UNAUTHORIZED, e.message());
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
    let bytes = match read_limited(&req, body, state.settings.body_limit).await {
        Ok(b) => b,
        Err(e) => {
            let r = body_refusal(e);
            log_refusal(&state, &code, &kind, &caller.name, &r, None).await;
            return envelope(r.status, &r.message);
        }
    };
    // A sync with `inbound_signing_secret` takes only calls signed with it, made within
    // five minutes. Like a refused key, a refusal is counted and logged in bounded form,
    // never written to the change-control log.
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let signed = plan.sync(&code).and_then(|s| s.inbound_signing.as_ref());
    if let Some(signing) = signed
        && let Err(e) = signing.verify(
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
            &bytes,
            chrono::Utc::now().timestamp(),
        )
    {
        let reason = e.reason();
        crate::metrics::refused_signature(&code, reason);
        refused_signature_logged(&code, reason);
        return envelope(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let rpc_id = request_id(&bytes);
    // Idempotency: replay the first answer to the same key for 24 hours; the same key with
    // another method, path or body is refused, and nothing is written. A signed call's
    // `webhook-id` is its key when it has no `Idempotency-Key`: a repeated delivery is
    // answered as the first was.
    let idem = header("idempotency-key")
        .or(signed.and(header("webhook-id")))
        .map(|k| {
            (
                caller.name.clone(),
                k.trim().to_string(),
                fingerprint(req.method().as_str(), req.path(), &bytes),
            )
        });
    if let Some((scope, key, print)) = &idem {
        let since = chrono::Utc::now() - chrono::Duration::hours(24);
        match engine.reads().idempotent_response(scope, key, since).await {
            Ok(Some(first)) if first.fingerprint.as_deref() == Some(print.as_str()) => {
                return HttpResponse::build(
                    StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK),
                )
                .content_type("application/json")
                .insert_header(("Idempotent-Replay", "true"))
                .body(first.body);
            }
            Ok(Some(_)) => {
                let r = Refusal::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "Idempotency-Key `{key}` was already used for another request (a different method, path or body); use a new key for a new request"
                    ),
                );
                log_refusal(&state, &code, &kind, &caller.name, &r, None).await;
                return envelope_with_id(r.status, &r.message, &rpc_id);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "Failed to read an idempotency key");
                return envelope_with_id(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store is unavailable; try again",
                    &rpc_id,
                );
            }
        }
    }
    if let Kind::Update(id) | Kind::Delete(id) = &kind
        && let Some(problem) = crate::domain::mapping::id_problem(id)
    {
        let r = Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, problem);
        log_refusal(&state, &code, &kind, &caller.name, &r, None).await;
        return envelope_with_id(r.status, &r.message, &rpc_id);
    }
    let op = match &kind {
        Kind::Delete(id) => InboundOp::Delete {
            external_id: id.clone(),
            unlink_only: false,
        },
        Kind::Create | Kind::Update(_) => {
            let values = match parse_values(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    let r = body_refusal(e);
                    log_refusal(&state, &code, &kind, &caller.name, &r, None).await;
                    return envelope_with_id(r.status, &r.message, &rpc_id);
                }
            };
            // A body naming another record than the path is refused, never resolved one way.
            if let Kind::Update(id) = &kind
                && let Some(ext_ref) = plan.sync(&code).map(|s| s.external_ref.clone())
                && let Some(named) = values.get(&ext_ref)
                && crate::domain::mapping::id_text(named).as_deref() != Some(id.as_str())
            {
                let r = Refusal::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "{ext_ref}: the body names external id `{}` but the path names `{id}`; send the change to the record it is for",
                        crate::domain::mapping::id_text(named).unwrap_or_else(|| named.to_string())
                    ),
                );
                log_refusal(
                    &state,
                    &code,
                    &kind,
                    &caller.name,
                    &r,
                    Some(Value::Object(values)),
                )
                .await;
                return envelope_with_id(r.status, &r.message, &rpc_id);
            }
            match &kind {
                Kind::Update(id) => InboundOp::Upsert {
                    external_id: Some(id.clone()),
                    payload: Value::Object(values),
                    must_exist: true,
                },
                _ => {
                    // A create names its record in the body.
                    if let Some(id) = plan
                        .sync(&code)
                        .and_then(|s| values.get(&s.external_ref))
                        .and_then(crate::domain::mapping::id_text)
                    {
                        tracing::Span::current().record("external_id", id.as_str());
                    }
                    InboundOp::Upsert {
                        external_id: None,
                        payload: Value::Object(values),
                        must_exist: false,
                    }
                }
            }
        }
    };
    let ctx = Ctx {
        request_id: {
            use actix_web::HttpMessage;
            req.extensions()
                .get::<super::RequestId>()
                .map(|r| r.0.clone())
        },
        ..Ctx::actor(caller.name.clone())
    };
    let mut result = engine.apply_inbound(&code, op, &ctx).await;
    // A DELETE is idempotent: nothing linked to delete is a success, with a `skipped` row.
    if let (Kind::Delete(id), Err(ApplyError::UnknownExternalId(..))) = (&kind, &result) {
        let row = NewChange {
            external_id: Some(id.clone()),
            actor: caller.name.clone(),
            ..NewChange::unapplied(
                &code,
                LogAction::Delete,
                "Nothing to delete",
                LogStatus::Skipped,
                format!(
                    "no record is linked to external id `{id}` in sync `{code}` (never created here, or already deleted); nothing to delete"
                ),
            )
        };
        result = match engine.log_alone(row).await {
            Ok(()) => Ok(crate::engine::Applied::Skipped(None)),
            Err(e) => Err(ApplyError::Store(e)),
        };
    }
    if result.is_ok() {
        crate::crash::point("inbound.before_reply");
    }
    let (status, message) = match &result {
        Ok(crate::engine::Applied::Held(hold)) => (
            StatusCode::OK,
            format!(
                "the delete is held by the delete guard in hold {hold}; nothing is deleted unless an operator approves it"
            ),
        ),
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
    let resp_body = envelope_body(status, &message, &rpc_id);
    if let Some((scope, key, print)) = idem
        && status.as_u16() < 500
        && let Err(e) = engine
            .remember_answer(&scope, &key, &print, status.as_u16(), &resp_body)
            .await
    {
        tracing::warn!(error = %e, "Failed to keep the answer of an idempotency key");
    }
    HttpResponse::build(status)
        .content_type("application/json")
        .body(resp_body)
}

/// The `id` of a JSON-RPC request (a string or a number), to echo; otherwise null.
fn request_id(bytes: &[u8]) -> Value {
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        return Value::Null;
    }
    match serde_json::from_slice::<serde_json::Map<String, Value>>(trimmed) {
        Ok(obj) if obj.contains_key("jsonrpc") => match obj.get("id") {
            Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

/// What makes two requests the same for an `Idempotency-Key`: method, path and body.
fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// Logs refused keys in bounded form.
fn refused_key_logged(code: &str, reason: &'static str) {
    // The first is logged, then at most one line every ten seconds with how many since.
    static REFUSED: Bounded = Bounded::new(10);
    if let Some(n) = REFUSED.due() {
        tracing::warn!(sync = %code, reason, refused = n, "Requests refused for their API key (counted in recsync_refused_keys_total)");
    }
}

/// Logs refused signatures in bounded form.
fn refused_signature_logged(code: &str, reason: &'static str) {
    // The first is logged, then at most one line every ten seconds with how many since.
    static REFUSED: Bounded = Bounded::new(10);
    if let Some(n) = REFUSED.due() {
        tracing::warn!(sync = %code, reason, refused = n, "Requests refused for their signature (counted in recsync_refused_signatures_total)");
    }
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
        ApplyError::Invalid(_) | ApplyError::MissingReference(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
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
        external_id,
        origin_values: origin.unwrap_or(json!({})),
        actor: actor.to_string(),
        ..NewChange::unapplied(
            code,
            action,
            format!("Refused {} call", action.as_str()),
            LogStatus::Failed,
            format!("HTTP {}: {message}", r.status.as_u16()),
        )
    };
    if let Err(e) = state.engine.log_alone(row).await {
        tracing::error!(error = %e, "Failed to write the change-control row of a refused request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_keeps_the_documented_key_order() {
        assert_eq!(
            envelope_body(StatusCode::OK, "", &Value::Null),
            r#"{"jsonrpc":"2.0","id":null,"result":{"status":"success","error_message":""}}"#
        );
        assert_eq!(
            envelope_body(StatusCode::NOT_FOUND, "unknown sync `X`", &json!(7)),
            r#"{"jsonrpc":"2.0","id":7,"result":{"status":"failed","error_message":"unknown sync `X`"}}"#
        );
    }

    #[test]
    fn json_rpc_ids_are_echoed_and_nothing_else_is() {
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":"r-1","params":{}}"#),
            json!("r-1")
        );
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":3,"params":{}}"#),
            json!(3)
        );
        assert_eq!(request_id(br#"{"id":3,"name":"x"}"#), Value::Null);
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":{"a":1}}"#),
            Value::Null
        );
        assert_eq!(request_id(b"name=x&id=3"), Value::Null);
    }
}
