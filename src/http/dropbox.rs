//! Dropbox: the webhook (`/webhooks/dropbox/<web_service>`: challenge echo, signature check,
//! 200 at once with the work in the background) and the mirrored tree of a Dropbox sync.

use super::AppState;
use super::api::{ApiError, caller, respond};
use super::body::read_limited;
use crate::config::Scope;
use crate::domain::plan::ServiceSpec;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::Sha256;

/// Notification bodies are tiny; anything bigger is not from Dropbox.
const NOTIFICATION_LIMIT: usize = 64 * 1024;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(challenge).service(notification).service(tree);
}

#[derive(Deserialize)]
struct Challenge {
    challenge: Option<String>,
}

fn dropbox_secret(state: &AppState, name: &str) -> Option<secrecy::SecretString> {
    match &state.engine.plan().web_services.get(name)?.spec {
        ServiceSpec::Dropbox(d) => Some(d.app_secret.clone()),
        ServiceSpec::Rest(_) => None,
    }
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
    if dropbox_secret(&state, &name).is_none() {
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

/// Is `signature` (lowercase hex) the HMAC-SHA256 of `body` keyed with `secret`? Compared in
/// constant time.
pub fn signature_ok(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(given) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
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
    let Some(secret) = dropbox_secret(&state, &name) else {
        crate::metrics::dropbox_notification(&name, "unknown_service");
        return text(StatusCode::NOT_FOUND, "no Dropbox web service by that name");
    };
    let bytes = match read_limited(&req, body, NOTIFICATION_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the notification is too large",
            );
        }
    };
    let signature = req
        .headers()
        .get("X-Dropbox-Signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !signature_ok(secret.expose_secret().as_bytes(), &bytes, signature) {
        crate::metrics::dropbox_notification(&name, "bad_signature");
        tracing::warn!(web_service = %name, "Refused a Dropbox notification with a missing or wrong signature");
        return text(StatusCode::FORBIDDEN, "bad signature");
    }
    state.engine.dropbox_notified(&name);
    text(StatusCode::OK, "")
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
            match state.engine.dropbox_tree(&code).await? {
                Some(t) => Ok(HttpResponse::Ok().json(t)),
                None => Err(ApiError::NotFound(format!(
                    "sync `{code}` is not a Dropbox sync, so it has no tree"
                ))),
            }
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_signature_vector_verifies() {
        let body = br#"{"delta": {"users": [12345]}}"#;
        let sig = "0a8c16b085420b960dc78664279fe09e936a2a01b1f91064869d9e77dfd64529";
        assert!(signature_ok(b"the_secret", body, sig));
        assert!(!signature_ok(b"other_secret", body, sig));
        assert!(!signature_ok(b"the_secret", b"{}", sig));
        assert!(!signature_ok(b"the_secret", body, "not hex"));
        assert!(!signature_ok(b"the_secret", body, ""));
    }
}
