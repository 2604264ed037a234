//! Webhook notifications and start-up listings: a genuine notification makes every active
//! sync of its web service run once (notifications close together share the run), and a
//! connector that mirrors the external side takes its first listing at start-up.

use super::{Engine, Trigger};
use crate::connectors::{Notice, Webhook};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Notifications arriving within this window of the first one share its run.
pub const WEBHOOK_DEBOUNCE: Duration = Duration::from_millis(400);

/// A round of webhook work (debounce, then the runs), counted while it lives.
struct Round(Arc<Engine>);

impl Round {
    fn new(engine: Arc<Engine>) -> Round {
        engine
            .notify_rounds
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Round(engine)
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        self.0
            .notify_rounds
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Engine {
    /// The mirrored folder of a sync as a nested tree, from the store (`None` when the sync
    /// mirrors no folder).
    pub async fn mirror_tree(
        &self,
        code: &str,
    ) -> Result<Option<serde_json::Value>, crate::store::StoreError> {
        let plan = self.plan();
        let Some(sync) = plan.sync(code) else {
            return Ok(None);
        };
        let Some(connector) = self.connector(&sync.web_service) else {
            return Ok(None);
        };
        if !connector.keeps_mirror() {
            return Ok(None);
        }
        let entries = self.store.dbx_entries(code).await?;
        Ok(connector.mirror_tree(sync, &plan, entries))
    }

    /// A webhook call for a web service, checked by its connector: when genuine, every
    /// active sync on the service runs once. `None` when there is no such web service.
    pub fn notified(self: &Arc<Self>, web_service: &str, call: Webhook<'_>) -> Option<Notice> {
        let connector = self.connector(web_service)?;
        let notice = connector.notification(call);
        if notice == Notice::Changed {
            self.schedule_round(connector.kind(), web_service);
        }
        Some(notice)
    }

    /// Every sync on the web service runs once; notifications that arrive while a round is
    /// scheduled join it.
    fn schedule_round(self: &Arc<Self>, kind: &str, web_service: &str) {
        if !self
            .notify_scheduled
            .lock()
            .expect("webhook lock")
            .insert(web_service.to_string())
        {
            crate::metrics::notification(kind, web_service, "coalesced");
            return;
        }
        crate::metrics::notification(kind, web_service, "started");
        let engine = self.clone();
        let ws = web_service.to_string();
        let first = Instant::now();
        let round = Round::new(self.clone());
        self.spawn(async move {
            let _round = round;
            tokio::time::sleep(WEBHOOK_DEBOUNCE).await;
            // From here on, a new notification schedules another loop.
            engine
                .notify_scheduled
                .lock()
                .expect("webhook lock")
                .remove(&ws);
            let plan = engine.plan();
            let codes: Vec<String> = plan
                .syncs
                .values()
                .filter(|s| s.web_service == ws && s.active)
                .map(|s| s.code.to_string())
                .collect();
            for code in codes {
                engine
                    .notify_lag
                    .lock()
                    .expect("lag lock")
                    .entry(code.clone())
                    .or_insert(first);
                engine.run_when_free(&code, Trigger::Webhook).await;
            }
        });
    }

    /// Is every webhook notification taken in (no round debouncing, waiting or running)?
    pub fn notifications_settled(&self) -> bool {
        self.notify_rounds.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// At start-up, every active sync whose connector mirrors the external side and that has
    /// never listed it takes its first listing, without waiting for a notification or its
    /// schedule.
    pub fn start_mirrors(self: &Arc<Self>) {
        let plan = self.plan();
        for sync in plan.syncs.values().filter(|s| s.active) {
            let mirrors = self
                .connector(&sync.web_service)
                .is_some_and(|c| c.keeps_mirror());
            if !mirrors {
                continue;
            }
            let engine = self.clone();
            let code = sync.code.to_string();
            self.spawn(async move {
                match engine.store.sync_state(&code).await {
                    Ok(Some(s)) if s.cursor.is_some() => {}
                    Ok(_) => engine.run_when_free(&code, Trigger::Startup).await,
                    Err(e) => {
                        tracing::warn!(sync = %code, error = %e, "Could not read a sync's state at start-up")
                    }
                }
            });
        }
    }

    /// Runs a sync, waiting for a run in progress to end first.
    async fn run_when_free(self: &Arc<Self>, code: &str, trigger: Trigger) {
        // One waiter per sync is enough: the loop it starts reads every change made until then.
        if !self
            .notify_waiting
            .lock()
            .expect("waiting lock")
            .insert(code.to_string())
        {
            return;
        }
        let _waiting = Waiting(self.clone(), code.to_string());
        let stale = chrono::Duration::from_std(self.opts.claim_timeout)
            .unwrap_or(chrono::Duration::minutes(2));
        for _ in 0..1200 {
            // A claim that is no longer renewed belongs to a dead instance: start_run takes
            // it over.
            let busy = matches!(self.store.sync_state(code).await, Ok(Some(s))
                if s.running_by.is_some()
                    && s.running_since.is_some_and(|t| t > chrono::Utc::now() - stale));
            if !busy {
                match self.start_run(code, trigger, false).await {
                    Ok(s) => {
                        drop(_waiting);
                        let _ = s.task.await;
                        return;
                    }
                    Err(super::RunError::Busy { .. }) => {}
                    Err(e) => {
                        tracing::warn!(sync = code, error = %e, "A notified run could not start");
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tracing::warn!(
            sync = code,
            "A notification gave up waiting for the run in progress"
        );
    }
}

/// Marks a sync as having a run waiting to start, until dropped.
struct Waiting(Arc<Engine>, String);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0
            .notify_waiting
            .lock()
            .expect("waiting lock")
            .remove(&self.1);
    }
}
