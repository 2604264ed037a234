//! The fake HTTP API judged by real clients: `tests/http_fidelity.py` drives HubSpot's
//! official Python SDK (`hubspot-api-client`) against the fake's CRM contacts, takes OAuth 2.0
//! client-credentials tokens with `requests-oauthlib`, and reads the GitHub-style `Link` header
//! with `requests`.
//!
//! The interpreter is `RECSYNC_HTTP_PYTHON`, else `target/http-venv/bin/python` (which
//! `.ci/run` creates). Without it the test is skipped, except under `CI=true`, where a missing
//! prerequisite fails.

mod common;

use recsync::peer::http::{FakeAuth, FakeHttp, HttpOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspots_sdk_and_oauthlib_accept_the_fake() {
    let Some(python) = common::fidelity::python(
        "RECSYNC_HTTP_PYTHON",
        "http-venv",
        "import hubspot, requests_oauthlib",
        "hubspot-api-client and requests-oauthlib",
    ) else {
        return;
    };
    let bearer = FakeHttp::bind(HttpOptions {
        auth: FakeAuth::Bearer("crm-token-0123".into()),
        ..Default::default()
    })
    .unwrap();
    bearer.state.seed("contacts", 7);
    bearer.state.seed("items", 5);
    let oauth = FakeHttp::bind(HttpOptions {
        auth: FakeAuth::OAuth2 {
            client_id: "the-client".into(),
            client_secret: "the-secret".into(),
            ttl: std::time::Duration::from_secs(600),
        },
        ..Default::default()
    })
    .unwrap();
    oauth.state.seed("items", 3);
    let args: Vec<String> = [
        &bearer.url(),
        "crm-token-0123",
        "7",
        &oauth.url(),
        "the-client",
        "the-secret",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let handles = (bearer.handle(), oauth.handle());
    tokio::spawn(bearer.run());
    tokio::spawn(oauth.run());
    let n = common::fidelity::run_checks(python, "http_fidelity.py", args).await;
    handles.0.stop(false).await;
    handles.1.stop(false).await;
    assert!(n >= 30, "only {n} checks ran");
}
