//! HTTP surface (actix-web): probes, real-time inbound `/sync`, and the `/api/v1` JSON API.

pub mod api;
pub mod auth;
pub mod body;
pub mod changes;
pub mod holds;
pub mod metrics;
pub mod mirror;
pub mod openapi;
pub mod plan;
pub mod record_ops;
pub mod state;
pub mod sync;
pub mod ui;
pub mod webhooks;

use actix_web::{HttpResponse, get, web};
use serde_json::json;
pub use state::AppState;

/// The id of one HTTP request (16 hex digits), in its span, its `X-Request-Id` answer
/// header, and the deliveries of the changes it brought in.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn new() -> RequestId {
        RequestId(format!("{:016x}", rand::random::<u64>()))
    }
}

/// The actix application: the middleware every request passes (requests in flight, NUL
/// characters in `/api/` URLs, closing connections while stopping, the per-route metrics),
/// the extractor settings, and every route.
pub fn app(
    data: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    use utoipa_actix_web::AppExt;
    let shared = data.clone();
    actix_web::App::new()
        .wrap_fn(move |req, srv| {
            use actix_web::HttpMessage;
            use tracing::Instrument;
            let started = std::time::Instant::now();
            let method = req.method().to_string();
            // Every request gets an id, answered in `X-Request-Id` and carried to the
            // deliveries of the changes it brought in.
            let request_id = RequestId::new();
            let span = tracing::info_span!(
                "request",
                method = %method,
                path = %req.path(),
                request_id = %request_id.0,
                route = tracing::field::Empty,
                status = tracing::field::Empty,
            );
            req.extensions_mut().insert(request_id.clone());
            // A caller's W3C trace goes on here (when traces are exported).
            if let Some(tp) = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
            {
                let state = req
                    .headers()
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok());
                crate::telemetry::continue_from(&span, tp, state);
            }
            // Counted until answered, or dropped with its connection.
            let counted = state::InFlight::new(shared.clone());
            // A NUL character (%00) in an API URL cannot be stored or compared by every
            // backend (PostgreSQL refuses it): refused here once for every `/api/` route.
            let uri = req.uri();
            let nul = uri.path().starts_with("/api/")
                && (uri.path().contains("%00") || uri.query().is_some_and(|q| q.contains("%00")));
            let fut = (!nul).then(|| span.in_scope(|| actix_web::dev::Service::call(srv, req)));
            let engine = shared.engine.clone();
            let in_span = span.clone();
            async move {
                let Some(fut) = fut else {
                    drop(counted);
                    return Err(api::ApiError::BadRequest(
                        "the URL contains a NUL character (%00)".into(),
                    )
                    .into());
                };
                let mut res = fut.await;
                drop(counted);
                // Once shutting down, every answer closes its connection, so keep-alive
                // clients cannot hold the server open with new requests.
                if let Ok(r) = &mut res
                    && engine.is_stopping()
                {
                    r.response_mut()
                        .head_mut()
                        .set_connection_type(actix_web::http::ConnectionType::Close);
                }
                if let Ok(r) = &mut res {
                    let route = r
                        .request()
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".into());
                    crate::metrics::http_request(
                        &method,
                        &route,
                        r.status().as_u16(),
                        started.elapsed().as_secs_f64(),
                    );
                    in_span.record("route", route.as_str());
                    in_span.record("status", r.status().as_u16());
                    tracing::debug!(
                        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "Answered"
                    );
                    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&request_id.0) {
                        r.headers_mut().insert(
                            actix_web::http::header::HeaderName::from_static("x-request-id"),
                            v,
                        );
                    }
                }
                res
            }
            .instrument(span)
        })
        .app_data(data.clone())
        .app_data(web::PayloadConfig::new(data.settings.body_limit))
        .app_data(api::query_config())
        .app_data(api::path_config())
        .into_utoipa_app()
        .configure(routes)
        .into_app()
}

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
    mirror::routes(cfg);
    webhooks::routes(cfg);
    holds::routes(cfg);
    record_ops::routes(cfg);
    plan::routes(cfg);
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
        (status = 503, description = "The store is unreachable, or a scheduled sync is overdue (`overdue` lists them)", body = Object),
    )
)]
#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store_ok = state.engine.reads().ping().await.is_ok();
    // A sync past its due time means the scheduler is not doing its work.
    let overdue = if store_ok {
        state
            .engine
            .overdue(chrono::Utc::now())
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let ready = store_ok && overdue.is_empty();
    let errors = state.config_errors().len();
    let plan = state.plan();
    let body = json!({
        "status": if ready { "ready" } else if store_ok { "overdue" } else { "unavailable" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "database": state.engine.reads().backend_name(),
        "config": {
            "valid": errors == 0,
            "errors": errors,
            "syncs": plan.syncs.len(),
            "models": plan.models.len(),
        },
        "overdue": overdue
            .iter()
            .map(|(sync, s)| json!({"sync": sync, "seconds": s.round()}))
            .collect::<Vec<_>>(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
