//! `POST /api/v1/syncs/<CODE>/records/<local id>/{pause,resume,unlink,relink,resync}`: one
//! record at a time, for operate keys.

use super::AppState;
use super::api::{ApiError, caller, json_body, respond};
use crate::config::Scope;
use crate::engine::{RecordOp, RecordOpError};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde_json::json;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(record_op).service(record_state);
}

/// One record's state for a sync: linked (and to which external id), paused, detached.
#[utoipa::path(
    tag = "syncs",
    params(
        ("code" = String, Path, description = "The sync"),
        ("local_id" = i64, Path, description = "The local record"),
    ),
    responses(
        (status = 200, description = "{state: linked | not_linked | detached, external_id, paused, detached_by_hold}", body = Object),
        (status = 400, description = "A parameter does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown sync", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/syncs/{code}/records/{local_id}")]
async fn record_state(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let (code, local_id) = path.into_inner();
            let local_id: i64 = local_id
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("`{local_id}` is not a record id")))?;
            let plan = state.plan();
            if plan.sync(&code).is_none() {
                return Err(ApiError::NotFound(format!("unknown sync `{code}`")));
            }
            let (link, paused, detached) = state
                .engine
                .reads()
                .record_state(&code, &plan.binding_of(&code), local_id)
                .await?;
            let left = link.as_ref().is_some_and(|l| l.left.contains(&code));
            let shown = match (&link, detached) {
                (_, Some(_)) => "detached",
                (Some(_), _) if left => "left_domain",
                (Some(_), _) => "linked",
                (None, _) => "not_linked",
            };
            Ok(HttpResponse::Ok().json(json!({
                "sync": code,
                "local_id": local_id,
                "state": shown,
                "external_id": link.and_then(|l| l.external_id),
                "paused": paused,
                "detached_by_hold": detached,
            })))
        }
        .await,
    )
}

impl From<RecordOpError> for ApiError {
    fn from(e: RecordOpError) -> Self {
        match e {
            RecordOpError::UnknownSync(_)
            | RecordOpError::UnknownRecord(..)
            | RecordOpError::NotLinked(..) => ApiError::NotFound(e.to_string()),
            RecordOpError::Taken { .. } | RecordOpError::Run(_) => {
                ApiError::Conflict(e.to_string())
            }
            RecordOpError::EmptyId => ApiError::BadRequest(e.to_string()),
            RecordOpError::CannotReread(..) => ApiError::Invalid(e.to_string()),
            RecordOpError::Store(s) => ApiError::from(s),
        }
    }
}

/// Pauses, resumes, unlinks, relinks (`{"external_id": "..."}`) or re-reads one record.
#[utoipa::path(
    tag = "syncs",
    params(
        ("code" = String, Path, description = "The sync"),
        ("local_id" = i64, Path, description = "The local record"),
        ("op" = String, Path, description = "pause, resume, unlink, relink or resync"),
    ),
    request_body(content = Object, description = "For relink: {\"external_id\": \"...\"}; otherwise empty"),
    responses(
        (status = 200, description = "Done: what it did", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown sync, record or link", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "The external id is linked to another record, or a run is in progress", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "The web service cannot re-read one record", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[post("/api/v1/syncs/{code}/records/{local_id}/{op}")]
async fn record_op(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            let who = caller(&req, &state, &Scope::Operate)?;
            let (code, local_id, op) = path.into_inner();
            let local_id: i64 = local_id
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("`{local_id}` is not a record id")))?;
            let op = match op.as_str() {
                "pause" => RecordOp::Pause,
                "resume" => RecordOp::Resume,
                "unlink" => RecordOp::Unlink,
                "resync" => RecordOp::Resync,
                "relink" => {
                    let body = json_body(&req, body, &state).await?;
                    match body.get("external_id") {
                        Some(v) => match crate::domain::mapping::id_text(v) {
                            Some(id) => RecordOp::Relink(id),
                            None => {
                                return Err(ApiError::BadRequest(
                                    "external_id: must be a non-empty string or a number".into(),
                                ));
                            }
                        },
                        None => {
                            return Err(ApiError::BadRequest(
                                "external_id: missing; relink needs {\"external_id\": ...}".into(),
                            ));
                        }
                    }
                }
                other => {
                    return Err(ApiError::NotFound(format!(
                        "unknown operation `{other}`: use {}",
                        RecordOp::NAMES.join(", ")
                    )));
                }
            };
            let done = state
                .engine
                .record_op(&code, local_id, op, &who.name)
                .await?;
            Ok(HttpResponse::Ok().json(done))
        }
        .await,
    )
}
