//! `recsync demo`: the reference peer and recsync together, on the embedded default.

use super::*;

/// The embedded demo mapping, so `demo` works from any folder.
pub(super) const DEMO_MAPPING: &str = include_str!("../../mappings/demo.toml");

/// Environment variables set by the program, over the process environment.
pub(super) struct Layered(std::collections::HashMap<String, String>);

impl config::Env for Layered {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }
}

pub(super) fn new_key() -> String {
    use base64::Engine as _;
    format!(
        "rsk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
    )
}

pub(super) async fn demo(g: &GlobalArgs, listen: &str, peer_listen: &str) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Pretty);
    let peer_listener = match std::net::TcpListener::bind(peer_listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: the demo peer cannot listen on {peer_listen}: {e} (choose another with --peer-listen)"
            );
            return ExitCode::FAILURE;
        }
    };
    let peer_url = format!("http://{}", peer_listener.local_addr().expect("bound"));
    let peer_key = new_key();
    let env = Layered(std::collections::HashMap::from([
        ("RECSYNC_PEER_URL".to_string(), peer_url.clone()),
        ("PEER_API_KEY".to_string(), peer_key.clone()),
    ]));
    let plan = match config::compile_texts(&[("mappings/demo.toml", DEMO_MAPPING)], &env) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}", e.render());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let callback_key = new_key();
    let user_key = new_key();
    let viewer_key = new_key();
    // Defaults, with the RECSYNC_* variables honoured (the demo has no settings file).
    let mut diags = config::Diagnostics::default();
    let mut settings =
        config::settings::compile(None, &ProcessEnv, &config::Overrides::default(), &mut diags);
    if !diags.is_empty() {
        eprintln!("{}", diags.render(&config::Sources::default()));
        return ExitCode::from(EXIT_CONFIG);
    }
    let db = g
        .database_url
        .clone()
        .unwrap_or_else(|| "sqlite://recsync-demo.db".to_string());
    settings.database_url = secrecy::SecretString::from(db);
    settings.api_keys = vec![
        config::ApiKey {
            name: "peer".into(),
            sha256: config::settings::hash_key(&callback_key),
            scopes: vec![Scope::AllSyncs],
        },
        config::ApiKey {
            name: "demo".into(),
            sha256: config::settings::hash_key(&user_key),
            scopes: vec![Scope::Admin],
        },
        config::ApiKey {
            name: "viewer".into(),
            sha256: config::settings::hash_key(&viewer_key),
            scopes: vec![Scope::Read],
        },
    ];
    match listen.parse() {
        Ok(addr) => settings.listen = addr,
        Err(_) => {
            eprintln!(
                "error: invalid --listen address `{listen}`: use host:port, such as 127.0.0.1:8071"
            );
            return ExitCode::from(2);
        }
    }
    let shown = settings.database_display();
    let app = match crate::app::build(settings, plan, crate::app::BuildOptions::default()).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: the demo could not start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let base = format!("http://127.0.0.1:{}", app.port());
    let peer = match crate::peer::Peer::from_listener(
        peer_listener,
        crate::peer::PeerOptions {
            listen: peer_listen.to_string(),
            api_key: Some(peer_key),
            id_field: "unique_id".into(),
            synthetic: Default::default(),
            callback: Some(crate::peer::Callback {
                url: base.clone(),
                key: callback_key,
                syncs: [
                    ("contacts".to_string(), "CON".to_string()),
                    ("companies".to_string(), "COMP".to_string()),
                ]
                .into(),
            }),
        },
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: the demo peer could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let peer_state = peer.state.clone();
    let peer_handle = peer.handle();
    tokio::spawn(peer.run());
    let engine = app.engine();
    let serving = tokio::spawn(app.run_until_stopped());
    // The peer's sample data arrives through its call backs, companies first.
    for (coll, mut values) in crate::peer::demo_seed() {
        let id = values
            .remove("id")
            .and_then(|v| crate::domain::mapping::id_text(&v));
        peer_state.upsert(coll, id, values).await;
    }
    let first = engine
        .store
        .list_records("contact", 0, 1)
        .await
        .ok()
        .and_then(|r| r.first().map(|r| r.id))
        .unwrap_or(1);
    println!("recsync demo is running (database {shown}, mapping mappings/demo.toml).");
    println!("  Web UI:       {base}/   (key: {user_key}; read-only key: {viewer_key})");
    println!("  recsync API:  {base}/api/v1   (key: {user_key})");
    println!("  Health:       {base}/healthz");
    println!("  Readiness:    {base}/readyz");
    println!("  Peer records: {peer_url}/peer/contacts/records");
    println!();
    println!("Try these (they work as printed):");
    println!(
        "  curl -s -H 'X-Api-Key: {user_key}' '{base}/api/v1/models/contact/records?expand=company'"
    );
    println!(
        "  curl -s -X PATCH -H 'X-Api-Key: {user_key}' -H 'Content-Type: application/json' -d '{{\"phone\": \"+34 600 111 222\"}}' {base}/api/v1/models/contact/records/{first}"
    );
    println!("  curl -s {peer_url}/peer/contacts/records");
    println!(
        "  curl -s -X POST -H 'Content-Type: application/json' -d '{{\"full_name\": \"Eva Núñez\", \"is_customer\": true, \"company_id\": \"501\"}}' {peer_url}/peer/contacts/records"
    );
    println!();
    println!(
        "Edits through the records API reach the peer; edits in the peer reach recsync. Ctrl-C stops."
    );
    let result = serving.await;
    peer_handle.stop(true).await;
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
