//! Server settings: file, `RECSYNC_*` variables and CLI flags, in that order of precedence.

use recsync::config::{self, ConfigPaths, Overrides};
use secrecy::ExposeSecret;
use std::collections::HashMap;

fn setup(settings: &str) -> (tempfile::TempDir, ConfigPaths) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let file = dir.path().join("recsync.toml");
    std::fs::write(
        &file,
        settings.replace("@MAPS@", &dir.path().join("maps").display().to_string()),
    )
    .unwrap();
    let paths = ConfigPaths {
        config: Some(file),
        overrides: Overrides::default(),
    };
    (dir, paths)
}

const FILE: &str = r#"
database_url = "sqlite://from-file.db"
listen = "127.0.0.1:9000"
mappings = "@MAPS@"
change_log = false
change_log_retention = "0"

[[api_keys]]
name = "crm"
key = "${CRM_KEY}"
scopes = ["sync:*", "read"]
"#;

#[test]
fn file_values_and_hashed_keys() {
    let (_dir, paths) = setup(FILE);
    let env = HashMap::from([("CRM_KEY".to_string(), "a-long-enough-key-123".to_string())]);
    let loaded = config::load(&paths, &env, recsync::connectors::KINDS).unwrap();
    let s = loaded.settings;
    assert_eq!(s.database_url.expose_secret(), "sqlite://from-file.db");
    assert_eq!(s.listen.port(), 9000);
    assert!(!s.change_log);
    assert_eq!(s.change_log_retention, None);
    assert_eq!(
        s.api_keys[0].sha256,
        config::settings::hash_key("a-long-enough-key-123")
    );
    assert!(
        !format!("{:?}", s.api_keys).contains("a-long-enough"),
        "keys do not print"
    );
}

#[test]
fn environment_beats_file_and_flags_beat_environment() {
    let (_dir, paths) = setup(FILE);
    let env = HashMap::from([
        ("CRM_KEY".to_string(), "a-long-enough-key-123".to_string()),
        (
            "RECSYNC_DATABASE_URL".to_string(),
            "postgres://u:pw@db/recsync".to_string(),
        ),
        ("RECSYNC_LISTEN".to_string(), "127.0.0.1:9100".to_string()),
        ("RECSYNC_LOG_FORMAT".to_string(), "json".to_string()),
        ("RECSYNC_CHANGE_LOG".to_string(), "true".to_string()),
        (
            "RECSYNC_CHANGE_LOG_RETENTION".to_string(),
            "30d".to_string(),
        ),
        ("RECSYNC_BODY_LIMIT".to_string(), "2048".to_string()),
    ]);
    let s = config::load(&paths, &env, recsync::connectors::KINDS)
        .unwrap()
        .settings;
    assert_eq!(s.database_url.expose_secret(), "postgres://u:pw@db/recsync");
    assert_eq!(s.database_display(), "postgres://u:****@db/recsync");
    assert_eq!(s.listen.port(), 9100);
    assert_eq!(s.log_format, config::LogFormat::Json);
    assert!(s.change_log);
    assert_eq!(
        s.change_log_retention,
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    assert_eq!(s.body_limit, 2048);

    let with_flags = ConfigPaths {
        overrides: Overrides {
            database_url: Some("sqlite://flag.db".into()),
            listen: Some("127.0.0.1:9200".into()),
            mappings: None,
        },
        ..paths
    };
    let s = config::load(&with_flags, &env, recsync::connectors::KINDS)
        .unwrap()
        .settings;
    assert_eq!(s.database_url.expose_secret(), "sqlite://flag.db");
    assert_eq!(s.listen.port(), 9200);
}

#[test]
fn bad_environment_overrides_are_named() {
    let (_dir, paths) = setup(FILE);
    let env = HashMap::from([
        ("CRM_KEY".to_string(), "a-long-enough-key-123".to_string()),
        ("RECSYNC_LISTEN".to_string(), "here".to_string()),
        (
            "RECSYNC_DATABASE_URL".to_string(),
            "mysql://u:hunter2@x/db".to_string(),
        ),
    ]);
    let err = config::load(&paths, &env, recsync::connectors::KINDS).unwrap_err();
    let text = err.render();
    assert!(
        text.contains("invalid `listen` address `here` (from RECSYNC_LISTEN)"),
        "{text}"
    );
    assert!(
        text.contains(
            "`database_url` must start with `sqlite:` or `postgres://` (from RECSYNC_DATABASE_URL)"
        ),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn the_otlp_endpoint_comes_from_the_file_or_the_standard_variables() {
    let key = ("CRM_KEY".to_string(), "a-long-enough-key-123".to_string());
    let endpoint = |file: &str, env: &[(&str, &str)]| {
        let (_dir, paths) = setup(&format!("{file}\n{FILE}"));
        let mut vars = HashMap::from([key.clone()]);
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        config::load(&paths, &vars, recsync::connectors::KINDS)
            .map(|l| l.settings.otlp_endpoint)
            .map_err(|e| e.render())
    };
    assert_eq!(endpoint("", &[]), Ok(None), "no endpoint, no export");
    // A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: spans go to its /v1/traces.
    assert_eq!(
        endpoint(r#"otlp_endpoint = "http://collector:4318/""#, &[]),
        Ok(Some("http://collector:4318/v1/traces".into()))
    );
    assert_eq!(
        endpoint(r#"otlp_endpoint = "https://otel.example/v1/traces""#, &[]),
        Ok(Some("https://otel.example/v1/traces".into()))
    );
    assert_eq!(
        endpoint("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
        Ok(Some("http://c:4318/v1/traces".into()))
    );
    assert_eq!(
        endpoint(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/traces")
            ]
        ),
        Ok(Some("http://t:4318/traces".into())),
        "the traces URL is used as it is"
    );
    // recsync's own setting wins over the standard variables; RECSYNC_ over the file.
    assert_eq!(
        endpoint(
            r#"otlp_endpoint = "http://file:4318""#,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("RECSYNC_OTLP_ENDPOINT", "http://env:4318")
            ]
        ),
        Ok(Some("http://env:4318/v1/traces".into()))
    );
    // Not a URL: named, with where it came from, and nothing starts.
    let err = endpoint(r#"otlp_endpoint = "collector:4318""#, &[]).unwrap_err();
    assert!(
        err.contains(
            "invalid `otlp_endpoint` value `collector:4318`: an http:// or https:// URL is needed"
        ) && err.contains("recsync.toml:1"),
        "{err}"
    );
    let err = endpoint("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://c")]).unwrap_err();
    assert!(
        err.contains("invalid `OTEL_EXPORTER_OTLP_ENDPOINT` value `grpc://c`")
            && err.contains("(from the environment)"),
        "{err}"
    );
    let err = endpoint("", &[("RECSYNC_OTLP_ENDPOINT", "nope")]).unwrap_err();
    assert!(err.contains("(from RECSYNC_OTLP_ENDPOINT)"), "{err}");
}

#[test]
fn scopes_must_name_existing_syncs() {
    let (_dir, paths) = setup(&FILE.replace("\"sync:*\"", "\"sync:NOPE\""));
    let env = HashMap::from([("CRM_KEY".to_string(), "a-long-enough-key-123".to_string())]);
    let err = config::load(&paths, &env, recsync::connectors::KINDS).unwrap_err();
    assert!(
        err.summary()
            .iter()
            .any(|s| s.ends_with("recsync.toml:11:11: unknown sync `NOPE`")),
        "{:?}",
        err.summary()
    );
}
