//! Odoo configuration: what a valid Odoo web service, external model and sync compile to, with
//! their defaults, and the error each mistake gets, naming the key.

use recsync::config::compile_texts;
use recsync::connectors::odoo::spec::{Archived, OdooModel, OdooProtocol, OdooService};
use recsync::domain::plan::DeleteMode;
use std::collections::HashMap;

const BASE: &str = include_str!("fixtures/base.toml");

const ODOO: &str = r#"
[web_services.erp]
kind = "odoo"
url = "https://erp.example.com"
database = "prod"
login = "sync-bot@example.com"
api_key = "${ODOO_API_KEY}"
webhook_token = "${ODOO_HOOK}"

[external_models.odoo_partner]
kind = "odoo"
odoo_model = "res.partner"
domain = ["|", ["type", "=", "contact"], ["parent_id.name", "ilike", "acme"]]
[external_models.odoo_partner.fields]
name        = "char"
email       = "char"
country_id  = { type = "many2one", relation = "res.country" }
category_id = { type = "many2many", relation = "res.partner.category" }

[syncs.ODP]
model = "contact"
external_model = "odoo_partner"
web_service = "erp"
direction = "bidirectional"
every = "15m"
propagate_deletes = true
delete_mode = "archive"
fields = [
  { local = "name", external = "name" },
  { local = "email", external = "email" },
  { local = "company", external = "country_id.code", ref_field = "code" },
]
"#;

fn env() -> HashMap<String, String> {
    HashMap::from([
        ("CRM_KEY".to_string(), "s3cr3t-crm-key-value".to_string()),
        (
            "ODOO_API_KEY".to_string(),
            "odoo-secret-api-key-42".to_string(),
        ),
        ("ODOO_HOOK".to_string(), "odoo-hook-secret-17".to_string()),
    ])
}

fn compile(text: &str) -> Result<recsync::domain::Plan, String> {
    compile_texts(
        &[("mappings/base.toml", BASE), ("mappings/odoo.toml", text)],
        &env(),
        recsync::connectors::KINDS,
    )
    .map_err(|e| e.render())
}

/// The rendered errors of the Odoo file with `from` replaced by `to`.
fn errors_with(from: &str, to: &str) -> String {
    assert!(ODOO.contains(from), "{from}");
    match compile(&ODOO.replacen(from, to, 1)) {
        Ok(_) => "(valid)".into(),
        Err(e) => e,
    }
}

#[test]
fn an_odoo_sync_compiles_with_its_defaults() {
    let plan = compile(ODOO).unwrap_or_else(|e| panic!("{e}"));
    let Some(o) = plan.web_services["erp"].settings::<OdooService>() else {
        panic!("an Odoo service");
    };
    assert_eq!(o.protocol, OdooProtocol::Auto);
    assert_eq!(o.overlap, std::time::Duration::from_secs(300));
    assert_eq!(o.max_concurrency, 4);
    assert_eq!(o.timeout, std::time::Duration::from_secs(30));
    let em = &plan.external_models["odoo_partner"];
    let odoo = em.settings::<OdooModel>().unwrap();
    assert_eq!(odoo.model, "res.partner");
    assert_eq!(odoo.archived, Archived::Unlink);
    assert_eq!(odoo.domain.len(), 3);
    assert_eq!(
        odoo.fields["country_id"].relation.as_deref(),
        Some("res.country")
    );
    assert!(em.fields.contains_key("id") && em.fields.contains_key("write_date"));
    let sync = &plan.syncs["ODP"];
    assert_eq!(sync.external_ref, "id", "Odoo syncs identify records by id");
    assert_eq!(sync.delete_mode, DeleteMode::Archive);
    // The key and the token are secrets.
    let masker = plan.masker();
    let text = "key odoo-secret-api-key-42 token odoo-hook-secret-17";
    let masked = masker.mask_text(text);
    assert!(
        !masked.contains("odoo-secret-api-key-42") && !masked.contains("odoo-hook-secret-17"),
        "{masked}"
    );
}

#[test]
fn each_odoo_mistake_names_its_key() {
    let cases: [(&str, &str, &str); 14] = [
        (
            "api_key = \"${ODOO_API_KEY}\"\n",
            "",
            "missing field `api_key` in web service `erp`",
        ),
        (
            "database = \"prod\"\n",
            "protocol = \"jsonrpc\"\n",
            "speaks JSON-RPC and needs `database`",
        ),
        (
            "database = \"prod\"\n",
            "protocol = \"xmlrpc\"\n",
            "invalid `protocol` value `xmlrpc`",
        ),
        (
            "kind = \"odoo\"\nurl",
            "kind = \"odoo\"\noverlap = \"soon\"\nurl",
            "invalid duration `soon` for `overlap`",
        ),
        (
            "{ type = \"many2one\", relation = \"res.country\" }",
            "\"many2one\"",
            "many2one field `country_id` needs `relation`",
        ),
        (
            "email       = \"char\"",
            "email = \"varchar\"",
            "unknown Odoo field type `varchar`",
        ),
        (
            "[\"type\", \"=\", \"contact\"]",
            "[\"type\", \"equals\", \"contact\"]",
            "unknown Odoo operator `equals`",
        ),
        (
            "domain = [\"|\", ",
            "domain = [\"|\", \"&\", ",
            "`|` needs 2 condition(s) after it",
        ),
        (
            "odoo_model = \"res.partner\"\n",
            "",
            "missing field `odoo_model` in external model `odoo_partner`",
        ),
        (
            "propagate_deletes = true\n",
            "external_ref = \"email\"\n",
            "Odoo records are identified by `id`, not `email`",
        ),
        (
            "external = \"country_id.code\"",
            "external = \"email.code\"",
            "`email` is not a relational field of `res.partner`",
        ),
        (
            "external = \"country_id.code\"",
            "external = \"state_id.code\"",
            "unknown field `state_id` on external model `odoo_partner`",
        ),
        (
            "delete_mode = \"archive\"",
            "delete_mode = \"hide\"",
            "invalid `delete_mode` value `hide`",
        ),
        (
            "propagate_deletes = true\n",
            "[[syncs.ODP.endpoints]]\naction = \"create\"\nmethod = \"POST\"\nurl = \"https://erp.example.com/x\"\n",
            "`endpoints` only apply to REST web services",
        ),
    ];
    for (from, to, expected) in cases {
        let errors = errors_with(from, to);
        assert!(
            errors.contains(expected),
            "replacing {from:?} by {to:?}: expected {expected:?} in\n{errors}"
        );
        assert!(
            !errors.contains("odoo-secret-api-key-42"),
            "the key is never shown: {errors}"
        );
    }
}

#[test]
fn only_odoo_models_take_odoo_keys_and_only_odoo_syncs_archive() {
    let rest_with_odoo_key = format!(
        "{ODOO}\n[external_models.other]\nodoo_model = \"res.partner\"\nfields = {{ unique_id = \"char\" }}\n"
    );
    let e = compile(&rest_with_odoo_key).unwrap_err();
    assert!(
        e.contains("`odoo_model` only applies to Odoo external models"),
        "{e}"
    );
    let rest_archive = format!(
        "{ODOO}\n[syncs.CRMX]\nmodel = \"company\"\nexternal_model = \"crm_company\"\nweb_service = \"crm\"\ndirection = \"to_external\"\nevery = \"1h\"\nexternal_ref = \"unique_id\"\ndelete_mode = \"archive\"\n"
    );
    let e = compile(&rest_archive).unwrap_err();
    assert!(
        e.contains("rest external models cannot archive records"),
        "{e}"
    );
}
