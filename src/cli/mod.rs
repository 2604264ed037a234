use crate::config::{self, ConfigPaths, Overrides, ProcessEnv, Scope};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "fakes")]
mod demo;
mod discover;
#[cfg(feature = "fakes")]
mod fakes;
mod holds;
mod keys;
mod log;
mod outbox;
#[cfg(feature = "fakes")]
mod peer;
mod plan;
mod run;
mod serve;
mod validate;

#[cfg(feature = "fakes")]
use demo::demo;
use keys::keys_new;
use log::{log, open_store_for_reading};
use outbox::outbox;
#[cfg(feature = "fakes")]
use peer::{PeerArgs, peer};
use run::run_now;
use serve::{migrate, serve};
use validate::validate;

/// The demo's mapping, built in (also what `plan` reads for the demo's database).
pub(crate) const DEMO_MAPPING: &str = include_str!("../../mappings/demo.toml");

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
    #[cfg(feature = "fakes")]
    /// Run the embedded demo: SQLite, mappings/demo.toml and an in-process reference peer
    Demo {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8071")]
        listen: String,
        /// Where the in-process peer listens
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8072")]
        peer_listen: String,
        /// Also sync partners with an in-process fake Odoo (mappings/odoo.toml)
        #[arg(long)]
        odoo: bool,
        /// Where the in-process fake Odoo listens (with --odoo)
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9912")]
        odoo_listen: String,
    },
    /// Check the configuration (exit 0 when valid, 78 when not)
    Validate {
        /// Also ask each web service, with its credentials: Odoo logs in, Dropbox refreshes
        /// its token and lists, an HTTP API answers an authenticated call, a REST service
        /// each configured host (exit 69 when one fails)
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
        /// create, update, delete, unlink, rename, move, conflict, link, detach, run (a failed
        /// run) or reconcile (what a reconciliation found)
        #[arg(long)]
        action: Option<String>,
        /// success, failed, conflict_resolved (`resolved` in the table, which is taken too) or
        /// skipped
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
    /// One record of one sync: pause, resume, unlink, relink or resync
    Record {
        /// The sync's code
        code: String,
        /// The local record's id
        local_id: i64,
        /// pause, resume, unlink, relink (with --external-id) or resync
        #[arg(value_parser = ["pause", "resume", "unlink", "relink", "resync"])]
        op: String,
        /// For relink: the external id to link the record to
        #[arg(long)]
        external_id: Option<String>,
    },
    /// What a run of one sync would do, on each side; writes nothing, confirms nothing.
    /// With --mappings DIR, under the configuration in that folder, against the current data.
    Plan {
        code: String,
        /// Plan a full run (everything read, listed and sent again)
        #[arg(long)]
        full: bool,
        /// Print the plan as JSON
        #[arg(long)]
        json: bool,
    },
    /// Deletes held by a delete guard: list, approve or discard
    Holds {
        #[command(subcommand)]
        action: Option<HoldsAction>,
    },
    /// Manage API keys
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Apply database migrations
    Migrate,
    /// Print the external_models block of what a web service describes (Odoo: fields_get; http: a sample page of a path)
    Discover {
        /// A configured web service
        web_service: String,
        /// The resource to describe (Odoo: a model such as res.partner)
        resource: Option<String>,
    },
    #[cfg(feature = "fakes")]
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
        /// A Standard Webhooks secret (whsec_...): deliveries must be signed with it (401
        /// otherwise) and calls back to recsync are signed with it (see `signing_secret` and
        /// `inbound_signing_secret` in docs/mapping.md)
        #[arg(long, env = "RECSYNC_PEER_SIGNING_SECRET", hide_env_values = true)]
        signing_secret: Option<String>,
    },
    #[cfg(feature = "fakes")]
    /// Run the fake Dropbox (tests, demos, SDK conformance)
    ///
    /// Test hooks (no credentials; `GET /` lists them): GET /_fake/entries (every path),
    /// GET /_fake/calls (the calls received), PUT /_fake/webhook, POST /_fake/notify (a signed
    /// notification now), PUT /_fake/faults (429s, 500s, ...). Examples with curl:
    /// docs/fakes/dropbox.md.
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
    #[cfg(feature = "fakes")]
    /// Run the fake Odoo (tests, demos, client conformance): JSON-RPC and JSON-2
    ///
    /// Test hooks (no credentials; `GET /` lists them): GET and POST /_fake/records/<model>,
    /// PATCH and DELETE /_fake/records/<model>/<id> (records edited as a user would),
    /// PUT /_fake/faults (429s, 500s, lost answers, ...), GET /_fake/calls (the calls received).
    /// Examples with curl: docs/fakes/odoo.md.
    FakeOdoo {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9912")]
        listen: String,
        #[arg(long, default_value = "fake")]
        database: String,
        #[arg(long, default_value = "admin")]
        login: String,
        #[arg(long, env = "ODOO_PASSWORD", default_value = "admin")]
        password: String,
        #[arg(
            long,
            env = "ODOO_API_KEY",
            default_value = "fake-odoo-api-key-0123456789"
        )]
        api_key: String,
        /// The server version answered (19.0 and later speak JSON-2)
        #[arg(long, default_value = "19.0")]
        server_version: String,
        /// Start with this many partners (for benchmarks and demos)
        #[arg(long, default_value_t = 0)]
        partners: usize,
    },
    #[cfg(feature = "fakes")]
    /// Run the fake HTTP JSON API (tests, examples, benchmarks): HubSpot-style contacts,
    /// Zendesk-style tickets, items in every pagination style, an OAuth 2.0 token endpoint
    ///
    /// Test hooks (no credentials; `GET /` lists them): POST /_fake/seed,
    /// GET and POST /_fake/records/<resource>, PATCH and DELETE /_fake/records/<resource>/<id>
    /// (records edited as a user would), POST /_fake/revoke (every OAuth token stops working),
    /// PUT /_fake/faults (429s, 500s, ...), GET /_fake/calls (the calls received). Examples with
    /// curl: docs/fakes/http.md.
    FakeHttp {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9913")]
        listen: String,
        /// none, bearer:TOKEN, basic:USER:PASSWORD, api_key:HEADER:KEY or
        /// oauth2:CLIENT_ID:CLIENT_SECRET[:TOKEN_SECONDS]
        #[arg(long, env = "FAKE_HTTP_AUTH", default_value = "none")]
        auth: String,
        /// Calls per second answered before 429s
        #[arg(long, value_name = "N")]
        rate_limit: Option<u32>,
        /// Start with records: contacts=N, tickets=N or items=N (repeatable)
        #[arg(long, value_name = "RESOURCE=N")]
        seed: Vec<String>,
    },
}

/// A status filter's choices: each status, or `all`.
fn with_all(statuses: &'static [&'static str]) -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(statuses.iter().copied().chain(["all"]))
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List entries (default: dead letters)
    List {
        /// pending, inflight, done, dead, discarded or all
        #[arg(long, default_value = "dead",
              value_parser = with_all(crate::store::OutboxStatus::ALL))]
        status: String,
        #[arg(long)]
        sync: Option<String>,
    },
    /// Send a dead-lettered entry again
    Retry { id: i64 },
    /// Send every dead-lettered entry of a sync again
    RetryAll {
        /// The sync's code
        code: Option<String>,
        /// The sync's code, as a flag (the same as CODE)
        #[arg(long, value_name = "CODE")]
        sync: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum HoldsAction {
    /// List holds and their deletes (default: those waiting for a decision)
    List {
        /// held, approved, discarded, applied, collecting or all
        #[arg(long, default_value = "held",
              value_parser = with_all(crate::store::HoldStatus::ALL))]
        status: String,
        #[arg(long)]
        sync: Option<String>,
    },
    /// Apply the deletes of a hold (exactly those)
    Approve { id: i64 },
    /// Keep the records of a hold: nothing is deleted
    Discard { id: i64 },
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
        Command::Discover {
            web_service,
            resource,
        } => discover::discover(&cli.global, &web_service, resource.as_deref()).await,
        Command::Serve { listen } => serve(&cli.global, listen).await,
        #[cfg(feature = "fakes")]
        Command::Demo {
            listen,
            peer_listen,
            odoo,
            odoo_listen,
        } => {
            let odoo = odoo.then_some(odoo_listen.as_str());
            demo(&cli.global, &listen, &peer_listen, odoo).await
        }
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
                // The table shows `conflict_resolved` as `resolved`: what it shows, it takes.
                status: status.map(|s| {
                    if s == "resolved" {
                        "conflict_resolved".to_string()
                    } else {
                        s
                    }
                }),
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
        Command::Holds { action } => holds::holds(&cli.global, action).await,
        Command::Plan { code, full, json } => plan::plan(&cli.global, &code, full, json).await,
        Command::Record {
            code,
            local_id,
            op,
            external_id,
        } => holds::record(&cli.global, &code, local_id, &op, external_id).await,
        #[cfg(feature = "fakes")]
        Command::FakeOdoo {
            listen,
            database,
            login,
            password,
            api_key,
            server_version,
            partners,
        } => {
            fakes::fake_odoo(
                crate::peer::odoo::OdooOptions {
                    listen,
                    database,
                    login,
                    password,
                    api_key,
                    version: server_version,
                },
                partners,
            )
            .await
        }
        #[cfg(feature = "fakes")]
        Command::FakeHttp {
            listen,
            auth,
            rate_limit,
            seed,
        } => fakes::fake_http(listen, &auth, rate_limit, &seed).await,
        #[cfg(feature = "fakes")]
        Command::FakeDropbox {
            listen,
            app_key,
            app_secret,
            refresh_token,
            webhook_url,
        } => {
            crate::telemetry::init(config::LogFormat::Pretty, None);
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
                    fakes::serve_until_ctrl_c("the fake Dropbox", fake.handle(), fake.run()).await
                }
                Err(e) => {
                    eprintln!("error: cannot listen: {e}");
                    ExitCode::from(69)
                }
            }
        }
        #[cfg(feature = "fakes")]
        Command::Peer {
            listen,
            api_key,
            id_field,
            callback_url,
            callback_key,
            syncs,
            seed,
            synthetic,
            signing_secret,
        } => {
            peer(PeerArgs {
                synthetic,
                signing_secret,
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
    config::load(&paths(g, listen), &ProcessEnv, crate::connectors::KINDS).map_err(|e| {
        eprintln!("{}", e.render());
        ExitCode::from(EXIT_CONFIG)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks a command's definition only when that command is parsed; this checks every
    /// command at once (a duplicate argument name panics otherwise at first use).
    #[test]
    fn every_command_line_definition_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
