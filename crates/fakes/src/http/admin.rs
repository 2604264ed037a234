//! The `/_fake/*` endpoints: faults, the calls seen, seeding, revoking tokens, and records edited
//! from another process.

use super::*;

pub(super) async fn put_faults(
    state: web::Data<HttpState>,
    body: web::Json<Faults>,
) -> HttpResponse {
    state.set_faults(body.into_inner());
    HttpResponse::NoContent().finish()
}

pub(super) async fn get_calls(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "calls": state.calls(),
        "token_requests": state.token_requests(),
    }))
}

#[derive(Deserialize)]
pub(super) struct Seed {
    resource: String,
    count: usize,
}

pub(super) async fn post_seed(state: web::Data<HttpState>, body: web::Json<Seed>) -> HttpResponse {
    state.seed(&body.resource, body.count);
    HttpResponse::NoContent().finish()
}

pub(super) async fn post_revoke(state: web::Data<HttpState>) -> HttpResponse {
    state.revoke_tokens();
    HttpResponse::NoContent().finish()
}

pub(super) async fn get_records(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> HttpResponse {
    HttpResponse::Ok().json(state.records(&path))
}

pub(super) async fn post_record(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    HttpResponse::Created().json(state.upsert(&path, None, body.into_inner()))
}

pub(super) async fn patch_record(
    state: web::Data<HttpState>,
    path: web::Path<(String, u64)>,
    body: web::Json<Value>,
) -> HttpResponse {
    let (resource, id) = path.into_inner();
    HttpResponse::Ok().json(state.upsert(&resource, Some(id), body.into_inner()))
}

pub(super) async fn delete_record(
    state: web::Data<HttpState>,
    path: web::Path<(String, u64)>,
) -> HttpResponse {
    let (resource, id) = path.into_inner();
    if state.remove(&resource, id) {
        HttpResponse::NoContent().finish()
    } else {
        HttpResponse::NotFound().finish()
    }
}
