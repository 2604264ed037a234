//! The fake HTTP API judged by real clients: `tests/http_fidelity.py` drives HubSpot's
//! official Python SDK (`hubspot-api-client`) against the fake's CRM contacts, takes OAuth 2.0
//! client-credentials tokens with `requests-oauthlib`, and reads the GitHub-style `Link` header
//! with `requests`.
//!
//! The interpreter is `RECSYNC_HTTP_PYTHON`, else `target/http-venv/bin/python` (which
//! `.ci/run` creates). Without it the test is skipped, except under `CI=true`, where a missing
//! prerequisite fails.

use recsync::peer::http::{FakeAuth, FakeHttp, HttpOptions};
use std::path::PathBuf;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("RECSYNC_HTTP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/http-venv/bin/python")
        });
    let ok = std::process::Command::new(&p)
        .args(["-c", "import hubspot, requests_oauthlib"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspots_sdk_and_oauthlib_accept_the_fake() {
    let Some(python) = python() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and no Python with hubspot-api-client and requests-oauthlib: run .ci/run, or set RECSYNC_HTTP_PYTHON"
        );
        eprintln!("skipped: no Python with hubspot-api-client and requests-oauthlib (see .ci/run)");
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
    let (url, oauth_url) = (bearer.url(), oauth.url());
    let handles = (bearer.handle(), oauth.handle());
    tokio::spawn(bearer.run());
    tokio::spawn(oauth.run());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/http_fidelity.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args([
                &url,
                "crm-token-0123",
                "7",
                &oauth_url,
                "the-client",
                "the-secret",
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    handles.0.stop(false).await;
    handles.1.stop(false).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the client scenario failed:\n{stdout}\n{stderr}"
    );
    let n: usize = stdout
        .trim()
        .strip_prefix("OK ")
        .and_then(|s| s.strip_suffix(" checks"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    assert!(n >= 30, "only {n} checks ran");
}
