//! The connector interface: the questions the engine asks every external system, and nothing
//! else (`connectors.md` §1). `rest` speaks the TELEMATEL-style protocol, `dropbox` reaches a
//! Dropbox folder, `odoo` an Odoo database through its external API, `http` any JSON API
//! described in the configuration. [`build`] is the one place that knows which kinds exist; the engine drives
//! whatever it returns.
//!
//! A connector never imports the store. What it must remember between calls beyond the cursor
//! (Dropbox's mirror of the folder) it keeps through [`Memory`], which the engine implements
//! over the store for one sync.

pub mod dropbox;
pub mod http;
pub mod odoo;
pub mod rest;
pub mod sql;
pub mod transport;

use crate::domain::mirror::MirrorEntry;
use crate::domain::plan::{Plan, Sync, WebService};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a call to an external system failed, typed so the engine decides from the kind of
/// failure, never from its text. Every kind of connector answers with these; the message is
/// one sentence for the change-control log and the outbox.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The credentials were refused (after a refresh, where the kind has one).
    #[error("{message}")]
    Unauthorized { message: String },
    /// The record (or the resource) is not there.
    #[error("{message}")]
    NotFound { message: String },
    /// The service holds a record in the way: on a create, the record it names
    /// (`existing_id`), which the engine links instead of copying; without an id, a write
    /// refused because the record changed there.
    #[error("{message}")]
    Conflict {
        existing_id: Option<String>,
        message: String,
    },
    /// Too many calls: worth trying again after `retry_after` (or a backoff).
    #[error("{message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// Worth trying again later (5xx, timeout, a connection lost, a `failed` answer), perhaps
    /// after `retry_after`.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The service refused a value; `field` names it when the service says which.
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    /// Trying again would not help (a 4xx the service gives no reason for, a configuration
    /// gap, an answer recsync cannot read).
    #[error("{message}")]
    Permanent { message: String },
}

impl Failure {
    /// Worth trying again later (without a new read: `message`).
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// Not worth trying again.
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure::Permanent {
            message: message.into(),
        }
    }

    /// The same failure, said another way (with what the connector knows around it).
    pub fn reworded(mut self, say: impl FnOnce(&str) -> String) -> Failure {
        let said = say(self.message());
        match &mut self {
            Failure::Unauthorized { message }
            | Failure::NotFound { message }
            | Failure::Conflict { message, .. }
            | Failure::RateLimited { message, .. }
            | Failure::Transient { message, .. }
            | Failure::Invalid { message, .. }
            | Failure::Permanent { message } => *message = said,
        }
        self
    }

    /// The sentence for the log.
    pub fn message(&self) -> &str {
        match self {
            Failure::Unauthorized { message }
            | Failure::NotFound { message }
            | Failure::Conflict { message, .. }
            | Failure::RateLimited { message, .. }
            | Failure::Transient { message, .. }
            | Failure::Invalid { message, .. }
            | Failure::Permanent { message } => message,
        }
    }

    /// Whether a later attempt may succeed with nothing changed but time.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::RateLimited { .. } | Failure::Transient { .. }
        )
    }

    /// How long the service asked to be left alone, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::RateLimited { retry_after, .. } | Failure::Transient { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The kind, one word, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Unauthorized { .. } => "unauthorized",
            Failure::NotFound { .. } => "not_found",
            Failure::Conflict { .. } => "conflict",
            Failure::RateLimited { .. } => "rate_limited",
            Failure::Transient { .. } => "transient",
            Failure::Invalid { .. } => "invalid",
            Failure::Permanent { .. } => "permanent",
        }
    }
}

/// What a change does on the external side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendAction {
    Create,
    Update,
    Delete,
}

impl SendAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SendAction::Create => "create",
            SendAction::Update => "update",
            SendAction::Delete => "delete",
        }
    }
}

/// How an update moved a record in a tree-shaped system, for the change-control log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// Same parent, new name.
    Rename,
    /// New parent.
    Move,
}

/// Which record a send is about.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The linked id (update, delete).
    pub external_id: Option<&'a str>,
    /// Stands in for the external id on a create through `shipping_url`, as the protocol says.
    pub local_id: i64,
    /// The same for every attempt of one delivery, so the receiver can tell a redelivery from
    /// a new change.
    pub idempotency_key: &'a str,
    /// On an update, the external fields whose values changed since the record was last
    /// synced (`None`: send everything).
    pub changed: Option<&'a [String]>,
    /// On an update, what both sides held at the last sync (local field names): a connector
    /// that can write only if the record is still as it was compares against it.
    pub base: Option<&'a Map<String, Value>>,
    /// Whether the connector may repeat a failed call itself, after a wait. False for an
    /// update whose values were compared with the record there just before: repeated later
    /// without a new read, it would write over an edit made there meanwhile. The outbox
    /// repeats it instead, after reading the record again.
    pub repeat: bool,
}

/// A successful delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The external id the service reported, if any.
    pub external_id: Option<String>,
    /// What was sent, for the change-control log.
    pub request: Value,
    /// A rename or move, when the update was one.
    pub label: Option<Label>,
}

/// What a pulled record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullAction {
    Insert,
    Update,
    Delete,
    /// The record left the sync's view (archived, out of the service's domain): the link
    /// ends and the local record stays, whatever `propagate_deletes` says.
    Unlink,
}

impl PullAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PullAction::Insert => "insert",
            PullAction::Update => "update",
            PullAction::Delete => "delete",
            PullAction::Unlink => "unlink",
        }
    }
}

/// One record of a pulled page.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    pub action: PullAction,
    /// The external values (the sync's `external_ref` field among them, usually).
    pub values: Map<String, Value>,
    /// The record's id when the service gives it beside the values.
    pub external_id: Option<String>,
    /// When the record changed, if the service says; `priority = "newest"` compares it with
    /// the local record's `updated_at`.
    pub modified_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A rename or move, for the change-control log.
    pub label: Option<Label>,
}

impl Pulled {
    /// A record read by id, present (an upsert) or marked deleted at the source.
    pub fn read(
        values: Map<String, Value>,
        id: String,
        modified_at: Option<chrono::DateTime<chrono::Utc>>,
        deleted: bool,
    ) -> Pulled {
        Pulled {
            action: if deleted {
                PullAction::Delete
            } else {
                PullAction::Update
            },
            values,
            external_id: Some(id),
            modified_at,
            label: None,
        }
    }
}

/// A read running in the background (the next page, while the engine applies this one);
/// dropping it stops the read.
pub struct Ahead<T>(tokio::task::JoinHandle<Result<T, PullError>>);

impl<T: Send + 'static> Ahead<T> {
    pub fn start(
        read: impl std::future::Future<Output = Result<T, PullError>> + Send + 'static,
    ) -> Ahead<T> {
        Ahead(tokio::spawn(read))
    }

    pub async fn result(mut self) -> Result<T, PullError> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) => Err(PullError::Service(format!("reading a page failed: {e}"))),
        }
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One record of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub external_id: String,
    /// The record's external values, when the listing carries them.
    pub values: Option<Map<String, Value>>,
}

/// One page of a pull.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// The records to apply, in order.
    pub records: Vec<Pulled>,
    /// How many entries the service returned (records, and entries the sync does not take).
    pub read: usize,
    /// Entries read that this sync does not take (outside its folder or pattern).
    pub skipped: usize,
    /// Whether another page follows in this run.
    pub more: bool,
}

/// One record's outcome, for the confirmation.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirmation {
    pub external_id: String,
    /// `None` for success, else the reason it failed.
    pub error: Option<String>,
}

/// Why a pull stopped. The text is one sentence for the run record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PullError {
    /// The service failed or answered something unusable.
    #[error("{0}")]
    Service(String),
    /// What the engine keeps for the connector could not be read or written.
    #[error("the store failed: {0}")]
    Memory(String),
}

impl From<MemoryError> for PullError {
    fn from(e: MemoryError) -> Self {
        PullError::Memory(e.0)
    }
}

/// The engine's store failed under a connector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct MemoryError(pub String);

/// Held while a sync's turn is taken.
pub type Turn = tokio::sync::OwnedMutexGuard<()>;

/// What the engine keeps for a connector, for one sync. The cursor is the engine's; a
/// connector that mirrors the external side (Dropbox) keeps its mirror here, written with the
/// cursor in one transaction, so the cursor never passes what the mirror has taken in.
#[async_trait]
pub trait Memory: Send + std::marker::Sync {
    /// The sync's turn: a connector takes it around work on one sync that must not
    /// interleave (Dropbox: a listing page and a write back), held until the guard drops.
    async fn turn(&self) -> Turn;
    /// The sync's cursor, as last saved.
    async fn cursor(&self) -> Result<Option<String>, MemoryError>;
    /// Every mirrored entry of the sync.
    async fn mirror(&self) -> Result<Vec<MirrorEntry>, MemoryError>;
    /// One mirrored entry, by id.
    async fn mirror_entry(&self, id: &str) -> Result<Option<MirrorEntry>, MemoryError>;
    /// Writes mirror changes and, when given, the cursor, together.
    async fn save(
        &self,
        upserts: &[MirrorEntry],
        deletes: &[String],
        cursor: Option<&str>,
    ) -> Result<(), MemoryError>;
    /// Every external id linked to a local record through the sync's binding.
    async fn linked_ids(&self) -> Result<Vec<String>, MemoryError>;
    /// Records an event of the sync that is nobody's error (a cursor reset) as a `skipped`
    /// change-control row.
    async fn note(&self, name: &str, title: &str, message: &str) -> Result<(), MemoryError>;
}

/// One pull in progress: pages until one says no more follow, each confirmed after the engine
/// applied it.
#[async_trait]
pub trait Puller: Send {
    /// The next page.
    async fn next_page(&mut self, memory: &dyn Memory) -> Result<Page, PullError>;
    /// Tells the service (or the connector's memory) what became of the last page's records.
    /// Called again, with the outcomes of a second attempt, for records retried at the end of
    /// a run.
    async fn confirm(
        &mut self,
        memory: &dyn Memory,
        outcomes: &[Confirmation],
    ) -> Result<(), PullError>;

    /// Whether the next page may be read, and applied, before the page before it is
    /// confirmed. A puller that says so keeps what each page's confirmation needs and takes
    /// confirmations in the order its pages were read.
    fn pages_overlap(&self) -> bool {
        false
    }
}

/// Where a pull starts.
#[derive(Debug, Clone, Default)]
pub struct PullStart {
    /// When the oldest notification not yet taken in arrived (for the lag metric).
    pub notified_at: Option<Instant>,
    /// A full run (`recsync run --full`): read everything, and find hard deletes by listing
    /// ids where the service does not report them.
    pub full: bool,
    /// A plan (`recsync plan`): pages are read to be shown, not applied. Nothing the service
    /// or another run depends on may be taken (webhook hints stay for the next run).
    pub preview: bool,
}

/// What a webhook call to `/webhooks/<kind>/<web_service>` is, once the connector checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Genuine: every active sync of the web service reads what changed.
    Changed,
    /// Not from the service (missing or wrong signature or token); nothing runs. `outcome`
    /// labels the refusal in the metrics (`bad_signature`, `bad_token`).
    Refused {
        outcome: &'static str,
        message: String,
    },
    /// This kind of web service takes no webhook.
    Unsupported,
}

/// A webhook call as the connector sees it.
#[derive(Debug, Clone, Copy)]
pub struct Webhook<'a> {
    /// Header names in lower case.
    pub headers: &'a [(String, String)],
    pub query: &'a str,
    pub body: &'a [u8],
}

/// The plain external field a sync pairs with local field `local` (`None`: not paired, or
/// paired through a JSONPath): what a search by that field looks in.
pub fn plain_field<'a>(sync: &'a Sync, local: &str) -> Option<&'a str> {
    match sync
        .fields
        .iter()
        .find(|p| p.local == local)
        .map(|p| &p.external)
    {
        Some(crate::domain::mapping::ExternalField::Name(n)) => Some(n.as_str()),
        _ => None,
    }
}

/// Whether `external` (a record as read there) differs from `base` (what both sides held at
/// the last sync) in a field the sync both takes in and sends: what a write would overwrite.
/// Fields absent from `external` are not compared; a reference counts as a difference (it
/// resolves in the apply); values that do not map are left to the next pull, which reports
/// them.
pub fn changed_since(
    sync: &Sync,
    base: &Map<String, Value>,
    external: &Map<String, Value>,
) -> bool {
    use std::collections::HashSet;
    let sent: HashSet<&str> = sync
        .fields
        .iter()
        .filter(|f| f.direction.to_external())
        .flat_map(|f| f.sends_from())
        .collect();
    match crate::domain::mapping::to_local(&sync.fields, &Value::Object(external.clone())) {
        Ok(inbound) => {
            !inbound.refs.is_empty()
                || inbound.values.iter().any(|(k, v)| {
                    sent.contains(k.as_str()) && base.get(k).unwrap_or(&Value::Null) != v
                })
        }
        Err(_) => false,
    }
}

/// A connector does not offer this question.
pub fn unsupported(what: &str, kind: &str) -> PullError {
    PullError::Service(format!("{kind} web services do not support {what}"))
}

/// The questions the engine asks an external system (one connector per web service).
#[async_trait]
pub trait Connector: Send + std::marker::Sync {
    /// The web service kind, as configured (`rest`, `dropbox`, `odoo`).
    fn kind(&self) -> &'static str;

    /// Whether the connector mirrors the external side: it pulls even for a sync that only
    /// sends (its writes need the mirror), and takes its first listing at start-up.
    fn keeps_mirror(&self) -> bool {
        false
    }

    /// The mirrored external side of `sync` as a nested tree, from the entries the engine
    /// keeps for it (nothing is called): `None` for a kind, or a sync, that mirrors nothing.
    fn mirror_tree(&self, _sync: &Sync, _plan: &Plan, _entries: Vec<MirrorEntry>) -> Option<Value> {
        None
    }

    /// Starts a pull for `sync`.
    async fn open_pull(
        &self,
        sync: &Sync,
        plan: &Plan,
        start: PullStart,
        memory: &dyn Memory,
    ) -> Result<Box<dyn Puller>, PullError>;

    /// Creates, updates or deletes one record; the values are the sync's mapped external
    /// values.
    async fn send(
        &self,
        sync: &Sync,
        plan: &Plan,
        memory: &dyn Memory,
        action: SendAction,
        target: Target<'_>,
        values: &Map<String, Value>,
    ) -> Result<Sent, Failure>;

    /// Every external id that exists now, a page at a time from `after` (delete detection
    /// and reconciliation). The answer is the ids and where the next page starts.
    async fn list_ids(
        &self,
        _sync: &Sync,
        _plan: &Plan,
        _after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), PullError> {
        Err(unsupported("listing ids", self.kind()))
    }

    /// Every record that exists now, a page at a time from `after` (reconciliation): its id
    /// and, where the service gives them with the listing, its values. By default the ids of
    /// `list_ids`, without values.
    async fn list_records(
        &self,
        sync: &Sync,
        plan: &Plan,
        after: Option<String>,
    ) -> Result<(Vec<Listed>, Option<String>), PullError> {
        let (ids, next) = self.list_ids(sync, plan, after).await?;
        let listed = ids
            .into_iter()
            .map(|external_id| Listed {
                external_id,
                values: None,
            })
            .collect();
        Ok((listed, next))
    }

    /// The records with these external ids as they are now, read in as few calls as the
    /// service allows (conflicts on send). `None`: the connector cannot read a record by id,
    /// and the engine falls back (the next pull settles it). An id missing from the answer is
    /// not there (deleted, or outside the sync's view).
    async fn read_records(
        &self,
        _sync: &Sync,
        _plan: &Plan,
        _memory: &dyn Memory,
        _external_ids: &[String],
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        Ok(None)
    }

    /// The external records whose fields equal these values, compared as the service
    /// compares (the engine checks each candidate again with `match_on`'s own normalisation):
    /// `match_on` before a create. The criteria are keyed by the sync's local field, each
    /// value as the field is sent (mapped to the external side). `None`: the connector cannot
    /// search on these fields.
    async fn search(
        &self,
        _sync: &Sync,
        _plan: &Plan,
        _memory: &dyn Memory,
        _criteria: &Map<String, Value>,
    ) -> Result<Option<Vec<Pulled>>, PullError> {
        Ok(None)
    }

    /// Asks the sync's next pull to read these records again by id (`resync`); false when the
    /// connector cannot read one record on its own.
    fn reread(&self, _sync: &Sync, _plan: &Plan, _external_ids: &[String]) -> bool {
        false
    }

    /// Why a plan cannot read this sync's changes without taking them from the service, if
    /// it cannot (a `rest` service without `confirmation_url` drops what it served).
    fn preview_refusal(&self, _sync: &Sync) -> Option<String> {
        None
    }

    /// Whether `list_ids` and `list_records` work for this sync.
    fn can_list(&self, _sync: &Sync) -> bool {
        false
    }

    /// Whether a full pull (`recsync run --full`, `reconcile`) of this connector reads every
    /// record and ends with the ones that are gone, so the engine need not list them itself
    /// (Odoo).
    fn full_pull_lists(&self) -> bool {
        false
    }

    /// The external schema of a resource, as an `external_models` block (`recsync discover`).
    async fn describe(&self, _plan: &Plan, _resource: Option<&str>) -> Result<String, PullError> {
        Err(unsupported("discovery", self.kind()))
    }

    /// What a webhook call means.
    fn notification(&self, _call: Webhook<'_>) -> Notice {
        Notice::Unsupported
    }

    /// Whether the web service answers and takes its credentials (`validate --online`):
    /// what answered, or what is wrong (naming the URL, never a secret).
    async fn check(&self, plan: &Plan) -> Result<String, String>;

    /// The answer to a webhook's verification request (a `GET` with the service's
    /// challenge): `None` when the kind verifies no webhook, else the text to echo or why not.
    fn webhook_challenge(&self, _query: &str) -> Option<Result<String, String>> {
        None
    }
}

/// A connector kind: its configuration ([`crate::config::kinds::Kind`]) and its connector.
pub trait ConnectorKind: crate::config::kinds::Kind {
    /// The connector of a web service of this kind.
    fn connector(&self, service: &WebService, http: &reqwest::Client) -> Arc<dyn Connector>;
}

/// The registry of kinds, each written once: the default (`kind` left out) first.
macro_rules! registry {
    ($($kind:expr),+ $(,)?) => {
        /// Every kind, as the configuration sees it (handed to [`crate::config::load`]).
        pub static KINDS: &crate::config::Kinds = &[$(&$kind),+];
        /// Every kind, as the engine builds connectors.
        static CONNECTOR_KINDS: &[&dyn ConnectorKind] = &[$(&$kind),+];
    };
}

registry!(
    rest::config::Rest,
    odoo::config::Odoo,
    dropbox::config::Dropbox,
    http::config::Http,
    sql::config::Sql,
);

/// The connector of a web service.
pub fn build(service: &WebService, http: &reqwest::Client) -> Arc<dyn Connector> {
    CONNECTOR_KINDS
        .iter()
        .find(|k| k.name() == service.kind)
        .expect("a compiled web service's kind is registered")
        .connector(service, http)
}
