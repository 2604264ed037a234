//! The state every request handler shares: the engine, the settings, the rate limiter, the
//! errors of the last mapping reload, and the count of requests in flight.

use crate::config::{self, ProcessEnv, Settings};
use crate::domain::Plan;
use crate::engine::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// State shared by every request handler.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub settings: Settings,
    config_errors: RwLock<Vec<String>>,
    /// Per-key request budget on `/sync/*` (`rate_limit`), when set.
    pub limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    /// HTTP requests being answered (counted by the middleware), so a shutdown can wait for
    /// them.
    in_flight: AtomicUsize,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, settings: Settings) -> Self {
        let limiter = std::num::NonZeroU32::new(settings.rate_limit)
            .map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n)));
        AppState {
            engine,
            settings,
            config_errors: RwLock::new(Vec::new()),
            limiter,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// HTTP requests being answered now.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no HTTP request is being answered.
    pub async fn requests_finished(&self) {
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.engine.plan()
    }

    /// Errors of the last reload attempt (empty when the files on disk are valid).
    pub fn config_errors(&self) -> Vec<String> {
        self.config_errors.read().expect("errors lock").clone()
    }

    /// Re-reads the mapping folder: a valid result replaces the plan, an invalid one is
    /// logged and kept for display while the last valid plan goes on running.
    pub fn reload(&self) {
        match config::load_mappings(
            &self.settings.mappings,
            &ProcessEnv,
            crate::connectors::KINDS,
        ) {
            Ok((plan, files)) => {
                crate::crash::point("reload.before_swap");
                tracing::info!(
                    syncs = plan.syncs.len(),
                    files = files.len(),
                    "Reloaded the mapping files"
                );
                self.engine.set_plan(plan);
                let engine = self.engine.clone();
                self.engine.spawn(async move {
                    if let Err(e) = engine.register_bindings().await {
                        tracing::error!(error = %e, "Failed to record the bindings of the reloaded syncs");
                    }
                });
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

/// One request being answered: counted until answered, or dropped with its connection.
pub(super) struct InFlight(actix_web::web::Data<AppState>);

impl InFlight {
    pub(super) fn new(state: actix_web::web::Data<AppState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
