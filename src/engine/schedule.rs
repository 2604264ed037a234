//! The scheduler. tokio-cron-scheduler is only a ticker (once a second); due times are computed
//! with croner from each sync's `schedule` or `every` in its time zone and stored as
//! `next_run_at`, and a due time is taken by a conditional update, so one instance runs it.
//! A schedule missed while recsync was down runs once at start-up, never once per miss.

use super::{Engine, RunError, Trigger};
use crate::domain::plan::{Schedule, Sync};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::sync::Arc;

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

    /// Runs the start-up tick, then ticks every second.
    pub async fn start_scheduler(
        self: &Arc<Self>,
    ) -> anyhow::Result<tokio_cron_scheduler::JobScheduler> {
        self.tick(Utc::now(), true).await;
        let sched = tokio_cron_scheduler::JobScheduler::new().await?;
        let engine = self.clone();
        let job = tokio_cron_scheduler::Job::new_repeated_async(
            std::time::Duration::from_secs(1),
            move |_id, _lock| {
                let engine = engine.clone();
                Box::pin(async move {
                    // A random pause before claiming, so that instances sharing a database
                    // share the due times instead of the one whose ticker runs first always
                    // taking them.
                    let jitter = rand::random_range(0..TICK_JITTER_MS);
                    tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                    engine.tick(Utc::now(), false).await
                })
            },
        )?;
        sched.add(job).await?;
        sched.start().await?;
        Ok(sched)
    }
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
}
