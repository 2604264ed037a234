//! `serve` in-process: probes over real HTTP and hot reload of the mapping folder.

mod common;

use recsync::app::{self, BuildOptions};
use recsync::config::{self, ConfigPaths, Overrides, ProcessEnv};

const MAPPING: &str = r#"
[models.contact]
fields = { name = "char" }

[web_services.crm]
url = "https://crm.example.com/fetch"

[external_models.crm_contact]
fields = { unique_id = "char", full_name = "char" }

[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
every = "5m"
external_ref = "unique_id"
fields = [{ local = "name", external = "full_name" }]
"#;

#[tokio::test]
async fn probes_answer_and_hot_reload_keeps_the_last_valid_plan() {
    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings");
    std::fs::create_dir(&mappings).unwrap();
    std::fs::write(mappings.join("crm.toml"), MAPPING).unwrap();
    let db = common::TestDb::new().await;
    let paths = ConfigPaths {
        config: None,
        overrides: Overrides {
            database_url: Some(db.url.clone()),
            listen: Some("127.0.0.1:0".into()),
            mappings: Some(mappings.clone()),
        },
    };
    let loaded = config::load(&paths, &ProcessEnv, recsync::connectors::KINDS).unwrap();
    let app = app::build(
        loaded.settings,
        loaded.plan,
        BuildOptions {
            watch: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["config"]["valid"], true);
    assert_eq!(ready["config"]["syncs"], 1);

    // An invalid edit: the last valid plan keeps running, and the error is kept for display.
    std::fs::write(
        mappings.join("crm.toml"),
        MAPPING.replace("every = \"5m\"", "every = \"5 minutes\""),
    )
    .unwrap();
    let errors = common::eventually(20, "the invalid edit to be seen", || {
        let s = state.clone();
        async move { Some(s.config_errors()).filter(|e| !e.is_empty()) }
    })
    .await;
    assert!(
        errors[0].contains("crm.toml:16:9: invalid duration `5 minutes` for `every`"),
        "{errors:?}"
    );
    assert!(
        state.plan().syncs.contains_key("CON"),
        "the last valid plan is still in force"
    );
    let ready: serde_json::Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["config"]["valid"], false);
    assert_eq!(
        ready["status"], "ready",
        "the server goes on with the last valid plan"
    );

    // A valid edit replaces the plan without a restart.
    let second = MAPPING.replace("[syncs.CON]", "[syncs.CON2]");
    let both = format!(
        "{MAPPING}\n{}",
        &second[second.find("[syncs.CON2]").unwrap()..]
    );
    std::fs::write(mappings.join("crm.toml"), both).unwrap();
    common::eventually(20, "the valid edit to be loaded", || {
        let s = state.clone();
        async move {
            (s.plan().syncs.contains_key("CON2") && s.config_errors().is_empty()).then_some(())
        }
    })
    .await;
    server.abort();
    let _ = server.await;
}
