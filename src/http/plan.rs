//! `POST /api/v1/syncs/<CODE>/plan`: what a run of the sync would do, for read keys. Nothing
//! is written and nothing is confirmed.

use super::AppState;
use super::api::{ApiError, caller, respond};
use crate::config::Scope;
use crate::engine::PlanError;
use actix_web::{HttpRequest, HttpResponse, post, web};
use serde::Deserialize;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(plan_sync);
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::UnknownSync(c) => ApiError::NotFound(format!("unknown sync `{c}`")),
            PlanError::CannotPlan(m) => ApiError::Invalid(m),
            PlanError::Service(m) => ApiError::Upstream(m),
            PlanError::Store(s) => ApiError::from(s),
        }
    }
}

#[derive(Deserialize)]
struct PlanQuery {
    #[serde(default)]
    full: bool,
}

/// A dry run of the sync: per side, counts and samples of what a run would create, update
/// (field by field), delete, link by `match_on`, find ambiguous and hold.
#[utoipa::path(
    tag = "syncs",
    params(
        ("code" = String, Path, description = "The sync's code"),
        ("full" = Option<bool>, Query, description = "Plan a full run (everything read, listed and sent again)"),
    ),
    responses(
        (status = 200, description = "The plan", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown sync", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "The sync cannot be planned without taking its changes (a rest service without confirmation_url)", body = crate::http::openapi::ErrorBody),
        (status = 502, description = "The external service failed", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[post("/api/v1/syncs/{code}/plan")]
async fn plan_sync(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<PlanQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let code = path.into_inner();
            let plan = state.engine.plan_run(&code, q.full, None).await?;
            Ok(HttpResponse::Ok().json(plan))
        }
        .await,
    )
}
