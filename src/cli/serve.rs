//! `recsync migrate` and `recsync serve`.

use super::*;

pub(super) async fn migrate(g: &GlobalArgs) -> ExitCode {
    let loaded = match load(g, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    use secrecy::ExposeSecret;
    let shown = loaded.settings.database_display();
    let result = async {
        let store =
            crate::store::Store::connect(loaded.settings.database_url.expose_secret()).await?;
        store.migrate().await?;
        store.close().await;
        Ok::<_, crate::store::StoreError>(())
    }
    .await;
    match result {
        Ok(()) => {
            println!("Migrations applied to {shown}.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: migrating {shown} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) async fn serve(g: &GlobalArgs, listen: Option<String>) -> ExitCode {
    let loaded = match load(g, listen) {
        Ok(l) => l,
        Err(code) => return code,
    };
    crate::telemetry::init(
        loaded.settings.log_format,
        loaded.settings.otlp_endpoint.as_deref(),
    );
    let db = loaded.settings.database_display();
    let app = match crate::app::build(
        loaded.settings,
        loaded.plan,
        crate::app::BuildOptions {
            watch: true,
            ..Default::default()
        },
    )
    .await
    {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Failed to start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(port = app.port(), database = %db, "recsync is serving; probes at /healthz and /readyz");
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Server stopped with an error");
            ExitCode::FAILURE
        }
    }
}
