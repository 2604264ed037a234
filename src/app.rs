//! Wiring: build the store and the HTTP server from settings and a plan, watch the mapping
//! folder for hot reload, and run until a signal. Tests use the same entry point.

use crate::config::{self, ProcessEnv, Settings};
use crate::domain::Plan;
use crate::store::Store;
use actix_web::{App as ActixApp, HttpServer, web};
use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// State shared by every request handler.
pub struct AppState {
    pub store: Store,
    pub settings: Settings,
    plan: RwLock<Arc<Plan>>,
    config_errors: RwLock<Vec<String>>,
}

impl AppState {
    pub fn new(store: Store, settings: Settings, plan: Plan) -> Self {
        AppState {
            store,
            settings,
            plan: RwLock::new(Arc::new(plan)),
            config_errors: RwLock::new(Vec::new()),
        }
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.read().expect("plan lock").clone()
    }

    /// Errors of the last reload attempt (empty when the files on disk are valid).
    pub fn config_errors(&self) -> Vec<String> {
        self.config_errors.read().expect("errors lock").clone()
    }

    /// Re-reads the mapping folder: a valid result replaces the plan, an invalid one is
    /// logged and kept for display while the last valid plan goes on running.
    pub fn reload(&self) {
        match config::load_mappings(&self.settings.mappings, &ProcessEnv) {
            Ok((plan, files)) => {
                tracing::info!(
                    syncs = plan.syncs.len(),
                    files = files.len(),
                    "Reloaded the mapping files"
                );
                *self.plan.write().expect("plan lock") = Arc::new(plan);
                self.config_errors.write().expect("errors lock").clear();
            }
            Err(e) => {
                let summary = e.summary();
                for line in &summary {
                    tracing::warn!(error = %line, "Invalid mapping edit; keeping the last valid configuration");
                }
                *self.config_errors.write().expect("errors lock") = summary;
            }
        }
    }
}

/// A built application, bound to its port but not yet serving.
pub struct App {
    port: u16,
    server: actix_web::dev::Server,
    state: web::Data<AppState>,
    _watcher: Option<notify::RecommendedWatcher>,
    reload_task: Option<tokio::task::JoinHandle<()>>,
}

/// How to build the app.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Watch the mapping folder and hot-reload it.
    pub watch: bool,
}

/// Connects the store, runs migrations, binds the listener and prepares the server.
pub async fn build(settings: Settings, plan: Plan, opts: BuildOptions) -> anyhow::Result<App> {
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

    let mut listen = settings.listen;
    if settings.api_keys.is_empty() && !listen.ip().is_loopback() {
        tracing::warn!(requested = %listen, "No API key is configured, so recsync binds to loopback only");
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let listener =
        TcpListener::bind(listen).with_context(|| format!("Failed to listen on {listen}"))?;
    let port = listener.local_addr()?.port();
    let mappings = settings.mappings.clone();
    let state = web::Data::new(AppState::new(store, settings, plan));

    let data = state.clone();
    let server = HttpServer::new(move || {
        ActixApp::new()
            .app_data(data.clone())
            .configure(crate::http::routes)
    })
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(10)
    .run();

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

    /// Serves until the server is stopped (by a signal in `serve`, or by dropping the task).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        let state = self.state.clone();
        let result = tokio::select! {
            r = server => r.map_err(anyhow::Error::from),
            _ = shutdown_signal() => {
                tracing::info!("Shutting down");
                handle.stop(true).await;
                Ok(())
            }
        };
        if let Some(t) = self.reload_task {
            t.abort();
        }
        state.store.close().await;
        result
    }
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
