//! Webhooks of the external systems: `/webhooks/<kind>/<web_service>`. A `GET` is the
//! service's verification request (its challenge echoed as plain text); a `POST` is a change
//! notification, checked by the web service's connector (a signature, a token) and answered
//! at once, while every sync on the web service reads what changed in the background (calls
//! close together share the work). The payload is only a hint: records are read again
//! through the service's API.

use super::AppState;
use super::body::read_limited;
use crate::connectors::{Notice, Webhook};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde_json::json;

/// A notification names a record or an account, and a few chosen fields; more than this is
/// not a hint.
const NOTIFICATION_LIMIT: usize = 256 * 1024;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(challenge).service(notification);
}

fn answer(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "status": if status.is_success() { "accepted" } else { "refused" },
        "message": message,
    }))
}

fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body.into())
}

/// Whether `name` is a web service of `kind` in the plan in force.
fn is_of_kind(state: &AppState, kind: &str, name: &str) -> bool {
    state
        .engine
        .plan()
        .web_services
        .get(name)
        .is_some_and(|w| w.kind == kind)
}

fn unknown(kind: &str) -> String {
    format!("no web service of kind `{kind}` by that name")
}

/// Webhook verification: the service sends a challenge and expects it back, as plain text.
#[utoipa::path(
    tag = "webhooks",
    security(()),
    params(
        ("kind" = String, Path, description = "The web service's kind (`dropbox`)"),
        ("web_service" = String, Path, description = "A web service of that kind"),
        ("challenge" = String, Query, description = "The text to echo"),
    ),
    responses(
        (status = 200, description = "The challenge, echoed", content_type = "text/plain", body = String),
        (status = 400, description = "No challenge given", content_type = "text/plain", body = String),
        (status = 404, description = "No web service of that kind by that name, or the kind verifies no webhook", content_type = "text/plain", body = String),
    )
)]
#[get("/webhooks/{kind}/{web_service}")]
async fn challenge(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (kind, name) = path.into_inner();
    let connector = is_of_kind(&state, &kind, &name)
        .then(|| state.engine.connector(&name))
        .flatten();
    let Some(connector) = connector else {
        return text(StatusCode::NOT_FOUND, unknown(&kind));
    };
    match connector.webhook_challenge(req.query_string()) {
        Some(Ok(echo)) => text(StatusCode::OK, echo),
        Some(Err(why)) => text(StatusCode::BAD_REQUEST, why),
        None => text(
            StatusCode::NOT_FOUND,
            format!("web services of kind `{kind}` verify no webhook"),
        ),
    }
}

/// A change notification: checked by the web service's connector (Dropbox's
/// `X-Dropbox-Signature`, an Odoo automation rule's `?token=`), answered at once; the work
/// runs in the background.
#[utoipa::path(
    tag = "webhooks",
    security(()),
    params(
        ("kind" = String, Path, description = "The web service's kind (`dropbox`, `odoo`)"),
        ("web_service" = String, Path, description = "A web service of that kind"),
    ),
    request_body(content = Object, description = "The service's notification, as it sends it (an account list, a record's model and id ...); signed or carrying a token as the kind requires"),
    responses(
        (status = 200, description = "Accepted; what changed is read again in the background", body = Object),
        (status = 403, description = "Missing or wrong signature or token (or the web service takes no webhooks); nothing runs", body = Object),
        (status = 404, description = "No web service of that kind by that name", body = Object),
        (status = 413, description = "Body too large", body = Object),
    )
)]
#[post("/webhooks/{kind}/{web_service}")]
async fn notification(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (kind, name) = path.into_inner();
    if !is_of_kind(&state, &kind, &name) {
        crate::metrics::notification(&kind, &name, "unknown_service");
        return answer(StatusCode::NOT_FOUND, &unknown(&kind));
    }
    let Ok(bytes) = read_limited(&req, body, NOTIFICATION_LIMIT).await else {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the notification is too large",
        );
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
        Some(Notice::Changed) => answer(StatusCode::OK, "what changed will be read again"),
        Some(Notice::Refused { outcome, message }) => {
            crate::metrics::notification(&kind, &name, outcome);
            tracing::warn!(web_service = %name, kind = %kind, "Refused a webhook call: {message}");
            answer(StatusCode::FORBIDDEN, &message)
        }
        Some(Notice::Unsupported) | None => answer(StatusCode::NOT_FOUND, &unknown(&kind)),
    }
}
