//! Rows of the store's tables, as the rest of the crate sees them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::types::Json;

/// A local record. `deleted` records are tombstones kept so deletions can be carried across.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub id: i64,
    pub model: String,
    pub values: Map<String, Value>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted: bool,
}

#[derive(sqlx::FromRow)]
pub(crate) struct RecordRow {
    id: i64,
    model: String,
    vals: Json<Map<String, Value>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl From<RecordRow> for Record {
    fn from(r: RecordRow) -> Self {
        Record {
            id: r.id,
            model: r.model,
            values: r.vals.0,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            deleted: r.deleted_at.is_some(),
        }
    }
}

/// The pairing of a local record with its external counterpart. It belongs to the binding
/// (local model, external model, web service) and is shared by every sync of that binding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Link {
    /// The binding's key (`model|external_model|web_service`).
    pub binding: String,
    pub local_id: i64,
    /// `None` until the external side has answered a create with its id.
    pub external_id: Option<String>,
    /// The values both sides held at the last successful sync.
    pub base: Map<String, Value>,
    /// The local record version that was last synced.
    pub synced_version: i64,
    pub external_hash: Option<String>,
    /// Syncs of the binding whose domain the record left: they no longer carry it (each was
    /// logged as an `unlink`), while the identity stays.
    pub left: Vec<String>,
}

impl Link {
    /// Whether sync `code` still carries the record.
    pub fn carried_by(&self, code: &str) -> bool {
        !self.left.iter().any(|c| c == code)
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct LinkRow {
    binding: String,
    local_id: i64,
    external_id: Option<String>,
    base: Json<Map<String, Value>>,
    synced_version: i64,
    external_hash: Option<String>,
    left_syncs: Json<Vec<String>>,
}

impl From<LinkRow> for Link {
    fn from(r: LinkRow) -> Self {
        Link {
            binding: r.binding,
            local_id: r.local_id,
            external_id: r.external_id,
            base: r.base.0,
            synced_version: r.synced_version,
            external_hash: r.external_hash,
            left: r.left_syncs.0,
        }
    }
}

/// A change to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutbox {
    pub sync: String,
    pub local_id: i64,
    /// `create`, `update` or `delete`.
    pub action: String,
    pub payload: Value,
}

/// A queued delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub sync: String,
    pub local_id: i64,
    pub action: String,
    pub payload: Value,
    pub status: OutboxStatus,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct OutboxRow {
    id: i64,
    sync: String,
    local_id: i64,
    action: String,
    payload: Json<Value>,
    #[sqlx(try_from = "String")]
    status: OutboxStatus,
    attempts: i64,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<OutboxRow> for OutboxEntry {
    fn from(r: OutboxRow) -> Self {
        OutboxEntry {
            id: r.id,
            sync: r.sync,
            local_id: r.local_id,
            action: r.action,
            payload: r.payload.0,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            created_at: r.created_at,
        }
    }
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [&'static str] = &[$($text),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $name::parse(&s).ok_or_else(|| format!("`{s}` is not a {}", stringify!($name)))
            }
        }
    };
}

text_enum!(
    /// Which way a change went.
    LogDirection { ExternalToLocal = "external_to_local", LocalToExternal = "local_to_external" }
);
text_enum!(
    /// What a change did.
    LogAction {
        Create = "create",
        Update = "update",
        Delete = "delete",
        Unlink = "unlink",
        Rename = "rename",
        Move = "move",
        Conflict = "conflict",
        Link = "link",
        Detach = "detach",
        // `run`: a run that failed as a whole; `reconcile`: what a reconciliation found.
        Run = "run",
        Reconcile = "reconcile",
    }
);
text_enum!(
    /// Where a run is, or how it ended.
    RunStatus {
        Running = "running",
        Success = "success",
        Partial = "partial",
        Failed = "failed",
        Skipped = "skipped",
    }
);
text_enum!(
    /// How a change ended.
    LogStatus { Success = "success", Failed = "failed", ConflictResolved = "conflict_resolved", Skipped = "skipped" }
);
text_enum!(
    /// Where a queued delivery is.
    OutboxStatus {
        Pending = "pending",
        Inflight = "inflight",
        Done = "done",
        Dead = "dead",
        Discarded = "discarded",
    }
);
text_enum!(
    /// Where a group of held deletes is.
    HoldStatus {
        Collecting = "collecting",
        Held = "held",
        Approved = "approved",
        Discarded = "discarded",
        Applied = "applied",
    }
);

/// A change-control row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    pub sync: String,
    pub direction: LogDirection,
    pub action: LogAction,
    pub external_id: Option<String>,
    pub local_id: Option<i64>,
    pub name: String,
    pub title: String,
    pub origin_values: Value,
    pub destination_values: Value,
    /// The local values of the fields this change wrote or sent, as they were before it (an
    /// update's: the record's values it replaced, or those last synced out); `null` or `{}`
    /// when not known or not applicable.
    pub before_values: Value,
    pub modified_at: Option<DateTime<Utc>>,
    /// Defaults to now.
    pub synced_at: Option<DateTime<Utc>>,
    pub status: LogStatus,
    pub error_message: String,
    pub run_id: Option<i64>,
    pub actor: String,
}

impl NewChange {
    /// The row of something that was not applied, or of an event of a sync: no values, no
    /// record; the caller adds what it knows (ids, values, run, actor).
    pub fn unapplied(
        sync: &str,
        action: LogAction,
        name: impl Into<String>,
        status: LogStatus,
        error: impl Into<String>,
    ) -> NewChange {
        NewChange {
            sync: sync.to_string(),
            direction: LogDirection::ExternalToLocal,
            action,
            external_id: None,
            local_id: None,
            name: name.into(),
            title: String::new(),
            origin_values: Value::Object(Map::new()),
            destination_values: Value::Object(Map::new()),
            before_values: Default::default(),
            modified_at: None,
            synced_at: None,
            status,
            error_message: error.into(),
            run_id: None,
            actor: String::new(),
        }
    }
}

/// A change-control row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub id: i64,
    pub sync: String,
    pub direction: LogDirection,
    pub action: LogAction,
    pub external_id: Option<String>,
    pub local_id: Option<i64>,
    pub name: String,
    pub title: String,
    pub origin_values: Value,
    pub destination_values: Value,
    /// The local values of the fields the change wrote or sent, as they were before it (`{}`
    /// when not known).
    pub before_values: Value,
    pub modified_at: Option<DateTime<Utc>>,
    pub synced_at: DateTime<Utc>,
    pub status: LogStatus,
    pub error_message: String,
    pub run_id: Option<i64>,
    pub actor: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ChangeRow {
    id: i64,
    sync: String,
    #[sqlx(try_from = "String")]
    direction: LogDirection,
    #[sqlx(try_from = "String")]
    action: LogAction,
    external_id: Option<String>,
    local_id: Option<i64>,
    name: String,
    title: String,
    origin_values: Json<Value>,
    destination_values: Json<Value>,
    before_values: Json<Value>,
    modified_at: Option<DateTime<Utc>>,
    synced_at: DateTime<Utc>,
    #[sqlx(try_from = "String")]
    status: LogStatus,
    error_message: String,
    run_id: Option<i64>,
    actor: String,
}

impl From<ChangeRow> for Change {
    fn from(r: ChangeRow) -> Self {
        Change {
            id: r.id,
            sync: r.sync,
            direction: r.direction,
            action: r.action,
            external_id: r.external_id,
            local_id: r.local_id,
            name: r.name,
            title: r.title,
            origin_values: r.origin_values.0,
            destination_values: r.destination_values.0,
            before_values: r.before_values.0,
            modified_at: r.modified_at,
            synced_at: r.synced_at,
            status: r.status,
            error_message: r.error_message,
            run_id: r.run_id,
            actor: r.actor,
        }
    }
}

/// Filters for the change-control log; every one is optional.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    pub sync: Option<String>,
    pub direction: Option<String>,
    pub action: Option<String>,
    pub status: Option<String>,
    pub external_id: Option<String>,
    pub local_id: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive text search over the title and the error message.
    pub q: Option<String>,
    pub run_id: Option<i64>,
    /// Keyset cursor: only rows with a smaller id.
    pub before: Option<i64>,
    /// Only rows with a larger id, oldest first (for following the log as it grows).
    pub after_id: Option<i64>,
    pub limit: i64,
}

/// A sync's persisted scheduling state.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct SyncState {
    pub sync: String,
    pub cursor: Option<String>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub schedule: Option<String>,
    pub running_run: Option<i64>,
    pub running_by: Option<String>,
    pub running_since: Option<DateTime<Utc>>,
}

/// The figures of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub pulled: i64,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub unlinked: i64,
    pub skipped: i64,
    pub failed: i64,
    pub conflicts: i64,
    pub pushed: i64,
    /// Deletes the delete guard held for a person to approve.
    pub held: i64,
    /// Found by reconciliation: linked records whose external side is gone.
    pub missing: i64,
    /// Found by reconciliation: external records nothing was linked to.
    pub extra: i64,
    /// Found by reconciliation: linked records whose values differed.
    pub different: i64,
    /// Unlinked records whose `match_on` fields matched several records on the other side.
    pub ambiguous: i64,
}

/// A recorded run.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct Run {
    pub id: i64,
    pub sync: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub error: Option<String>,
    pub instance: Option<String>,
    pub pulled: i64,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub unlinked: i64,
    pub skipped: i64,
    pub failed: i64,
    pub conflicts: i64,
    pub pushed: i64,
    /// Deletes the delete guard held for a person to approve.
    pub held: i64,
    /// Found by reconciliation: linked records whose external side is gone.
    pub missing: i64,
    /// Found by reconciliation: external records nothing was linked to.
    pub extra: i64,
    /// Found by reconciliation: linked records whose values differed.
    pub different: i64,
    /// Unlinked records whose `match_on` fields matched several records on the other side.
    pub ambiguous: i64,
}

/// The first answer given to an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotent {
    pub status: u16,
    pub body: String,
    /// What identifies the request it answered (method, path and body), when recorded.
    pub fingerprint: Option<String>,
}
