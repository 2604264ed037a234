//! Dropbox: the webhook (`/webhooks/dropbox/<web_service>`: challenge echo, signature check,
//! 200 at once with the work in the background) and the mirrored tree of a Dropbox sync.

use super::AppState;
use super::api::{ApiError, caller, respond};
use super::body::read_limited;
use crate::config::Scope;
use crate::connectors::{Notice, Webhook};
use crate::domain::plan::ServiceKind;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;

/// Notification bodies are tiny; anything bigger is not from Dropbox.
const NOTIFICATION_LIMIT: usize = 64 * 1024;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(challenge).service(notification).service(tree);
}

#[derive(Deserialize)]
struct Challenge {
    challenge: Option<String>,
}

/// Is `name` a Dropbox web service of the plan in force?
fn is_dropbox(state: &AppState, name: &str) -> bool {
    state
        .engine
        .plan()
        .web_services
        .get(name)
        .is_some_and(|w| w.kind() == ServiceKind::Dropbox)
}

fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body.into())
}

/// Webhook verification: Dropbox sends a challenge and expects it back, as plain text.
#[utoipa::path(
    tag = "dropbox",
    security(()),
    params(
        ("web_service" = String, Path, description = "A Dropbox web service"),
        ("challenge" = String, Query, description = "The text to echo"),
    ),
    responses(
        (status = 200, description = "The challenge, echoed", content_type = "text/plain", body = String),
        (status = 400, description = "No challenge given", content_type = "text/plain", body = String),
        (status = 404, description = "No Dropbox web service by that name", content_type = "text/plain", body = String),
    )
)]
#[get("/webhooks/dropbox/{web_service}")]
async fn challenge(
    path: web::Path<String>,
    q: web::Query<Challenge>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let name = path.into_inner();
    if !is_dropbox(&state, &name) {
        return text(StatusCode::NOT_FOUND, "no Dropbox web service by that name");
    }
    match &q.challenge {
        Some(c) => text(StatusCode::OK, c.clone()),
        None => text(
            StatusCode::BAD_REQUEST,
            "the `challenge` parameter is missing",
        ),
    }
}

/// A change notification: checked against `X-Dropbox-Signature`, answered at once; every sync
/// on the account runs one listing loop in the background (notifications close together share
/// it).
#[utoipa::path(
    tag = "dropbox",
    security(()),
    params(("web_service" = String, Path, description = "A Dropbox web service")),
    request_body(content = Object, description = "Dropbox's notification, signed with the app secret"),
    responses(
        (status = 200, description = "Accepted; the work runs in the background", content_type = "text/plain", body = String),
        (status = 403, description = "Missing or wrong signature; nothing is done", content_type = "text/plain", body = String),
        (status = 404, description = "No Dropbox web service by that name", content_type = "text/plain", body = String),
        (status = 413, description = "Body too large", content_type = "text/plain", body = String),
    )
)]
#[post("/webhooks/dropbox/{web_service}")]
async fn notification(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let name = path.into_inner();
    if !is_dropbox(&state, &name) {
        crate::metrics::notification("dropbox", &name, "unknown_service");
        return text(StatusCode::NOT_FOUND, "no Dropbox web service by that name");
    }
    let bytes = match read_limited(&req, body, NOTIFICATION_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the notification is too large",
            );
        }
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_lowercase(), v.to_str().ok()?.to_string())))
        .collect();
    let call = Webhook {
        headers: &headers,
        query: req.query_string(),
        body: &bytes,
    };
    match state.engine.notified(&name, call) {
        Some(Notice::Changed) => text(StatusCode::OK, ""),
        Some(Notice::Refused(why)) => {
            crate::metrics::notification("dropbox", &name, "bad_signature");
            tracing::warn!(web_service = %name, "Refused a Dropbox notification with a missing or wrong signature");
            text(StatusCode::FORBIDDEN, why)
        }
        Some(Notice::Unsupported) | None => {
            text(StatusCode::NOT_FOUND, "no Dropbox web service by that name")
        }
    }
}

/// The mirrored folder of a Dropbox sync as a nested tree (from the store; Dropbox is not
/// called).
#[utoipa::path(
    tag = "dropbox",
    params(("code" = String, Path, description = "A Dropbox sync's code")),
    responses(
        (status = 200, description = "The tree: id, name, tag, path, size, rev and children of each entry", body = Object),
        (status = 400, description = "A parameter does not fit (such as a NUL character in the URL)", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown sync, or not a Dropbox sync", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/syncs/{code}/tree")]
async fn tree(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let code = path.into_inner();
            if state.engine.plan().sync(&code).is_none() {
                return Err(ApiError::NotFound(format!("unknown sync `{code}`")));
            }
            match state.engine.mirror_tree(&code).await? {
                Some(t) => Ok(HttpResponse::Ok().json(t)),
                None => Err(ApiError::NotFound(format!(
                    "sync `{code}` is not a Dropbox sync, so it has no tree"
                ))),
            }
        }
        .await,
    )
}
