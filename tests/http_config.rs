//! `kind = "http"` configuration: what the shipped example compiles to, with its defaults, and
//! the error each mistake gets, naming the key and its position.

use recsync::config::compile_texts;
use recsync::connectors::http::spec::{HttpResource, HttpService, Paginate};
use recsync::domain::plan::Auth;
use std::collections::HashMap;

const DESK: &str = include_str!("../mappings/helpdesk_http.toml");

fn compile(text: &str) -> Result<recsync::domain::Plan, String> {
    let env = HashMap::from([(
        "DESK_CLIENT_SECRET".to_string(),
        "desk-secret-4242".to_string(),
    )]);
    compile_texts(
        &[("mappings/desk.toml", text)],
        &env,
        recsync::connectors::KINDS,
    )
    .map_err(|e| e.render())
}

fn errors_with(from: &str, to: &str) -> String {
    assert!(DESK.contains(from), "the example has {from:?}");
    compile(&DESK.replacen(from, to, 1)).expect_err("an error")
}

#[test]
fn the_help_desk_example_compiles_with_its_defaults() {
    let plan = compile(DESK).unwrap_or_else(|e| panic!("{e}"));
    let Some(h) = plan.web_services["desk"].settings::<HttpService>() else {
        panic!("an http service");
    };
    assert_eq!(h.rate_limit.unwrap().to_string(), "400/min");
    assert_eq!((h.retries, h.max_concurrency), (3, 8));
    assert!(matches!(&h.auth, Auth::OAuth2 { scopes, in_body: false, .. } if scopes.len() == 2));
    let r = plan.external_models["desk_ticket"]
        .settings::<HttpResource>()
        .unwrap();
    let list = r.list.as_ref().unwrap();
    assert_eq!(list.max_pages, 100_000);
    assert_eq!(list.cursor_start.as_deref(), Some("0"));
    assert!(matches!(
        &list.paginate,
        Paginate::NextUrl { done: Some(_), .. }
    ));
    assert_eq!(r.update.as_ref().unwrap().method, "PUT");
    assert_eq!(plan.syncs["DESK_TICKETS"].external_ref, "id");
}

#[test]
fn each_http_mistake_names_its_key() {
    let cases: [(&str, &str, &str); 13] = [
        (
            "base_url = \"${DESK_URL:-http://127.0.0.1:9913}\"\n",
            "",
            "missing field `base_url` in web service `desk`",
        ),
        (
            "rate_limit = \"400/min\"",
            "rate_limit = \"lots\"",
            "invalid `rate_limit` `lots`",
        ),
        (
            "style = \"next_url\"",
            "style = \"infinite\"",
            "unknown pagination style `infinite`",
        ),
        (
            "next = \"$.next_page\", ",
            "",
            "missing field `next` in `paginate` with style `next_url`",
        ),
        (
            "done = \"$.end_of_stream\"",
            "param = \"page\"",
            "`param` does not apply to pagination style `next_url`",
        ),
        (
            "records = \"$.tickets[*]\"\n",
            "",
            "missing field `records` in `list`",
        ),
        (
            "records = \"$.tickets[*]\"",
            "records = \"$.tickets[\"",
            "invalid JSONPath `$.tickets[`",
        ),
        (
            "start_time = \"{cursor}\"",
            "start_time = \"0\"",
            "`cursor_field` is set but no `query` parameter uses `{cursor}`",
        ),
        (
            "path = \"/api/v2/tickets/{id}.json\"\nbody",
            "path = \"/api/v2/tickets.json\"\nbody",
            "does not name `{id}`",
        ),
        (
            "path = \"/api/v2/tickets.json\"\nbody",
            "path = \"https://elsewhere/x\"\nbody",
            "it must start with `/`",
        ),
        (
            "scopes = [\"tickets:read\", \"tickets:write\"] }",
            "scopes = [\"tickets:read\"], client_auth = \"jwt\" }",
            "invalid `client_auth` value `jwt`",
        ),
        (
            "[external_models.desk_ticket.list]",
            "[external_models.desk_ticket.listing]",
            "unknown field `listing`",
        ),
        (
            "cursor_field = \"generated_timestamp\"",
            "cursor_field = \"stamp\"",
            "`cursor_field` names `stamp`, which is not one of the fields",
        ),
    ];
    for (from, to, expected) in cases {
        let errors = errors_with(from, to);
        assert!(
            errors.contains(expected),
            "replacing {from:?} by {to:?}: expected {expected:?} in\n{errors}"
        );
        assert!(
            !errors.contains("desk-secret-4242"),
            "the secret is never shown: {errors}"
        );
    }
}

#[test]
fn a_sync_whose_direction_needs_a_missing_operation_is_an_error_at_its_direction() {
    let without_create = DESK.replacen(
        "[external_models.desk_ticket.create]\nmethod = \"POST\"\npath = \"/api/v2/tickets.json\"\nbody = \"ticket\"\nresponse_id = \"$.ticket.id\"\n",
        "",
        1,
    );
    let e = compile(&without_create).unwrap_err();
    let line = DESK
        .lines()
        .position(|l| l.starts_with("direction = \"bidirectional\""))
        .unwrap();
    // Five lines fewer above it.
    assert!(
        e.contains("sync `DESK_TICKETS` sends new records, but resource `desk_ticket` has no `create` operation")
            && e.contains(&format!("mappings/desk.toml:{}:13", line + 1 - 5)),
        "{e}"
    );
    // Receiving only, it needs no create.
    assert!(
        compile(
            &without_create.replace("direction = \"bidirectional\"", "direction = \"to_local\"")
        )
        .is_ok()
    );
    let without_delete = DESK.replacen("[external_models.desk_ticket.delete]\nmethod = \"DELETE\"\npath = \"/api/v2/tickets/{id}.json\"\n", "", 1);
    let e = compile(&without_delete).unwrap_err();
    assert!(
        e.contains("has no `delete` operation") && e.contains("propagate_deletes = false"),
        "{e}"
    );
    let without_list = DESK.replacen(
        &DESK[DESK.find("[external_models.desk_ticket.list]").unwrap()
            ..DESK.find("[external_models.desk_ticket.create]").unwrap()],
        "",
        1,
    );
    let e = compile(&without_list.replace(
        "propagate_deletes = true",
        "propagate_deletes = true\nreconcile = \"1d\"",
    ))
    .unwrap_err();
    assert!(
        e.contains(
            "sync `DESK_TICKETS` receives, but resource `desk_ticket` has no `list` operation"
        ),
        "{e}"
    );
    assert!(
        e.contains("resource `desk_ticket` has no `list`, so this sync cannot reconcile"),
        "{e}"
    );
}

#[test]
fn oauth2_and_http_keys_belong_to_http_services_only() {
    let rest = r#"
[web_services.crm]
url = "https://crm.example.com/fetch"
auth = { mode = "oauth2", token_url = "https://crm.example.com/token", client_id = "a", client_secret = "b" }
"#;
    let e = compile(rest).unwrap_err();
    assert!(
        e.contains("unknown auth mode `oauth2`")
            && e.contains("OAuth 2.0 is for web services of kind `http`"),
        "{e}"
    );
    let e = compile(&format!(
        "{DESK}\n[external_models.other]\nkind = \"rest\"\nfields = {{ uid = \"char\" }}\n[external_models.other.list]\npath = \"/x\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("`list` only applies to external models of kind `http`"),
        "{e}"
    );
}

#[test]
fn read_search_and_exists_mistakes_name_their_key() {
    const CRM: &str = include_str!("../mappings/crm_http.toml");
    let plan = compile(CRM).unwrap_or_else(|e| panic!("{e}"));
    let r = plan.external_models["crm_contact"]
        .settings::<HttpResource>()
        .unwrap();
    let exists = r.create.as_ref().unwrap().exists.as_ref().unwrap();
    assert_eq!(exists.status, 409);
    assert_eq!(
        exists
            .id_in(&serde_json::json!({"message": "Contact already exists. Existing ID: 14"}))
            .as_deref(),
        Some("14")
    );
    assert!(r.read.is_some() && r.search.is_some());
    let cases: [(&str, &str, &str); 6] = [
        (
            "exists = { status = 409,",
            "exists = { status = 200,",
            "`status` must be an HTTP client error",
        ),
        (
            "pattern = \"Existing ID: (\\\\d+)\"",
            "pattern = \"Existing ID: \\\\d+\"",
            "has no group for the id",
        ),
        (
            "pattern = \"Existing ID: (\\\\d+)\"",
            "pattern = \"Existing ID: (\"",
            "invalid `pattern`",
        ),
        (
            "path = \"/crm/v3/objects/contacts/{id}\"\nquery = { properties",
            "path = \"/crm/v3/objects/contacts\"\nquery = { properties",
            "the `read` path `/crm/v3/objects/contacts` does not name `{id}`",
        ),
        (
            "records = \"$\"\n",
            "",
            "missing field `records` in `search`",
        ),
        (
            "path = \"/crm/v3/objects/contacts/{email}\"\nquery = { idProperty = \"email\", ",
            "path = \"/crm/v3/objects/contacts\"\nquery = { ",
            "`search` names no field to search by",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(CRM.contains(from), "the example has {from:?}");
        let errors = compile(&CRM.replacen(from, to, 1)).expect_err("an error");
        assert!(
            errors.contains(expected),
            "replacing {from:?} by {to:?}: expected {expected:?} in\n{errors}"
        );
    }
    // `exists` belongs to `create`.
    let errors = compile(&CRM.replacen(
        "path = \"/crm/v3/objects/contacts/{id}\"\n[external_models.crm_contact.delete]",
        "path = \"/crm/v3/objects/contacts/{id}\"\nexists = { status = 409, id = \"$.id\" }\n[external_models.crm_contact.delete]",
        1,
    ))
    .expect_err("an error");
    assert!(
        errors.contains("`exists` only applies to `create`, not `update`"),
        "{errors}"
    );
}
