//! `recsync outbox`: list, retry and discard deliveries.

use super::*;

pub(super) async fn outbox(g: &GlobalArgs, action: Option<OutboxAction>) -> ExitCode {
    let (_, store) = match open_store_for_reading(g).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let action = action.unwrap_or(OutboxAction::List {
        status: "dead".into(),
        sync: None,
    });
    let result: Result<ExitCode, crate::store::StoreError> = async {
        match action {
            OutboxAction::List { status, sync } => {
                // clap admits only the statuses and `all`, which is none of them.
                let status = crate::store::OutboxStatus::parse(&status);
                let entries = store.list_outbox(status, sync.as_deref(), 0, 1000).await?;
                if entries.is_empty() {
                    println!("No outbox entries match.");
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:>6}  {:<10} {:>8}  {:<7} {:<9} {:>3}  LAST ERROR",
                    "ID", "SYNC", "LOCAL", "ACTION", "STATUS", "TRY"
                );
                for e in entries {
                    let err = e.last_error.unwrap_or_default();
                    let err: String = err.chars().take(60).collect();
                    println!(
                        "{:>6}  {:<10} {:>8}  {:<7} {:<9} {:>3}  {}",
                        e.id, e.sync, e.local_id, e.action, e.status, e.attempts, err
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            OutboxAction::Retry { id } => {
                if store.outbox_requeue(id).await? {
                    println!(
                        "Outbox entry {id} is queued again; a running `recsync serve` delivers it."
                    );
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("error: no dead or discarded outbox entry {id}");
                    Ok(ExitCode::from(1))
                }
            }
            OutboxAction::RetryAll { code, sync } => {
                let sync = match (code, sync) {
                    (Some(c), Some(s)) if c != s => {
                        eprintln!("error: two sync codes given ({c} and --sync {s}); give one");
                        return Ok(ExitCode::from(EXIT_USAGE));
                    }
                    (Some(c), _) | (None, Some(c)) => c,
                    (None, None) => {
                        eprintln!("error: name the sync: recsync outbox retry-all <CODE>");
                        return Ok(ExitCode::from(EXIT_USAGE));
                    }
                };
                let n = store.outbox_requeue_all(&sync).await?;
                println!(
                    "{n} dead-lettered entr{} of sync {sync} queued again.",
                    if n == 1 { "y" } else { "ies" }
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }
    .await;
    store.close().await;
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}
