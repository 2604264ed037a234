//! Wiring: build the store, the engine (with its outbox workers) and the HTTP server from
//! settings and a plan, watch the mapping folder for hot reload, and run until a signal.
//! Tests use the same entry point.

use crate::config::Settings;
use crate::domain::Plan;
use crate::engine::{Engine, EngineOptions};
pub use crate::http::AppState;
use crate::store::Store;
use actix_web::{HttpServer, web};
use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A built application, bound to its port but not yet serving.
pub struct App {
    port: u16,
    server: actix_web::dev::Server,
    state: web::Data<AppState>,
    _watcher: Option<notify::RecommendedWatcher>,
    reload_task: Option<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    core: Core,
    scheduler: Option<crate::engine::schedule::Scheduler>,
}

/// The engine with the tasks every command that syncs needs (the writer and the instance
/// heartbeat), built the same way for `serve` and `recsync run`.
pub struct Core {
    pub engine: Arc<Engine>,
    heartbeat: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Core {
    /// Opens and migrates the database, builds the engine with the settings' options, records
    /// the plan's bindings, registers this instance and starts the writer and the heartbeat.
    pub async fn start(settings: &Settings, plan: Plan) -> anyhow::Result<Core> {
        use secrecy::ExposeSecret;
        let store = Store::connect(settings.database_url.expose_secret())
            .await
            .with_context(|| {
                format!(
                    "Failed to open the database {}",
                    settings.database_display()
                )
            })?;
        store
            .migrate()
            .await
            .context("Failed to apply the database migrations")?;
        let engine = Arc::new(Engine::new(
            store,
            plan,
            EngineOptions::from_settings(settings),
        ));
        // Start-up writes that a database refusing writes (read-only, full) must not turn into
        // a refusal to start: the server then answers reads, and 503 for writes.
        if let Err(e) = engine.register_bindings().await {
            tracing::warn!(error = %e, "Failed to record the syncs' bindings in the database; retried at the next reload");
        }
        if let Err(e) = engine
            .store
            .heartbeat(&engine.opts.instance, chrono::Utc::now())
            .await
        {
            tracing::warn!(error = %e, "Failed to register this instance in the database");
        }
        let heartbeat = engine.spawn_heartbeat();
        let writer = engine.spawn_writer();
        Ok(Core {
            engine,
            heartbeat,
            writer,
        })
    }

    /// Stops the writer and the heartbeat and closes the database.
    pub async fn stop(self) {
        self.writer.abort();
        self.heartbeat.abort();
        self.engine.store.close().await;
    }
}

/// How to build the app.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Watch the mapping folder and hot-reload it.
    pub watch: bool,
    /// Do not start the outbox workers (tests then drain the outbox themselves).
    pub no_workers: bool,
    /// Do not start the scheduler (tests that stand for one that stopped).
    pub no_scheduler: bool,
}

/// Connects the store, runs migrations, binds the listener and prepares the server.
pub async fn build(settings: Settings, plan: Plan, opts: BuildOptions) -> anyhow::Result<App> {
    // The metrics recorder first, so nothing recorded at start-up is lost.
    crate::metrics::handle();
    let mut listen = settings.listen;
    if settings.api_keys.is_empty() && !listen.ip().is_loopback() {
        tracing::warn!(requested = %listen, "No API key is configured, so recsync binds to loopback only");
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    if settings.api_keys.is_empty() {
        tracing::info!(
            "No API key is configured: callers on this machine are trusted with every scope"
        );
    }
    let listener =
        TcpListener::bind(listen).with_context(|| format!("Failed to listen on {listen}"))?;
    let port = listener.local_addr()?.port();
    let mappings = settings.mappings.clone();
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    let shutdown_timeout = settings.shutdown_timeout;
    let core = Core::start(&settings, plan).await?;
    let engine = core.engine.clone();
    // On SQLite this server owns the database: what another process had in flight belonged to
    // one that is gone (a crash), so it is taken back at once.
    if engine.store.backend_name() == "sqlite" {
        match engine
            .store
            .release_claims_of_others(&engine.opts.instance)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                "Took back the deliveries a previous process had in flight"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Failed to take back the deliveries of the previous process")
            }
        }
    }
    let state = web::Data::new(AppState::new(engine.clone(), settings));

    let data = state.clone();
    let server = HttpServer::new(move || crate::http::app(data.clone()))
        .disable_signals()
        .shutdown_timeout(shutdown_timeout.as_secs().max(1));
    let server = match &tls {
        Some(config) => server.listen_rustls_0_23(listener, config.clone())?,
        None => server.listen(listener)?,
    }
    .run();

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = if opts.no_scheduler {
        None
    } else {
        Some(
            engine
                .start_scheduler()
                .await
                .context("Failed to start the scheduler")?,
        )
    };
    let mut workers = if opts.no_workers {
        Vec::new()
    } else {
        vec![engine.spawn_worker(stop_rx.clone())]
    };
    if let Some(retention) = state.settings.change_log_retention {
        workers.push(crate::audit::spawn_pruner(
            engine.store.clone(),
            retention,
            Duration::from_secs(3600),
            stop_rx,
        ));
    }
    engine.start_mirrors();
    let (watcher, reload_task) = if opts.watch {
        watch(mappings, state.clone())?
    } else {
        (None, None)
    };
    Ok(App {
        port,
        server,
        state,
        _watcher: watcher,
        reload_task,
        stop,
        workers,
        core,
        scheduler,
    })
}

/// Watches the mapping folder; bursts of events within 300 ms cause one reload.
fn watch(
    dir: PathBuf,
    state: web::Data<AppState>,
) -> anyhow::Result<(
    Option<notify::RecommendedWatcher>,
    Option<tokio::task::JoinHandle<()>>,
)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
        {
            let _ = tx.send(());
        }
    })
    .context("Failed to start watching the mapping folder")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("Failed to watch {}", dir.display()))?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: editors write files in several steps.
            while let Ok(Some(())) =
                tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
            {}
            state.reload();
        }
    });
    Ok((Some(watcher), Some(task)))
}

impl App {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub fn engine(&self) -> Arc<Engine> {
        self.state.engine.clone()
    }

    /// Serves until SIGINT or SIGTERM (or until the task is dropped), then shuts down
    /// gracefully within `shutdown_timeout`: the listener closes at once, requests in flight
    /// are answered, runs stop after the page they are on, outbox workers finish the batch they
    /// hold (its results are recorded), and the store is closed. Past the timeout the process
    /// exits anyway; what it still held is taken over when its claims expire.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        let state = self.state.clone();
        let engine = state.engine.clone();
        let timeout = state.settings.shutdown_timeout;
        let mut server = std::pin::pin!(server);
        let result = tokio::select! {
            r = &mut server => return r.map_err(anyhow::Error::from),
            _ = shutdown_signal() => Ok::<(), anyhow::Error>(()),
        };
        let started = std::time::Instant::now();
        tracing::info!(
            timeout_s = timeout.as_secs_f64(),
            runs = engine.active_runs(),
            requests = state.requests_in_flight(),
            "Shutting down: no new requests; finishing the work in hand"
        );
        engine.begin_shutdown();
        if let Some(t) = self.reload_task {
            t.abort();
        }
        let stop = self.stop;
        let workers = self.workers;
        let core = self.core;
        let scheduler = self.scheduler;
        let graceful = async {
            // The runs and the outbox workers end before the listener stops: the HTTP workers'
            // runtimes end with it, and so do the database connections opened on them, which
            // a run or a worker may hold at that moment (PostgreSQL; a batch cut there stays
            // claimed until its lease ends). The server future keeps being polled: it carries
            // out the pause and the stop.
            let (work_done, work_ended) = tokio::sync::oneshot::channel::<()>();
            let (_, (), ()) = tokio::join!(
                server.as_mut(),
                async {
                    // No new connection is taken; each answer from now on closes its
                    // connection (a kept-alive one may bring one more request).
                    handle.pause().await;
                    tracing::debug!("Shutdown: no longer accepting connections");
                    state.requests_finished().await;
                    tracing::info!("Shutdown: requests in flight answered");
                    let _ = work_ended.await;
                    state.requests_finished().await;
                    // The listener and what is left (idle connections, connections never
                    // accepted) are closed.
                    handle.stop(false).await;
                    tracing::info!("Shutdown: listener closed");
                },
                async {
                    if let Some(s) = scheduler {
                        s.shutdown().await;
                    }
                    engine.runs_finished().await;
                    tracing::info!("Shutdown: runs in progress ended");
                    let _ = stop.send(true);
                    for w in workers {
                        let _ = w.await;
                    }
                    tracing::info!("Shutdown: outbox workers stopped");
                    let _ = work_done.send(());
                }
            );
        };
        match tokio::time::timeout(timeout, graceful).await {
            Ok(()) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Stopped cleanly"
            ),
            Err(_) => {
                tracing::error!(
                    timeout_s = timeout.as_secs_f64(),
                    "Shutdown took longer than shutdown_timeout; exiting with work in hand (its claims expire and are taken over)"
                );
                handle.stop(false).await;
            }
        }
        core.stop().await;
        result
    }
}

/// An HTTP request being answered, for the graceful shutdown's count.
/// The rustls configuration from PEM files: a certificate chain and a private key.
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow::anyhow!("Failed to read the TLS certificate {}: {e}", cert.display())
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "The TLS certificate file {} holds no certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!("Failed to read the TLS private key {}: {e}", key.display())
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("Failed to set up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("The TLS certificate and key do not fit together")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
