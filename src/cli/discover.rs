//! `recsync discover <web_service> [<resource>]`: asks the web service to describe a resource
//! and prints it as an `external_models` block ready to paste (secrets are never printed).

use super::*;

pub(super) async fn discover(
    g: &GlobalArgs,
    web_service: &str,
    resource: Option<&str>,
) -> ExitCode {
    // Only the web service needs to be sound: a mistake elsewhere (a sync not written yet, an
    // API key scoped to it) is mentioned, not in the way.
    let (plan, errors) =
        match config::load_lenient(&paths(g, None), &ProcessEnv, crate::connectors::KINDS) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{}", e.render());
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    let Some(ws) = plan.web_services.get(web_service) else {
        if let Some(e) = errors {
            eprintln!("{}", e.render());
            return ExitCode::from(EXIT_CONFIG);
        }
        let names: Vec<&str> = plan.web_services.keys().map(String::as_str).collect();
        eprintln!(
            "error: no web service `{web_service}`; configured: {}",
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            }
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    if let Some(e) = &errors {
        eprintln!(
            "note: the configuration has {} elsewhere (`recsync validate` lists them); web service `{web_service}` itself is sound",
            match e.diagnostics.len() {
                1 => "a mistake".to_string(),
                n => format!("{n} mistakes"),
            }
        );
    }
    let connector = crate::connectors::build(ws, &http);
    match connector.describe(&plan, resource).await {
        Ok(block) => {
            println!(
                "# {} of web service `{web_service}`, as it describes itself",
                resource.unwrap_or("the resource")
            );
            print!("{block}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
