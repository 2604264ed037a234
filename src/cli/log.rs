//! `recsync log`: the change-control log as a table, JSON lines or CSV, optionally followed; readers that need only the database URL.

use super::*;

/// Opens (and migrates) the database for the commands that only read the store or work on it
/// alone (`log`, `outbox`): they need nothing but the database's URL, so an invalid mapping or
/// an unset secret elsewhere does not lock an operator out of the audit trail. The plan comes
/// too when the configuration loads (for masking by field name); rows were masked when
/// written either way.
pub(super) async fn open_store_for_reading(
    g: &GlobalArgs,
) -> Result<(Option<crate::domain::Plan>, crate::store::Store), ExitCode> {
    let only = config::load_database(&paths(g, None), &ProcessEnv).map_err(|e| {
        eprintln!("{}", e.render());
        ExitCode::from(EXIT_CONFIG)
    })?;
    let plan = match config::load(&paths(g, None), &ProcessEnv, crate::connectors::KINDS) {
        Ok(loaded) => Some(loaded.plan),
        // In the demo's folder there is no configuration to speak of: the note below says
        // what is read.
        Err(_) if only.demo => None,
        Err(e) => {
            eprintln!(
                "warning: the configuration does not load ({} error(s); `recsync validate` shows them); reading {} anyway",
                e.diagnostics.len(),
                only.settings.database_display()
            );
            None
        }
    };
    if only.demo {
        eprintln!(
            "note: no recsync.db here; reading the demo's database, sqlite://recsync-demo.db"
        );
    }
    open_url(&only.settings).await.map(|s| (plan, s))
}

pub(super) async fn open_url(settings: &config::Settings) -> Result<crate::store::Store, ExitCode> {
    use secrecy::ExposeSecret;
    let store = crate::store::Store::connect(settings.database_url.expose_secret())
        .await
        .map_err(|e| {
            eprintln!("error: cannot open {}: {e}", settings.database_display());
            ExitCode::FAILURE
        })?;
    if let Err(e) = store.migrate().await {
        eprintln!("error: migrating the database failed: {e}");
        return Err(ExitCode::FAILURE);
    }
    Ok(store)
}

/// `recsync log`: the change-control log from the configured database.
pub(super) async fn log(
    g: &GlobalArgs,
    query: crate::audit::ChangeQuery,
    limit: u64,
    format: &str,
    follow: bool,
) -> ExitCode {
    use crate::audit;
    use std::io::Write;
    let mut filter = match query.to_filter(audit::MAX_PAGE) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (plan, store) = match open_store_for_reading(g).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    if let Some(code) = query.sync.as_deref() {
        let configured = plan.as_ref().is_some_and(|p| p.sync(code).is_some());
        if !configured && !store.has_changes_of(code).await.unwrap_or(true) {
            eprintln!(
                "error: unknown sync `{code}`: it is not in the configuration and the log holds no row of it"
            );
            store.close().await;
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let masker = std::sync::Arc::new(plan.map(|p| p.masker()).unwrap_or_default());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let print = |out: &mut dyn Write, rows: &[crate::store::Change], header: bool| match format {
        "json" => {
            for r in rows {
                let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
            }
        }
        "csv" => {
            let _ = out.write_all(&audit::csv_chunk(rows, header));
        }
        _ => {
            if header {
                let _ = writeln!(out, "{}", table_header());
            }
            for r in rows {
                let _ = writeln!(out, "{}", table_line(r));
            }
        }
    };
    let result: Result<(), crate::store::StoreError> = async {
        // The newest rows, shown oldest first.
        let mut rows = Vec::new();
        if limit == 0 {
            let mut pages =
                std::pin::pin!(audit::pages(store.view(), filter.clone(), masker.clone()));
            use futures_util::StreamExt;
            let mut header = true;
            // Every row: streamed newest first, page by page, in constant memory.
            while let Some(page) = pages.next().await {
                let page = page?;
                print(&mut out, &page, header);
                header = false;
            }
            if header {
                print(&mut out, &[], true);
            }
        } else {
            filter.limit = (limit as i64).min(audit::MAX_PAGE);
            rows = store.changes(&filter).await?;
            rows.reverse();
            rows.iter_mut().for_each(|r| audit::mask_change(&masker, r));
            print(&mut out, &rows, true);
        }
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        let mut last = rows.last().map(|r| r.id).unwrap_or(0);
        if last == 0 {
            last = store
                .changes(&crate::store::ChangeFilter {
                    limit: 1,
                    ..Default::default()
                })
                .await?
                .first()
                .map(|r| r.id)
                .unwrap_or(0);
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            loop {
                let f = crate::store::ChangeFilter {
                    after_id: Some(last),
                    before: None,
                    limit: audit::MAX_PAGE,
                    ..filter.clone()
                };
                let mut rows = store.changes(&f).await?;
                let Some(l) = rows.last() else { break };
                last = l.id;
                rows.iter_mut().for_each(|r| audit::mask_change(&masker, r));
                print(&mut out, &rows, false);
                let _ = out.flush();
                if (rows.len() as i64) < audit::MAX_PAGE {
                    break;
                }
            }
        }
    }
    .await;
    store.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: reading the change-control log failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fits in 80 columns.
pub(super) fn table_header() -> String {
    format!(
        "{:>6} {:<14} {:<6} {:<3} {:<8} {:<8} {:<10} {}",
        "ID", "WHEN (UTC)", "SYNC", "DIR", "ACTION", "STATUS", "RECORD", "DETAIL"
    )
}

pub(super) fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub(super) fn table_line(c: &crate::store::Change) -> String {
    let dir = if c.direction == crate::store::LogDirection::ExternalToLocal {
        "in"
    } else {
        "out"
    };
    // `conflict_resolved` does not fit 8 columns; the action (`conflict`) says the rest.
    let status = if c.status == crate::store::LogStatus::ConflictResolved {
        "resolved"
    } else {
        c.status.as_str()
    };
    let record = match (&c.external_id, c.local_id) {
        (Some(e), _) => e.clone(),
        (None, Some(l)) => format!("#{l}"),
        (None, None) => String::new(),
    };
    let detail = if c.error_message.is_empty() {
        c.title.clone()
    } else {
        c.error_message.clone()
    };
    format!(
        "{:>6} {:<14} {:<6} {:<3} {:<8} {:<8} {:<10} {}",
        clip(&c.id.to_string(), 6),
        c.synced_at.format("%m-%d %H:%M:%S"),
        clip(&c.sync, 6),
        dir,
        clip(c.action.as_str(), 8),
        clip(status, 8),
        clip(&record, 10),
        clip(&detail.replace(['\n', '\r'], " "), 18)
    )
}
