//! The round trip of two-way transformed fields (`recsync plan`, `validate --online`): which
//! values a pair with expressions does not give back (`to_local(to_external(v)) != v`), on the
//! local records and on what the external side reports. Such a pair would change a value
//! behind the user's back, or flip-flop between the systems.

use crate::domain::Plan;
use crate::domain::mapping::{Lossy, round_trip, round_trip_pairs, to_local};
use crate::domain::plan::Sync;
use crate::store::{Store, StoreError};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Records shown per kind of change.
pub const SAMPLE: usize = 10;

/// One two-way transformed field: how many values were checked, how many do not come back
/// equal, and samples of those.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoundTrip {
    /// The local field.
    pub field: String,
    /// The external field.
    pub external: String,
    /// The pair's expressions (`value` where a direction copies).
    pub to_local: String,
    pub to_external: String,
    /// Values checked (records holding a value for the field).
    pub checked: u64,
    /// Values that do not come back equal.
    pub lossy: u64,
    /// Up to [`SAMPLE`] of them: `local_id` (a local record) or `external_id`
    /// (a record the external side reported, as it would arrive here), `value`, `sent`,
    /// `back` and, when reading it back fails, `error`.
    pub samples: Vec<Value>,
}

/// Collects round trips over records, field by field.
#[derive(Default)]
pub(super) struct RoundTrips(Vec<RoundTrip>);

impl RoundTrips {
    /// Empty for a sync without two-way transformed pairs.
    pub(super) fn new(sync: &Sync) -> RoundTrips {
        RoundTrips(
            round_trip_pairs(&sync.fields)
                .map(|p| RoundTrip {
                    field: p.local.clone(),
                    external: p.external.to_string(),
                    to_local: p
                        .to_local
                        .as_ref()
                        .map_or("value".into(), |t| t.source().to_string()),
                    to_external: p
                        .to_external
                        .as_ref()
                        .map_or("value".into(), |t| t.source().to_string()),
                    checked: 0,
                    lossy: 0,
                    samples: Vec::new(),
                })
                .collect(),
        )
    }

    /// Checks one record's values; `who` names it in samples (`local_id` or `external_id`).
    pub(super) fn check(&mut self, sync: &Sync, values: &Map<String, Value>, who: (&str, Value)) {
        if self.0.is_empty() {
            return;
        }
        for r in &mut self.0 {
            if values.get(&r.field).is_some_and(|v| !v.is_null()) {
                r.checked += 1;
            }
        }
        for Lossy {
            field,
            value,
            sent,
            back,
            error,
        } in round_trip(&sync.fields, values)
        {
            let Some(r) = self.0.iter_mut().find(|r| r.field == field) else {
                continue;
            };
            r.lossy += 1;
            if r.samples.len() < SAMPLE {
                let mut s =
                    json!({ who.0: who.1.clone(), "value": value, "sent": sent, "back": back });
                if let Some(e) = error {
                    s["error"] = Value::String(e);
                }
                r.samples.push(s);
            }
        }
    }

    /// Checks a record the external side reports, as it would arrive here: mapped onto local
    /// fields, then sent back out and read again.
    pub(super) fn check_pulled(&mut self, sync: &Sync, external_id: &str, external: &Value) {
        if self.0.is_empty() {
            return;
        }
        if let Ok(inbound) = to_local(&sync.fields, external) {
            self.check(sync, &inbound.values, ("external_id", json!(external_id)));
        }
    }

    pub(super) fn done(self) -> Vec<RoundTrip> {
        self.0
    }
}

impl RoundTrips {
    /// Checks every live local record of the sync's model in its domain.
    pub(super) async fn check_local(
        &mut self,
        store: &Store,
        sync: &Sync,
    ) -> Result<(), StoreError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut after = 0;
        loop {
            let page = store.records_after(&sync.model, after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for r in page
                .iter()
                .filter(|r| !r.deleted && sync.domain.matches(&r.values))
            {
                self.check(sync, &r.values, ("local_id", json!(r.id)));
            }
        }
        Ok(())
    }
}

/// The round trip of sync `code`'s two-way transformed fields on every live local record of
/// its model in its domain (`validate --online`). Empty for a sync without such fields.
pub async fn round_trip_local(
    store: &Store,
    plan: &Plan,
    code: &str,
) -> Result<Vec<RoundTrip>, StoreError> {
    let Some(sync) = plan.sync(code) else {
        return Ok(Vec::new());
    };
    let mut trips = RoundTrips::new(sync);
    trips.check_local(store, sync).await?;
    let mut trips = trips.done();
    mask(&mut trips, &plan.masker());
    Ok(trips)
}

/// Hides the samples of secret fields, and secret strings in the others.
pub(super) fn mask(trips: &mut [RoundTrip], masker: &crate::domain::mask::Masker) {
    if masker.is_empty() {
        return;
    }
    for r in trips {
        let secret = {
            let mut probe = json!({ r.field.as_str(): "x", r.external.as_str(): "x" });
            masker.mask_value(&mut probe);
            probe
                .as_object()
                .is_some_and(|m| m.values().any(|v| v != "x"))
        };
        for s in &mut r.samples {
            if secret {
                for k in ["value", "sent", "back"] {
                    if s.get(k).is_some_and(|v| !v.is_null()) {
                        s[k] = Value::String(crate::domain::mask::MASK.into());
                    }
                }
            }
            masker.mask_value(s);
        }
    }
}
