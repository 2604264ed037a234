//! The change-control log as operators read it: the filters shared by the API and `recsync
//! log`, masking on the way out, keyset paging for exports of any size, CSV rows, and the
//! retention pruner.

use crate::domain::mask::Masker;
use crate::store::{
    Change, ChangeFilter, LogAction, LogDirection, LogStatus, ReadView, Store, StoreError,
};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use std::time::Duration;

/// The filters, as given in a query string or on the command line (text, checked here so an
/// error can name the parameter).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuery {
    pub sync: Option<String>,
    pub direction: Option<String>,
    pub action: Option<String>,
    pub status: Option<String>,
    pub external_id: Option<String>,
    pub local_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub q: Option<String>,
    pub run_id: Option<String>,
    /// Keyset cursor: the `next` of the previous page (rows older than it).
    pub after: Option<String>,
    pub limit: Option<String>,
    /// `json` (default) or `csv`; only the API reads it.
    pub format: Option<String>,
}

/// The largest page a caller may ask for.
pub const MAX_PAGE: i64 = 1000;

fn one_of(name: &str, v: &Option<String>, allowed: &[&str]) -> Result<Option<String>, String> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) if allowed.contains(&s) => Ok(Some(s.to_string())),
        Some(s) => Err(format!(
            "`{name}` must be one of {}, not `{s}`",
            allowed.join(", ")
        )),
    }
}

fn int(name: &str, v: &Option<String>) -> Result<Option<i64>, String> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("`{name}` must be an integer, not `{s}`")),
    }
}

/// An RFC 3339 time, or a date (midnight UTC).
pub fn parse_time(name: &str, s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(format!(
        "`{name}` must be an RFC 3339 time (2026-11-24T08:00:00Z) or a date (2026-11-24), not `{s}`"
    ))
}

fn time(name: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, String> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => parse_time(name, s).map(Some),
    }
}

impl ChangeQuery {
    /// The store filter; an error names the parameter and what it accepts.
    pub fn to_filter(&self, default_limit: i64) -> Result<ChangeFilter, String> {
        for (name, v) in [
            ("sync", &self.sync),
            ("external_id", &self.external_id),
            ("q", &self.q),
        ] {
            if v.as_deref().is_some_and(|s| s.contains('\0')) {
                return Err(format!("`{name}` contains a NUL character (U+0000)"));
            }
        }
        let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let limit = int("limit", &self.limit)?.unwrap_or(default_limit);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(format!(
                "`limit` must be between 1 and {MAX_PAGE}, not {limit}"
            ));
        }
        let f = ChangeFilter {
            sync: text(&self.sync),
            direction: one_of("direction", &self.direction, LogDirection::ALL)?,
            action: one_of("action", &self.action, LogAction::ALL)?,
            status: one_of("status", &self.status, LogStatus::ALL)?,
            external_id: text(&self.external_id),
            local_id: int("local_id", &self.local_id)?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            q: text(&self.q),
            run_id: int("run_id", &self.run_id)?,
            before: int("after", &self.after)?,
            after_id: None,
            limit,
        };
        if let (Some(a), Some(b)) = (f.since, f.until)
            && a >= b
        {
            return Err(format!(
                "`since` ({}) must be earlier than `until` ({})",
                a.to_rfc3339(),
                b.to_rfc3339()
            ));
        }
        Ok(f)
    }
}

/// Masks a row for display (rows written before a field was declared secret included).
pub fn mask_change(m: &Masker, c: &mut Change) {
    m.mask_change_parts(
        [
            &mut c.origin_values,
            &mut c.destination_values,
            &mut c.before_values,
        ],
        [&mut c.error_message, &mut c.title],
    );
}

/// The CSV columns, in order (columns added later come last, so positions stay).
pub const CSV_COLUMNS: [&str; 17] = [
    "id",
    "sync",
    "direction",
    "action",
    "external_id",
    "local_id",
    "name",
    "title",
    "origin_values",
    "destination_values",
    "modified_at",
    "synced_at",
    "status",
    "error_message",
    "run_id",
    "actor",
    "before_values",
];

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One row's CSV fields, in [`CSV_COLUMNS`] order.
pub fn csv_fields(c: &Change) -> [String; 17] {
    [
        c.id.to_string(),
        c.sync.clone(),
        c.direction.to_string(),
        c.action.to_string(),
        c.external_id.clone().unwrap_or_default(),
        c.local_id.map(|i| i.to_string()).unwrap_or_default(),
        c.name.clone(),
        c.title.clone(),
        c.origin_values.to_string(),
        c.destination_values.to_string(),
        c.modified_at.as_ref().map(rfc3339).unwrap_or_default(),
        rfc3339(&c.synced_at),
        c.status.to_string(),
        c.error_message.clone(),
        c.run_id.map(|i| i.to_string()).unwrap_or_default(),
        c.actor.clone(),
        c.before_values.to_string(),
    ]
}

/// CSV text of some rows (with the header first when `header`).
pub fn csv_chunk(rows: &[Change], header: bool) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 256));
    if header {
        let _ = w.write_record(CSV_COLUMNS);
    }
    for r in rows {
        let _ = w.write_record(csv_fields(r));
    }
    w.into_inner().unwrap_or_default()
}

/// Every row matching `filter`, page by page (keyset on id, newest first), masked; for
/// exports, which then hold one page in memory at a time.
pub fn pages(
    store: ReadView,
    filter: ChangeFilter,
    masker: std::sync::Arc<Masker>,
) -> impl futures_util::Stream<Item = Result<Vec<Change>, StoreError>> {
    let page = filter.limit.clamp(1, MAX_PAGE);
    futures_util::stream::unfold(Some(filter.before), move |cursor| {
        let store = store.clone();
        let masker = masker.clone();
        let mut f = filter.clone();
        async move {
            let before = cursor?;
            f.before = before;
            f.limit = page;
            match store.changes(&f).await {
                Ok(mut rows) if !rows.is_empty() => {
                    let next = if (rows.len() as i64) < page {
                        None
                    } else {
                        rows.last().map(|r| Some(r.id))
                    };
                    rows.iter_mut().for_each(|r| mask_change(&masker, r));
                    Some((Ok(rows), next))
                }
                Ok(_) => None,
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// Rows deleted per statement by the pruner; small, so a writer never waits long behind it.
pub const PRUNE_BATCH: i64 = 500;

/// Deletes rows older than `retention`, in small batches with a pause between them, so that
/// writers interleave (each pause is as long as the batch took, so pruning takes at most half
/// of the writer's time). Returns how many rows went.
pub async fn prune(store: &Store, retention: Duration) -> Result<u64, StoreError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or_default();
    let mut total = 0;
    loop {
        let started = std::time::Instant::now();
        let n = store.prune_changes(cutoff, PRUNE_BATCH).await?;
        total += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(total);
        }
        // At most half of the writer's time goes to pruning.
        tokio::time::sleep(started.elapsed().max(Duration::from_millis(5))).await;
    }
}

/// Prunes once soon after start and then every `every`, until `stop` turns true.
pub fn spawn_pruner(
    store: Store,
    retention: Duration,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(5);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            wait = every;
            match prune(&store, retention).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(rows = n, "Pruned change-control rows past their retention")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Pruning the change-control log failed; will try again")
                }
            }
        }
    })
}
