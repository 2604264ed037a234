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
    /// Run the embedded demo on SQLite with mappings/demo.toml
    Demo {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8071")]
        listen: String,
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
    /// Query the change-control log
    Log {
        #[arg(long)]
        sync: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value = "table")]
        format: String,
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
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    List,
    Retry {
        id: i64,
    },
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
        Command::Validate { online } => validate(&cli.global, online),
        Command::Keys {
            action: KeysAction::New { name, scopes },
        } => keys_new(&name, &scopes),
        Command::Migrate => migrate(&cli.global).await,
        Command::Serve { listen } => serve(&cli.global, listen).await,
        Command::Demo { listen } => demo(&cli.global, &listen).await,
        Command::Run { .. } => not_yet("run", "the cron engine"),
        Command::Log { .. } => not_yet("log", "the change-control tooling"),
        Command::Outbox { .. } => not_yet("outbox", "the real-time sync work (the durable outbox)"),
        Command::Peer { .. } => not_yet("peer", "the real-time sync work (the reference peer)"),
    }
}

fn not_yet(cmd: &str, arrives_with: &str) -> ExitCode {
    eprintln!(
        "error: `recsync {cmd}` is not available in this build yet; it arrives with {arrives_with}."
    );
    eprintln!(
        "Available now: validate, migrate, keys new, serve (health probes and config hot reload)."
    );
    ExitCode::from(EXIT_UNAVAILABLE)
}

fn load(g: &GlobalArgs, listen: Option<String>) -> Result<config::Loaded, ExitCode> {
    config::load(&paths(g, listen), &ProcessEnv).map_err(|e| {
        eprintln!("{}", e.render());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn validate(g: &GlobalArgs, online: bool) -> ExitCode {
    if online {
        eprintln!(
            "error: `recsync validate --online` is not available in this build yet; it arrives with the web-service connectors."
        );
        return ExitCode::from(EXIT_UNAVAILABLE);
    }
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
            "  {:<10} {} <-> {} via {}: {}, {}",
            s.code,
            s.model,
            s.external_model,
            s.web_service,
            s.direction.as_str(),
            when
        );
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

async fn demo(g: &GlobalArgs, listen: &str) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Pretty);
    let plan = match config::compile_texts(&[("mappings/demo.toml", DEMO_MAPPING)], &ProcessEnv) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}", e.render());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut settings = config::Settings::default();
    let db = g
        .database_url
        .clone()
        .unwrap_or_else(|| "sqlite://recsync-demo.db".to_string());
    settings.database_url = secrecy::SecretString::from(db);
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
    println!("recsync demo is running (database {shown}, mapping mappings/demo.toml).");
    println!("  Health:    {base}/healthz");
    println!("  Readiness: {base}/readyz");
    println!("Try:\n  curl -s {base}/readyz");
    println!("This build serves the probes over the demo configuration; the reference peer,");
    println!(
        "live sync and the web UI are added by the upcoming real-time and UI work. Ctrl-C stops."
    );
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
