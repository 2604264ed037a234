//! `GET /metrics`: Prometheus text. Open to callers on the loopback interface; others need a
//! key that can read.

use super::AppState;
use super::api::{ApiResult, caller, respond};
use crate::config::Scope;
use actix_web::{HttpRequest, HttpResponse, get, web};

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(metrics);
}

/// Prometheus metrics (text format). Open on loopback; other callers need a read key.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "Missing or unknown key (callers not on loopback)", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/metrics")]
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(render(&req, &state).await)
}

async fn render(req: &HttpRequest, state: &AppState) -> ApiResult {
    let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    if !loopback {
        caller(req, state, &Scope::Read)?;
    }
    let now = chrono::Utc::now();
    let stats = state.engine.reads().outbox_stats().await?;
    let rows: Vec<(String, String, i64, Option<f64>)> = stats
        .into_iter()
        .map(|(sync, status, n, oldest)| {
            let age = oldest.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
            (sync, status, n, age)
        })
        .collect();
    let syncs: Vec<String> = state.plan().syncs.keys().cloned().collect();
    crate::metrics::outbox(&rows, &syncs);
    let overdue = state.engine.overdue(now).await?;
    let scheduled: Vec<String> = state
        .plan()
        .syncs
        .values()
        .filter(|s| s.schedule.is_some())
        .map(|s| s.code.to_string())
        .collect();
    crate::metrics::overdue(&overdue, &scheduled);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::handle().render()))
}
