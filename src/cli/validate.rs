//! `recsync validate`: compile the configuration, and with `--online` probe every web service.

use super::*;

pub(super) async fn validate(g: &GlobalArgs, online: bool) -> ExitCode {
    let loaded = match load(g, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let p = &loaded.plan;
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    println!(
        "Configuration is valid: {} model(s), {} external model(s), {} web service(s), {} sync(s), {} API key(s).",
        p.models.len(),
        p.external_models.len(),
        p.web_services.len(),
        p.syncs.len(),
        loaded.settings.api_keys.len()
    );
    println!(
        "Mapping files: {}",
        if files.is_empty() {
            "(none)".to_string()
        } else {
            files.join(", ")
        }
    );
    for s in p.syncs.values() {
        let when = match (&s.mode, &s.schedule) {
            (crate::domain::plan::Mode::Cron, Some(sch)) => {
                format!("cron, {} ({})", sch.describe(), s.timezone)
            }
            (m, Some(sch)) => format!("{}, incremental runs {}", m.as_str(), sch.describe()),
            (m, None) => m.as_str().to_string(),
        };
        let when = match s.reconcile {
            Some(d) => format!(
                "{when}, reconciles in full every {}",
                crate::domain::plan::humantime_like(d)
            ),
            None => when,
        };
        println!(
            "  {:<10} {} {} {} via {}: {}, {}",
            s.code,
            s.model,
            s.direction.arrow(),
            s.external_model,
            s.web_service,
            s.direction.as_str(),
            when
        );
    }
    if online {
        let code = check_services(p).await;
        check_round_trips(&loaded).await;
        return code;
    }
    ExitCode::SUCCESS
}

/// `validate --online`, on the local records: the values two-way transformed fields do not
/// give back (the plan of each sync shows the external side's too).
async fn check_round_trips(loaded: &config::Loaded) {
    use secrecy::ExposeSecret;
    let syncs: Vec<&str> = loaded
        .plan
        .syncs
        .values()
        .filter(|s| {
            crate::domain::mapping::round_trip_pairs(&s.fields)
                .next()
                .is_some()
        })
        .map(|s| s.code.as_str())
        .collect();
    if syncs.is_empty() {
        return;
    }
    println!("Round trips of two-way transformed fields, on the local records:");
    let url = loaded.settings.database_url.expose_secret();
    if let Some(path) = super::plan::sqlite_file(url)
        && !std::path::Path::new(&path).exists()
    {
        println!("  no database at {path} yet: nothing to check");
        return;
    }
    let store = match crate::store::Store::connect(url).await {
        Ok(s) => s,
        Err(e) => {
            println!(
                "  the database {} could not be opened: {e}",
                loaded.settings.database_display()
            );
            return;
        }
    };
    for code in syncs {
        match crate::engine::round_trip_local(&store, &loaded.plan, code).await {
            Ok(trips) => {
                let mut out = String::new();
                super::plan::round_trips(&mut out, &trips);
                for line in out.lines() {
                    println!("  {code}: {line}");
                }
            }
            Err(e) => println!("  {code}: the records could not be read: {e}"),
        }
    }
    store.close().await;
}

/// `validate --online`: does each web service answer? One line per service; any that does
/// not, or that refuses its credentials, makes the exit code 69.
pub(super) async fn check_services(plan: &crate::domain::Plan) -> ExitCode {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    println!("Web services:");
    let mut failed = 0;
    for (name, ws) in &plan.web_services {
        let connector = crate::connectors::build(ws, &client);
        match connector.check(plan).await {
            Ok(what) => println!("  ok    {name}: {what}"),
            Err(e) => {
                failed += 1;
                println!("  FAIL  {name}: {e}");
            }
        }
    }
    if failed > 0 {
        eprintln!("error: {failed} web service(s) did not answer as expected");
        return ExitCode::from(EXIT_UNAVAILABLE);
    }
    ExitCode::SUCCESS
}
