//! HTTP surface (actix-web): probes, real-time inbound `/sync`, and the `/api/v1` JSON API.

pub mod api;
pub mod auth;
pub mod body;
pub mod changes;
pub mod dropbox;
pub mod metrics;
pub mod openapi;
pub mod sync;
pub mod ui;

use crate::app::AppState;
use actix_web::{HttpResponse, get, web};
use serde_json::json;

/// Registers every route. Each handler carries its OpenAPI description, and `service(...)`
/// collects it, so `/openapi.json` always matches what is served.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(healthz)
        .service(readyz)
        .service(openapi::openapi_json);
    sync::routes(cfg);
    api::routes(cfg);
    // The UI's calls first: `/api/v1/changes/stats` before `/api/v1/changes/{id}`.
    ui::routes(cfg);
    changes::routes(cfg);
    metrics::routes(cfg);
    dropbox::routes(cfg);
}

/// Liveness: the process answers.
#[utoipa::path(tag = "operations", security(()), responses((status = 200, description = "The process answers", body = Object)))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the store answers and a valid configuration is loaded. When the files on disk
/// hold errors, the last valid configuration keeps running and the count of errors is shown.
#[utoipa::path(
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready: the store answers", body = Object),
        (status = 503, description = "The store is unreachable", body = Object),
    )
)]
#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store_ok = state.engine.store.ping().await.is_ok();
    let errors = state.config_errors().len();
    let plan = state.plan();
    let body = json!({
        "status": if store_ok { "ready" } else { "unavailable" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "database": state.engine.store.backend_name(),
        "config": {
            "valid": errors == 0,
            "errors": errors,
            "syncs": plan.syncs.len(),
            "models": plan.models.len(),
        },
    });
    if store_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
