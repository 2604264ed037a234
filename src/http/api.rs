//! The JSON API under `/api/v1`: local records (read and write) and the outbox. Errors are
//! `{"error": code, "message": sentence}`; a 5xx never carries database text.

use super::AppState;
use super::auth::{Caller, authenticate};
use super::body::{BodyError, read_limited};
use crate::config::Scope;
use crate::domain::FieldType;
use crate::domain::filter::domain_from_json;
use crate::engine::{ApplyError, LocalOp};
use crate::store::{OutboxStatus, Record, StoreError};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_records)
        .service(create_record)
        .service(get_record)
        .service(update_record)
        .service(delete_record)
        .service(list_syncs)
        .service(run_sync)
        .service(list_runs)
        .service(list_outbox)
        .service(retry_outbox)
        .service(discard_outbox);
}

/// An API error.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request cannot be read (query, body, parameters).
    BadRequest(String),
    /// 401: no key, or an unknown one.
    Unauthorized(String),
    /// 403: the key lacks the scope, or the sync does not take this.
    Forbidden(String),
    /// 404: no such model, record, sync, entry or path.
    NotFound(String),
    /// 409: the state does not allow it (an inactive sync).
    Conflict(String),
    /// 409: something is already in progress (a run of the sync).
    Busy(String),
    /// 413: the body is over the limit.
    PayloadTooLarge(String),
    /// 422: a value does not fit its field.
    Invalid(String),
    /// 502: an external service failed or could not be reached.
    Upstream(String),
    /// 503: the store is unavailable; retry.
    Unavailable(String),
    /// 500: anything else, with nothing internal in the message.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::Busy(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` field of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Busy(_) => "busy",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Invalid(_) => "invalid",
            ApiError::Upstream(_) => "upstream",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Busy(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::Invalid(m)
            | ApiError::Upstream(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m) => m,
        }
    }

    fn response(&self) -> HttpResponse {
        HttpResponse::build(self.status())
            .json(json!({"error": self.code(), "message": self.message()}))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        self.response()
    }
}

/// A query string that does not fit its route (`?limit=abc`) gets the API's error shape, with
/// the parameter named.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, req| {
        let query: String = req.query_string().chars().take(200).collect();
        let why = match &err {
            actix_web::error::QueryPayloadError::Deserialize(e) => e.to_string(),
            other => other.to_string(),
        };
        ApiError::BadRequest(format!(
            "the query string `{query}` does not fit this route: {why}"
        ))
        .into()
    })
}

/// A path segment that does not parse (an id past i64) is a resource that cannot exist: 404,
/// in the API's error shape.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, req| {
        let path: String = req.path().chars().take(200).collect();
        ApiError::NotFound(format!("nothing at `{path}`: {err}")).into()
    })
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "Store error while serving the API");
        if e.is_unavailable() {
            ApiError::Unavailable("the store is unavailable; try again".into())
        } else {
            ApiError::Internal("the request could not be completed".into())
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        let message = e.to_string();
        match e {
            ApplyError::UnknownSync(_)
            | ApplyError::UnknownExternalId(..)
            | ApplyError::UnknownRecord(..)
            | ApplyError::UnknownModel(_) => ApiError::NotFound(message),
            ApplyError::NotInbound(_) => ApiError::Forbidden(message),
            ApplyError::Inactive(_) => ApiError::Conflict(message),
            ApplyError::Invalid(_) | ApplyError::MissingReference(_) => ApiError::Invalid(message),
            ApplyError::Store(s) => s.into(),
        }
    }
}

pub(crate) type ApiResult = Result<HttpResponse, ApiError>;

pub(crate) fn respond(r: ApiResult) -> HttpResponse {
    r.unwrap_or_else(|e| e.response())
}

pub(crate) fn caller(
    req: &HttpRequest,
    state: &AppState,
    need: &Scope,
) -> Result<Caller, ApiError> {
    let c = authenticate(req, &state.settings.api_keys)
        .map_err(|e| ApiError::Unauthorized(e.message().into()))?;
    let ok = match need {
        Scope::Read => c.can_read(),
        other => c.can(other),
    };
    if ok {
        Ok(c)
    } else {
        let name = match need {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Operate => "operate",
            _ => "admin",
        };
        Err(ApiError::Forbidden(format!(
            "the key `{}` does not have scope `{name}`",
            c.name
        )))
    }
}

/// A record as the API shows it: its fields, flat, with `id`, `version` and timestamps.
fn record_json(r: &Record) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(r.id));
    for (k, v) in &r.values {
        m.insert(k.clone(), v.clone());
    }
    m.insert("version".into(), json!(r.version));
    m.insert("created_at".into(), json!(r.created_at));
    m.insert("updated_at".into(), json!(r.updated_at));
    Value::Object(m)
}

/// A listing's page size: `default` when not given; outside 1..=1000 it is refused, as
/// `/api/v1/changes` refuses it.
pub(super) fn page_limit(limit: Option<i64>, default: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and 1000, not {n}"
        ))),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    domain: Option<String>,
    limit: Option<i64>,
    after: Option<i64>,
    expand: Option<String>,
}

/// The records' values, with each dotted path (`company.country`) added under its own name,
/// read through the related records hop by hop (one query per hop and page).
async fn with_paths(
    store: &crate::store::ReadView,
    plan: &crate::domain::Plan,
    model: &crate::domain::plan::Model,
    page: &[crate::store::Record],
    paths: &[String],
) -> Result<Vec<serde_json::Map<String, Value>>, crate::store::StoreError> {
    let mut out: Vec<serde_json::Map<String, Value>> =
        page.iter().map(|r| r.values.clone()).collect();
    for path in paths {
        let segments: Vec<&str> = path.split('.').collect();
        // Where each record stands on the path: the values of the record reached so far.
        let mut at: Vec<Option<serde_json::Map<String, Value>>> =
            page.iter().map(|r| Some(r.values.clone())).collect();
        let mut current = model;
        for seg in &segments[..segments.len() - 1] {
            let Some(FieldType::Many2one(related)) = current.field_type(seg) else {
                break;
            };
            let Some(next) = plan.models.get(&related) else {
                break;
            };
            let ids: Vec<i64> = at
                .iter()
                .filter_map(|v| v.as_ref()?.get(*seg)?.as_i64())
                .collect();
            let found: std::collections::HashMap<i64, serde_json::Map<String, Value>> = store
                .records_by_ids(&next.name, &ids)
                .await?
                .into_iter()
                .filter(|r| !r.deleted)
                .map(|r| (r.id, r.values))
                .collect();
            for v in &mut at {
                *v = v
                    .as_ref()
                    .and_then(|m| m.get(*seg)?.as_i64())
                    .and_then(|id| found.get(&id).cloned());
            }
            current = next;
        }
        let last = segments[segments.len() - 1];
        for (values, reached) in out.iter_mut().zip(at) {
            let v = reached
                .and_then(|m| m.get(last).cloned())
                .unwrap_or(Value::Null);
            values.insert(path.clone(), v);
        }
    }
    Ok(out)
}

/// Local records, filtered by an Odoo-style domain, in keyset pages.
#[utoipa::path(
    tag = "records",
    params(
        ("model" = String, Path, description = "A local model"),
        ("domain" = Option<String>, Query, description = "A domain as JSON, for example [[\"stage\", \"=\", \"lead\"]]"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
        ("after" = Option<i64>, Query, description = "Only records with a larger id (the previous page's `next`)"),
        ("expand" = Option<String>, Query, description = "Relational fields to inline, comma-separated"),
    ),
    responses(
        (status = 200, description = "A page of records and the cursor of the next", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown model, record, sync or entry", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/models/{model}/records")]
async fn list_records(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let plan = state.engine.plan();
            let model_name = path.into_inner();
            let model = plan
                .models
                .get(&model_name)
                .ok_or_else(|| ApiError::NotFound(format!("unknown model `{model_name}`")))?;
            let domain = match &q.domain {
                None => crate::domain::Domain::All,
                Some(text) => {
                    let v: Value = serde_json::from_str(text)
                        .map_err(|_| ApiError::BadRequest("`domain` is not valid JSON".into()))?;
                    domain_from_json(&v, |f| plan.path_type(model, f))
                        .map_err(|e| ApiError::BadRequest(format!("invalid `domain`: {e}")))?
                }
            };
            // Dotted paths through many2one fields (`company.country`) are read from the
            // related records, a query per hop and page.
            let paths: Vec<String> = q
                .domain
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c.as_array()?.first()?.as_str().map(str::to_string))
                .filter(|f| f.contains('.'))
                .collect();
            let limit = page_limit(q.limit, 100)? as usize;
            let mut after = q.after.unwrap_or(0);
            let mut out = Vec::new();
            let mut more = false;
            'scan: loop {
                let page = state
                    .engine
                    .reads()
                    .list_records(&model.name, after, 500)
                    .await?;
                if page.is_empty() {
                    break;
                }
                let seen = with_paths(&state.engine.reads(), &plan, model, &page, &paths).await?;
                for (r, values) in page.iter().zip(&seen) {
                    after = r.id;
                    if domain.matches(values) {
                        if out.len() == limit {
                            more = true;
                            break 'scan;
                        }
                        out.push(r.clone());
                    }
                }
            }
            let expand: Vec<&str> = q
                .expand
                .as_deref()
                .map(|e| {
                    e.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let mut records = Vec::with_capacity(out.len());
            for r in &out {
                let mut j = record_json(r);
                for f in &expand {
                    let Some(ty) = model.fields.get(*f).map(|f| f.ty.clone()) else {
                        return Err(ApiError::BadRequest(format!(
                            "cannot expand `{f}`: not a field of `{}`",
                            model.name
                        )));
                    };
                    let Some(related) = ty.related_model() else {
                        return Err(ApiError::BadRequest(format!(
                            "cannot expand `{f}`: not a relational field"
                        )));
                    };
                    let ids: Vec<i64> = match r.values.get(*f) {
                        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
                        Some(v) => v.as_i64().into_iter().collect(),
                        None => vec![],
                    };
                    let mut rel = Vec::new();
                    for id in ids {
                        if let Some(rr) = state
                            .engine
                            .reads()
                            .get_record(related, id)
                            .await?
                            .filter(|x| !x.deleted)
                        {
                            rel.push(record_json(&rr));
                        }
                    }
                    j[*f] = if matches!(ty, FieldType::Many2one(_)) {
                        rel.into_iter().next().unwrap_or(Value::Null)
                    } else {
                        Value::Array(rel)
                    };
                }
                records.push(j);
            }
            let next = if more {
                out.last().map(|r| json!(r.id)).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            Ok(HttpResponse::Ok().json(json!({"records": records, "next_after": next})))
        }
        .await,
    )
}

/// One local record.
#[utoipa::path(
    tag = "records",
    params(("model" = String, Path, description = "A local model"), ("id" = i64, Path, description = "The record id")),
    responses(
        (status = 200, description = "The record", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown model, record, sync or entry", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/models/{model}/records/{id}")]
async fn get_record(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let (model, id) = path.into_inner();
            let id = parse_id(&id)?;
            known_model(&state, &model)?;
            let r = state
                .engine
                .reads()
                .get_record(&model, id)
                .await?
                .filter(|r| !r.deleted);
            let r =
                r.ok_or_else(|| ApiError::NotFound(format!("no `{model}` record with id {id}")))?;
            Ok(HttpResponse::Ok().json(record_json(&r)))
        }
        .await,
    )
}

fn parse_id(s: &str) -> Result<i64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{s}` is not a record id")))
}

fn known_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if state.engine.plan().models.contains_key(model) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("unknown model `{model}`")))
    }
}

pub(crate) async fn json_body(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_limited(req, body, state.settings.body_limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(l) => {
                ApiError::PayloadTooLarge(format!("the body is larger than {l} bytes"))
            }
            BodyError::Unreadable(m) => ApiError::BadRequest(m),
        })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) if super::body::contains_nul(&v) => {
            Err(ApiError::BadRequest(super::body::NUL_REFUSED.into()))
        }
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadRequest(
            "the body must be a JSON object of field values".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Creates a local record; it fans out to the model's syncs.
#[utoipa::path(
    tag = "records",
    params(("model" = String, Path, description = "A local model")),
    request_body(content = Object, description = "Field values"),
    responses(
        (status = 201, description = "The created record", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown model, record, sync or entry", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "A value does not fit its field", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[post("/api/v1/models/{model}/records")]
async fn create_record(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Write)?;
            let model = path.into_inner();
            known_model(&state, &model)?;
            let values = json_body(&req, body, &state).await?;
            let rec = state
                .engine
                .apply_local(&model, LocalOp::Create(values))
                .await?;
            Ok(HttpResponse::Created().json(record_json(&rec)))
        }
        .await,
    )
}

/// Changes fields of a local record; it fans out to the model's syncs.
#[utoipa::path(
    tag = "records",
    params(("model" = String, Path, description = "A local model"), ("id" = i64, Path, description = "The record id")),
    request_body(content = Object, description = "The fields to change"),
    responses(
        (status = 200, description = "The record after the change", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown model, record, sync or entry", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "A value does not fit its field", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[patch("/api/v1/models/{model}/records/{id}")]
async fn update_record(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Write)?;
            let (model, id) = path.into_inner();
            let id = parse_id(&id)?;
            known_model(&state, &model)?;
            let values = json_body(&req, body, &state).await?;
            let rec = state
                .engine
                .apply_local(&model, LocalOp::Update(id, values))
                .await?;
            Ok(HttpResponse::Ok().json(record_json(&rec)))
        }
        .await,
    )
}

/// Deletes a local record (a tombstone, carried to the syncs that propagate deletes).
#[utoipa::path(
    tag = "records",
    params(("model" = String, Path, description = "A local model"), ("id" = i64, Path, description = "The record id")),
    responses(
        (status = 200, description = "Deleted", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown model, record, sync or entry", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[delete("/api/v1/models/{model}/records/{id}")]
async fn delete_record(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Write)?;
            let (model, id) = path.into_inner();
            let id = parse_id(&id)?;
            known_model(&state, &model)?;
            let rec = state
                .engine
                .apply_local(&model, LocalOp::Delete(id))
                .await?;
            Ok(HttpResponse::Ok()
                .json(json!({"id": rec.id, "deleted": true, "version": rec.version})))
        }
        .await,
    )
}

#[derive(Deserialize)]
struct OutboxQuery {
    status: Option<String>,
    sync: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// Outbox entries by status (dead letters by default).
#[utoipa::path(
    tag = "outbox",
    params(
        ("status" = Option<String>, Query, description = "pending, inflight, done, dead (default) or all"),
        ("sync" = Option<String>, Query, description = "Only this sync's entries"),
        ("after" = Option<i64>, Query, description = "Only entries with a larger id"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "The entries, each with its record's `title` (its model's display field; null for a record deleted since or a secret display field)", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/outbox")]
async fn list_outbox(
    req: HttpRequest,
    q: web::Query<OutboxQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let status = match q.status.as_deref() {
                None | Some("all") => None,
                Some(s) => Some(OutboxStatus::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown status `{s}`: use {}, or all",
                        OutboxStatus::ALL.join(", ")
                    ))
                })?),
            };
            let limit = page_limit(q.limit, 100)?;
            let entries = state
                .engine
                .reads()
                .list_outbox(status, q.sync.as_deref(), q.after.unwrap_or(0), limit)
                .await?;
            let next = if entries.len() as i64 == limit {
                entries.last().map(|e| json!(e.id))
            } else {
                None
            };
            // Each entry's record by its title (its model's `display` field), unless that field
            // is secret; a record deleted since has none.
            let plan = state.plan();
            let mut ids: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
            for e in &entries {
                if let Some(s) = plan.sync(&e.sync) {
                    ids.entry(s.model.as_str()).or_default().push(e.local_id);
                }
            }
            let mut titles = std::collections::HashMap::new();
            for (model, ids) in ids {
                let Some(m) = plan.models.get(model) else {
                    continue;
                };
                let secret = m
                    .display
                    .as_ref()
                    .and_then(|d| m.fields.get(d))
                    .is_some_and(|f| f.secret);
                if secret {
                    continue;
                }
                for r in state.engine.reads().records_by_ids(model, &ids).await? {
                    titles.insert((model.to_string(), r.id), m.title(r.id, &r.values));
                }
            }
            let entries: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| {
                    let mut v = json!(e);
                    let title = plan
                        .sync(&e.sync)
                        .and_then(|s| titles.get(&(s.model.clone(), e.local_id)));
                    v["title"] = json!(title);
                    v
                })
                .collect();
            Ok(HttpResponse::Ok().json(json!({"entries": entries, "next_after": next})))
        }
        .await,
    )
}

/// Puts a dead or failing entry back in the queue, with a fresh retry budget.
#[utoipa::path(
    tag = "outbox",
    params(("id" = i64, Path, description = "The entry id")),
    responses(
        (status = 200, description = "Queued again", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown model, record, sync or entry", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[post("/api/v1/outbox/{id}/retry")]
async fn retry_outbox(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Operate)?;
            let id = parse_id(&path.into_inner())?;
            if state.engine.retry_delivery(id).await? {
                Ok(HttpResponse::Ok().json(json!({"id": id, "status": "pending"})))
            } else {
                Err(ApiError::NotFound(format!(
                    "no dead or discarded outbox entry {id}"
                )))
            }
        }
        .await,
    )
}

/// Gives up on an entry; the change-control log keeps its history.
#[utoipa::path(
    tag = "outbox",
    params(("id" = i64, Path, description = "The entry id")),
    responses(
        (status = 200, description = "Discarded", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown model, record, sync or entry", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[post("/api/v1/outbox/{id}/discard")]
async fn discard_outbox(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Operate)?;
            let id = parse_id(&path.into_inner())?;
            if state.engine.discard_delivery(id).await? {
                Ok(HttpResponse::Ok().json(json!({"id": id, "status": "discarded"})))
            } else {
                Err(ApiError::NotFound(format!(
                    "no pending or dead outbox entry {id}"
                )))
            }
        }
        .await,
    )
}

/// Every sync: its configuration summary, last and next run, outbox depth and error counts.
#[utoipa::path(
    tag = "syncs",

    responses(
        (status = 200, description = "The syncs", body = Object),
        (status = 400, description = "A parameter does not fit (such as a NUL character in the URL)", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/syncs")]
async fn list_syncs(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let plan = state.engine.plan();
            let store = state.engine.reads();
            let mut out = Vec::new();
            for s in plan.syncs.values() {
                let last = store
                    .runs(Some(s.code.as_str()), None, 1)
                    .await?
                    .into_iter()
                    .next();
                let st = store.sync_state(s.code.as_str()).await?;
                let late = st
                    .as_ref()
                    .and_then(|x| x.next_run_at)
                    .filter(|_| s.active && s.schedule.is_some())
                    .and_then(|due| crate::engine::schedule::overdue_by(due, chrono::Utc::now()))
                    .map(|l| l as i64);
                out.push(json!({
                    "code": s.code,
                    "name": s.name,
                    "model": s.model,
                    "external_model": s.external_model,
                    "web_service": s.web_service,
                    "direction": s.direction,
                    "mode": s.mode,
                    "schedule": s.schedule.as_ref().map(|x| x.describe()),
                    "timezone": s.timezone.to_string(),
                    "active": s.active,
                    "next_run_at": st.as_ref().and_then(|x| x.next_run_at),
                    "overdue_seconds": late,
                    "running": st.as_ref().is_some_and(|x| x.running_by.is_some()),
                    "last_run": last,
                    "outbox_depth": store.outbox_depth(s.code.as_str()).await?,
                }));
            }
            Ok(HttpResponse::Ok().json(json!({"syncs": out})))
        }
        .await,
    )
}

#[derive(Deserialize)]
struct RunQuery {
    #[serde(default)]
    full: bool,
}

/// Starts a run of the sync now.
#[utoipa::path(
    tag = "syncs",
    params(
        ("code" = String, Path, description = "The sync's code"),
        ("full" = Option<bool>, Query, description = "Reconcile: read or list every external record and repair what differs; a sync that cannot compare re-sends every linked record in the domain"),
    ),
    responses(
        (status = 202, description = "The run started; its id", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown model, record, sync or entry", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "A run of this sync is in progress", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[post("/api/v1/syncs/{code}/run")]
async fn run_sync(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<RunQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Operate)?;
            let code = path.into_inner();
            match state
                .engine
                .start_run(&code, crate::engine::Trigger::Manual, q.full)
                .await
            {
                Ok(started) => Ok(HttpResponse::Accepted()
                    .json(json!({"run_id": started.run_id, "status": "running"}))),
                Err(crate::engine::RunError::UnknownSync(c)) => {
                    Err(ApiError::NotFound(format!("unknown sync `{c}`")))
                }
                Err(e @ crate::engine::RunError::Busy { .. }) => Err(ApiError::Busy(e.to_string())),
                Err(e @ crate::engine::RunError::ShuttingDown) => {
                    Err(ApiError::Unavailable(e.to_string()))
                }
                Err(crate::engine::RunError::Store(e)) => Err(e.into()),
            }
        }
        .await,
    )
}

#[derive(Deserialize)]
struct RunsQuery {
    sync: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// Run history with counts, newest first.
#[utoipa::path(
    tag = "syncs",
    params(
        ("sync" = Option<String>, Query, description = "Only this sync's runs"),
        ("before" = Option<i64>, Query, description = "Only runs with a smaller id"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 50)"),
    ),
    responses(
        (status = 200, description = "The runs", body = Object),
        (status = 400, description = "A parameter or the body does not fit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The key lacks the scope", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody),
    )
)]
#[get("/api/v1/runs")]
async fn list_runs(
    req: HttpRequest,
    q: web::Query<RunsQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(
        async {
            caller(&req, &state, &Scope::Read)?;
            let runs = state
                .engine
                .reads()
                .runs(q.sync.as_deref(), q.before, page_limit(q.limit, 50)?)
                .await?;
            Ok(HttpResponse::Ok().json(json!({"runs": runs})))
        }
        .await,
    )
}
