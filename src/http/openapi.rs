//! `/openapi.json`: the OpenAPI 3 description, collected by utoipa-actix-web from the same
//! `service(...)` registrations that serve the routes (see `http::routes`), so a route cannot
//! be served without being described.

use actix_web::{HttpResponse, get};
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error body of `/api/v1`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A short code: bad_request, unauthorized, forbidden, not_found, conflict, invalid,
    /// unavailable, internal.
    pub error: String,
    /// One sentence naming the problem.
    pub message: String,
}

/// The JSON-RPC envelope of `/sync/...` answers.
#[derive(Serialize, ToSchema)]
pub struct SyncEnvelope {
    pub jsonrpc: String,
    /// Always null.
    #[schema(value_type = Option<String>)]
    pub id: Option<()>,
    pub result: SyncResult,
}

#[derive(Serialize, ToSchema)]
pub struct SyncResult {
    /// `success` or `failed`.
    pub status: String,
    /// Empty on success, else why the request was refused.
    pub error_message: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "An API key (also accepted as the `api_key` header or `Authorization: Bearer`)",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "recsync",
        description = "Bidirectional record synchronizer: real-time inbound sync, records, syncs, runs, outbox, change-control log, probes and metrics."
    ),
    components(schemas(ErrorBody, SyncEnvelope, SyncResult)),
    modifiers(&Security),
    security(("api_key" = []))
)]
struct Base;

/// The document: the base above merged with every path collected from the routes.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        use utoipa_actix_web::AppExt;
        let (_, paths) = actix_web::App::new()
            .into_utoipa_app()
            .configure(super::routes)
            .split_for_parts();
        let mut api = Base::openapi();
        api.info.version = env!("CARGO_PKG_VERSION").to_string();
        api.merge(paths);
        api.to_pretty_json()
            .expect("the OpenAPI document serialises")
    })
}

/// The OpenAPI 3 description of this API.
#[utoipa::path(
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json"))
)]
#[get("/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}
