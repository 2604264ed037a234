//! `recsync discover <web_service> [<resource>]`: asks the web service to describe a resource
//! and prints it as an `external_models` block ready to paste (secrets are never printed).

use super::*;

pub(super) async fn discover(
    g: &GlobalArgs,
    web_service: &str,
    resource: Option<&str>,
) -> ExitCode {
    let loaded = match load(g, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(ws) = loaded.plan.web_services.get(web_service) else {
        let names: Vec<&str> = loaded
            .plan
            .web_services
            .keys()
            .map(String::as_str)
            .collect();
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
    let connector = crate::connectors::build(ws, &http);
    match connector.describe(&loaded.plan, resource).await {
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
