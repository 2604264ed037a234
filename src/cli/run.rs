//! `recsync run CODE`: one run now, through the same wiring as `serve`, with a progress line on a terminal.

use super::*;

/// `recsync run CODE`: one run now, in this process, against the configured database.
pub(super) async fn run_now(g: &GlobalArgs, code: &str, full: bool) -> ExitCode {
    let core = match start_core(g).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let engine = core.engine.clone();
    let store = engine.reads();
    let result = match engine
        .start_run(code, crate::engine::Trigger::Manual, full)
        .await
    {
        Ok(started) => match with_progress(code, started.progress.clone(), started.task).await {
            Ok((status, c)) => {
                println!(
                    "Run {} of {code}: {status}. pulled {}, created {}, updated {}, deleted {}, unlinked {}, skipped {}, failed {}, conflicts {}, pushed {}.",
                    started.run_id,
                    c.pulled,
                    c.created,
                    c.updated,
                    c.deleted,
                    c.unlinked,
                    c.skipped,
                    c.failed,
                    c.conflicts,
                    c.pushed
                );
                if full {
                    println!(
                        "  reconciliation: {} missing, {} extra, {} different.",
                        c.missing, c.extra, c.different
                    );
                }
                if c.ambiguous > 0 {
                    println!(
                        "  {} records matched several records on the other side (match_on): nothing linked or created for them; `recsync log --sync {code} --action link --status skipped` names them.",
                        c.ambiguous
                    );
                }
                if c.held > 0 {
                    println!(
                        "  {} deletes held by the delete guard: `recsync holds` lists them.",
                        c.held
                    );
                }
                if let Ok(Some(run)) = store
                    .runs(Some(code), None, 1)
                    .await
                    .map(|r| r.into_iter().next())
                    && let Some(err) = run.error
                {
                    println!("  {err}");
                }
                if status == crate::store::RunStatus::Success {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: the run stopped unexpectedly: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    core.stop().await;
    result
}

/// Loads the configuration and starts the engine with the same wiring and options as `serve`
/// (claim timeout included), for a command that acts through it; deliveries it claims are in
/// hand while it lives.
pub(super) async fn start_core(g: &GlobalArgs) -> Result<crate::app::Core, ExitCode> {
    let loaded = load(g, None)?;
    crate::telemetry::init(
        loaded.settings.log_format,
        loaded.settings.otlp_endpoint.as_deref(),
    );
    crate::app::Core::start(&loaded.settings, loaded.plan)
        .await
        .map_err(|e| {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        })
}

/// On a terminal, a spinner with the counts so far while the run works; elsewhere nothing
/// (the summary line follows either way).
pub(super) async fn with_progress(
    code: &str,
    mut progress: tokio::sync::watch::Receiver<crate::store::RunCounts>,
    task: tokio::task::JoinHandle<(crate::store::RunStatus, crate::store::RunCounts)>,
) -> Result<(crate::store::RunStatus, crate::store::RunCounts), tokio::task::JoinError> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return task.await;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(format!("{code}: starting"));
    let watcher = {
        let bar = bar.clone();
        let code = code.to_string();
        tokio::spawn(async move {
            while progress.changed().await.is_ok() {
                let c = progress.borrow().clone();
                bar.set_message(format!(
                    "{code}: pulled {}, created {}, updated {}, skipped {}, failed {}",
                    c.pulled, c.created, c.updated, c.skipped, c.failed
                ));
            }
        })
    };
    let result = task.await;
    watcher.abort();
    bar.finish_and_clear();
    result
}
