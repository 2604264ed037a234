//! What the engine keeps for a connector, per sync: the cursor, the mirror and the sync's
//! turn, over the store (the connector side of it is `connectors::Memory`).

use super::{Ctx, Engine};
use crate::connectors::{Memory, MemoryError, Turn};
use crate::domain::mirror::MirrorEntry;
use crate::store::{LogAction, LogStatus, NewChange, StoreError};
use async_trait::async_trait;

/// One sync's memory, with the context of the run or delivery that uses it.
pub(super) struct SyncMemory<'a> {
    pub engine: &'a Engine,
    pub code: &'a str,
    pub ctx: Ctx,
}

fn lost(e: StoreError) -> MemoryError {
    MemoryError(e.to_string())
}

#[async_trait]
impl Memory for SyncMemory<'_> {
    async fn turn(&self) -> Turn {
        self.engine.turn_of(self.code).lock_owned().await
    }

    async fn cursor(&self) -> Result<Option<String>, MemoryError> {
        Ok(self
            .engine
            .store
            .sync_state(self.code)
            .await
            .map_err(lost)?
            .and_then(|s| s.cursor))
    }

    async fn mirror(&self) -> Result<Vec<MirrorEntry>, MemoryError> {
        self.engine.store.dbx_entries(self.code).await.map_err(lost)
    }

    async fn mirror_entry(&self, id: &str) -> Result<Option<MirrorEntry>, MemoryError> {
        self.engine
            .store
            .dbx_entry(self.code, id)
            .await
            .map_err(lost)
    }

    async fn save(
        &self,
        upserts: &[MirrorEntry],
        deletes: &[String],
        cursor: Option<&str>,
    ) -> Result<(), MemoryError> {
        self.engine
            .store
            .dbx_apply(self.code, upserts, deletes, cursor)
            .await
            .map_err(lost)
    }

    async fn linked_ids(&self) -> Result<Vec<String>, MemoryError> {
        self.engine
            .store
            .linked_external_ids(self.code)
            .await
            .map_err(lost)
    }

    async fn note(&self, name: &str, title: &str, message: &str) -> Result<(), MemoryError> {
        self.engine
            .log_alone(NewChange {
                title: title.into(),
                run_id: self.ctx.run_id,
                actor: self.ctx.actor.clone(),
                ..NewChange::unapplied(
                    self.code,
                    LogAction::Update,
                    name,
                    LogStatus::Skipped,
                    message,
                )
            })
            .await
            .map_err(lost)
    }
}
