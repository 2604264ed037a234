//! The mirrored tree of a sync whose connector keeps a mirror of the external side (a
//! Dropbox folder): `/api/v1/syncs/<code>/tree`.

use super::AppState;
use super::api::{ApiError, caller, respond};
use crate::config::Scope;
use actix_web::{HttpRequest, HttpResponse, get, web};

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(tree);
}

/// The mirrored external side of a sync as a nested tree (from the store; the service is
/// not called).
#[utoipa::path(
    tag = "syncs",
    params(("code" = String, Path, description = "The code of a sync that mirrors its external side")),
    responses(
        (status = 200, description = "The tree: id, name, tag, path, size, rev and children of each entry", body = Object),
        (status = 400, description = "A parameter does not fit (such as a NUL character in the URL)", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown sync, or a sync that mirrors nothing", body = crate::http::openapi::ErrorBody),
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
            match state.engine.mirror_tree(&code).await? {
                Some(t) => Ok(HttpResponse::Ok().json(t)),
                None => Err(ApiError::NotFound(format!(
                    "sync `{code}` mirrors nothing, so it has no tree"
                ))),
            }
        }
        .await,
    )
}
