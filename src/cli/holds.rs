//! Operators' commands on what the engine keeps: `recsync holds` (deletes held by a delete
//! guard: list them, approve or discard one) and `recsync record` (one record of one sync).

use super::*;

pub(super) async fn holds(g: &GlobalArgs, action: Option<HoldsAction>) -> ExitCode {
    match action.unwrap_or(HoldsAction::List {
        status: "held".into(),
        sync: None,
    }) {
        HoldsAction::List { status, sync } => list(g, &status, sync.as_deref()).await,
        HoldsAction::Approve { id } => decide(g, id, true).await,
        HoldsAction::Discard { id } => decide(g, id, false).await,
    }
}

/// Lists holds with their first deletes; needs only the database.
async fn list(g: &GlobalArgs, status: &str, sync: Option<&str>) -> ExitCode {
    let (_, store) = match open_store_for_reading(g).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    // clap admits only the statuses and `all`, which is none of them.
    let status = crate::store::HoldStatus::parse(status);
    let result: Result<(), crate::store::StoreError> = async {
        let holds = store.holds(status, sync, 100).await?;
        if holds.is_empty() {
            println!("No holds match.");
            return Ok(());
        }
        for h in holds {
            println!(
                "Hold {} of {}: {} deletes, {} (created {}{})",
                h.id,
                h.sync,
                h.items,
                h.status,
                h.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                h.run_id.map(|r| format!(", run {r}")).unwrap_or_default()
            );
            if !h.reason.is_empty() {
                println!("  {}", h.reason);
            }
            let items = store.hold_items(h.id, "", 10).await?;
            for it in &items {
                println!(
                    "  - external {} -> local {} {}",
                    it.external_id,
                    it.local_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    it.name
                );
            }
            if h.items > items.len() as i64 {
                println!("  ... and {} more", h.items - items.len() as i64);
            }
            if h.status == crate::store::HoldStatus::Held {
                println!(
                    "  recsync holds approve {0}   (applies these deletes)   recsync holds discard {0}   (keeps the records)",
                    h.id
                );
            }
        }
        Ok(())
    }
    .await;
    store.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Approves or discards a hold, through the engine (approving applies deletes).
async fn decide(g: &GlobalArgs, id: i64, approve: bool) -> ExitCode {
    let core = match super::run::start_core(g).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let engine = core.engine.clone();
    let result = if approve {
        engine.approve_hold(id, "cli").await
    } else {
        engine.discard_hold(id, "cli").await
    };
    let code = match result {
        Ok(d) if approve => {
            println!(
                "Hold {id} approved: {} deleted, {} had nothing left to delete.",
                d.deleted, d.skipped
            );
            ExitCode::SUCCESS
        }
        Ok(d) => {
            println!(
                "Hold {id} discarded: nothing deleted; the {} records stay linked.",
                d.skipped
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    };
    core.stop().await;
    code
}

/// `recsync record <CODE> <local id> <op>`: one record of one sync, through the engine.
pub(super) async fn record(
    g: &GlobalArgs,
    code: &str,
    local_id: i64,
    op: &str,
    external_id: Option<String>,
) -> ExitCode {
    use crate::engine::RecordOp;
    let op = match (op, external_id) {
        ("pause", _) => RecordOp::Pause,
        ("resume", _) => RecordOp::Resume,
        ("unlink", _) => RecordOp::Unlink,
        ("resync", _) => RecordOp::Resync,
        ("relink", Some(ext)) => RecordOp::Relink(ext),
        ("relink", None) => {
            eprintln!("error: relink needs --external-id <ID>");
            return ExitCode::from(2);
        }
        (other, _) => {
            eprintln!("error: unknown operation `{other}`");
            return ExitCode::from(2);
        }
    };
    let core = match super::run::start_core(g).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = core.engine.record_op(code, local_id, op, "cli").await;
    let exit = match result {
        Ok(done) => {
            println!("Record {local_id} of {code}: {}.", done.message);
            if let Some(run) = done.run_id {
                // The re-read happens in that run: wait for it, as `recsync run` does.
                if let Some(r) = wait_run(&core.engine, code, run).await {
                    println!("Run {run}: {}.", r.status);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    };
    core.stop().await;
    exit
}

async fn wait_run(
    engine: &std::sync::Arc<crate::engine::Engine>,
    code: &str,
    run: i64,
) -> Option<crate::store::Run> {
    for _ in 0..600 {
        if let Ok(runs) = engine.reads().runs(Some(code), None, 20).await
            && let Some(r) = runs
                .into_iter()
                .find(|r| r.id == run && r.finished_at.is_some())
        {
            return Some(r);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}
