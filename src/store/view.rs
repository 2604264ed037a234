//! A read-only view of the store, for readers outside the engine (the HTTP API, the change-log
//! exports): it offers the reads and nothing that writes, so the compiler keeps them from
//! writing.

use super::*;
use crate::domain::mirror::MirrorEntry;

/// The store's reads. Cheap to clone (it shares the store's pools).
#[derive(Clone)]
pub struct ReadView(Store);

impl Store {
    /// A view of this store that can only read.
    pub fn view(&self) -> ReadView {
        ReadView(self.clone())
    }
}

impl ReadView {
    pub fn backend_name(&self) -> &'static str {
        self.0.backend_name()
    }

    pub async fn ping(&self) -> Result<()> {
        self.0.ping().await
    }

    pub async fn get_record(&self, model: &str, id: i64) -> Result<Option<Record>> {
        self.0.get_record(model, id).await
    }

    pub async fn list_records(&self, model: &str, after: i64, limit: i64) -> Result<Vec<Record>> {
        self.0.list_records(model, after, limit).await
    }

    pub async fn holds(
        &self,
        status: Option<HoldStatus>,
        sync: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Hold>> {
        self.0.holds(status, sync, limit).await
    }

    pub async fn hold(&self, id: i64) -> Result<Option<Hold>> {
        self.0.hold(id).await
    }

    pub async fn hold_items(&self, hold: i64, after: &str, limit: i64) -> Result<Vec<HoldItem>> {
        self.0.hold_items(hold, after, limit).await
    }

    pub async fn count_records(&self, model: &str) -> Result<i64> {
        self.0.count_records(model).await
    }

    pub async fn records_by_ids(&self, model: &str, ids: &[i64]) -> Result<Vec<Record>> {
        self.0.records_by_ids(model, ids).await
    }

    /// One record's state for one sync: its link (of the sync's `binding`), whether it is
    /// paused, and the discarded hold that left it detached.
    pub async fn record_state(
        &self,
        sync: &str,
        binding: &str,
        local_id: i64,
    ) -> Result<(Option<Link>, bool, Option<i64>)> {
        let link = self.0.links_by_local(binding, &[local_id]).await?.pop();
        let paused = !self.0.paused_among(sync, &[local_id]).await?.is_empty();
        let detached = self.0.detached_hold(sync, local_id).await?;
        Ok((link, paused, detached))
    }

    pub async fn changes(&self, f: &ChangeFilter) -> Result<Vec<Change>> {
        self.0.changes(f).await
    }

    pub async fn change(&self, id: i64) -> Result<Option<Change>> {
        self.0.change(id).await
    }

    pub async fn change_stats(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, String, i64, i64, i64)>> {
        self.0.change_stats(since).await
    }

    pub async fn outbox_stats(&self) -> Result<Vec<(String, String, i64, Option<DateTime<Utc>>)>> {
        self.0.outbox_stats().await
    }

    pub async fn outbox_depth(&self, sync: &str) -> Result<i64> {
        self.0.outbox_depth(sync).await
    }

    pub async fn list_outbox(
        &self,
        status: Option<OutboxStatus>,
        sync: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        self.0.list_outbox(status, sync, after, limit).await
    }

    pub async fn runs(
        &self,
        sync: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Run>> {
        self.0.runs(sync, before, limit).await
    }

    pub async fn sync_state(&self, sync: &str) -> Result<Option<SyncState>> {
        self.0.sync_state(sync).await
    }

    pub async fn idempotent_response(
        &self,
        scope: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<Idempotent>> {
        self.0.idempotent_response(scope, key, since).await
    }

    pub async fn dbx_entries(&self, sync: &str) -> Result<Vec<MirrorEntry>> {
        self.0.dbx_entries(sync).await
    }
}
