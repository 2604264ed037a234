//! `docs/mapping.md` documents every key the configuration compiler accepts.

use recsync::config::{mappings, settings};

#[test]
fn every_accepted_key_is_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/mapping.md")).unwrap();
    let groups: [(&str, &[&str]); 21] = [
        ("recsync.toml", &settings::KEYS),
        ("api_keys", &settings::API_KEY_KEYS),
        ("mapping file", &mappings::SECTIONS),
        ("model", &mappings::MODEL_KEYS),
        ("field", &mappings::FIELD_KEYS),
        ("external model", &mappings::EXT_MODEL_KEYS),
        ("rest web service", &mappings::REST_KEYS),
        ("dropbox web service", &mappings::DROPBOX_KEYS),
        ("odoo web service", &mappings::ODOO_KEYS),
        ("odoo field", &mappings::ODOO_FIELD_KEYS),
        ("auth", &mappings::AUTH_KEYS),
        ("sync", &mappings::SYNC_KEYS),
        ("delete guard", &mappings::DELETE_GUARD_KEYS),
        ("field pair", &mappings::PAIR_KEYS),
        ("endpoint", &mappings::ENDPOINT_KEYS),
        ("http web service", &mappings::HTTP_KEYS),
        ("http list", &mappings::HTTP_LIST_KEYS),
        ("paginate", &mappings::PAGINATE_KEYS),
        ("http operation", &mappings::HTTP_OP_KEYS),
        ("http read", &mappings::HTTP_READ_KEYS),
        ("http search", &mappings::HTTP_SEARCH_KEYS),
    ];
    let mut missing = Vec::new();
    for (group, keys) in groups {
        for key in keys {
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
