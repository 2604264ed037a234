//! The change-control rows and the wording the engine's parts share: a row's skeleton and its
//! verb, a pulled payload, the reason given for a paused record. A leaf: it imports no other
//! part of the engine.

use crate::connectors::SendAction;
use crate::domain::plan::{Model, Sync};
use crate::store::{LogAction, LogDirection, LogStatus, NewChange, OutboxEntry};
use serde_json::{Map, Value, json};

/// A change-control row of sync `sync` about a record of `model`, to be filled in.
pub(super) fn log_row(
    sync: &Sync,
    model: &Model,
    direction: LogDirection,
    action: LogAction,
    rec_id: Option<i64>,
    values: &Map<String, Value>,
) -> NewChange {
    let verb = verb(action);
    NewChange {
        sync: sync.code.to_string(),
        direction,
        action,
        external_id: None,
        local_id: rec_id,
        name: format!("{verb} {}", model.name),
        title: rec_id.map(|id| model.title(id, values)).unwrap_or_default(),
        origin_values: json!({}),
        destination_values: json!({}),
        before_values: Default::default(),
        modified_at: None,
        synced_at: None,
        status: LogStatus::Success,
        error_message: String::new(),
        run_id: None,
        actor: String::new(),
    }
}

/// An external record's values as a pulled payload: the sync's `external_ref` is filled in
/// from its id when the values lack it.
pub(super) fn as_pulled(sync: &Sync, external_id: &str, mut values: Map<String, Value>) -> Value {
    values
        .entry(sync.external_ref.clone())
        .or_insert_with(|| Value::String(external_id.to_string()));
    Value::Object(values)
}

/// The verb of a change-control row's name ("Update contact").
pub(super) fn verb(a: LogAction) -> &'static str {
    match a {
        LogAction::Create => "Create",
        LogAction::Update => "Update",
        LogAction::Delete => "Delete",
        LogAction::Unlink => "Unlink",
        LogAction::Rename => "Rename",
        LogAction::Move => "Move",
        LogAction::Conflict => "Resolve conflict on",
        LogAction::Link => "Link",
        LogAction::Detach => "Detach",
        LogAction::Run => "Run",
        LogAction::Reconcile => "Reconcile",
    }
}

/// Why a change of a paused record was not applied.
pub(super) fn paused_reason(sync: &Sync) -> String {
    format!(
        "the record is paused for sync `{}`, so nothing was written; `resume` it to sync it again",
        sync.code
    )
}

/// A delivery's change-control row, as it succeeded.
pub(super) fn success_row(
    entry: &OutboxEntry,
    sync: &Sync,
    action: LogAction,
    external_id: Option<String>,
    title: &str,
    origin: Value,
    destination: Value,
) -> NewChange {
    NewChange {
        sync: sync.code.to_string(),
        direction: LogDirection::LocalToExternal,
        action,
        external_id,
        local_id: Some(entry.local_id),
        name: format!("{} {}", verb(action), sync.model),
        title: title.to_string(),
        origin_values: origin,
        destination_values: destination,
        before_values: Default::default(),
        modified_at: Some(entry.created_at),
        synced_at: None,
        status: LogStatus::Success,
        error_message: String::new(),
        run_id: run_of(entry),
        actor: "outbox".into(),
    }
}

/// A delivery's change-control row, as it failed (the reason is filled in later).
pub(super) fn failure_row(
    entry: &OutboxEntry,
    sync: Option<&Sync>,
    title: &str,
    action: Option<SendAction>,
    values: &Map<String, Value>,
) -> NewChange {
    let action = match action {
        Some(SendAction::Create) => LogAction::Create,
        Some(SendAction::Update) => LogAction::Update,
        Some(SendAction::Delete) => LogAction::Delete,
        None => LogAction::parse(&entry.action).unwrap_or(LogAction::Update),
    };
    NewChange {
        sync: entry.sync.clone(),
        direction: LogDirection::LocalToExternal,
        action,
        external_id: None,
        local_id: Some(entry.local_id),
        name: format!(
            "{} {}",
            verb(action),
            sync.map(|s| s.model.as_str()).unwrap_or("record")
        ),
        title: title.to_string(),
        origin_values: Value::Object(values.clone()),
        destination_values: json!({}),
        before_values: Default::default(),
        modified_at: Some(entry.created_at),
        synced_at: None,
        status: LogStatus::Failed,
        error_message: String::new(),
        run_id: run_of(entry),
        actor: "outbox".into(),
    }
}

/// The run that queued an entry (a cron push), if any: its rows carry that run's id.
pub(super) fn run_of(entry: &OutboxEntry) -> Option<i64> {
    entry.payload.get("run_id").and_then(Value::as_i64)
}
