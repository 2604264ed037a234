//! Deletes held by a delete guard: `GET /api/v1/holds`, `GET /api/v1/holds/<id>` (with its
//! deletes), `POST /api/v1/holds/<id>/approve` and `/discard` (operate keys).

use super::AppState;
use super::api::{ApiError, caller, respond};
use crate::config::Scope;
use crate::engine::HoldError;
use crate::store::HoldStatus;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::json;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_holds)
        .service(get_hold)
        .service(approve_hold)
        .service(discard_hold);
}

#[derive(Deserialize)]
struct HoldsQuery {
    status: Option<String>,
    sync: Option<String>,
}

fn hold_id(s: &str) -> Result<i64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{s}` is not a hold id")))
}

impl From<HoldError> for ApiError {
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::Unknown(_) => ApiError::NotFound(e.to_string()),
            HoldError::NotHeld { .. } => ApiError::Conflict(e.to_string()),
            HoldError::Store(s) => ApiError::from(s),
        }
    }
}

/// Holds, newest first (those waiting for a decision by default).
#[utoipa::path(
    tag = "holds",
    params(
        ("status" = Option<String>, Query, description = "held (default), approved, discarded, applied, collecting or all"),
        ("sync" = Option<String>, Query, description = "Only this sync's holds"),
    ),
    responses(
        (status = 200, description = "The holds", body = Object),
        (status = 400, description = "A parameter does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/holds")]
async fn list_holds(
    req: HttpRequest,
    q: web::Query<HoldsQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let status = match q.status.as_deref().unwrap_or("held") {
                "all" => None,
                s => Some(HoldStatus::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown status `{s}`: use {}, or all",
                        HoldStatus::ALL.join(", ")
                    ))
                })?),
            };
            let holds = state
                .engine
                .reads()
                .holds(status, q.sync.as_deref(), 200)
                .await?;
            Ok(HttpResponse::Ok().json(json!({ "holds": holds })))
        }
        .await,
    )
}

#[derive(Deserialize)]
struct ItemsQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// One hold and a page of its deletes (by external id).
#[utoipa::path(
    tag = "holds",
    params(
        ("id" = i64, Path, description = "The hold id"),
        ("after" = Option<String>, Query, description = "Deletes after this external id"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "The hold and its deletes", body = Object),
        (status = 400, description = "A parameter does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such hold", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/holds/{id}")]
async fn get_hold(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<ItemsQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let id = hold_id(&path.into_inner())?;
            let reads = state.engine.reads();
            let hold = reads
                .hold(id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no hold {id}")))?;
            let limit = super::api::page_limit(q.limit, 100)?;
            let items = reads
                .hold_items(id, q.after.as_deref().unwrap_or(""), limit)
                .await?;
            let next = (items.len() as i64 == limit)
                .then(|| items.last().map(|i| i.external_id.clone()))
                .flatten();
            Ok(
                HttpResponse::Ok()
                    .json(json!({"hold": hold, "deletes": items, "next_after": next})),
            )
        }
        .await,
    )
}

/// Applies exactly the deletes of a held hold.
#[utoipa::path(
    tag = "holds",
    params(("id" = i64, Path, description = "The hold id")),
    responses(
        (status = 200, description = "Approved: how many were deleted", body = Object),
        (status = 400, description = "A parameter does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such hold", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "The hold was decided already", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[post("/api/v1/holds/{id}/approve")]
async fn approve_hold(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            let who = caller(&req, &state, &Scope::Operate)?;
            let id = hold_id(&path.into_inner())?;
            let decided = state.engine.approve_hold(id, &who.name).await?;
            Ok(HttpResponse::Ok().json(decided))
        }
        .await,
    )
}

/// Keeps the records of a held hold: nothing is deleted, the links stay.
#[utoipa::path(
    tag = "holds",
    params(("id" = i64, Path, description = "The hold id")),
    responses(
        (status = 200, description = "Discarded", body = Object),
        (status = 400, description = "A parameter does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such hold", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "The hold was decided already", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[post("/api/v1/holds/{id}/discard")]
async fn discard_hold(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            let who = caller(&req, &state, &Scope::Operate)?;
            let id = hold_id(&path.into_inner())?;
            let decided = state.engine.discard_hold(id, &who.name).await?;
            Ok(HttpResponse::Ok().json(decided))
        }
        .await,
    )
}
