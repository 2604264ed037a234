//! `GET /api/v1/changes`: the change-control log with every filter, keyset pages, and a CSV
//! export streamed page by page (constant memory, whatever its size).

use super::api::{ApiError, ApiResult, caller, respond};
use crate::app::AppState;
use crate::audit::{self, ChangeQuery};
use crate::config::Scope;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde_json::json;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/changes", web::get().to(list_changes));
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg)
}

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
        let body = audit::pages(engine.store.clone(), filter, engine.masker()).map(|page| {
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
    let mut rows = engine.store.changes(&filter).await?;
    let masker = engine.masker();
    rows.iter_mut().for_each(|r| audit::mask_change(&masker, r));
    let next = if rows.len() as i64 == filter.limit {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({"changes": rows, "next": next})))
}
