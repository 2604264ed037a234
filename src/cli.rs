//! The command line: argument definitions and one function per command. `main.rs` only
//! parses and calls [`run`].

use crate::config::{self, ConfigPaths, Overrides, ProcessEnv, Scope};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for configuration errors (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Exit status for a command this build does not have yet.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code for a command line that does not make sense (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "recsync",
    version,
    about = "Bidirectional record synchronizer",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Server settings file (default: ./recsync.toml when present)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://FILE or postgres://USER:PASS@HOST/DB (or RECSYNC_DATABASE_URL)
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Folder of mapping files (or RECSYNC_MAPPINGS)
    #[arg(long, global = true, value_name = "DIR")]
    pub mappings: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: HTTP API, engine and config hot reload
    Serve {
        /// Address to listen on (or RECSYNC_LISTEN)
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Run the embedded demo: SQLite, mappings/demo.toml and an in-process reference peer
    Demo {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8071")]
        listen: String,
        /// Where the in-process peer listens
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8072")]
        peer_listen: String,
    },
    /// Check the configuration (exit 0 when valid, 78 when not)
    Validate {
        /// Also check that each web service answers
        #[arg(long)]
        online: bool,
    },
    /// Run one sync now
    Run {
        code: String,
        /// Re-read everything instead of only changes
        #[arg(long)]
        full: bool,
    },
    /// Query the change-control log (newest rows, printed oldest first)
    Log {
        #[arg(long)]
        sync: Option<String>,
        /// external_to_local or local_to_external
        #[arg(long)]
        direction: Option<String>,
        /// create, update, delete, unlink, rename, move or conflict
        #[arg(long)]
        action: Option<String>,
        /// success, failed, conflict_resolved or skipped
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        external_id: Option<String>,
        #[arg(long)]
        local_id: Option<String>,
        /// RFC 3339 time or date (UTC)
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time or date (UTC), exclusive
        #[arg(long)]
        until: Option<String>,
        /// Text searched in the title and the error message
        #[arg(long, short)]
        q: Option<String>,
        #[arg(long)]
        run_id: Option<String>,
        /// How many of the newest rows (0: every matching row)
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// table (fits 80 columns), json (one object per line) or csv
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
        format: String,
        /// Keep printing new rows as they are written
        #[arg(long, short)]
        follow: bool,
    },
    /// Inspect and retry failed deliveries
    Outbox {
        #[command(subcommand)]
        action: Option<OutboxAction>,
    },
    /// Manage API keys
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Apply database migrations
    Migrate,
    /// Run the reference external system
    Peer {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8072")]
        listen: String,
        /// Require this key on protocol calls (header api_key, X-Api-Key or Bearer)
        #[arg(long, env = "PEER_API_KEY")]
        api_key: Option<String>,
        /// The field holding a record's id in payloads
        #[arg(long, default_value = "unique_id")]
        id_field: String,
        /// recsync's base URL, to call /sync/... back when the peer's records change
        #[arg(long, value_name = "URL")]
        callback_url: Option<String>,
        /// The key the peer sends to recsync
        #[arg(long, env = "PEER_CALLBACK_KEY")]
        callback_key: Option<String>,
        /// collection=SYNC_CODE pairs for call backs, e.g. contacts=CON
        #[arg(long = "sync", value_name = "COLLECTION=CODE")]
        syncs: Vec<String>,
        /// Seed the demo's sample companies and contacts
        #[arg(long)]
        seed: bool,
        /// collection=COUNT: serve COUNT generated records to pulls without storing them
        #[arg(long, value_name = "COLLECTION=COUNT")]
        synthetic: Vec<String>,
    },
    /// Run the fake Dropbox (tests, demos, SDK conformance)
    FakeDropbox {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9911")]
        listen: String,
        #[arg(long, env = "DROPBOX_APP_KEY", default_value = "demo-app-key")]
        app_key: String,
        #[arg(long, env = "DROPBOX_APP_SECRET", default_value = "demo-app-secret")]
        app_secret: String,
        #[arg(
            long,
            env = "DROPBOX_REFRESH_TOKEN",
            default_value = "demo-refresh-token"
        )]
        refresh_token: String,
        /// Where to send signed change notifications (recsync's /webhooks/dropbox/<service>)
        #[arg(long, value_name = "URL")]
        webhook_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List entries (default: dead letters)
    List {
        /// pending, inflight, done, dead, discarded or all
        #[arg(long, default_value = "dead")]
        status: String,
        #[arg(long)]
        sync: Option<String>,
    },
    /// Send a dead-lettered entry again
    Retry { id: i64 },
    /// Send every dead-lettered entry of a sync again
    RetryAll {
        #[arg(long)]
        sync: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Make a new key: print it once, with the `[[api_keys]]` entry holding only its hash
    New {
        #[arg(long)]
        name: String,
        /// Scopes: read, write, operate, admin, sync:*, sync:<CODE> (comma- or space-separated)
        #[arg(long, num_args = 1.., value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
}

fn paths(g: &GlobalArgs, listen: Option<String>) -> ConfigPaths {
    ConfigPaths {
        config: g.config.clone(),
        overrides: Overrides {
            database_url: g.database_url.clone(),
            listen,
            mappings: g.mappings.clone(),
        },
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate { online } => validate(&cli.global, online).await,
        Command::Keys {
            action: KeysAction::New { name, scopes },
        } => keys_new(&name, &scopes),
        Command::Migrate => migrate(&cli.global).await,
        Command::Serve { listen } => serve(&cli.global, listen).await,
        Command::Demo {
            listen,
            peer_listen,
        } => demo(&cli.global, &listen, &peer_listen).await,
        Command::Run { code, full } => run_now(&cli.global, &code, full).await,
        Command::Log {
            sync,
            direction,
            action,
            status,
            external_id,
            local_id,
            since,
            until,
            q,
            run_id,
            limit,
            format,
            follow,
        } => {
            let query = crate::audit::ChangeQuery {
                sync,
                direction,
                action,
                status,
                external_id,
                local_id,
                since,
                until,
                q,
                run_id,
                ..Default::default()
            };
            log(&cli.global, query, limit, &format, follow).await
        }
        Command::Outbox { action } => outbox(&cli.global, action).await,
        Command::FakeDropbox {
            listen,
            app_key,
            app_secret,
            refresh_token,
            webhook_url,
        } => {
            crate::telemetry::init(config::LogFormat::Pretty);
            let opts = crate::peer::dropbox::FakeOptions {
                listen,
                app_key,
                app_secret,
                refresh_token,
                webhook_url,
            };
            match crate::peer::dropbox::FakeDropbox::bind(opts) {
                Ok(fake) => {
                    println!("Fake Dropbox listening on {}", fake.url());
                    let handle = fake.handle();
                    tokio::spawn(async move {
                        let _ = tokio::signal::ctrl_c().await;
                        handle.stop(true).await;
                    });
                    match fake.run().await {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("error: the fake Dropbox stopped: {e}");
                            ExitCode::from(1)
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: cannot listen: {e}");
                    ExitCode::from(69)
                }
            }
        }
        Command::Peer {
            listen,
            api_key,
            id_field,
            callback_url,
            callback_key,
            syncs,
            seed,
            synthetic,
        } => {
            peer(PeerArgs {
                synthetic,
                listen,
                api_key,
                id_field,
                callback_url,
                callback_key,
                syncs,
                seed,
            })
            .await
        }
    }
}

fn load(g: &GlobalArgs, listen: Option<String>) -> Result<config::Loaded, ExitCode> {
    config::load(&paths(g, listen), &ProcessEnv).map_err(|e| {
        eprintln!("{}", e.render());
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn validate(g: &GlobalArgs, online: bool) -> ExitCode {
    let loaded = match load(g, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let p = &loaded.plan;
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    println!(
        "Configuration is valid: {} model(s), {} external model(s), {} web service(s), {} sync(s), {} API key(s).",
        p.models.len(),
        p.external_models.len(),
        p.web_services.len(),
        p.syncs.len(),
        loaded.settings.api_keys.len()
    );
    println!(
        "Mapping files: {}",
        if files.is_empty() {
            "(none)".to_string()
        } else {
            files.join(", ")
        }
    );
    for s in p.syncs.values() {
        let when = match (&s.mode, &s.schedule) {
            (crate::domain::plan::Mode::Cron, Some(sch)) => {
                format!("cron, {} ({})", sch.describe(), s.timezone)
            }
            (m, Some(sch)) => format!("{}, reconciles {}", m.as_str(), sch.describe()),
            (m, None) => m.as_str().to_string(),
        };
        println!(
            "  {:<10} {} {} {} via {}: {}, {}",
            s.code,
            s.model,
            s.direction.arrow(),
            s.external_model,
            s.web_service,
            s.direction.as_str(),
            when
        );
    }
    if online {
        return check_services(p).await;
    }
    ExitCode::SUCCESS
}

/// `validate --online`: does each web service answer? One line per service; any that does
/// not, or that refuses its credentials, makes the exit code 69.
async fn check_services(plan: &crate::domain::Plan) -> ExitCode {
    use crate::connectors::rest::{Probe, origin, probe};
    use crate::domain::plan::ServiceSpec;
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    println!("Web services:");
    let mut failed = 0;
    for (name, ws) in &plan.web_services {
        let (auth, timeout, urls): (_, _, Vec<String>) = match &ws.spec {
            ServiceSpec::Rest(r) => {
                let mut urls: Vec<String> = [&r.url, &r.confirmation_url, &r.shipping_url]
                    .into_iter()
                    .flatten()
                    .map(|u| u.expose().to_string())
                    .collect();
                // A service reached only through configured endpoints: probe their hosts.
                if urls.is_empty() {
                    urls = plan
                        .syncs
                        .values()
                        .filter(|s| &s.web_service == name)
                        .flat_map(|s| s.endpoints.iter())
                        .map(|e| origin(e.url.expose()))
                        .collect();
                }
                (r.auth.clone(), r.timeout, urls)
            }
            ServiceSpec::Dropbox(d) => (
                crate::domain::plan::Auth::None,
                std::time::Duration::from_secs(10),
                vec![origin(
                    d.api_url
                        .as_ref()
                        .map(|u| u.expose())
                        .unwrap_or("https://api.dropboxapi.com"),
                )],
            ),
        };
        let mut urls = urls;
        urls.dedup();
        if urls.is_empty() {
            println!("  ok    {name}: nothing to reach (no URL is configured)");
            continue;
        }
        let mut problems = Vec::new();
        let started = std::time::Instant::now();
        let mut answered = Vec::new();
        for u in &urls {
            match probe(&client, &auth, timeout, u).await {
                Probe::Answered(code) => answered.push(format!("{} (HTTP {code})", origin(u))),
                Probe::Refused(code) => problems.push(format!(
                    "{} refused the credentials (HTTP {code})",
                    origin(u)
                )),
                Probe::Unreachable(why) => problems.push(format!("{}: {why}", origin(u))),
            }
        }
        if problems.is_empty() {
            answered.dedup();
            println!(
                "  ok    {name}: {} answered in {} ms",
                answered.join(", "),
                started.elapsed().as_millis()
            );
        } else {
            failed += 1;
            problems.dedup();
            println!("  FAIL  {name}: {}", problems.join("; "));
        }
    }
    if failed > 0 {
        eprintln!("error: {failed} web service(s) did not answer as expected");
        return ExitCode::from(EXIT_UNAVAILABLE);
    }
    ExitCode::SUCCESS
}

fn keys_new(name: &str, scopes: &[String]) -> ExitCode {
    let scopes: Vec<String> = scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_string)
        .collect();
    for s in &scopes {
        if Scope::parse(s).is_none() {
            eprintln!(
                "error: unknown scope `{s}`: use read, write, operate, admin, sync:* or sync:<CODE>"
            );
            return ExitCode::from(2);
        }
    }
    if name.trim().is_empty() || name.contains('"') {
        eprintln!("error: --name must be a non-empty name without quotes");
        return ExitCode::from(2);
    }
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "rsk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex::encode(config::settings::hash_key(&key));
    let scope_list = scopes
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    println!("New API key for `{name}` (shown only this once; give it to its holder now):\n");
    println!("    {key}\n");
    println!("Add this entry to recsync.toml; it holds only the key's SHA-256:\n");
    println!("[[api_keys]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\nscopes = [{scope_list}]");
    ExitCode::SUCCESS
}

async fn migrate(g: &GlobalArgs) -> ExitCode {
    let loaded = match load(g, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    use secrecy::ExposeSecret;
    let shown = loaded.settings.database_display();
    let result = async {
        let store =
            crate::store::Store::connect(loaded.settings.database_url.expose_secret()).await?;
        store.migrate().await?;
        store.close().await;
        Ok::<_, crate::store::StoreError>(())
    }
    .await;
    match result {
        Ok(()) => {
            println!("Migrations applied to {shown}.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: migrating {shown} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(g: &GlobalArgs, listen: Option<String>) -> ExitCode {
    let loaded = match load(g, listen) {
        Ok(l) => l,
        Err(code) => return code,
    };
    crate::telemetry::init(loaded.settings.log_format);
    let db = loaded.settings.database_display();
    let app = match crate::app::build(
        loaded.settings,
        loaded.plan,
        crate::app::BuildOptions {
            watch: true,
            no_workers: false,
        },
    )
    .await
    {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Failed to start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(port = app.port(), database = %db, "recsync is serving; probes at /healthz and /readyz");
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Server stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// The embedded demo mapping, so `demo` works from any folder.
const DEMO_MAPPING: &str = include_str!("../mappings/demo.toml");

/// Environment variables set by the program, over the process environment.
struct Layered(std::collections::HashMap<String, String>);

impl config::Env for Layered {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }
}

fn new_key() -> String {
    use base64::Engine as _;
    format!(
        "rsk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
    )
}

async fn demo(g: &GlobalArgs, listen: &str, peer_listen: &str) -> ExitCode {
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

struct PeerArgs {
    listen: String,
    api_key: Option<String>,
    id_field: String,
    callback_url: Option<String>,
    callback_key: Option<String>,
    syncs: Vec<String>,
    seed: bool,
    synthetic: Vec<String>,
}

async fn peer(a: PeerArgs) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Pretty);
    let mut syncs = std::collections::HashMap::new();
    for s in &a.syncs {
        match s.split_once('=') {
            Some((coll, code)) if !coll.is_empty() && !code.is_empty() => {
                syncs.insert(coll.to_string(), code.to_string());
            }
            _ => {
                eprintln!("error: --sync expects COLLECTION=CODE, such as contacts=CON; got `{s}`");
                return ExitCode::from(2);
            }
        }
    }
    let callback = match (a.callback_url, a.callback_key) {
        (Some(url), Some(key)) => Some(crate::peer::Callback { url, key, syncs }),
        (Some(_), None) => {
            eprintln!("error: --callback-url needs --callback-key (or PEER_CALLBACK_KEY)");
            return ExitCode::from(2);
        }
        _ => None,
    };
    let mut synthetic = std::collections::HashMap::new();
    for s in &a.synthetic {
        match s
            .split_once('=')
            .and_then(|(c, n)| Some((c, n.parse::<u64>().ok()?)))
        {
            Some((coll, n)) if !coll.is_empty() => {
                synthetic.insert(coll.to_string(), n);
            }
            _ => {
                eprintln!(
                    "error: --synthetic expects COLLECTION=COUNT, such as contacts=1000000; got `{s}`"
                );
                return ExitCode::from(2);
            }
        }
    }
    let opts = crate::peer::PeerOptions {
        listen: a.listen.clone(),
        api_key: a.api_key,
        id_field: a.id_field,
        callback,
        synthetic,
    };
    let peer = match crate::peer::Peer::bind(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: the peer cannot listen on {}: {e}", a.listen);
            return ExitCode::FAILURE;
        }
    };
    let state = peer.state.clone();
    let url = peer.url();
    let handle = peer.handle();
    let server = tokio::spawn(peer.run());
    if a.seed {
        for (coll, mut values) in crate::peer::demo_seed() {
            let id = values
                .remove("id")
                .and_then(|v| crate::domain::mapping::id_text(&v));
            state.upsert(coll, id, values).await;
        }
    }
    println!(
        "recsync peer is listening on {url} (admin API under /peer, protocol under /api). Ctrl-C stops."
    );
    let _ = tokio::signal::ctrl_c().await;
    handle.stop(true).await;
    let _ = server.await;
    ExitCode::SUCCESS
}

/// Opens (and migrates) the database for the commands that only read the store or work on it
/// alone (`log`, `outbox`): they need nothing but the database's URL, so an invalid mapping or
/// an unset secret elsewhere does not lock an operator out of the audit trail. The plan comes
/// too when the configuration loads (for masking by field name); rows were masked when
/// written either way.
async fn open_store_for_reading(
    g: &GlobalArgs,
) -> Result<(Option<crate::domain::Plan>, crate::store::Store), ExitCode> {
    let only = config::load_database(&paths(g, None), &ProcessEnv).map_err(|e| {
        eprintln!("{}", e.render());
        ExitCode::from(EXIT_CONFIG)
    })?;
    let plan = match config::load(&paths(g, None), &ProcessEnv) {
        Ok(loaded) => Some(loaded.plan),
        // In the demo's folder there is no configuration to speak of: the note below says
        // what is read.
        Err(_) if only.demo => None,
        Err(e) => {
            eprintln!(
                "warning: the configuration does not load ({} error(s); `recsync validate` shows them); reading {} anyway",
                e.diagnostics.len(),
                only.settings.database_display()
            );
            None
        }
    };
    if only.demo {
        eprintln!(
            "note: no recsync.db here; reading the demo's database, sqlite://recsync-demo.db"
        );
    }
    open_url(&only.settings).await.map(|s| (plan, s))
}

async fn open_url(settings: &config::Settings) -> Result<crate::store::Store, ExitCode> {
    use secrecy::ExposeSecret;
    let store = crate::store::Store::connect(settings.database_url.expose_secret())
        .await
        .map_err(|e| {
            eprintln!("error: cannot open {}: {e}", settings.database_display());
            ExitCode::FAILURE
        })?;
    if let Err(e) = store.migrate().await {
        eprintln!("error: migrating the database failed: {e}");
        return Err(ExitCode::FAILURE);
    }
    Ok(store)
}

/// `recsync log`: the change-control log from the configured database.
async fn log(
    g: &GlobalArgs,
    query: crate::audit::ChangeQuery,
    limit: u64,
    format: &str,
    follow: bool,
) -> ExitCode {
    use crate::audit;
    use std::io::Write;
    let mut filter = match query.to_filter(audit::MAX_PAGE) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (plan, store) = match open_store_for_reading(g).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let masker = std::sync::Arc::new(plan.map(|p| p.masker()).unwrap_or_default());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let print = |out: &mut dyn Write, rows: &[crate::store::Change], header: bool| match format {
        "json" => {
            for r in rows {
                let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
            }
        }
        "csv" => {
            let _ = out.write_all(&audit::csv_chunk(rows, header));
        }
        _ => {
            if header {
                let _ = writeln!(out, "{}", table_header());
            }
            for r in rows {
                let _ = writeln!(out, "{}", table_line(r));
            }
        }
    };
    let result: Result<(), crate::store::StoreError> = async {
        // The newest rows, shown oldest first.
        let mut rows = Vec::new();
        if limit == 0 {
            let mut pages =
                std::pin::pin!(audit::pages(store.view(), filter.clone(), masker.clone()));
            use futures_util::StreamExt;
            let mut header = true;
            // Every row: streamed newest first, page by page, in constant memory.
            while let Some(page) = pages.next().await {
                let page = page?;
                print(&mut out, &page, header);
                header = false;
            }
            if header {
                print(&mut out, &[], true);
            }
        } else {
            filter.limit = (limit as i64).min(audit::MAX_PAGE);
            rows = store.changes(&filter).await?;
            rows.reverse();
            rows.iter_mut().for_each(|r| audit::mask_change(&masker, r));
            print(&mut out, &rows, true);
        }
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        let mut last = rows.last().map(|r| r.id).unwrap_or(0);
        if last == 0 {
            last = store
                .changes(&crate::store::ChangeFilter {
                    limit: 1,
                    ..Default::default()
                })
                .await?
                .first()
                .map(|r| r.id)
                .unwrap_or(0);
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            loop {
                let f = crate::store::ChangeFilter {
                    after_id: Some(last),
                    before: None,
                    limit: audit::MAX_PAGE,
                    ..filter.clone()
                };
                let mut rows = store.changes(&f).await?;
                let Some(l) = rows.last() else { break };
                last = l.id;
                rows.iter_mut().for_each(|r| audit::mask_change(&masker, r));
                print(&mut out, &rows, false);
                let _ = out.flush();
                if (rows.len() as i64) < audit::MAX_PAGE {
                    break;
                }
            }
        }
    }
    .await;
    store.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: reading the change-control log failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fits in 80 columns.
fn table_header() -> String {
    format!(
        "{:>6} {:<14} {:<6} {:<3} {:<8} {:<8} {:<10} {}",
        "ID", "WHEN (UTC)", "SYNC", "DIR", "ACTION", "STATUS", "RECORD", "DETAIL"
    )
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn table_line(c: &crate::store::Change) -> String {
    let dir = if c.direction == "external_to_local" {
        "in"
    } else {
        "out"
    };
    let status = if c.status == "conflict_resolved" {
        "conflict"
    } else {
        c.status.as_str()
    };
    let record = match (&c.external_id, c.local_id) {
        (Some(e), _) => e.clone(),
        (None, Some(l)) => format!("#{l}"),
        (None, None) => String::new(),
    };
    let detail = if c.error_message.is_empty() {
        c.title.clone()
    } else {
        c.error_message.clone()
    };
    format!(
        "{:>6} {:<14} {:<6} {:<3} {:<8} {:<8} {:<10} {}",
        clip(&c.id.to_string(), 6),
        c.synced_at.format("%m-%d %H:%M:%S"),
        clip(&c.sync, 6),
        dir,
        clip(&c.action, 8),
        clip(status, 8),
        clip(&record, 10),
        clip(&detail.replace(['\n', '\r'], " "), 18)
    )
}

async fn outbox(g: &GlobalArgs, action: Option<OutboxAction>) -> ExitCode {
    let (_, store) = match open_store_for_reading(g).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let action = action.unwrap_or(OutboxAction::List {
        status: "dead".into(),
        sync: None,
    });
    let result: Result<ExitCode, crate::store::StoreError> = async {
        match action {
            OutboxAction::List { status, sync } => {
                let status = (status != "all").then_some(status);
                let entries = store
                    .list_outbox(status.as_deref(), sync.as_deref(), 0, 1000)
                    .await?;
                if entries.is_empty() {
                    println!("No outbox entries match.");
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:>6}  {:<10} {:>8}  {:<7} {:<9} {:>3}  LAST ERROR",
                    "ID", "SYNC", "LOCAL", "ACTION", "STATUS", "TRY"
                );
                for e in entries {
                    let err = e.last_error.unwrap_or_default();
                    let err: String = err.chars().take(60).collect();
                    println!(
                        "{:>6}  {:<10} {:>8}  {:<7} {:<9} {:>3}  {}",
                        e.id, e.sync, e.local_id, e.action, e.status, e.attempts, err
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            OutboxAction::Retry { id } => {
                if store.outbox_requeue(id).await? {
                    println!(
                        "Outbox entry {id} is queued again; a running `recsync serve` delivers it."
                    );
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("error: no dead or discarded outbox entry {id}");
                    Ok(ExitCode::from(1))
                }
            }
            OutboxAction::RetryAll { sync } => {
                let n = store.outbox_requeue_all(&sync).await?;
                println!(
                    "{n} dead-lettered entr{} of sync {sync} queued again.",
                    if n == 1 { "y" } else { "ies" }
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }
    .await;
    store.close().await;
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// `recsync run CODE`: one run now, in this process, against the configured database.
async fn run_now(g: &GlobalArgs, code: &str, full: bool) -> ExitCode {
    let loaded = match load(g, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    crate::telemetry::init(loaded.settings.log_format);
    use secrecy::ExposeSecret;
    let store =
        match crate::store::Store::connect(loaded.settings.database_url.expose_secret()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "error: cannot open {}: {e}",
                    loaded.settings.database_display()
                );
                return ExitCode::FAILURE;
            }
        };
    if let Err(e) = store.migrate().await {
        eprintln!("error: migrating the database failed: {e}");
        return ExitCode::FAILURE;
    }
    // The same options as `serve` (claim timeout included).
    let opts = crate::engine::EngineOptions::from_settings(&loaded.settings);
    let engine = std::sync::Arc::new(crate::engine::Engine::new(store.clone(), loaded.plan, opts));
    if let Err(e) = engine.register_bindings().await {
        eprintln!("error: recording the syncs' bindings failed: {e}");
        return ExitCode::FAILURE;
    }
    // Deliveries this command claims are in hand while it lives.
    let heartbeat = engine.spawn_heartbeat();
    let writer = engine.spawn_writer();
    let result = match engine
        .start_run(code, crate::engine::Trigger::Manual, full)
        .await
    {
        Ok(started) => match with_progress(code, started.progress.clone(), started.task).await {
            Ok((status, c)) => {
                println!(
                    "Run {} of {code}: {status}. pulled {}, created {}, updated {}, deleted {}, unlinked {}, skipped {}, failed {}, conflicts {}, pushed {}.",
                    started.run_id,
                    c.pulled,
                    c.created,
                    c.updated,
                    c.deleted,
                    c.unlinked,
                    c.skipped,
                    c.failed,
                    c.conflicts,
                    c.pushed
                );
                if let Ok(Some(run)) = store
                    .runs(Some(code), None, 1)
                    .await
                    .map(|r| r.into_iter().next())
                    && let Some(err) = run.error
                {
                    println!("  {err}");
                }
                if status == "success" {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: the run stopped unexpectedly: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    writer.abort();
    heartbeat.abort();
    store.close().await;
    result
}

/// On a terminal, a spinner with the counts so far while the run works; elsewhere nothing
/// (the summary line follows either way).
async fn with_progress(
    code: &str,
    mut progress: tokio::sync::watch::Receiver<crate::store::RunCounts>,
    task: tokio::task::JoinHandle<(String, crate::store::RunCounts)>,
) -> Result<(String, crate::store::RunCounts), tokio::task::JoinError> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return task.await;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(format!("{code}: starting"));
    let watcher = {
        let bar = bar.clone();
        let code = code.to_string();
        tokio::spawn(async move {
            while progress.changed().await.is_ok() {
                let c = progress.borrow().clone();
                bar.set_message(format!(
                    "{code}: pulled {}, created {}, updated {}, skipped {}, failed {}",
                    c.pulled, c.created, c.updated, c.skipped, c.failed
                ));
            }
        })
    };
    let result = task.await;
    watcher.abort();
    bar.finish_and_clear();
    result
}
