//! `docs/mapping.md` documents every key the configuration compiler accepts.

use recsync::config::{mappings, settings};
use recsync::connectors::{KINDS, dropbox, http, odoo, rest};

#[test]
fn every_accepted_key_is_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/mapping.md")).unwrap();
    let mut groups: Vec<(String, &[&str])> = [
        ("recsync.toml", &settings::KEYS[..]),
        ("api_keys", &settings::API_KEY_KEYS[..]),
        ("mapping file", &mappings::SECTIONS[..]),
        ("model", &mappings::MODEL_KEYS[..]),
        ("field", &mappings::FIELD_KEYS[..]),
        ("external model", &mappings::EXT_MODEL_KEYS[..]),
        ("rest web service", &rest::config::REST_KEYS[..]),
        ("dropbox web service", &dropbox::config::DROPBOX_KEYS[..]),
        ("odoo web service", &odoo::config::ODOO_KEYS[..]),
        ("odoo field", &odoo::config::ODOO_FIELD_KEYS[..]),
        ("auth", &mappings::AUTH_KEYS[..]),
        ("sync", &mappings::SYNC_KEYS[..]),
        ("delete guard", &mappings::DELETE_GUARD_KEYS[..]),
        ("field pair", &mappings::PAIR_KEYS[..]),
        ("endpoint", &mappings::ENDPOINT_KEYS[..]),
        ("http web service", &http::config::HTTP_KEYS[..]),
        ("http list", &http::config::HTTP_LIST_KEYS[..]),
        ("paginate", &http::config::PAGINATE_KEYS[..]),
        ("http operation", &http::config::HTTP_OP_KEYS[..]),
        ("http read", &http::config::HTTP_READ_KEYS[..]),
        ("http search", &http::config::HTTP_SEARCH_KEYS[..]),
    ]
    .into_iter()
    .map(|(g, k)| (g.to_string(), k))
    .collect();
    // Every registered kind's keys, whatever kinds are added later.
    for kind in KINDS {
        groups.push((format!("{} web service", kind.name()), kind.service_keys()));
        groups.push((format!("{} external model", kind.name()), kind.model_keys()));
    }
    let mut missing = Vec::new();
    for (group, keys) in groups {
        for key in keys.iter() {
            // Each key has a heading or a table row naming it, with an example nearby.
            if !doc.contains(&format!("`{key}`")) && !doc.contains(&format!(".{key}`")) {
                missing.push(format!("{group}: {key}"));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    for var in [
        "RECSYNC_DATABASE_URL",
        "RECSYNC_LISTEN",
        "RECSYNC_MAPPINGS",
        "RECSYNC_LOG_FORMAT",
        "RECSYNC_CHANGE_LOG",
        "RECSYNC_BODY_LIMIT",
    ] {
        assert!(doc.contains(var), "{var} is not documented");
    }
}
