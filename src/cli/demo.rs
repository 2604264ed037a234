//! `recsync demo`: the reference peer and recsync together, on the embedded default.

use super::*;

/// The Odoo example, for `demo --odoo`.
const ODOO_MAPPING: &str = include_str!("../../mappings/odoo.toml");
/// Partners the demo's fake Odoo starts with.
const ODOO_PARTNERS: usize = 20;

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

/// Where the demo writes its mapping files, in the folder it runs in.
const DEMO_MAPPINGS: &str = "recsync-demo-mappings";

pub(super) fn new_key() -> String {
    use base64::Engine as _;
    format!(
        "rsk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
    )
}

pub(super) async fn demo(
    g: &GlobalArgs,
    listen: &str,
    peer_listen: &str,
    odoo_listen: Option<&str>,
) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Pretty, None);
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
    let mut vars = std::collections::HashMap::from([
        ("RECSYNC_PEER_URL".to_string(), peer_url.clone()),
        ("PEER_API_KEY".to_string(), peer_key.clone()),
    ]);
    let mut files = vec![("mappings/demo.toml", DEMO_MAPPING)];
    // With --odoo, a fake Odoo in-process, and the Odoo example pointed at it.
    let odoo = match odoo_listen.map(|addr| {
        crate::peer::odoo::FakeOdoo::bind(crate::peer::odoo::OdooOptions {
            listen: addr.to_string(),
            ..Default::default()
        })
        .map_err(|e| (addr, e))
    }) {
        None => None,
        Some(Ok(fake)) => {
            fake.state.seed_partners(ODOO_PARTNERS);
            let hook = new_key();
            vars.insert("ODOO_URL".into(), fake.url());
            vars.insert("ODOO_HOOK_TOKEN".into(), hook.clone());
            files.push(("mappings/odoo.toml", ODOO_MAPPING));
            Some((fake, hook))
        }
        Some(Err((addr, e))) => {
            eprintln!(
                "error: the demo's fake Odoo cannot listen on {addr}: {e} (choose another with --odoo-listen)"
            );
            return ExitCode::FAILURE;
        }
    };
    // The mapping files are written where the demo runs, so the CLI commands it prints read
    // the same configuration (`--mappings recsync-demo-mappings`).
    let written = std::path::Path::new(DEMO_MAPPINGS);
    if let Err(e) = std::fs::create_dir_all(written).and_then(|()| {
        files.iter().try_for_each(|(name, text)| {
            let file = name.rsplit('/').next().unwrap_or(name);
            std::fs::write(written.join(file), text)
        })
    }) {
        eprintln!("warning: the demo could not write its mapping files to {DEMO_MAPPINGS}/: {e}");
    }
    let mut shell_vars: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    shell_vars.sort();
    let env = Layered(vars);
    let plan = match config::compile_texts(&files, &env, crate::connectors::KINDS) {
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
    let settings_db = {
        use secrecy::ExposeSecret;
        settings.database_url.expose_secret().to_string()
    };
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
            api_key: Some(peer_key.clone()),
            id_field: "unique_id".into(),
            synthetic: Default::default(),
            signing_secret: None,
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
    let odoo_url = odoo.as_ref().map(|(fake, _)| fake.url());
    let odoo_hook = odoo.as_ref().map(|(_, hook)| hook.clone());
    let odoo_handle = odoo.map(|(fake, _)| {
        let handle = fake.handle();
        tokio::spawn(fake.run());
        handle
    });
    if odoo_handle.is_some() {
        // Countries and tags first, then the partners that refer to them.
        for code in ["ODOO_COUNTRIES", "ODOO_TAGS", "ODOO_PARTNERS"] {
            match engine
                .start_run(code, crate::engine::Trigger::Startup, false)
                .await
            {
                Ok(started) => {
                    let _ = started.task.await;
                }
                Err(e) => eprintln!("warning: the first run of {code} did not start: {e}"),
            }
        }
    }
    let mapping = if odoo_handle.is_some() {
        format!("mappings {DEMO_MAPPINGS}/demo.toml and {DEMO_MAPPINGS}/odoo.toml")
    } else {
        format!("mapping {DEMO_MAPPINGS}/demo.toml")
    };
    println!("recsync demo is running (database {shown}, {mapping}).");
    println!("  Web UI:       {base}/   (key: {user_key}; read-only key: {viewer_key})");
    println!("  recsync API:  {base}/api/v1   (key: {user_key})");
    println!("  Health:       {base}/healthz");
    println!("  Readiness:    {base}/readyz");
    println!("  Peer records: {peer_url}/peer/contacts/records");
    if let (Some(url), Some(hook)) = (&odoo_url, &odoo_hook) {
        println!("  Fake Odoo:    {url}   (database fake, login admin; {ODOO_PARTNERS} partners)");
        println!("  Odoo webhook: {base}/webhooks/odoo/erp?token={hook}");
    }
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
    println!(
        "  curl -s -X POST -H 'X-Api-Key: {viewer_key}' {base}/api/v1/syncs/CON/plan   # what a run would do; writes nothing"
    );
    // The command as this process was started (a path, or a name found on PATH).
    let exe = std::env::args()
        .next()
        .unwrap_or_else(|| "recsync".to_string());
    let database = if shown.contains("****") {
        // A password is not printed: the command takes it from the environment.
        "\"$RECSYNC_DATABASE_URL\"".to_string()
    } else {
        format!("'{}'", settings_db)
    };
    println!(
        "  {} {exe} --database-url {database} --mappings {DEMO_MAPPINGS} plan CON --full   # the same, from this folder",
        shell_vars.join(" ")
    );
    if let (Some(url), Some(hook)) = (&odoo_url, &odoo_hook) {
        println!(
            "  curl -s -H 'X-Api-Key: {user_key}' '{base}/api/v1/models/partner/records?expand=country'"
        );
        println!(
            "  curl -s -X PATCH -H 'Content-Type: application/json' -d '{{\"email\": \"changed@example.com\"}}' {url}/_fake/records/res.partner/5"
        );
        println!(
            "  curl -s -X POST -H 'Content-Type: application/json' -d '{{\"_model\": \"res.partner\", \"_id\": 5}}' '{base}/webhooks/odoo/erp?token={hook}'"
        );
    }
    println!();
    println!(
        "Edits through the records API reach the peer; edits in the peer reach recsync. Ctrl-C stops."
    );
    let result = serving.await;
    peer_handle.stop(true).await;
    if let Some(h) = odoo_handle {
        h.stop(true).await;
    }
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
