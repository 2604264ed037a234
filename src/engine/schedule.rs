//! The scheduler. tokio-cron-scheduler is only a ticker (once a second); due times are computed
//! with croner from each sync's `schedule` or `every` in its time zone and stored as
//! `next_run_at`, and a due time is taken by a conditional update, so one instance runs it.
//! A schedule missed while recsync was down runs once at start-up, never once per miss.

use super::{Engine, RunError, Trigger};
use crate::domain::plan::{Schedule, Sync};
use crate::store::StoreError;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The most a tick waits before claiming due runs (see `start_scheduler`).
const TICK_JITTER_MS: u64 = 300;

/// The first due time strictly after `after`.
pub fn next_due(schedule: &Schedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match schedule {
        Schedule::Every(d) => Some(after + chrono::Duration::from_std(*d).ok()?),
        Schedule::Cron(c) => {
            let local = tz.from_utc_datetime(&after.naive_utc());
            c.cron()
                .find_next_occurrence(&local, false)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }
    }
}

/// What the stored `schedule` column says, so a changed schedule is noticed after a reload.
fn signature(s: &Sync) -> Option<String> {
    s.schedule
        .as_ref()
        .map(|sch| format!("{} @ {}", sch.describe(), s.timezone))
}

impl Engine {
    /// One tick: starts every sync that is due. `startup` marks the first tick after start,
    /// whose runs (schedules missed while down) are recorded with the `startup` trigger.
    pub async fn tick(self: &Arc<Self>, now: DateTime<Utc>, startup: bool) {
        let plan = self.plan();
        for sync in plan.syncs.values().filter(|s| s.active) {
            if let Some(every) = sync.reconcile {
                self.reconcile_tick(sync.code.as_str(), every, now).await;
            }
            let (Some(schedule), Some(sig)) = (&sync.schedule, signature(sync)) else {
                continue;
            };
            let code = sync.code.as_str();
            let state = match self.store.sync_state(code).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(sync = code, error = %e, "The scheduler could not read a sync's state");
                    continue;
                }
            };
            let next = next_due(schedule, sync.timezone, now);
            let stored = state
                .as_ref()
                .and_then(|s| s.next_run_at.map(|n| (n, s.schedule.clone())));
            match stored {
                // New, or the schedule changed (hot reload): take the new schedule from now on.
                None => {
                    let _ = self.store.set_next_run(code, next, Some(&sig)).await;
                }
                Some((_, ref old_sig)) if old_sig.as_deref() != Some(sig.as_str()) => {
                    tracing::info!(sync = code, schedule = %sig, "Schedule changed; next run recomputed");
                    let _ = self.store.set_next_run(code, next, Some(&sig)).await;
                }
                Some((due, _)) if due <= now => {
                    // One instance wins the due time; the next one is counted from now, so a
                    // backlog of missed times becomes a single run.
                    match self.store.advance_next_run(code, due, next).await {
                        Ok(true) => {
                            let trigger = if startup {
                                Trigger::Startup
                            } else {
                                Trigger::Cron
                            };
                            match self.start_run(code, trigger, false).await {
                                Ok(_) | Err(RunError::Busy { .. }) => {}
                                Err(e) => {
                                    tracing::warn!(sync = code, error = %e, "A scheduled run could not start")
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(sync = code, error = %e, "The scheduler could not claim a due time")
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Starts the sync's reconciliation (a full run) when its `reconcile` interval is due. The
    /// first one is due one interval after the sync first runs here; one instance takes each
    /// due time, and a reconciliation that finds a run in progress is tried again next tick.
    async fn reconcile_tick(
        self: &Arc<Self>,
        code: &str,
        every: std::time::Duration,
        now: DateTime<Utc>,
    ) {
        let next = now + chrono::Duration::from_std(every).unwrap_or(chrono::Duration::days(1));
        let due = match self.store.next_reconcile(code).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(sync = code, error = %e, "The scheduler could not read a sync's reconciliation time");
                return;
            }
        };
        let Some(due) = due else {
            let _ = self.store.set_next_reconcile(code, None, next).await;
            return;
        };
        if due > now {
            return;
        }
        // Another run holds the sync: reconcile as soon as it is free.
        if let Ok(Some(state)) = self.store.sync_state(code).await
            && state.running_run.is_some()
        {
            return;
        }
        match self.store.set_next_reconcile(code, Some(due), next).await {
            Ok(true) => match self.start_run(code, Trigger::Reconcile, true).await {
                Ok(_) | Err(RunError::Busy { .. }) => {}
                Err(e) => {
                    tracing::warn!(sync = code, error = %e, "A reconciliation could not start")
                }
            },
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(sync = code, error = %e, "The scheduler could not claim a reconciliation")
            }
        }
    }

    /// Runs the start-up tick, then ticks every second under a watchdog (see `Scheduler`).
    pub async fn start_scheduler(self: &Arc<Self>) -> anyhow::Result<Scheduler> {
        self.ticks.started(Utc::now());
        self.tick(Utc::now(), true).await;
        self.ticks.finished();
        let ticker = start_ticker_for(self).await?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = self.spawn(watchdog(self.clone(), ticker, stop_rx));
        Ok(Scheduler { stop, task })
    }

    /// One tick from the ticker: skipped while the tick before is still in progress, run in a
    /// task of its own so that a panic is caught and logged with its cause.
    async fn guarded_tick(self: Arc<Self>) {
        let now = Utc::now();
        if !self.ticks.try_start(now) {
            return;
        }
        // A random pause before claiming, so that instances sharing a database share the due
        // times instead of the one whose ticker runs first always taking them.
        let jitter = rand::random_range(0..TICK_JITTER_MS);
        tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
        let engine = self.clone();
        let handle = self.spawn(async move { engine.tick(Utc::now(), false).await });
        *self.ticks.current.lock().expect("tick lock") = Some(handle.abort_handle());
        if let Err(e) = handle.await
            && e.is_panic()
        {
            let cause = panic_text(e.into_panic());
            tracing::error!(cause = %cause, "A scheduler tick panicked; the next tick goes on");
            crate::metrics::scheduler_restart("panic");
        }
        self.ticks.finished();
    }

    /// How far behind its due time each active scheduled sync is (only those past
    /// `OVERDUE_AFTER`), in seconds, from the stored `next_run_at`, which every instance
    /// sharing the database sees alike.
    pub async fn overdue(&self, now: DateTime<Utc>) -> Result<Vec<(String, f64)>, StoreError> {
        let plan = self.plan();
        let mut out = Vec::new();
        for sync in plan
            .syncs
            .values()
            .filter(|s| s.active && s.schedule.is_some())
        {
            let code = sync.code.as_str();
            let Some(due) = self
                .store
                .sync_state(code)
                .await?
                .and_then(|s| s.next_run_at)
            else {
                continue;
            };
            if let Some(late) = overdue_by(due, now) {
                out.push((code.to_string(), late));
            }
        }
        Ok(out)
    }
}

/// A due time this long in the past means the scheduler is not doing its work: `/readyz`
/// answers 503 and the dashboard shows the sync as overdue.
pub const OVERDUE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
/// How many seconds past `due` it is at `now`, when that is more than `OVERDUE_AFTER`.
pub fn overdue_by(due: DateTime<Utc>, now: DateTime<Utc>) -> Option<f64> {
    let late = (now - due).num_milliseconds() as f64 / 1000.0;
    (late > OVERDUE_AFTER.as_secs_f64()).then_some(late)
}

/// No tick started for this long: the ticker is restarted.
const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// A tick in progress for this long is aborted (it waits on something that never answers).
const TICK_HUNG_AFTER: std::time::Duration = std::time::Duration::from_secs(120);
/// How often the watchdog looks.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The ticker's pulse, read by the watchdog.
#[derive(Default)]
pub(crate) struct Ticks {
    /// When the last tick started (Unix ms; 0 before the first).
    last_started: AtomicI64,
    /// When the tick in progress started (Unix ms), or 0.
    running_since: AtomicI64,
    /// The tick in progress, so that a hung one can be aborted.
    current: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Ticks {
    fn started(&self, now: DateTime<Utc>) {
        self.last_started
            .store(now.timestamp_millis(), Ordering::SeqCst);
        self.running_since
            .store(now.timestamp_millis(), Ordering::SeqCst);
    }

    /// Starts a tick unless one is in progress.
    fn try_start(&self, now: DateTime<Utc>) -> bool {
        self.last_started
            .store(now.timestamp_millis(), Ordering::SeqCst);
        self.running_since
            .compare_exchange(
                0,
                now.timestamp_millis(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    fn finished(&self) {
        self.running_since.store(0, Ordering::SeqCst);
        self.current.lock().expect("tick lock").take();
    }
}

/// The scheduler: a ticker (a tokio-cron-scheduler job) and the watchdog that restarts it.
pub struct Scheduler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Scheduler {
    /// Stops ticking; runs in progress go on.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

type TickFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Calls `on_tick` every second. The job is a cron-type job, whose next time is computed from
/// now: tokio-cron-scheduler 0.15's repeated jobs compute it from the previous due time, so a
/// loop late by more than the interval (a busy runtime, a stalled disk) leaves the next time
/// behind the last tick and the job never fires again, without a word (the crate's issue #113).
pub async fn start_ticker<F>(on_tick: F) -> anyhow::Result<tokio_cron_scheduler::JobScheduler>
where
    F: Fn() -> TickFuture + Send + std::marker::Sync + 'static,
{
    let sched = tokio_cron_scheduler::JobScheduler::new().await?;
    let job = tokio_cron_scheduler::Job::new_async("* * * * * *", move |_id, _lock| on_tick())?;
    sched.add(job).await?;
    sched.start().await?;
    Ok(sched)
}

/// Watches the ticker: no tick for `STALL_AFTER` restarts it, a tick in progress for
/// `TICK_HUNG_AFTER` is aborted; both are logged at ERROR with what was seen.
async fn watchdog(
    engine: Arc<Engine>,
    mut ticker: tokio_cron_scheduler::JobScheduler,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => break,
        }
        let now = Utc::now().timestamp_millis();
        let running = engine.ticks.running_since.load(Ordering::SeqCst);
        if running != 0 && now - running > TICK_HUNG_AFTER.as_millis() as i64 {
            tracing::error!(
                running_s = (now - running) / 1000,
                "A scheduler tick has been running too long (the store or a sync's state does not answer); it is aborted and the next tick goes on"
            );
            if let Some(h) = engine.ticks.current.lock().expect("tick lock").take() {
                h.abort();
            }
            engine.ticks.finished();
            crate::metrics::scheduler_restart("hung_tick");
            continue;
        }
        let last = engine.ticks.last_started.load(Ordering::SeqCst);
        if now - last > STALL_AFTER.as_millis() as i64 {
            tracing::error!(
                silent_s = (now - last) / 1000,
                "The scheduler's ticker stopped firing; it is restarted"
            );
            crate::metrics::scheduler_restart("stalled_ticker");
            let _ = ticker.shutdown().await;
            match start_ticker_for(&engine).await {
                Ok(t) => {
                    ticker = t;
                    engine.ticks.last_started.store(now, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::error!(error = %e, "The scheduler's ticker could not be restarted; tried again shortly")
                }
            }
        }
    }
    let _ = ticker.shutdown().await;
}

async fn start_ticker_for(
    engine: &Arc<Engine>,
) -> anyhow::Result<tokio_cron_scheduler::JobScheduler> {
    let engine = engine.clone();
    start_ticker(move || {
        let engine = engine.clone();
        Box::pin(async move { engine.guarded_tick().await })
    })
    .await
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::CronSpec;

    fn madrid(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        chrono_tz::Europe::Madrid
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    fn runs(spec: &str, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let s = Schedule::Cron(Box::new(CronSpec::parse(spec).unwrap()));
        let mut out = vec![];
        let mut t = from;
        while let Some(n) = next_due(&s, chrono_tz::Europe::Madrid, t) {
            if n > until {
                break;
            }
            out.push(n);
            t = n;
        }
        out
    }

    #[test]
    fn daily_runs_neither_shift_nor_double_across_dst() {
        // Madrid: spring forward 2026-03-29 02:00 -> 03:00; fall back 2026-10-25 03:00 -> 02:00.
        let daily = runs(
            "0 0 9 * * *",
            madrid(2026, 3, 27, 0, 0),
            madrid(2026, 3, 31, 23, 0),
        );
        let local: Vec<String> = daily
            .iter()
            .map(|t| {
                t.with_timezone(&chrono_tz::Europe::Madrid)
                    .format("%m-%d %H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(
            local,
            vec![
                "03-27 09:00",
                "03-28 09:00",
                "03-29 09:00",
                "03-30 09:00",
                "03-31 09:00"
            ]
        );
        let autumn = runs(
            "0 0 9 * * *",
            madrid(2026, 10, 24, 0, 0),
            madrid(2026, 10, 26, 23, 0),
        );
        let local: Vec<String> = autumn
            .iter()
            .map(|t| {
                t.with_timezone(&chrono_tz::Europe::Madrid)
                    .format("%m-%d %H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(
            local,
            vec!["10-24 09:00", "10-25 09:00", "10-26 09:00"],
            "9:00 local each day, whatever the offset"
        );
    }

    #[test]
    fn a_time_inside_the_repeated_hour_runs_once() {
        // 02:30 happens twice on 2026-10-25 in Madrid; it runs once that day.
        let r = runs(
            "0 30 2 * * *",
            madrid(2026, 10, 24, 12, 0),
            madrid(2026, 10, 26, 12, 0),
        );
        assert_eq!(r.len(), 2, "{r:?}");
        let mut dedup = r.clone();
        dedup.dedup();
        assert_eq!(dedup, r);
    }

    #[test]
    fn a_time_inside_the_skipped_hour_is_not_run_twice() {
        // 02:30 does not exist on 2026-03-29 in Madrid: at most one run that day, none doubled.
        let r = runs(
            "0 30 2 * * *",
            madrid(2026, 3, 28, 12, 0),
            madrid(2026, 3, 30, 12, 0),
        );
        assert!(r.len() <= 2 && !r.is_empty(), "{r:?}");
        assert!(
            r.windows(2)
                .all(|w| w[1] - w[0] >= chrono::Duration::hours(23)),
            "{r:?}"
        );
    }

    #[test]
    fn hourly_runs_run_each_wall_clock_hour_once_through_both_transitions() {
        for (from, until) in [
            (madrid(2026, 3, 28, 22, 0), madrid(2026, 3, 29, 6, 0)),
            (madrid(2026, 10, 24, 22, 0), madrid(2026, 10, 25, 6, 0)),
        ] {
            let r = runs("0 0 * * * *", from, until);
            assert!(r.windows(2).all(|w| w[1] > w[0]), "{r:?}");
            // Each wall-clock hour runs once: the repeated 02:00 is not run twice.
            let labels: Vec<String> = r
                .iter()
                .map(|t| {
                    t.with_timezone(&chrono_tz::Europe::Madrid)
                        .format("%H:%M")
                        .to_string()
                })
                .collect();
            let mut unique = labels.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), labels.len(), "{labels:?}");
            assert!(
                r.len() >= 7,
                "no hour is lost apart from the one that does not exist: {labels:?}"
            );
        }
    }

    #[test]
    fn intervals_count_from_the_given_time() {
        let t = Utc::now();
        assert_eq!(
            next_due(
                &Schedule::Every(std::time::Duration::from_secs(900)),
                chrono_tz::UTC,
                t
            ),
            Some(t + chrono::Duration::minutes(15))
        );
    }

    /// Counts ticks until `deadline`; true once `want` more ticks than `from` were seen.
    async fn ticks_reach(
        count: &std::sync::atomic::AtomicUsize,
        want: usize,
        deadline: std::time::Duration,
    ) -> bool {
        let until = std::time::Instant::now() + deadline;
        while std::time::Instant::now() < until {
            if count.load(Ordering::SeqCst) >= want {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    /// The runtime blocked for longer than the tick interval (a stalled checkpoint, a busy
    /// runtime) must not stop the ticker. With tokio-cron-scheduler 0.15's repeated job
    /// (`Job::new_repeated_async`), the one this replaced, the next tick is the previous one
    /// plus the interval: after the stall it falls behind the last tick, and the job never
    /// fires again (this test then fails at the second assertion).
    #[tokio::test(flavor = "current_thread")]
    async fn the_ticker_keeps_ticking_after_the_runtime_stalls() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        let mut ticker = start_ticker(move || {
            let c = c.clone();
            Box::pin(async move {
                c.fetch_add(1, Ordering::SeqCst);
            })
        })
        .await
        .unwrap();
        assert!(
            ticks_reach(&count, 1, std::time::Duration::from_secs(5)).await,
            "the ticker never fired"
        );
        // Block the only runtime thread for 4.5 intervals (the crate keeps times in whole
        // seconds, and a repeated job catches up on a lag shorter than two).
        std::thread::sleep(std::time::Duration::from_millis(4500));
        let after_stall = count.load(Ordering::SeqCst);
        assert!(
            ticks_reach(&count, after_stall + 2, std::time::Duration::from_secs(8)).await,
            "the ticker stopped after the runtime stalled: {} ticks before, none after",
            after_stall
        );
        ticker.shutdown().await.unwrap();
    }
}
