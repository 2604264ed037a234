//! Odoo: the webhook of an automation rule's "Send Webhook Notification" action
//! (`/webhooks/odoo/<web_service>?token=…`). The token is checked in constant time; a genuine
//! call is answered at once, and every sync on the web service reads again, in the background,
//! the record it names and whatever else changed (calls close together share the work).

use super::AppState;
use super::body::read_limited;
use crate::connectors::{Notice, Webhook};
use crate::domain::plan::ServiceKind;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, post, web};
use serde_json::json;

/// Odoo sends the record's id, model and a few chosen fields; more than this is not a hint.
const NOTIFICATION_LIMIT: usize = 256 * 1024;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(notification);
}

fn answer(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "status": if status.is_success() { "accepted" } else { "refused" },
        "message": message,
    }))
}

/// A notification from an Odoo automation rule. The payload (`_model`, `_id` and the chosen
/// fields) is only a hint: the record is read again through Odoo's API.
#[utoipa::path(
    tag = "odoo",
    security(()),
    params(
        ("web_service" = String, Path, description = "An Odoo web service"),
        ("token" = String, Query, description = "The web service's `webhook_token`"),
    ),
    request_body(content = Object, description = "Odoo's payload: `_model`, `_id`, `_action` and the rule's fields"),
    responses(
        (status = 200, description = "Accepted; the record is read again in the background", body = Object),
        (status = 403, description = "Missing or wrong token (or the web service takes no webhooks); nothing runs", body = Object),
        (status = 404, description = "No Odoo web service by that name", body = Object),
        (status = 413, description = "Body too large", body = Object),
    )
)]
#[post("/webhooks/odoo/{web_service}")]
async fn notification(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let name = path.into_inner();
    let is_odoo = state
        .engine
        .plan()
        .web_services
        .get(&name)
        .is_some_and(|w| w.kind() == ServiceKind::Odoo);
    if !is_odoo {
        crate::metrics::notification("odoo", &name, "unknown_service");
        return answer(StatusCode::NOT_FOUND, "no Odoo web service by that name");
    }
    let Ok(bytes) = read_limited(&req, body, NOTIFICATION_LIMIT).await else {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the notification is too large",
        );
    };
    let call = Webhook {
        headers: &[],
        query: req.query_string(),
        body: &bytes,
    };
    match state.engine.notified(&name, call) {
        Some(Notice::Changed) => answer(StatusCode::OK, "the record will be read again"),
        Some(Notice::Refused(why)) => {
            crate::metrics::notification("odoo", &name, "bad_token");
            tracing::warn!(web_service = %name, "Refused an Odoo webhook call: {why}");
            answer(StatusCode::FORBIDDEN, &why)
        }
        Some(Notice::Unsupported) | None => {
            answer(StatusCode::NOT_FOUND, "no Odoo web service by that name")
        }
    }
}
