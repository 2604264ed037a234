//! The engine: the only writer of records, links, outbox entries and change-control rows.
//! Inbound changes, local edits and outbox deliveries all go through here.

mod apply;
mod batch;
mod decide;
mod fanout;
mod guard;
mod memory;
mod notify;
mod on_send;
mod outbox;
mod pages;
mod preview;
mod record_ops;
mod round_trip;
mod rows;
mod run;
pub mod schedule;
mod stop;
mod write;

use crate::domain::mask::Masker;
pub use apply::{Applied, ApplyError, InboundOp, LocalOp};
pub use guard::{Decided, HoldError};
pub use notify::WEBHOOK_DEBOUNCE;
pub use outbox::Outcome;
pub use preview::{HoldPlan, PlanError, SidePlan, SyncPlan};
pub use record_ops::{OpDone, RecordOp, RecordOpError};
pub use round_trip::{RoundTrip, round_trip_local};
pub use run::{RunError, Started, Trigger};

use crate::connectors::Connector;
use crate::domain::Plan;
use crate::store::{NewChange, Store, StoreError, Tx};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Tunables of the engine (from the server settings).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Write success rows to the change-control log (failures are always written).
    pub change_log: bool,
    /// Delivery attempts before an entry is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, with jitter, capped at `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// This process's name in claims (several instances may share a database).
    pub instance: String,
    /// Claims (outbox leases, run slots) not renewed for this long are taken over.
    pub claim_timeout: Duration,
}

impl EngineOptions {
    /// The options `recsync.toml` (and its environment overrides) set.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        EngineOptions {
            change_log: settings.change_log,
            max_attempts: settings.outbox_max_attempts,
            backoff: settings.outbox_backoff,
            claim_timeout: settings.claim_timeout,
            ..EngineOptions::default()
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            change_log: true,
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            // The process id alone could come back after a restart (pid 1 in a container).
            instance: format!(
                "recsync-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            ),
            claim_timeout: Duration::from_secs(120),
        }
    }
}

/// Who caused a change, for the change-control log.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub actor: String,
    pub run_id: Option<i64>,
    pub modified_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Log an inbound update under this action instead (a Dropbox rename or move).
    pub relabel: Option<crate::store::LogAction>,
    /// The HTTP request the change came in with, carried to its deliveries so one change
    /// can be followed through the log.
    pub request_id: Option<String>,
    /// The hold whose approved deletes this applies: the real-time delete guard lets them
    /// through.
    pub hold: Option<i64>,
    /// The W3C `traceparent` of the span the change came in (a request, a run), when traces
    /// are exported: its deliveries continue that trace.
    pub traceparent: Option<String>,
}

impl Ctx {
    /// A change caused by `actor`, in the trace of the current span.
    pub fn actor(actor: impl Into<String>) -> Self {
        Ctx {
            actor: actor.into(),
            run_id: None,
            modified_at: None,
            relabel: None,
            request_id: None,
            hold: None,
            traceparent: crate::telemetry::traceparent(),
        }
    }
}

/// The engine, shared by the HTTP layer, workers and commands.
pub struct Engine {
    pub store: Store,
    plan: RwLock<Arc<Plan>>,
    masker: RwLock<Arc<Masker>>,
    pub opts: EngineOptions,
    wake: Notify,
    http: reqwest::Client,
    /// Bundles of upserts for the batch writer (one request, or a pulled page).
    writer_tx: tokio::sync::mpsc::Sender<apply::Work>,
    writer_rx: Mutex<Option<tokio::sync::mpsc::Receiver<apply::Work>>>,
    /// Connectors by web service, built when first needed and dropped when the plan changes
    /// (they hold clients, tokens and concurrency bounds).
    connectors: Mutex<HashMap<String, Arc<dyn Connector>>>,
    /// Per sync: the turn a connector takes around work that must not interleave.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Web services with a round of notifications being debounced.
    notify_scheduled: Mutex<std::collections::HashSet<String>>,
    /// Rounds of webhook work not finished yet.
    notify_rounds: std::sync::atomic::AtomicUsize,
    /// Syncs with a run waiting for the run in progress to end.
    notify_waiting: Mutex<std::collections::HashSet<String>>,
    /// Per sync: when the oldest notification not yet taken in arrived.
    notify_lag: Mutex<HashMap<String, std::time::Instant>>,
    /// Set when a graceful shutdown begins: runs stop after their current page, no new run
    /// starts.
    stopping: std::sync::atomic::AtomicBool,
    /// Runs of this process still going.
    active_runs: std::sync::atomic::AtomicUsize,
    /// The runtime the engine was built on. Background work (runs, Dropbox loops, deliveries)
    /// is spawned here, never on an HTTP worker's runtime, which ends with its worker.
    rt: Option<tokio::runtime::Handle>,
    /// The scheduler's pulse (`schedule::Ticks`), read by its watchdog.
    ticks: schedule::Ticks,
    /// A round of the batch in hand wrote something: wake the workers when it ends.
    woke: std::sync::atomic::AtomicBool,
    /// Syncs known to have finished a first run (creates through them no longer wait).
    first_runs: Mutex<std::collections::HashSet<String>>,
}

impl Engine {
    pub fn new(store: Store, plan: Plan, opts: EngineOptions) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            // Servers close idle connections after a few seconds (actix-web and Node 5 s,
            // gunicorn 2 s); a request sent on one just as it closes is cut without an answer,
            // and a write cut so may have been applied. Idle connections are dropped first.
            .pool_idle_timeout(Duration::from_millis(1500))
            .user_agent(concat!("recsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client");
        let (writer_tx, writer_rx) = tokio::sync::mpsc::channel(4096);
        Engine {
            store,
            masker: RwLock::new(Arc::new(plan.masker())),
            plan: RwLock::new(Arc::new(plan)),
            opts,
            wake: Notify::new(),
            http,
            writer_tx,
            writer_rx: Mutex::new(Some(writer_rx)),
            connectors: Mutex::default(),
            turns: Mutex::default(),
            notify_scheduled: Mutex::default(),
            notify_rounds: Default::default(),
            notify_lag: Mutex::default(),
            notify_waiting: Mutex::default(),
            stopping: Default::default(),
            active_runs: Default::default(),
            rt: tokio::runtime::Handle::try_current().ok(),
            ticks: Default::default(),
            woke: Default::default(),
            first_runs: Mutex::default(),
        }
    }

    /// Begins a graceful shutdown: no run starts from now on, and runs in progress stop after
    /// the page they are on.
    pub fn begin_shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Spawns background work on the engine's runtime.
    pub(crate) fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.rt {
            Some(rt) => rt.spawn(f),
            None => tokio::spawn(f),
        }
    }

    /// Runs of this process in progress.
    pub fn active_runs(&self) -> usize {
        self.active_runs.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until this process has no run in progress.
    pub async fn runs_finished(&self) {
        while self.active_runs.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The store, for reading only (HTTP and other readers).
    pub fn reads(&self) -> crate::store::ReadView {
        self.store.view()
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.read().expect("plan lock").clone()
    }

    /// Replaces the plan (hot reload).
    pub fn set_plan(&self, plan: Plan) {
        *self.masker.write().expect("masker lock") = Arc::new(plan.masker());
        *self.plan.write().expect("plan lock") = Arc::new(plan);
        self.connectors.lock().expect("connectors lock").clear();
    }

    /// Keeps this instance's heartbeat fresh while the engine lives, so other instances know
    /// its in-flight deliveries are in hand.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let engine = Arc::downgrade(self);
        self.spawn(async move {
            loop {
                let Some(e) = engine.upgrade() else { return };
                if let Err(err) = e
                    .store
                    .heartbeat(&e.opts.instance, chrono::Utc::now())
                    .await
                {
                    tracing::warn!(error = %err, "Failed to renew this instance's heartbeat");
                }
                drop(e);
                tokio::time::sleep(crate::store::INSTANCE_HEARTBEAT).await;
            }
        })
    }

    /// Records each sync's binding in the store and merges links that an earlier release kept
    /// per sync into their binding (see `Store::register_bindings`).
    pub async fn register_bindings(&self) -> Result<(), StoreError> {
        let plan = self.plan();
        let syncs: Vec<(String, String)> = plan
            .syncs
            .values()
            .map(|s| (s.code.to_string(), s.binding()))
            .collect();
        let dropped = self.store.register_bindings(&syncs).await?;
        if !dropped.is_empty() {
            let listed = dropped
                .iter()
                .map(|(code, id)| format!("{code}:{id}"))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(
                count = dropped.len(),
                links = %listed,
                "Links kept per sync by an earlier release named a record another sync of the same binding had linked; the other sync's link was kept, and these local records may be copies to review"
            );
        }
        Ok(())
    }

    /// The masker of the plan in force (secret fields and configuration secrets).
    pub fn masker(&self) -> Arc<Masker> {
        self.masker.read().expect("masker lock").clone()
    }

    /// Counts a change-control row for `/metrics` and masks it before it is written, so secrets
    /// never reach the log.
    pub(crate) fn mask_row(&self, row: &mut NewChange) {
        crate::metrics::change(&row.sync, row.direction.as_str(), row.status.as_str());
        self.masker().mask_change_parts(
            [
                &mut row.origin_values,
                &mut row.destination_values,
                &mut row.before_values,
            ],
            [&mut row.error_message, &mut row.title],
        );
    }

    /// Has `spawn_writer` taken the queue?
    fn writer_started(&self) -> bool {
        self.writer_rx.lock().expect("writer lock").is_none()
    }

    /// Wakes the outbox workers after new entries were committed.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Writes a change-control row, unless it is a success row and the log is off.
    async fn log(&self, tx: &mut Tx, mut row: NewChange) -> Result<(), StoreError> {
        self.mask_row(&mut row);
        if self.opts.change_log || row.status != crate::store::LogStatus::Success {
            tx.log_change(&row).await?;
        }
        Ok(())
    }

    /// Keeps the first answer given to an `Idempotency-Key` (with the fingerprint of the request
    /// it answered), so that a retry of the same request gets it again. A key already kept
    /// keeps its first answer.
    pub async fn remember_answer(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        tx.put_idempotent(scope, key, fingerprint, status, body)
            .await?;
        tx.commit().await
    }

    /// Writes a change-control row on its own (failed requests, delivery attempts).
    pub async fn log_alone(&self, mut row: NewChange) -> Result<(), StoreError> {
        self.mask_row(&mut row);
        if self.opts.change_log || row.status != crate::store::LogStatus::Success {
            self.store.log_change(&row).await?;
        }
        Ok(())
    }

    /// The connector of a web service of the plan in force.
    pub(crate) fn connector(&self, web_service: &str) -> Option<Arc<dyn Connector>> {
        let plan = self.plan();
        let service = plan.web_services.get(web_service)?;
        let mut connectors = self.connectors.lock().expect("connectors lock");
        Some(
            connectors
                .entry(web_service.to_string())
                .or_insert_with(|| crate::connectors::build(service, &self.http))
                .clone(),
        )
    }

    /// A sync's turn lock.
    fn turn_of(&self, code: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.turns
            .lock()
            .expect("turns lock")
            .entry(code.to_string())
            .or_default()
            .clone()
    }
}

/// The change-control action of a rename or move.
pub(crate) fn label_action(label: crate::connectors::Label) -> crate::store::LogAction {
    match label {
        crate::connectors::Label::Rename => crate::store::LogAction::Rename,
        crate::connectors::Label::Move => crate::store::LogAction::Move,
    }
}
