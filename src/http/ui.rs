//! The web UI (`web/`, embedded in the binary) and the few JSON calls made for it: who the key
//! is, the loaded configuration summarised without secrets, hourly change counts, and one
//! change-control row.

use super::AppState;
use super::api::{ApiError, caller, respond};
use crate::config::Scope;
use actix_web::{HttpRequest, HttpResponse, get, web};
use serde_json::json;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(index)
        .service(asset)
        .service(favicon)
        .service(whoami)
        .service(config_summary)
        .service(change_stats)
        .service(one_change);
}

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");
const ICON: &str = include_str!("../../web/icon.svg");

/// The web UI.
#[utoipa::path(tag = "ui", security(()), responses((status = 200, description = "The UI's page", content_type = "text/html")))]
#[get("/")]
async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(INDEX)
}

/// The UI's script and style sheet.
#[utoipa::path(
    tag = "ui",
    security(()),
    params(("file" = String, Path, description = "app.js, app.css or icon.svg")),
    responses(
        (status = 200, description = "The file"),
        (status = 404, description = "No such file", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/ui/{file}")]
async fn asset(path: web::Path<String>) -> HttpResponse {
    let (body, ty) = match path.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        _ => {
            return HttpResponse::NotFound()
                .json(json!({"error": "not_found", "message": "no such file"}));
        }
    };
    HttpResponse::Ok()
        .content_type(ty)
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

/// The icon, where browsers look for it without being told.
#[utoipa::path(tag = "ui", security(()), responses((status = 200, description = "The icon (SVG)", content_type = "image/svg+xml")))]
#[get("/favicon.ico")]
async fn favicon() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header(("Cache-Control", "max-age=86400"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(ICON)
}

/// The calling key: its name and what it may do.
#[utoipa::path(
    tag = "ui",
    responses(
        (status = 200, description = "The key's name and abilities", body = Object),
        (status = 400, description = "A parameter does not fit (such as a NUL character in the URL)", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/whoami")]
async fn whoami(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let c = caller(&req, &state, &Scope::Read)?;
            Ok(HttpResponse::Ok().json(json!({
                "name": c.name,
                "read": c.can_read(),
                "write": c.can(&Scope::Write),
                "operate": c.can(&Scope::Operate),
            })))
        }
        .await,
    )
}

/// The loaded configuration, summarised (no secrets), and the errors of the last rejected
/// reload.
#[utoipa::path(
    tag = "ui",
    responses(
        (status = 200, description = "Models, web services, external models, syncs and the current errors", body = Object),
        (status = 400, description = "A parameter does not fit (such as a NUL character in the URL)", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/config")]
async fn config_summary(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let plan = state.plan();
            let models: Vec<_> = plan
                .models
                .values()
                .map(|m| {
                    json!({
                        "name": m.name,
                        "fields": m.fields.values().map(|f| json!({
                            "name": f.name, "type": f.ty.to_string(), "required": f.required, "secret": f.secret,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let services: Vec<_> = plan
                .web_services
                .values()
                .map(|w| {
                    let mut shown = w.settings.shown();
                    shown.insert("name".into(), json!(w.name));
                    shown.insert("kind".into(), json!(w.kind));
                    shown.insert("active".into(), json!(w.active));
                    serde_json::Value::Object(shown)
                })
                .collect();
            let syncs: Vec<_> = plan
                .syncs
                .values()
                .map(|s| {
                    json!({
                        "code": s.code, "name": s.name, "model": s.model,
                        "external_model": s.external_model, "web_service": s.web_service,
                        "direction": s.direction, "mode": s.mode,
                        "schedule": s.schedule.as_ref().map(|x| x.describe()),
                        "timezone": s.timezone.to_string(), "priority": s.priority.as_str(),
                        "propagate_deletes": s.propagate_deletes, "limit": s.limit,
                        "external_ref": s.external_ref, "active": s.active,
                        "fields": s.fields.iter().map(|f| {
                            let mut pair = json!({
                                "local": f.local, "external": f.external.to_string(), "direction": f.direction,
                            });
                            // A value table and a reference: values that differ on the two
                            // sides by design, which a change's diff does not mark.
                            if let Some(m) = &f.map {
                                pair["map"] = json!(m.pairs());
                            }
                            match &f.reference {
                                crate::domain::mapping::Reference::None => {}
                                crate::domain::mapping::Reference::Field(name) => {
                                    pair["reference"] = json!(format!("field {name}"));
                                }
                                crate::domain::mapping::Reference::Sync(code) => {
                                    pair["reference"] = json!(format!("sync {code}"));
                                }
                            }
                            // A transform: its expression and the fields it reads, so that a
                            // change shows what went in and what came out.
                            if let Some(t) = &f.to_local {
                                pair["to_local"] = json!(t.source());
                                pair["reads_external"] = json!(f.receives_from());
                            }
                            if let Some(t) = &f.to_external {
                                pair["to_external"] = json!(t.source());
                                pair["reads_local"] = json!(f.sends_from().collect::<Vec<_>>());
                            }
                            pair
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Ok(HttpResponse::Ok().json(json!({
                "models": models,
                "web_services": services,
                "external_models": plan.external_models.keys().collect::<Vec<_>>(),
                "syncs": syncs,
                "errors": state.config_errors(),
            })))
        }
        .await,
    )
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    hours: Option<i64>,
}

/// Change-control rows per sync and hour (all and failed), for the dashboard's charts.
#[utoipa::path(
    tag = "changes",
    params(("hours" = Option<i64>, Query, description = "How many hours back, 1 to 168 (default 24)")),
    responses(
        (status = 200, description = "Counts per sync and UTC hour: `changes`, `failed` (failed attempts) and `unresolved` (failures no later success of the same record, sync and direction made good)", body = Object),
        (status = 400, description = "`hours` out of range", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/changes/stats")]
async fn change_stats(
    req: HttpRequest,
    q: web::Query<StatsQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let hours = q.hours.unwrap_or(24);
            if !(1..=168).contains(&hours) {
                return Err(ApiError::BadRequest(format!("`hours` must be between 1 and 168, not {hours}")));
            }
            let now = chrono::Utc::now();
            let since = now - chrono::Duration::hours(hours);
            let rows = state.engine.reads().change_stats(since).await?;
            let out: Vec<_> = rows
                .into_iter()
                .map(|(sync, hour, n, failed, unresolved)| {
                    json!({"sync": sync, "hour": format!("{hour}:00:00Z"), "changes": n, "failed": failed, "unresolved": unresolved})
                })
                .collect();
            Ok(HttpResponse::Ok().json(json!({"since": since, "until": now, "hours": out})))
        }
        .await,
    )
}

/// One change-control row, masked.
#[utoipa::path(
    tag = "changes",
    params(("id" = i64, Path, description = "The row id")),
    responses(
        (status = 200, description = "The row", body = Object),
        (status = 400, description = "A parameter does not fit (such as a NUL character in the URL)", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such row", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/changes/{id}")]
async fn one_change(
    req: HttpRequest,
    path: web::Path<i64>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let id = path.into_inner();
            let Some(mut row) = state.engine.reads().change(id).await? else {
                return Err(ApiError::NotFound(format!("no change-control row {id}")));
            };
            crate::audit::mask_change(&state.engine.masker(), &mut row);
            Ok(HttpResponse::Ok().json(row))
        }
        .await,
    )
}
