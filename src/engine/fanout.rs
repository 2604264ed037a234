//! Fan-out: which syncs a change goes out through, what it does to each of them (queued,
//! carried again, or the record left the sync's domain), and the row of a domain exit. The
//! batch writer, deletes and local edits, and the cron push all use these.

use super::rows::log_row;
use crate::domain::Plan;
use crate::domain::plan::{Mode, Model, Sync};
use crate::store::{Link, LogAction, LogDirection, NewChange, Record};

/// The change-control row of a record that left sync `t`'s domain: the sync stops carrying
/// it, while the binding keeps the identity.
pub(crate) fn domain_exit_row(
    t: &Sync,
    model: &Model,
    rec: &Record,
    link: &Link,
    actor: &str,
) -> NewChange {
    let mut row = log_row(
        t,
        model,
        LogDirection::LocalToExternal,
        LogAction::Unlink,
        Some(rec.id),
        &rec.values,
    );
    row.external_id = link.external_id.clone();
    row.error_message = "the record no longer matches the sync's domain".into();
    row.actor = actor.into();
    row
}

/// What a change does to one receiving sync.
#[derive(Debug)]
pub(crate) enum Route {
    /// Nothing: a delete of a record the sync does not carry, or a record outside the
    /// domain of a sync that does not carry it.
    Nothing,
    /// The record left the sync's domain: the sync stops carrying it (the link given was
    /// updated; write it back) and this row says so.
    Exit(Box<NewChange>),
    /// Queue the change. With `relinked`, the record came back into the domain and the link
    /// given carries it again (write it back).
    Send { relinked: bool },
}

/// Routes a change of `rec` (`action`: create, update or delete) to the receiving sync `t`,
/// given the record's link in `t`'s binding.
pub(crate) fn route(
    t: &Sync,
    model: &Model,
    rec: &Record,
    link: Option<&mut Link>,
    action: &str,
    actor: &str,
) -> Route {
    let code = t.code.as_str();
    if action == "delete" {
        return match link {
            Some(l) if l.carried_by(code) => Route::Send { relinked: false },
            _ => Route::Nothing,
        };
    }
    if !t.domain.matches(&rec.values) {
        return match link {
            Some(l) if l.carried_by(code) => {
                l.left.push(code.to_string());
                Route::Exit(Box::new(domain_exit_row(t, model, rec, l, actor)))
            }
            _ => Route::Nothing,
        };
    }
    match link {
        Some(l) if !l.carried_by(code) => {
            l.left.retain(|c| c != code);
            Route::Send { relinked: true }
        }
        _ => Route::Send { relinked: false },
    }
}

/// Realtime syncs of `model` that send a change which came in through `origin` (`None`: a
/// local edit, which every sender gets). Syncs of the origin's binding talk to the system the
/// change came from, so they get nothing, unless the origin lacks the merged result
/// (`resend`): then exactly one of them sends it back, the origin itself when it sends.
pub(crate) fn receivers<'a>(
    plan: &'a Plan,
    model: &'a str,
    origin: Option<&'a Sync>,
    resend: bool,
) -> impl Iterator<Item = &'a Sync> + 'a {
    let sends = |t: &Sync| t.active && t.direction.to_external() && t.mode == Mode::Realtime;
    let back = origin
        .filter(|_| resend)
        .and_then(|o| {
            plan.syncs_of_model(model)
                .filter(|t| sends(t) && t.same_binding(o))
                .min_by_key(|t| t.code != o.code)
        })
        .map(|t| t.code.as_str());
    plan.syncs_of_model(model).filter(move |t| {
        sends(t) && (origin.is_none_or(|o| !t.same_binding(o)) || Some(t.code.as_str()) == back)
    })
}

/// The payload of a fanned-out outbox entry: the record's version, and the HTTP request the
/// change came with (and its trace), so its delivery can be followed back to it.
pub(crate) fn payload(version: i64, ctx: &super::Ctx) -> serde_json::Value {
    let mut p = serde_json::json!({ "version": version });
    if let Some(r) = &ctx.request_id {
        p["request_id"] = serde_json::json!(r);
    }
    if let Some(t) = &ctx.traceparent {
        p["traceparent"] = serde_json::json!(t);
    }
    p
}

/// An outbox entry's payload in the trace of the current span (a records API request, a
/// run), when traces are exported: the delivery continues it.
pub(crate) fn traced(mut payload: serde_json::Value) -> serde_json::Value {
    if let Some(t) = crate::telemetry::traceparent() {
        payload["traceparent"] = serde_json::json!(t);
    }
    payload
}
