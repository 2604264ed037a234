//! `GET /api/v1/changes`: the change-control log with every filter, keyset pages, and a CSV
//! export streamed page by page (constant memory, whatever its size).

use super::AppState;
use super::api::{ApiError, ApiResult, caller, respond};
use crate::audit::{self, ChangeQuery};
use crate::config::Scope;
use actix_web::{HttpRequest, HttpResponse, get, web};
use futures_util::StreamExt;
use serde_json::json;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_changes);
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// The change-control log, newest first, filtered, in keyset pages; or every matching row as
/// CSV.
#[utoipa::path(
    tag = "changes",
    params(
        ("sync" = Option<String>, Query, description = "A sync's code"),
        ("direction" = Option<String>, Query, description = "external_to_local or local_to_external"),
        ("action" = Option<String>, Query, description = "create, update, delete, unlink, rename, move, conflict, link, detach, run (a failed run) or reconcile (what a reconciliation found)"),
        ("status" = Option<String>, Query, description = "success, failed, conflict_resolved or skipped"),
        ("external_id" = Option<String>, Query, description = "The record's external id"),
        ("local_id" = Option<i64>, Query, description = "The local record id"),
        ("since" = Option<String>, Query, description = "RFC 3339 time or date, inclusive"),
        ("until" = Option<String>, Query, description = "RFC 3339 time or date, exclusive"),
        ("q" = Option<String>, Query, description = "Text searched, ignoring case, in the title and the error message"),
        ("run_id" = Option<i64>, Query, description = "Rows written by this run"),
        ("after" = Option<i64>, Query, description = "The previous page's `next`"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 50; for CSV, the export's page size)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
    ),
    responses(
        (status = 200, description = "A page of rows and the cursor of the next (JSON), or every matching row (CSV)", body = Object),
        (status = 400, description = "A parameter does not fit; it is named", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key cannot read", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/changes")]
async fn list_changes(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(changes(&req, &state).await)
}

async fn changes(req: &HttpRequest, state: &AppState) -> ApiResult {
    caller(req, state, &Scope::Read)?;
    let q = web::Query::<ChangeQuery>::from_query(req.query_string())
        .map_err(|e| bad(format!("the query string does not fit this route: {e}")))?
        .into_inner();
    let csv = match q.format.as_deref() {
        None | Some("") | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(bad(format!("`format` must be json or csv, not `{other}`")));
        }
    };
    let engine = &state.engine;
    if csv {
        // Exports take every matching row; `limit` only sets the page size.
        let filter = q.to_filter(audit::MAX_PAGE).map_err(bad)?;
        let header = futures_util::stream::once(async {
            Ok::<_, actix_web::Error>(web::Bytes::from(audit::csv_chunk(&[], true)))
        });
        let body = audit::pages(engine.reads(), filter, engine.masker()).map(|page| {
            page.map(|rows| web::Bytes::from(audit::csv_chunk(&rows, false)))
                .map_err(|e| {
                    tracing::error!(error = %e, "The change-control export stopped early");
                    actix_web::error::ErrorServiceUnavailable("the export stopped early")
                })
        });
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                "Content-Disposition",
                "attachment; filename=\"changes.csv\"",
            ))
            .streaming(header.chain(body)));
    }
    let filter = q.to_filter(50).map_err(bad)?;
    let mut rows = engine.reads().changes(&filter).await?;
    let masker = engine.masker();
    rows.iter_mut().for_each(|r| audit::mask_change(&masker, r));
    let next = if rows.len() as i64 == filter.limit {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({"changes": rows, "next": next})))
}
